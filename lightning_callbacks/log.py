"""Log verified exports to MLflow as ONE model holding both the ONNX and the TorchScript flavor.

One ``MLmodel`` carries:

* the ``onnx`` flavor: ``model.onnx`` at the model root, written by ``mlflow.onnx.save_model``;
  it also provides the ``python_function`` flavor;
* the ``pytorch`` flavor: ``data/model.pth``, the TorchScript archive, written by
  ``mlflow.pytorch.save_model(..., serialization_format="pickle")`` (the default ``pt2``
  format refuses ``ScriptModule``);
* the ``signature`` (tensor names equal to the ONNX graph's input/output names) and an input
  example.

So one registered version serves both ``mlflow.onnx.load_model(uri)`` and
``mlflow.pytorch.load_model(uri)``, and the Triton deployment plugin can pick either flavor::

    # using_tracking_uri and resolved_run: lightning_callbacks.mlflow_run
    with using_tracking_uri(uri), resolved_run(None, run_name="export") as (run_id, _):
        info = log_model(paths, names, inputs, outputs, run_id, artifact_name="model",
                         registered_model_name="fraud", alias="champion")
    info.model_uri            # models:/m-...
    info.registered_version   # ModelVersion, or None
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from lightning_callbacks.export import ONNX_EXTERNAL_DATA_FILE, ExportError, onnx_uses_external_data
from lightning_callbacks.model_io import IONames
from mlflow_triton.core.golden import GOLDEN_DIR, GoldenCases

logger = logging.getLogger(__name__)

#: Rows of the example input saved as the MLflow input example.
INPUT_EXAMPLE_ROWS = 5


class ExportLoggingError(ExportError):
    """Logging to MLflow failed; the exported files are still on disk.

    Attributes:
        paths: the exported files, by format.
    """

    def __init__(self, message: str, paths: Mapping[str, Path]) -> None:
        self.paths = dict(paths)
        kept = ", ".join(f"{fmt}: {path}" for fmt, path in self.paths.items()) or "none"
        super().__init__(f"{message}\nThe verified exports are kept on disk ({kept}).")


@dataclass
class LoggedExport:
    """What :func:`log_model` produced.

    Attributes:
        model_uri: ``models:/<model_id>`` of the logged model.
        run_id: the run it was logged to.
        registered_version: the registry version, when a name was given.
        artifact_name: the logged model's name.
        timings: seconds spent logging (``log``) and registering (``register``).
    """

    model_uri: str
    run_id: str
    registered_version: Any = None
    artifact_name: str = "model"
    timings: dict[str, float] = field(default_factory=dict)


def pip_requirements(formats: Sequence[str]) -> list[str]:
    """One requirement list for every flavor in the model (MLflow adds ``mlflow`` itself)."""
    import mlflow.onnx
    import mlflow.pytorch

    reqs: set[str] = set()
    if "onnx" in formats:
        reqs.update(mlflow.onnx.get_default_pip_requirements())
    if "torchscript" in formats:
        reqs.update(mlflow.pytorch.get_default_pip_requirements())
    return sorted(reqs)


def pyfunc_takes_example(paths: Mapping[str, Path], names: IONames) -> bool:
    """Whether the model's ``python_function`` flavor can predict its own input example.

    With ONNX it is onnxruntime's, which takes and returns tensors by name. Without ONNX it is
    ``mlflow.pytorch``'s, which takes one array and returns one tensor: MLflow's check of the
    input example would only log a warning for other models, so it is skipped for them (Triton
    serves them by name all the same).
    """
    return "onnx" in paths or (len(names.inputs) == 1 and len(names.outputs) == 1)


def build_signature(
    names: IONames,
    inputs: Sequence[np.ndarray],
    outputs: Sequence[np.ndarray],
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
) -> tuple[Any, dict[str, np.ndarray]]:
    """The MLflow signature (dynamic axes -1, tensor names = ONNX names) and input example.

    The deployment plugin turns every ``-1`` into a variable dimension of Triton's config, so
    a sequence axis marked here serves any length.

    Args:
        names: input and output names.
        inputs: example inputs, batch first.
        outputs: eager outputs for ``inputs``.
        dynamic_axes: ``{tensor name: {axis: symbol}}``; axis 0 is always dynamic.

    Returns:
        ``(signature, input_example)``; the input example is a dict keyed by input name.
    """
    from mlflow.models import infer_signature
    from mlflow.types.schema import Schema, TensorSpec

    example = {name: np.ascontiguousarray(x) for name, x in zip(names.inputs, inputs, strict=True)}
    signature = infer_signature(example, dict(zip(names.outputs, outputs, strict=True)))

    axes = dynamic_axes or {}

    def batch_dynamic(schema: Schema) -> Schema:
        def shape(spec: TensorSpec) -> tuple[int, ...]:
            dynamic = {0, *axes.get(spec.name, {})}
            return tuple(-1 if i in dynamic else d for i, d in enumerate(spec.shape))

        return Schema([TensorSpec(spec.type, shape(spec), spec.name) for spec in schema.inputs])

    # infer_signature already marks axis 0 as -1 for tensors; make that explicit and robust.
    signature.inputs = batch_dynamic(signature.inputs)
    signature.outputs = batch_dynamic(signature.outputs)
    return signature, example


class _DropRecords(logging.Filter):
    """Drops log records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


