"""Export a ``torch.nn.Module`` (typically a ``LightningModule``) to TorchScript and ONNX.

Everything here runs on CPU, in eval mode, under ``torch.no_grad()``; the module's device
and training mode are restored afterwards::

    bound = bind_example(model, input_sample=None)      # from example_input_array
    with export_mode(model):
        io = ForwardIO.of(model, bound)
        names = IONames.resolve(io)
        export_torchscript(model, bound.tensors, out_dir / "model.pt", method="trace", io=io)
        export_onnx(io.export_module(model), bound.tensors, out_dir / "model.onnx", names)

(``bind_example``, ``ForwardIO`` and ``IONames`` are in :mod:`lightning_callbacks.model_io`:
inputs and outputs named after ``forward()``, dict and tuple ones flattened.)

ONNX uses the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) by
default, or the dynamo one (``exporter="dynamo"|"auto"``, see
:mod:`lightning_callbacks.onnx_exporters`), with axis 0 of every input and output dynamic
plus the ``dynamic_axes`` given (see :mod:`lightning_callbacks.dynamic_axes`). The
TorchScript exporter is fast (well under a second for small models), writes a single
self-contained file below 2 GiB (Triton's ``onnxruntime`` backend serves exactly that one
file) and handles ``ScriptModule`` inputs, so ``torchscript_method="script"`` also yields ONNX
``If``/``Loop`` nodes for data-dependent control flow. The example batch is widened to at least 2 rows so the exporter cannot
specialise the batch dimension, and :func:`check_dynamic_batch` rejects any graph whose axis 0
came out fixed anyway (and every other declared dynamic axis).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Iterator, Literal, Mapping, get_args

import torch
from lightning_utilities.core.rank_zero import rank_zero_warn

from lightning_callbacks.dynamic_axes import DynamicAxes, resolve_dynamic_axes
from lightning_callbacks.model_io import Example, ForwardIO, IONames, flatten_outputs, take_rows
from lightning_callbacks.onnx_exporters import OnnxExporter, record_exporter, run_exporter

logger = logging.getLogger(__name__)

Format = Literal["torchscript", "onnx"]
TorchscriptMethod = Literal["trace", "script"]
FORMATS: tuple[str, ...] = get_args(Format)
TORCHSCRIPT_METHODS: tuple[str, ...] = get_args(TorchscriptMethod)

TORCHSCRIPT_FILE = "model.pt"
ONNX_FILE = "model.onnx"
ONNX_EXTERNAL_DATA_FILE = "model.onnx.data"
#: Protobuf cannot serialise a message of 2 GiB or more: larger ONNX models keep their
#: weights in ``ONNX_EXTERNAL_DATA_FILE`` next to ``model.onnx``.
EXTERNAL_DATA_THRESHOLD_BYTES = 2 * 1024**3
#: Exporting with a batch of at least this size keeps the exporter from specialising axis 0.
MIN_EXPORT_BATCH = 2


class ExportError(RuntimeError):
    """An export, its verification or its logging failed. Base class of this package's errors."""


@contextlib.contextmanager
def export_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Move ``module`` to CPU in eval mode under ``torch.no_grad()``; restore both on exit."""
    training = module.training
    device = _module_device(module)
    module.to("cpu")
    module.eval()
    try:
        with torch.no_grad(), _lightning_jit_context(module):
            yield module
    finally:
        module.train(training)
        if device is not None:
            module.to(device)


def _module_device(module: torch.nn.Module) -> torch.device | None:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return None


def _lightning_jit_context(module: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Lightning's guard that hides trainer-bound properties from TorchScript, when needed.

    A LightningModule not attached to a Trainer raises from its ``trainer`` property, which
    ``torch.jit.script`` probes. Inside fit the module is attached and nothing is needed; for
    a detached module the guard of the module's own package (``lightning.pytorch`` or
    ``pytorch_lightning``) is used. It is Lightning's only way to script a detached module
    and is private, so a release that drops it falls back to a no-op (scripting a detached
    module then fails with a clear error; tracing and ONNX do not need it).
    """
    try:
        module.trainer  # noqa: B018 - the property raises when detached
        return contextlib.nullcontext()
    except (AttributeError, RuntimeError):
        pass
    for klass in type(module).__mro__:
        if klass.__name__ == "LightningModule" and klass.__module__.endswith("core.module"):
            guard = getattr(sys.modules[klass.__module__], "_jit_is_scripting", None)
            if guard is not None:
                return guard()
    return contextlib.nullcontext()


def widen_batch(example: Example, min_batch: int = MIN_EXPORT_BATCH) -> Example:
    """``example`` with at least ``min_batch`` rows, so exporters keep axis 0 dynamic."""
    if example[0].shape[0] >= min_batch:
        return example
    return take_rows(example, min_batch)


