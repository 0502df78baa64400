"""Which axes of the model's inputs and outputs are variable: the batch, plus the ones named.

``dynamic_axes={"tokens": {1: "seq"}, "scores": {1: "seq"}}`` makes the sequence axis of a
text model variable end to end: the ONNX file keeps it symbolic, verification runs at two
sizes of it, and the MLflow signature marks it ``-1`` so Triton's config keeps it variable.
Output axes whose size follows a dynamic input axis are found by running the model at two
sizes (:func:`infer_output_axes`), so ``{"tokens": {1: "seq"}}`` alone is enough.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Mapping, Sequence

import torch

if TYPE_CHECKING:
    from lightning_callbacks.model_io import Example, IONames

logger = logging.getLogger(__name__)

#: ``{tensor name: {axis: symbolic name}}``, e.g. ``{"tokens": {0: "batch", 1: "seq"}}``.
DynamicAxes = dict[str, dict[int, str]]
#: The symbolic name of axis 0, which is always dynamic.
BATCH_AXIS_NAME = "batch"


def resolve_dynamic_axes(
    names: IONames, example: Example, outputs: Sequence[torch.Tensor],
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
) -> DynamicAxes:  # fmt: skip
    """Every input's and output's dynamic axes: axis 0 (``batch``) plus the ones given.

    Args:
        names: the input and output names.
        example: example inputs (for their ranks).
        outputs: eager outputs for ``example`` (for their ranks).
        dynamic_axes: extra dynamic axes by tensor name, e.g. ``{"tokens": {1: "seq"}}``;
            axis 0 may be given but must be the batch. The same symbolic name on several
            tensors means the same size (e.g. ``seq`` on the input and the output).

    Returns:
        ``{name: {axis: symbol}}`` for every input and output, axes sorted.

    Raises:
        ValueError: for an unknown tensor name, an axis outside the tensor's rank, or a
            symbol that is not a non-empty string.
    """
    ranks = dict(zip(names.inputs, (t.dim() for t in example), strict=True))
    ranks.update(zip(names.outputs, (t.dim() for t in outputs), strict=True))
    resolved: DynamicAxes = {name: {0: BATCH_AXIS_NAME} for name in ranks}
    for name, axes in (dynamic_axes or {}).items():
        if name not in ranks:
            raise ValueError(
                f"dynamic_axes names {name!r}, which is not an input or output of the model "
                f"(inputs {list(names.inputs)}, outputs {list(names.outputs)}); use those "
                "names, or set input_names/output_names."
            )
        if not isinstance(axes, Mapping):
            raise ValueError(
                f"dynamic_axes[{name!r}] must map axis numbers to names, e.g. {{1: 'seq'}}, "
                f"got {axes!r}."
            )
        for axis, symbol in axes.items():
            if not isinstance(axis, int) or not 0 <= axis < ranks[name]:
                raise ValueError(
                    f"dynamic_axes[{name!r}] names axis {axis!r}, but {name!r} has rank "
                    f"{ranks[name]} (axes 0..{ranks[name] - 1})."
                )
            if not isinstance(symbol, str) or not symbol:
                raise ValueError(
                    f"dynamic_axes[{name!r}][{axis}] must be a non-empty name, got {symbol!r}."
                )
            if axis == 0 and symbol != BATCH_AXIS_NAME:
                symbol = BATCH_AXIS_NAME  # axis 0 is the batch for every tensor
            resolved[name][axis] = symbol
    return {name: dict(sorted(axes.items())) for name, axes in resolved.items()}


def infer_output_axes(
    names: IONames,
    axes: DynamicAxes,
    run_a: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]],
    run_b: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]],
) -> DynamicAxes:
    """``axes`` plus every output axis whose size changed with the dynamic input axes.

    ``dynamic_axes={"tokens": {1: "seq"}}`` alone must not leave the outputs' sequence axis
    fixed: the signature (hence Triton's config) would then promise the example's length.
    Two eager runs at different sizes of the dynamic input axes tell which output axes follow.

    Args:
        names: the input and output names.
        axes: the resolved axes (:func:`resolve_dynamic_axes`); axes given for an output stay.
        run_a: ``(inputs, outputs)`` of an eager run.
        run_b: ``(inputs, outputs)`` of a run at other sizes of the dynamic input axes.

    Returns:
        The axes with the changed output axes added, named after the input symbol whose
        sizes they have in both runs (e.g. ``seq``), else ``<output>_dim<axis>``.
    """
    symbols: dict[tuple[int, int], str] = {}
    for name, a, b in zip(names.inputs, run_a[0], run_b[0], strict=True):
        for axis, symbol in axes[name].items():
            if axis > 0:
                symbols.setdefault((a.shape[axis], b.shape[axis]), symbol)
    result = {name: dict(found) for name, found in axes.items()}
    for name, a, b in zip(names.outputs, run_a[1], run_b[1], strict=True):
        for axis in range(1, min(a.dim(), b.dim())):
            sizes = (a.shape[axis], b.shape[axis])
            if axis not in result[name] and sizes[0] != sizes[1]:
                result[name][axis] = symbols.get(sizes, f"{name}_dim{axis}")
                logger.info(
                    "output %r axis %d has sizes %s at two input sizes: dynamic (%r)",
                    name, axis, sizes, result[name][axis],
                )  # fmt: skip
        result[name] = dict(sorted(result[name].items()))
    return result
