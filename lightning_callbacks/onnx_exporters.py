"""The two ONNX exporters of PyTorch, and ``auto``: dynamo first, TorchScript as fallback.

* ``torchscript``: ``torch.onnx.export(..., dynamo=False)`` with ``dynamic_axes``. Fast (well
  under a second for small models) and accepts ``ScriptModule`` inputs (scripted control
  flow becomes ONNX ``If``/``Loop``); deprecated upstream.
* ``dynamo``: ``torch.onnx.export(..., dynamo=True)`` from ``torch.export`` with
  ``dynamic_shapes`` (one ``torch.export.Dim`` per symbolic name, so axes that share a name
  share a size). Needs seconds per export; refuses ``ScriptModule`` and data-dependent
  Python control flow.
* ``auto``: dynamo; when it fails, the TorchScript exporter, with the reason logged.

Which exporter wrote a file is stored in the file's ``metadata_props``
(:data:`EXPORTER_KEY`) and, by the callback, in the MLflow model's metadata::

    used, reason = run_exporter(module, example, path, names, axes, opset=None, exporter="auto")
"""

from __future__ import annotations

import inspect
import logging
import warnings
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, get_args

import torch

logger = logging.getLogger(__name__)

OnnxExporter = Literal["torchscript", "dynamo", "auto"]
ONNX_EXPORTERS: tuple[str, ...] = get_args(OnnxExporter)
#: ``metadata_props`` key of the ONNX file naming the exporter that wrote it.
EXPORTER_KEY = "torch.onnx.exporter"


def run_exporter(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    opset: int | None,
    exporter: OnnxExporter,
    external_data: bool,
) -> tuple[str, str | None]:
    """Write ``module`` to ``path`` with ``exporter``.

    Args:
        module: the module (eval mode, CPU).
        example: example inputs, batch of at least 2.
        path: the ``.onnx`` file.
        input_names / output_names: graph names.
        dynamic_axes: ``{name: {axis: symbol}}`` for every input and output.
        opset: opset version, or None for the exporter's default.
        exporter: ``torchscript``, ``dynamo`` or ``auto``.
        external_data: let the dynamo exporter write weights to a ``.data`` file (needed at
            2 GiB and more).

    Returns:
        ``(exporter used, why dynamo was not used or None)``.

    Raises:
        Exception: what the (last) exporter raised.
    """
    if exporter == "torchscript":
        _torchscript(module, example, path, input_names, output_names, dynamic_axes, opset)
        return "torchscript", None
    if exporter == "dynamo":
        _dynamo(module, example, path, input_names, output_names, dynamic_axes, opset, external_data)
        return "dynamo", None
    try:
        _dynamo(module, example, path, input_names, output_names, dynamic_axes, opset, external_data)
        return "dynamo", None
    except Exception as err:  # any refusal of torch.export / the dynamo exporter
        reason = f"{type(err).__name__}: {_first_line(err)}"
        logger.warning(
            "the dynamo ONNX exporter failed on %s (%s); falling back to the TorchScript exporter",
            type(module).__name__, reason,
        )  # fmt: skip
        for stale in (path, path.with_name(path.name + ".data")):
            stale.unlink(missing_ok=True)
        _torchscript(module, example, path, input_names, output_names, dynamic_axes, opset)
        return "torchscript", reason


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else ""


def _torchscript(module, example, path, input_names, output_names, dynamic_axes, opset) -> None:
    kwargs: dict[str, Any] = {} if opset is None else {"opset_version": opset}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module, example, str(path), input_names=list(input_names),
            output_names=list(output_names), dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
            dynamo=False, **kwargs,
        )  # fmt: skip


def _dynamo(module, example, path, input_names, output_names, dynamic_axes, opset, external_data) -> None:
    if isinstance(module, torch.jit.ScriptModule):
        raise TypeError("a ScriptModule cannot be exported by torch.export (use the TorchScript exporter)")
    from torch.export import Dim

    dims: dict[str, Any] = {}
    shapes: tuple = tuple(
        {axis: dims.setdefault(symbol, Dim(symbol)) for axis, symbol in dynamic_axes.get(name, {}).items()}
        for name in input_names
    )
    if _takes_only_var_positional(module):  # forward(self, *tensors), e.g. FlatForward
        shapes = (shapes,)  # torch.export: one entry per parameter, *tensors is one
    kwargs: dict[str, Any] = {} if opset is None else {"opset_version": opset}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, example, dynamo=True, input_names=list(input_names),
            output_names=list(output_names), dynamic_shapes=shapes, verbose=False, **kwargs,
        )  # fmt: skip
    program.save(str(path), external_data=external_data)


def _takes_only_var_positional(module: torch.nn.Module) -> bool:
    parameters = inspect.signature(module.forward).parameters.values()
    return [p.kind for p in parameters] == [inspect.Parameter.VAR_POSITIONAL]


def record_exporter(path: Path, exporter: str) -> None:
    """Store ``exporter`` in the file's ``metadata_props`` (external data stays untouched)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    kept = [p for p in model.metadata_props if p.key != EXPORTER_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=EXPORTER_KEY, value=exporter)
    onnx.save_model(model, str(path))


def recorded_exporter(path: Path) -> str | None:
    """The exporter :func:`record_exporter` stored in ``path``, if any."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((p.value for p in model.metadata_props if p.key == EXPORTER_KEY), None)
