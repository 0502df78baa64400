"""Check that exported TorchScript and ONNX files reproduce the eager model.

Each file is loaded back from disk (``torch.jit.load``, an ``onnxruntime`` session) and run at
batch size 1 and batch size N; every output is compared with eager outputs using
``|exported - eager| <= atol + rtol * |eager|``::

    results = verify_exports(model, {"onnx": path}, example, names, rtol=1e-3, atol=1e-5)
    raise_on_failure(results, rtol=1e-3, atol=1e-5)   # ExportVerificationError on mismatch

Batch 1 is the first row of the example input. Larger batches use random standard normal
values of the example's per-sample shape and dtype for floating-point inputs (they exercise
branches the example never took) and the example's rows, cycled, for integer and bool inputs.

Dynamic axes other than the batch (e.g. a sequence length) are verified at two sizes too:
batch 1 keeps the example's size, larger batches use the example's size plus
:data:`ALTERNATE_SIZE_STEP` (integer inputs cycle their values along that axis, so token ids
stay valid). Axes sharing a symbolic name get the same size.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from lightning_callbacks.export import ExportError
from lightning_callbacks.model_io import Example, IONames, flatten_outputs, take_rows
from mlflow_triton.core.tolerance import element_differences

logger = logging.getLogger(__name__)

#: Seed of the random verification inputs, so a failure reproduces.
VERIFY_SEED = 20240611
#: How much longer than the example a non-batch dynamic axis is at the second verified size.
ALTERNATE_SIZE_STEP = 3


@dataclass(frozen=True)
class VerificationResult:
    """One exported format compared with eager at one batch size.

    Attributes:
        format: ``torchscript`` or ``onnx``.
        batch_size: rows in the compared batch.
        max_abs_diff: largest ``|exported - eager|`` over all outputs (``inf`` on a shape or
            NaN mismatch).
        worst_output: name of the output holding the element furthest outside tolerance (or
            with the largest difference when all pass).
        worst_index: position of that output in ``forward``'s return value.
        allowed: ``atol + rtol * |eager|`` at that element.
        passed: whether every element of every output is within tolerance.
        detail: why the comparison failed beyond values (e.g. a shape mismatch), else "".
    """

    format: str
    batch_size: int
    max_abs_diff: float
    worst_output: str
    worst_index: int
    allowed: float
    passed: bool
    detail: str = ""
    input_shapes: tuple[tuple[int, ...], ...] = ()


class ExportVerificationError(ExportError):
    """An exported file does not reproduce the eager model within ``rtol``/``atol``.

    Attributes:
        results: every failed :class:`VerificationResult`.
    """

    def __init__(self, results: Sequence[VerificationResult], rtol: float, atol: float) -> None:
        self.results = list(results)
        self.rtol = rtol
        self.atol = atol
        super().__init__(self._message())

    def _message(self) -> str:
        lines = []
        for r in self.results:
            reason = r.detail or (
                f"max abs diff {r.max_abs_diff:.3g} > tolerance {r.allowed:.3g} "
                f"(atol={self.atol:g} + rtol={self.rtol:g} * |eager|)"
            )
            shapes = f" [input shapes {list(r.input_shapes)}]" if r.input_shapes else ""
            lines.append(
                f"{r.format} export does not match eager at batch size {r.batch_size}: "
                f"output {r.worst_output!r} (index {r.worst_index}): {reason}{shapes}"
            )
        lines.append(
            'HINT: a traced export keeps only the branches the example input took; for '
            'data-dependent control flow use torchscript_method="script". If the difference '
            "is numerical noise (e.g. GPU vs CPU kernels), raise rtol/atol."
        )
        return "\n".join(lines)


def _resize_axis(tensor: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """``tensor`` with ``size`` entries along ``axis``, cycling through the existing ones."""
    index = torch.arange(size) % tensor.shape[axis]
    return tensor.index_select(axis, index)


def _alternate_sizes(example: Example, input_axes: Sequence[Mapping[int, str]]) -> Example:
    """``example`` with every non-batch dynamic axis :data:`ALTERNATE_SIZE_STEP` longer."""
    sizes: dict[str, int] = {}
    for tensor, axes in zip(example, input_axes, strict=True):
        for axis, symbol in axes.items():
            if axis > 0:
                sizes.setdefault(symbol, tensor.shape[axis] + ALTERNATE_SIZE_STEP)
    resized = []
    for tensor, axes in zip(example, input_axes, strict=True):
        for axis, symbol in axes.items():
            if axis > 0:
                tensor = _resize_axis(tensor, axis, sizes[symbol])
        resized.append(tensor)
    return tuple(resized)


def verification_batches(
    example: Example,
    batch_sizes: Iterable[int],
    seed: int = VERIFY_SEED,
    input_axes: Sequence[Mapping[int, str]] | None = None,
) -> dict[int, Example]:
    """Inputs to verify with, keyed by batch size (see the module docstring).

    Args:
        example: example inputs, batch first.
        batch_sizes: batch sizes to build; batch 1 keeps the example's other sizes.
        seed: seed of the random floating-point values.
        input_axes: dynamic axes of each input (``{axis: symbol}``), in input order; non-batch
            dynamic axes get another size in batches larger than 1.
    """
    generator = torch.Generator().manual_seed(seed)
    batches = {}
    for size in batch_sizes:
        if size == 1:
            batches[size] = take_rows(example, 1)
            continue
        rows = take_rows(example, size)
        if input_axes:
            rows = _alternate_sizes(rows, input_axes)
        batches[size] = tuple(
            torch.randn(t.shape, generator=generator).to(t.dtype) if t.is_floating_point() else t
            for t in rows
        )
    return batches


def _numpy(outputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    return [t.detach().to("cpu").numpy() for t in outputs]


def run_eager(module: torch.nn.Module, inputs: Example) -> list[np.ndarray]:
    """Eager outputs as numpy arrays (call with the module on CPU, in eval mode)."""
    with torch.no_grad():
        return _numpy(flatten_outputs(module(*inputs)))


def run_torchscript(module: torch.jit.ScriptModule, inputs: Example) -> list[np.ndarray]:
    """Outputs of a loaded TorchScript module."""
    with torch.no_grad():
        return _numpy(flatten_outputs(module(*inputs)))


def onnx_session(path: Path):
    """An ``onnxruntime`` CPU session for ``path``.

    Raises:
        ModuleNotFoundError: if ``onnxruntime`` is not installed.
    """
    try:
        import onnxruntime
    except ImportError as err:
        raise ModuleNotFoundError(
            "Verifying ONNX exports needs onnxruntime: pip install 'mlflow-triton[lightning]'."
        ) from err
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )


def run_onnx(session, names: IONames, inputs: Example) -> list[np.ndarray]:
    """Outputs of an ``onnxruntime`` session, in ``names.outputs`` order."""
    feed = {name: t.numpy() for name, t in zip(names.inputs, inputs, strict=True)}
    return list(session.run(list(names.outputs), feed))


def compare(
    fmt: str,
    batch_size: int,
    expected: Sequence[np.ndarray],
    actual: Sequence[np.ndarray],
    output_names: Sequence[str],
    rtol: float,
    atol: float,
) -> VerificationResult:
    """Compare ``actual`` with ``expected`` output by output, with the project's one tolerance
    rule (:func:`mlflow_triton.core.tolerance.element_differences`: NaN equals NaN, an infinity
    only itself)."""
    worst = (-np.inf, 0.0, 0.0, 0)  # (excess over tolerance, abs diff, allowed, output index)
    max_abs = 0.0
    if len(actual) != len(expected):
        return VerificationResult(
            fmt, batch_size, np.inf, output_names[0], 0, atol, False,
            f"returns {len(actual)} outputs, eager returns {len(expected)}",
        )  # fmt: skip
    for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
        got = np.asarray(got)
        if got.shape != want.shape:
            return VerificationResult(
                fmt, batch_size, np.inf, output_names[index], index, atol, False,
                f"shape {got.shape} != eager shape {want.shape}",
            )  # fmt: skip
        if want.size == 0:
            continue
        diff, allowed = element_differences(want, got, rtol, atol)
        excess = diff - allowed
        flat = int(np.argmax(excess))
        max_abs = max(max_abs, float(diff.max()))
        if excess.flat[flat] > worst[0]:
            worst = (
                float(excess.flat[flat]), float(diff.flat[flat]), float(allowed.flat[flat]), index
            )  # fmt: skip
    excess, _, allowed, index = worst
    return VerificationResult(
        format=fmt, batch_size=batch_size, max_abs_diff=max_abs, worst_output=output_names[index],
        worst_index=index, allowed=allowed, passed=bool(excess <= 0),
    )  # fmt: skip


def verify_exports(
    module: torch.nn.Module,
    paths: Mapping[str, Path],
    example: Example,
    names: IONames,
    rtol: float = 1e-3,
    atol: float = 1e-5,
    batch_sizes: Sequence[int] = (1, 7),
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    reference: torch.nn.Module | None = None,
) -> list[VerificationResult]:
    """Load each exported file back and compare it with eager ``module`` at each batch size.

    Call with the module on CPU in eval mode, i.e. inside
    :func:`~lightning_callbacks.export.export_mode`.

    Args:
        module: the eager model the files were exported from.
        paths: ``{"torchscript": model.pt, "onnx": model.onnx}`` (either may be absent).
        example: example inputs, batch first.
        names: input and output names (ONNX graph names).
        rtol: relative tolerance.
        atol: absolute tolerance.
        batch_sizes: batch sizes to compare at.
        dynamic_axes: ``{input name: {axis: symbol}}``; non-batch dynamic axes are compared at
            the example's size (batch 1) and at another size (larger batches).
        reference: the model whose outputs are expected (default ``module``), e.g. the fp32
            model when ``module`` and the files are half precision; its outputs are compared
            with the files' outputs cast to float64.

    Returns:
        One result per format and batch size; none raises here (see :func:`raise_on_failure`).
    """
    start = time.perf_counter()
    input_axes = [dict((dynamic_axes or {}).get(name, {})) for name in names.inputs]
    batches = verification_batches(example, batch_sizes, input_axes=input_axes)
    runners = _runners(paths, names)
    results = []
    for size, inputs in batches.items():
        if reference is None:
            expected = run_eager(module, inputs)
        else:  # full precision reference: its own dtype for floating-point inputs
            expected = run_eager(reference, tuple(t.float() if t.is_floating_point() else t for t in inputs))
        for fmt, run in runners.items():
            results.append(_run_and_compare(fmt, run, size, inputs, expected, names, rtol, atol))
    summary = ", ".join(
        f"{r.format}@{r.batch_size}={r.max_abs_diff:.2g}{'' if r.passed else ' FAIL'}"
        for r in results
    )
    logger.info(
        "verified exports against eager (rtol=%g, atol=%g) in %.2fs: max abs diff %s",
        rtol, atol, time.perf_counter() - start, summary,
    )  # fmt: skip
    return results


Runner = Callable[[Example], list[np.ndarray]]


def _runners(paths: Mapping[str, Path], names: IONames) -> dict[str, Runner]:
    """One function per exported file: inputs in, outputs (numpy, in name order) out."""
    runners: dict[str, Runner] = {}
    if "torchscript" in paths:
        scripted = torch.jit.load(str(paths["torchscript"]), map_location="cpu")
        scripted.eval()
        runners["torchscript"] = lambda inputs: run_torchscript(scripted, inputs)
    if "onnx" in paths:
        session = onnx_session(paths["onnx"])
        runners["onnx"] = lambda inputs: run_onnx(session, names, inputs)
    return runners


def _run_and_compare(
    fmt: str,
    run: Runner,
    size: int,
    inputs: Example,
    expected: Sequence[np.ndarray],
    names: IONames,
    rtol: float,
    atol: float,
) -> VerificationResult:
    shapes = tuple(tuple(t.shape) for t in inputs)
    try:
        actual = run(inputs)
    except Exception as err:  # the export cannot even run at this batch size
        return VerificationResult(
            fmt, size, np.inf, names.outputs[0], 0, atol, False,
            f"fails to run: {type(err).__name__}: {str(err).strip().splitlines()[0]}", shapes,
        )  # fmt: skip
    result = compare(fmt, size, expected, actual, names.outputs, rtol, atol)
    return dataclasses.replace(result, input_shapes=shapes)


def raise_on_failure(results: Sequence[VerificationResult], rtol: float, atol: float) -> None:
    """Raise :class:`ExportVerificationError` naming every failed comparison.

    Raises:
        ExportVerificationError: if any result did not pass.
    """
    failed = [r for r in results if not r.passed]
    if failed:
        raise ExportVerificationError(failed, rtol=rtol, atol=atol)