@contextlib.contextmanager
def _quiet_pickle_warning() -> Iterator[None]:
    """Hide mlflow.pytorch's pickle warning: a TorchScript archive is not an eager pickle."""
    target = logging.getLogger("mlflow.pytorch")
    drop = _DropRecords("Saving pytorch model by Pickle")
    target.addFilter(drop)
    try:
        yield
    finally:
        target.removeFilter(drop)


class _DualFlavor:
    """Flavor object for ``mlflow.models.Model.log``: ONNX + TorchScript in one model dir."""

    __name__ = "onnx"  # reported as the logged model's flavor; pyfunc loads the ONNX file

    def save_model(
        self,
        path: str,
        mlflow_model: Any,
        *,
        paths: Mapping[str, Path],
        signature: Any,
        input_example: Any,
        requirements: list[str],
        golden: GoldenCases | None = None,
        **kwargs: Any,
    ) -> None:
        self._save(path, mlflow_model, paths, signature, input_example, requirements)
        if golden is not None:
            golden.save(Path(path) / GOLDEN_DIR)

    def _save(
        self,
        path: str,
        mlflow_model: Any,
        paths: Mapping[str, Path],
        signature: Any,
        input_example: Any,
        requirements: list[str],
    ) -> None:
        import mlflow.onnx
        import onnx
        import torch

        if "onnx" in paths:
            external = onnx_uses_external_data(paths["onnx"])
            extra = {"location": ONNX_EXTERNAL_DATA_FILE} if external else {}
            mlflow.onnx.save_model(
                onnx.load(str(paths["onnx"])), path, mlflow_model=mlflow_model,
                signature=signature, input_example=input_example,
                pip_requirements=requirements, save_as_external_data=external, **extra,
            )  # fmt: skip
        if "torchscript" not in paths:
            return
        scripted = torch.jit.load(str(paths["torchscript"]), map_location="cpu")
        with _quiet_pickle_warning():
            self._save_torchscript(path, mlflow_model, scripted, "onnx" in paths, signature,
                                   input_example, requirements)  # fmt: skip

    @staticmethod
    def _save_torchscript(
        path: str,
        mlflow_model: Any,
        scripted: Any,
        next_to_onnx: bool,
        signature: Any,
        input_example: Any,
        requirements: list[str],
    ) -> None:
        import mlflow.pytorch
        from mlflow.models import Model

        if not next_to_onnx:
            if isinstance(input_example, dict) and len(input_example) == 1:
                # the pytorch pyfunc takes arrays, not dicts; one named tensor still matches
                input_example = next(iter(input_example.values()))
            mlflow.pytorch.save_model(
                scripted, path, mlflow_model=mlflow_model, signature=signature,
                input_example=input_example, pip_requirements=requirements,
                serialization_format="pickle",
            )  # fmt: skip
            return
        with tempfile.TemporaryDirectory(prefix="export-best-pytorch-") as tmp:
            staging = Path(tmp) / "model"
            mlflow.pytorch.save_model(
                scripted, str(staging), pip_requirements=requirements,
                serialization_format="pickle",
            )  # fmt: skip
            flavor = dict(Model.load(str(staging)).flavors["pytorch"])
            target = Path(path) / flavor["model_data"]
            if target.exists():
                raise ExportError(f"{target} already exists in the ONNX model directory")
            shutil.move(str(staging / flavor["model_data"]), str(target))
        mlflow_model.add_flavor("pytorch", **flavor)
        mlflow_model.model_size_bytes = sum(
            f.stat().st_size for f in Path(path).rglob("*") if f.is_file()
        )
        mlflow_model.save(str(Path(path) / "MLmodel"))


