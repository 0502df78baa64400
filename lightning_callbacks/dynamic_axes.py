"""Which axes of the model's inputs and outputs are variable: the batch, plus the ones named.

``dynamic_axes={"tokens": {1: "seq"}, "scores": {1: "seq"}}`` makes the sequence axis of a
text model variable end to end: the ONNX file keeps it symbolic, verification runs at two
sizes of it, and the MLflow signature marks it ``-1`` so Triton's config keeps it variable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import torch

if TYPE_CHECKING:
    from lightning_callbacks.model_io import Example, IONames

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
    ranks = dict(zip(names.inputs, (t.dim() for t in example)))
    ranks.update(zip(names.outputs, (t.dim() for t in outputs)))
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