def to_torchscript(
    module: torch.nn.Module,
    example: Example,
    method: TorchscriptMethod = "trace",
    io: ForwardIO | None = None,
) -> torch.jit.ScriptModule:
    """Compile ``module`` with ``torch.jit.trace`` or ``torch.jit.script``.

    Call inside :func:`export_mode`. ``LightningModule.to_torchscript`` is not used: it is
    deprecated since Lightning 2.6.1. When ``io`` says ``forward()`` takes keywords or returns
    a dict or list, the result is a trace of :class:`~lightning_callbacks.model_io.FlatForward`
    around the module (around the scripted module for ``"script"``, whose control flow the
    trace keeps): positional tensors in, a tuple out, as Triton's libtorch backend calls it.

    Raises:
        ExportError: if tracing or scripting fails; a tracing failure suggests
            ``torchscript_method="script"``.
    """
    name = type(module).__name__
    if method == "trace":
        return _trace(io.export_module(module) if io else module, example, name)
    try:
        scripted = torch.jit.script(module)
    except Exception as err:
        raise ExportError(
            f"torch.jit.script failed on {name}: {err}\nHINT: scripting "
            "needs type-annotated, TorchScript-compatible Python; if forward has no "
            'data-dependent control flow, use torchscript_method="trace".'
        ) from err
    if io is None or not io.needs_adapter:
        return scripted
    keyword_only = [a.name for a in scripted.forward.schema.arguments if a.kwarg_only]
    if keyword_only:  # torch.jit.trace cannot pass them to a scripted forward
        raise ExportError(
            f"{name}.forward takes keyword-only argument(s) {keyword_only}, which a traced "
            "wrapper cannot pass to the scripted module. HINT: declare them before any `*` "
            'in forward\'s parameters, or use torchscript_method="trace".'
        )
    return _trace(io.flat(scripted), example, name)


def _trace(module: torch.nn.Module, example: Example, name: str) -> torch.jit.ScriptModule:
    example = widen_batch(example)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        try:
            traced = torch.jit.trace(module, example)
        except Exception as err:
            raise ExportError(
                f"torch.jit.trace failed on {name}: "
                f"{_first_lines(str(err))}\nHINT: forward probably has data-dependent "
                "control flow or Python-side state, which tracing cannot record. Use "
                'torchscript_method="script" (torch.jit.script) instead.'
            ) from err
    _report_tracer_warnings(caught, name)
    return traced


def _first_lines(text: str, count: int = 6) -> str:
    lines = text.strip().splitlines()
    return "\n".join(lines[:count] + (["..."] if len(lines) > count else []))


def _report_tracer_warnings(caught: list[warnings.WarningMessage], name: str) -> None:
    data_dependent = False
    for w in caught:
        logger.debug("tracing %s: %s", name, w.message)
        if issubclass(w.category, torch.jit.TracerWarning) and "Python boolean" in str(w.message):
            data_dependent = True
    if data_dependent:
        rank_zero_warn(
            f"Tracing {name} converted a tensor to a Python boolean: the trace keeps only the "
            "branch taken by the example input. Verification will compare it with eager on "
            'other inputs; consider torchscript_method="script".',
            category=RuntimeWarning,
        )


def export_torchscript(
    module: torch.nn.Module,
    example: Example,
    path: Path,
    method: TorchscriptMethod = "trace",
    io: ForwardIO | None = None,
) -> tuple[Path, torch.jit.ScriptModule]:
    """Compile ``module`` (see :func:`to_torchscript`) and ``torch.jit.save`` it to ``path``.

    Returns:
        The path written and the compiled module.
    """
    start = time.perf_counter()
    compiled = to_torchscript(module, example, method, io)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(compiled, str(path))
    logger.info(
        "exported TorchScript (%s) to %s in %.2fs", method, path, time.perf_counter() - start
    )
    return path, compiled


def export_onnx(
    module: torch.nn.Module | torch.jit.ScriptModule,
    example: Example,
    path: Path,
    names: IONames,
    opset: int | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    exporter: OnnxExporter = "torchscript",
) -> Path:
    """Export to ONNX with dynamic axes (axis 0 of every tensor, plus the ones given), check it.

    Uses the TorchScript-based exporter (``dynamo=False``, see the module docstring) on a batch
    of at least :data:`MIN_EXPORT_BATCH` rows. Models of 2 GiB or more are re-saved with
    their weights in ``model.onnx.data`` next to ``path``.

    Args:
        module: the eager module, or a ``ScriptModule`` to keep scripted control flow.
        example: example inputs, batch first.
        path: the ``.onnx`` file to write.
        names: input/output names; they become the ONNX graph's names.
        opset: ONNX opset; None lets torch choose its default.
        dynamic_axes: ``{tensor: {axis: name}}`` beyond axis 0 (see
            :func:`resolve_dynamic_axes`); None keeps only the batch axis dynamic.
        exporter: ``torchscript``, ``dynamo`` or ``auto`` (see
            :mod:`lightning_callbacks.onnx_exporters`); the one used is recorded in the
            file's ``metadata_props``.

    Raises:
        ModuleNotFoundError: if ``onnx`` is not installed.
        ExportError: if the exporter fails or a declared axis is fixed in the result.
    """
    try:
        import onnx  # noqa: F401 - checked before exporting
    except ImportError as err:  # pragma: no cover - onnx is a hard dependency
        raise ModuleNotFoundError(
            "ONNX export needs the `onnx` package: pip install 'mlflow-triton[lightning]'."
        ) from err
    start = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    wide = widen_batch(example)
    axes = resolve_dynamic_axes(names, wide, flatten_outputs(module(*wide)), dynamic_axes)
    big = sum(p.numel() * p.element_size() for p in module.parameters()) >= EXTERNAL_DATA_THRESHOLD_BYTES
    try:
        used, _ = run_exporter(
            module, wide, path, names.inputs, names.outputs, axes, opset, exporter, external_data=big
        )
    except Exception as err:
        raise ExportError(
            f"torch.onnx.export ({exporter}) failed for {type(module).__name__}: "
            f"{_first_lines(str(err))}"
        ) from err
    if _onnx_size(path) >= EXTERNAL_DATA_THRESHOLD_BYTES:
        _move_weights_out(path)
    record_exporter(path, used)
    check_dynamic_batch(path, names, axes)
    logger.info(
        "exported ONNX with the %s exporter (opset %s) to %s in %.2fs",
        used, opset or "default", path, time.perf_counter() - start,
    )  # fmt: skip
    return path