def log_model(
    paths: Mapping[str, Path],
    names: IONames,
    inputs: Sequence[np.ndarray],
    outputs: Sequence[np.ndarray],
    run_id: str,
    artifact_name: str = "model",
    registered_model_name: str | None = None,
    alias: str | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    metadata: Mapping[str, Any] | None = None,
    golden: GoldenCases | None = None,
) -> LoggedExport:
    """Log ``paths`` as one MLflow model to ``run_id``; register it and set ``alias``.

    Call inside :func:`using_tracking_uri` when the run lives on a non-default server.

    Args:
        paths: exported files by format (``onnx`` and/or ``torchscript``).
        names: tensor names for the signature (the ONNX graph's names).
        inputs: example inputs (numpy, batch first) for the signature and input example.
        outputs: eager outputs for ``inputs``.
        run_id: the run to log to.
        artifact_name: the logged model's name.
        registered_model_name: register a version under this name when given.
        alias: registry alias to point at the new version (needs ``registered_model_name``).
        dynamic_axes: ``{tensor name: {axis: symbol}}`` marked ``-1`` in the signature.
        metadata: the MLmodel's ``metadata`` (e.g. which ONNX exporter and opset).
        golden: verification inputs and eager outputs, written to ``golden/`` in the model
            directory (see :mod:`mlflow_triton.core.golden`).

    Returns:
        The model URI, run and registered version.
    """
    from mlflow.models import Model

    start = time.perf_counter()
    rows = [x[:INPUT_EXAMPLE_ROWS] for x in inputs]
    signature, input_example = build_signature(
        names, rows, [y[:INPUT_EXAMPLE_ROWS] for y in outputs], dynamic_axes
    )
    info = Model.log(
        artifact_path=None, name=artifact_name, flavor=_DualFlavor(), run_id=run_id,
        registered_model_name=registered_model_name, paths=paths, signature=signature,
        input_example=input_example, requirements=pip_requirements(list(paths)),
        metadata=dict(metadata) if metadata else None, golden=golden,
        validate_serving_input=pyfunc_takes_example(paths, names),
    )  # fmt: skip
    logged = LoggedExport(model_uri=info.model_uri, run_id=run_id, artifact_name=artifact_name)
    logged.timings["log"] = time.perf_counter() - start
    logger.info(
        "logged MLflow model %r (%s) with flavors %s to run %s in %.2fs",
        artifact_name, info.model_uri, sorted(info.flavors), run_id, logged.timings["log"],
    )  # fmt: skip
    if registered_model_name is not None:
        _set_alias(logged, registered_model_name, str(info.registered_model_version), alias)
    return logged


def _set_alias(logged: LoggedExport, name: str, version: str, alias: str | None) -> None:
    """Point ``alias`` at the version ``Model.log`` registered; keep the version in ``logged``."""
    from mlflow import MlflowClient

    start = time.perf_counter()
    client = MlflowClient()
    if alias:
        client.set_registered_model_alias(name, alias, version)
    logged.registered_version = client.get_model_version(name, version)
    logged.timings["register"] = time.perf_counter() - start
    logger.info(
        "registered %s version %s%s in %.2fs",
        name, version, f" with alias @{alias}" if alias else "", logged.timings["register"],
    )  # fmt: skip
