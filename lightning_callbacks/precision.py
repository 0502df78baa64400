"""Reduced-precision exports: the weights and floating-point inputs cast to fp16 or bf16.

The exported files compute in half precision; verification compares them with the
full-precision (fp32) eager model, so the tolerance must cover half precision's rounding.
Default tolerances per precision (``|exported - eager| <= atol + rtol * |eager|``):

=========  ======  ======  =====================================================
precision  rtol    atol    why
=========  ======  ======  =====================================================
fp32       1e-3    1e-5    same arithmetic, different kernels
fp16       1e-2    1e-3    10-bit mantissa: ~1e-3 relative rounding per operation
bf16       5e-2    1e-2    7-bit mantissa: ~8e-3 relative rounding per operation
=========  ======  ======  =====================================================

Pass ``rtol``/``atol`` to the callback to override them. Integer and bool inputs keep their
dtype; the MLflow signature, hence Triton's config, says ``TYPE_FP16`` (or ``TYPE_BF16``)
for every floating-point input and output.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Literal, get_args

import torch

Precision = Literal["fp32", "fp16", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: ``(rtol, atol)`` against the fp32 eager model, by precision (see the module docstring).
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (1e-3, 1e-5), "fp16": (1e-2, 1e-3), "bf16": (5e-2, 1e-2),
}  # fmt: skip


def default_tolerances(precision: str) -> tuple[float, float]:
    """``(rtol, atol)`` used to verify an export of ``precision`` against fp32 eager."""
    return DEFAULT_TOLERANCES[precision]


def cast_inputs(example: tuple[torch.Tensor, ...], precision: str) -> tuple[torch.Tensor, ...]:
    """``example`` with its floating-point tensors in ``precision``'s dtype."""
    dtype = DTYPES[precision]
    return tuple(t.to(dtype) if t.is_floating_point() else t for t in example)


@contextlib.contextmanager
def reduced_precision(module: torch.nn.Module, precision: str) -> Iterator[torch.nn.Module]:
    """Cast ``module``'s floating-point weights and buffers to ``precision``; restore on exit.

    The original tensors are kept (not cast back), so nothing is lost to rounding.
    """
    if precision == "fp32":
        yield module
        return
    original = {k: v.detach().clone() for k, v in module.state_dict().items()}
    dtypes = {k: v.dtype for k, v in original.items()}
    module.to(DTYPES[precision])
    try:
        yield module
    finally:
        floating = {v for k, v in dtypes.items() if v.is_floating_point}
        module.to(floating.pop() if len(floating) == 1 else torch.float32)
        module.load_state_dict(original)
