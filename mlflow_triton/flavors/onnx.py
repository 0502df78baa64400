"""The ``onnx`` flavor: one ONNX file (and its external data), served by Triton's onnxruntime
backend.

Tensors always come from the graph, read without its weights (:mod:`.onnx_graph`): from the
artifact with ranged reads when the repository can copy it server-side, from a local file in
place, or from the uploaded copy when the artifact is streamed. The graph's names are Triton's;
the MLflow signature's names (when it names every tensor) are what ``predict`` uses. External
data files the graph names must be in the MLflow model beside ``model.onnx``::

    plan = ONNX.plan(source, settings, workdir)      # files: [model.onnx]; io read by inspect
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Mapping, Sequence

import numpy as np
from mlflow.exceptions import MlflowException

from mlflow_triton.flavors.base import Inspection, PlanSettings, PublishPlan, SourceFile
from mlflow_triton.flavors.onnx_graph import OnnxGraphSummary, onnx_graph_summary, source_label
from mlflow_triton.triton_config.model_config import build_model_config
from mlflow_triton.triton_config.tensors import ModelIO, TensorSpec, triton_type

if TYPE_CHECKING:
    from mlflow.models.signature import ModelSignature

    from mlflow_triton.flavors.source import ModelSource

MODEL_FILE = "model.onnx"
BACKEND = "onnxruntime"
#: Files MLflow writes into every model directory (never an ONNX model's external data).
MLFLOW_FILES = frozenset({
    "MLmodel", "conda.yaml", "python_env.yaml", "requirements.txt", "constraints.txt",
    "input_example.json", "serving_input_example.json", "registered_model_meta",
})  # fmt: skip


def io_from_graph(summary: OnnxGraphSummary) -> ModelIO:
    """Names, types and shapes of a graph's inputs and outputs. Inputs that are initializers
    (weights some exporters also list as inputs) are left out; a symbolic (``dim_param``) or
    missing dimension is -1."""
    from onnx.helper import tensor_dtype_to_np_dtype

    def specs(values, kind: str) -> tuple[TensorSpec, ...]:
        result = []
        for value in values:
            if value.name in summary.initializers:
                continue
            where = f"ONNX {kind} {value.name!r}"
            if not isinstance(value.name, str):  # protobuf hands back bytes for invalid UTF-8
                raise MlflowException.invalid_parameter_value(f"{where}: the name is not UTF-8.")
            if value.type.WhichOneof("value") != "tensor_type":
                raise MlflowException.invalid_parameter_value(
                    f"{where} is not a tensor ({value.type.WhichOneof('value') or 'no type'}): "
                    "Triton serves tensors only."
                )
            tensor_type = value.type.tensor_type
            try:
                dtype = tensor_dtype_to_np_dtype(tensor_type.elem_type)
            except (KeyError, ValueError) as err:
                raise MlflowException.invalid_parameter_value(
                    f"{where} has no usable element type (ONNX elem_type {tensor_type.elem_type})."
                ) from err
            shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim)
            result.append(TensorSpec(value.name, triton_type(dtype, where), shape, value.name))
        return tuple(result)

    return ModelIO(specs(summary.inputs, "input"), specs(summary.outputs, "output"))


def io_from_onnx(source: Path | str | BinaryIO) -> ModelIO:
    """The tensors of an ONNX file (a path or a seekable binary reader), weights not read."""
    return io_from_graph(onnx_graph_summary(source))


def external_data(summary: OnnxGraphSummary, label: str) -> list[str]:
    """Files (relative to the model file) holding the graph's external tensor data. Only the
    main graph's initializers are looked at, not tensors inside nodes."""
    for location in summary.external_data:
        if location.startswith("/") or ".." in location.split("/"):
            raise MlflowException.invalid_parameter_value(
                f"{label} references external data outside its folder ({location!r})."
            )
    return list(summary.external_data)


def onnx_external_data(source: Path | str | BinaryIO) -> list[str]:
    """The external data files of an ONNX file (a path or a seekable binary reader)."""
    return external_data(onnx_graph_summary(source), source_label(source))


def with_signature_names(io: ModelIO, signature: "ModelSignature | None") -> ModelIO:
    """Keep the graph's names for Triton, but the MLflow signature's for ``predict`` (when the
    signature is a tensor signature naming every tensor)."""
    if signature is None or signature.inputs is None or not signature.inputs.is_tensor_spec():
        return io

    def rename(specs, schema):
        names = [s.name for s in schema.inputs] if schema is not None else []
        if len(names) != len(specs) or not all(names):
            return specs
        return tuple(TensorSpec(s.name, s.data_type, s.shape, n) for s, n in zip(specs, names, strict=True))

    return ModelIO(rename(io.inputs, signature.inputs), rename(io.outputs, signature.outputs))


class OnnxFlavor:
    """See the module docstring."""

    name = "onnx"
    aliases: tuple[str, ...] = ()
    reference_runtime = "onnxruntime"
    execution_accelerators = True

    def artifact_path(self, flavors: Mapping[str, Mapping]) -> str | None:
        return flavors["onnx"].get("data", MODEL_FILE) if "onnx" in flavors else None

    def plan(self, source: "ModelSource", settings: PlanSettings, workdir: Path) -> PublishPlan:
        return PublishPlan(
            source=source,
            files=[SourceFile(source.artifact_uri, MODEL_FILE)],
            io=None,
            inspect=lambda model_file: self.inspect(source, model_file),
            config=lambda name, version, io, warmup: build_model_config(
                name, io, settings, version, BACKEND, MODEL_FILE, warmup
            ),
            warmup_count=1,
        )

    def inspect(self, source: "ModelSource", model_file: Path | BinaryIO) -> Inspection:
        """The graph's tensors and its external data files, checked to be in the MLflow model."""
        summary = onnx_graph_summary(model_file)
        io = with_signature_names(io_from_graph(summary), source.model.signature)
        needed = external_data(summary, source_label(model_file))
        if needed:
            folder = source.artifact_path.rpartition("/")[0]
            _, files = source.model.list_folder(folder)
            model_name = source.artifact_path.rpartition("/")[2]
            present = {n for n in files if n not in MLFLOW_FILES and n != model_name}
            missing = sorted(set(needed) - present)
            if missing:
                raise MlflowException.invalid_parameter_value(
                    f"{source.model_uri}: {source.artifact_path} references external data {missing} "
                    "that is not in the MLflow model. Log the model with its .data files (mlflow.onnx "
                    "writes them next to model.onnx) or with save_as_external_data=False."
                )
        return Inspection(io, tuple(SourceFile(source.sibling_uri(n), n) for n in needed))

    def run_reference(
        self, model_file: Path, inputs: Sequence[tuple[str, np.ndarray]], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
        return dict(zip(outputs, session.run(list(outputs), dict(inputs)), strict=True))


ONNX = OnnxFlavor()