def _move_weights_out(path: Path) -> None:
    """Re-save ``path`` with every tensor in :data:`ONNX_EXTERNAL_DATA_FILE` beside it."""
    import onnx

    model = onnx.load(str(path))
    for stale in _external_files(path):
        stale.unlink()
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
        location=ONNX_EXTERNAL_DATA_FILE, size_threshold=0,
    )  # fmt: skip


def _external_files(path: Path) -> list[Path]:
    """Files next to ``path`` that the ONNX model references as external data."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    tensors = list(graph.initializer)
    tensors += [a.t for node in graph.node for a in node.attribute if a.HasField("t")]
    found = set()
    for tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    found.add(path.parent / entry.value)
    return sorted(found)


def _onnx_size(path: Path) -> int:
    return path.stat().st_size + sum(f.stat().st_size for f in _external_files(path))


def onnx_uses_external_data(path: Path) -> bool:
    """Whether the ONNX model at ``path`` keeps weights outside the ``.onnx`` file."""
    return bool(_external_files(path))


def check_batch_first(module: torch.nn.Module, example: Example, names: IONames) -> None:
    """Raise unless every output of ``module`` has the inputs' batch size on axis 0.

    Exports declare axis 0 of every output as the batch axis (Triton batches along it), so a
    model that reduces over the batch cannot be served that way. Call inside :func:`export_mode`.

    Raises:
        ExportError: naming each output whose axis 0 does not follow the batch.
    """
    batch = widen_batch(example, MIN_EXPORT_BATCH + 1)
    size = batch[0].shape[0]
    outputs = flatten_outputs(module(*batch))
    wrong = [
        f"{name!r} has shape {tuple(t.shape)}"
        for name, t in zip(names.outputs, outputs, strict=True)
        if t.dim() == 0 or t.shape[0] != size
    ]
    if wrong:
        raise ExportError(
            f"For a batch of {size} inputs, output {'; '.join(wrong)}: every output must be "
            "batch-first with one row per input row (no reductions over the batch)."
        )


def check_dynamic_batch(path: Path, names: IONames, dynamic_axes: DynamicAxes | None = None) -> None:
    """Raise unless axis 0, and every other axis in ``dynamic_axes``, is symbolic in ``path``.

    Args:
        path: the ONNX file.
        names: the graph's expected input and output names.
        dynamic_axes: declared dynamic axes by tensor name (axis 0 is always checked).

    Raises:
        ExportError: naming each tensor whose declared dynamic axis is fixed, with the names
            the graph has.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    found = {v.name: v for v in (*graph.input, *graph.output)}
    problems = []
    for name in (*names.inputs, *names.outputs):
        value = found.get(name)
        if value is None:
            problems.append(f"{name!r} is missing (graph has {sorted(found)})")
            continue
        if not value.type.tensor_type.HasField("shape"):
            continue  # unknown rank: nothing is specialised
        dims = value.type.tensor_type.shape.dim
        if not dims:
            problems.append(f"{name!r} is a scalar (no batch axis)")
        elif dims[0].HasField("dim_value"):
            problems.append(f"{name!r} has a fixed axis 0 of size {dims[0].dim_value}")
        for axis in sorted((dynamic_axes or {}).get(name, {})):
            if 0 < axis < len(dims) and dims[axis].HasField("dim_value"):
                problems.append(
                    f"{name!r} has a fixed axis {axis} of size {dims[axis].dim_value}, declared "
                    "dynamic (the exporter specialised it: shape-dependent Python code in "
                    "forward, or an example of size 1 on that axis)"
                )
    if problems:
        raise ExportError(
            f"The ONNX graph in {path} cannot serve variable batch sizes: "
            + "; ".join(problems)
            + ". Every input and output must be batch-first with the batch on axis 0; make "
            "forward return per-sample tensors (no reductions over the batch)."
        )
