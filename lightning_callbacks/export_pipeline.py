"""One export: from a module and a checkpoint to verified files and what to upload.

The callback's export steps, without Lightning hooks or MLflow::

    settings = ExportSettings(formats=("torchscript", "onnx"), dynamic_axes={"tokens": {1: "seq"}})
    pending = export_and_verify(settings, model, "best.ckpt", Path("exports/best"))
    pending.paths, pending.names, pending.verification, pending.golden

1. the example input is bound to ``forward()``'s parameters and ``forward()`` is run once to
   see what it returns (:mod:`lightning_callbacks.model_io`): that gives the default tensor
   names and whether the exports need :class:`~lightning_callbacks.model_io.FlatForward`
   (keyword inputs, dict or list outputs);
2. the checkpoint's weights are loaded; the dynamic axes are resolved (output axes that
   follow a dynamic input axis included, :mod:`lightning_callbacks.dynamic_axes`); the
   module is exported in ``precision`` (:mod:`lightning_callbacks.export`);
3. each file is loaded back and compared with the fp32 eager module
   (:mod:`lightning_callbacks.verify`), and the golden outputs and input example are computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from lightning_callbacks.checkpoint_weights import numpy_dtype, to_numpy, weights_from
from lightning_callbacks.dynamic_axes import DynamicAxes, infer_output_axes, resolve_dynamic_axes
from lightning_callbacks.export import (
    ONNX_FILE,
    TORCHSCRIPT_FILE,
    Format,
    TorchscriptMethod,
    check_batch_first,
    export_mode,
    export_onnx,
    export_torchscript,
    to_torchscript,
)
from lightning_callbacks.log import INPUT_EXAMPLE_ROWS
from lightning_callbacks.model_io import (
    BoundExample,
    Example,
    ForwardIO,
    IONames,
    flatten_outputs,
    take_rows,
)
from lightning_callbacks.onnx_exporters import OnnxExporter
from lightning_callbacks.precision import Precision, cast_inputs, reduced_precision
from lightning_callbacks.upload import PendingUpload
from lightning_callbacks.verify import run_eager, verification_batches, verify_exports
from mlflow_triton.core.golden import GoldenCases


@dataclass(frozen=True)
class ExportSettings:
    """What to export and how to verify it (the callback's arguments of the same names)."""

    formats: tuple[Format, ...] = ("torchscript", "onnx")
    rtol: float = 1e-3
    atol: float = 1e-5
    precision: Precision = "fp32"
    torchscript_method: TorchscriptMethod = "trace"
    opset: int | None = None
    verify_batch_size: int = 7
    input_names: tuple[str, ...] | None = None
    output_names: tuple[str, ...] | None = None
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None
    onnx_exporter: OnnxExporter = "torchscript"

    @property
    def batch_sizes(self) -> tuple[int, int]:
        return (1, self.verify_batch_size)


def export_and_verify(
    settings: ExportSettings,
    module: torch.nn.Module,
    bound: BoundExample,
    checkpoint_path: str | None,
    directory: Path,
) -> PendingUpload:
    """Export ``module`` with ``checkpoint_path``'s weights into ``directory``; verify the files.

    Args:
        settings: formats, precision, names, tolerances...
        module: the model; its weights, device and training mode are restored afterwards.
        bound: the example input (see :func:`~lightning_callbacks.model_io.bind_example`).
        checkpoint_path: a Lightning checkpoint, or None for the current weights.
        directory: where the files go.

    Returns:
        The files, names, verification results, golden outputs and input example; the
        caller adds where it goes (run, registered name).

    Raises:
        ValueError: for names or dynamic axes that do not fit the model.
        ExportError: when an export fails or an output is not batch-first.
    """
    with weights_from(module, checkpoint_path), export_mode(module):
        io = ForwardIO.of(module, bound)
        names = IONames.resolve(io, settings.input_names, settings.output_names)
        flat = io.flat(module)
        check_batch_first(flat, bound.tensors, names)
        outputs = flatten_outputs(flat(*bound.tensors))
        axes = resolve_dynamic_axes(names, bound.tensors, outputs, settings.dynamic_axes)
        axes = output_axes(flat, bound.tensors, names, axes, settings)
        low = cast_inputs(bound.tensors, settings.precision)
        with reduced_precision(module, settings.precision):
            paths = export_files(settings, module, io, low, names, directory, axes)
        verification = verify_exports(
            flat, paths, low, names, rtol=settings.rtol, atol=settings.atol,
            batch_sizes=settings.batch_sizes, dynamic_axes=axes, reference=flat,
        )  # fmt: skip
        golden = golden_cases(flat, low, names, axes, settings)
        inputs, expected = input_example(flat, low, settings.precision)
    return PendingUpload(
        paths=paths, names=names, inputs=inputs, outputs=expected, dynamic_axes=axes,
        golden=golden, verification=verification, checkpoint_path=checkpoint_path,
    )  # fmt: skip


def output_axes(
    flat: torch.nn.Module,
    example: Example,
    names: IONames,
    axes: DynamicAxes,
    settings: ExportSettings,
) -> DynamicAxes:
    """``axes`` plus the output axes that follow a dynamic input axis (see
    :func:`~lightning_callbacks.dynamic_axes.infer_output_axes`), found on the verification
    inputs: batch 1 at the example's sizes, the larger batch at other sizes."""
    input_axes = [axes[name] for name in names.inputs]
    if not any(axis > 0 for found in input_axes for axis in found):
        return axes
    batches = verification_batches(example, settings.batch_sizes, input_axes=input_axes)
    runs = [(batch, flatten_outputs(flat(*batch))) for batch in batches.values()]
    return infer_output_axes(names, axes, runs[0], runs[-1])


def export_files(
    settings: ExportSettings,
    module: torch.nn.Module,
    io: ForwardIO,
    example: Example,
    names: IONames,
    directory: Path,
    axes: DynamicAxes,
) -> dict[str, Path]:
    """Write ``settings.formats`` into ``directory``; with ``"script"``, ONNX is exported from
    the scripted module so that it keeps the data-dependent control flow."""
    paths: dict[str, Path] = {}
    onnx_source: torch.nn.Module = io.export_module(module)
    method = settings.torchscript_method
    if "torchscript" in settings.formats:
        paths["torchscript"], compiled = export_torchscript(
            module, example, directory / TORCHSCRIPT_FILE, method, io
        )
        if method == "script":
            onnx_source = compiled
    elif method == "script":
        onnx_source = to_torchscript(module, example, "script", io)
    if "onnx" in settings.formats:
        paths["onnx"] = export_onnx(
            onnx_source, example, directory / ONNX_FILE, names, opset=settings.opset,
            dynamic_axes=axes, exporter=settings.onnx_exporter,
        )  # fmt: skip
    return paths


def golden_cases(
    flat: torch.nn.Module,
    example: Example,
    names: IONames,
    axes: DynamicAxes,
    settings: ExportSettings,
) -> GoldenCases:
    """The verification inputs (in the export's precision) and fp32 eager outputs, by name."""
    input_axes = [axes.get(name, {}) for name in names.inputs]
    batches = verification_batches(example, settings.batch_sizes, input_axes=input_axes)
    inputs, outputs = [], []
    for batch in batches.values():
        expected = run_eager(flat, cast_inputs(batch, "fp32"))
        inputs.append({n: to_numpy(t) for n, t in zip(names.inputs, batch, strict=True)})
        outputs.append(dict(zip(names.outputs, expected, strict=True)))
    return GoldenCases(inputs, outputs, rtol=settings.rtol, atol=settings.atol)


def input_example(
    flat: torch.nn.Module, example: Example, precision: str
) -> tuple[list[Any], list[Any]]:
    """Up to :data:`INPUT_EXAMPLE_ROWS` rows of the example (export precision) and their fp32
    eager outputs cast to the export's floating-point dtype, for the MLflow signature."""
    sample = take_rows(example, min(example[0].shape[0], INPUT_EXAMPLE_ROWS))
    outputs = [
        y.astype(numpy_dtype(precision)) if y.dtype.kind == "f" else y
        for y in run_eager(flat, cast_inputs(sample, "fp32"))
    ]
    return [to_numpy(t) for t in sample], outputs

