"""Build Triton's ``config.pbtxt`` as a ``ModelConfig`` protobuf message.

Tensor specs come from the model itself (the ONNX graph, read without its weights by
:mod:`mlflow_triton.flavors.onnx_graph`) or from its MLflow
signature (TorchScript). The batch axis becomes ``max_batch_size``; ``dynamic_batching``,
``instance_group`` and a ``version_policy`` pinning the serving version are generated::

    io = io_from_onnx(Path("model.onnx"))   # or a seekable reader (store.open_uri(uri))
    message = build_model_config("fraud", "onnx", io, DeploymentConfig(), version=3)
    text = to_pbtxt(message)          # what goes to <repo>/fraud/config.pbtxt
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Mapping

import numpy as np
from google.protobuf import text_format
from mlflow.exceptions import MlflowException
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

from mlflow_triton.triton_config.acceleration import apply_acceleration, check_generated
from mlflow_triton.settings.deployment import DeploymentConfig
from mlflow_triton.triton_config.override import merge_override, parse_override
from mlflow_triton.flavors.onnx_graph import OnnxGraphSummary, onnx_graph_summary, source_label

__all__ = [  # OnnxGraphSummary / onnx_graph_summary are re-exported: io_from_onnx's building block
    "ModelIO", "OnnxGraphSummary", "TensorSpec", "as_arrays", "build_model_config", "io_from_onnx",
    "io_from_signature", "onnx_external_data", "onnx_graph_summary", "parse_pbtxt", "pin_version",
    "serving_versions", "tensor_names", "to_pbtxt", "triton_type", "with_signature_names",
    "provenance_entry",
]  # fmt: skip

if TYPE_CHECKING:
    from mlflow.models.signature import ModelSignature

    from mlflow_triton.triton_config.warmup import WarmupPlan

BACKENDS = {"onnx": "onnxruntime", "torchscript": "pytorch", "python_function": "python"}
MODEL_FILENAMES = {"onnx": "model.onnx", "torchscript": "model.pt", "python_function": "model.py"}
INSTANCE_KINDS = {"gpu": mc.ModelInstanceGroup.KIND_GPU, "cpu": mc.ModelInstanceGroup.KIND_CPU,
                  "auto": mc.ModelInstanceGroup.KIND_AUTO}  # fmt: skip


def protocol_dtype(config_type: str) -> str:
    """The inference-protocol datatype of a config ``TYPE_*`` (``TYPE_STRING`` -> ``BYTES``)."""
    return "BYTES" if config_type == "TYPE_STRING" else config_type.removeprefix("TYPE_")


def config_dtype(protocol: str) -> str:
    """The config.pbtxt ``TYPE_*`` for a protocol datatype (``BYTES`` -> ``TYPE_STRING``)."""
    return "TYPE_STRING" if protocol == "BYTES" else f"TYPE_{protocol}"


#: Protocol datatype -> numpy type, from ``tritonclient.utils`` for every ``TYPE_*`` of the model
#: config it knows. BF16 is left out (as before): numpy has no bfloat16 (only ``ml_dtypes``) and
#: the backends this plugin generates configs for are not exercised with it.
NUMPY_DTYPES: dict[str, Any] = {
    protocol: triton_to_np_dtype(protocol)
    for protocol in map(protocol_dtype, mc.DataType.keys())
    if protocol != "BF16" and triton_to_np_dtype(protocol) is not None
}
TENSOR_NAMES_PARAMETER = "mlflow_triton.tensor_names"
_TORCH_UNSUPPORTED = {"TYPE_STRING", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64"}


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: Triton name, ``TYPE_*`` data type, full shape (-1 = dynamic).

    ``source_name`` is the name in the MLflow signature (what users send to ``predict``).
    """

    name: str
    data_type: str
    shape: tuple[int, ...]
    source_name: str

    @property
    def triton_dtype(self) -> str:
        """The datatype string of Triton's inference protocol (``FP32``, ``BYTES``...)."""
        return protocol_dtype(self.data_type)


@dataclass(frozen=True)
class ModelIO:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def triton_type(dtype: np.dtype | type | str, where: str) -> str:
    """Triton ``TYPE_*`` for a numpy dtype, or INVALID_PARAMETER_VALUE naming ``where``."""
    try:
        key = np.dtype(dtype)
    except TypeError as err:
        raise MlflowException.invalid_parameter_value(f"{where}: unknown dtype {dtype!r}.") from err
    if key.kind in ("U", "S", "O"):  # any string-like numpy array travels as BYTES
        return "TYPE_STRING"
    protocol = np_to_triton_dtype(key)
    if protocol not in NUMPY_DTYPES:
        supported = sorted({np.dtype(t).name for t in NUMPY_DTYPES.values()} | {"str", "bytes"})
        raise MlflowException.invalid_parameter_value(
            f"{where}: dtype {key} has no Triton equivalent; supported: {', '.join(supported)}."
        )
    return config_dtype(protocol)


def io_from_onnx(source: Path | str | BinaryIO) -> ModelIO:
    """Names, types and shapes of an ONNX model's graph inputs and outputs (weights not read).

    ``source``: a path or a seekable binary reader (see :func:`onnx_graph_summary`). Inputs that
    are initializers (weights some exporters also list as inputs) are left out; a symbolic
    (``dim_param``) or missing dimension is -1.
    """
    from onnx.helper import tensor_dtype_to_np_dtype

    summary = onnx_graph_summary(source)

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
            shape = tuple(
                d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim
            )
            result.append(TensorSpec(value.name, triton_type(dtype, where), shape, value.name))
        return tuple(result)

    return ModelIO(specs(summary.inputs, "input"), specs(summary.outputs, "output"))


def onnx_external_data(source: Path | str | BinaryIO) -> list[str]:
    """Files (relative to the model file) holding an ONNX model's external tensor data.

    ``source``: a path or a seekable binary reader. As before, only the main graph's
    initializers are looked at, not tensors inside nodes (``Constant`` attributes, the
    initializers of ``If``/``Loop`` bodies), which ``onnx.save_model`` can also move out.
    """
    locations = onnx_graph_summary(source).external_data
    for location in locations:
        if location.startswith("/") or ".." in location.split("/"):
            raise MlflowException.invalid_parameter_value(
                f"{source_label(source)} references external data outside its folder "
                f"({location!r})."
            )
    return list(locations)


def with_signature_names(io: ModelIO, signature: "ModelSignature | None") -> ModelIO:
    """Keep the ONNX graph's names for Triton, but the MLflow signature's for ``predict``."""
    if signature is None or signature.inputs is None or not signature.inputs.is_tensor_spec():
        return io

    def rename(specs, schema):
        names = [s.name for s in schema.inputs] if schema is not None else []
        if len(names) != len(specs) or not all(names):
            return specs
        return tuple(TensorSpec(s.name, s.data_type, s.shape, n) for s, n in zip(specs, names))

    return ModelIO(rename(io.inputs, signature.inputs), rename(io.outputs, signature.outputs))


def provenance_entry(spec: TensorSpec) -> dict[str, str]:
    """How provenance records one tensor: MLflow name, Triton name, protocol datatype."""
    return {"mlflow": spec.source_name, "triton": spec.name, "datatype": spec.triton_dtype}


def io_from_signature(signature: "ModelSignature | None", flavor: str) -> ModelIO:
    """Tensor specs from an MLflow signature.

    For TorchScript, Triton's ``pytorch`` backend requires ``INPUT__<i>``/``OUTPUT__<j>``
    names; the MLflow names are kept in ``source_name`` for ``predict``.
    """
    if signature is None or signature.inputs is None or signature.outputs is None:
        raise MlflowException.invalid_parameter_value(
            f"The {flavor} model has no MLflow signature with inputs and outputs, so its tensor "
            "names, types and shapes are unknown. Log it with signature=infer_signature(x, y) or "
            "an input_example."
        )
    torch_names = flavor == "torchscript"

    def specs(schema, kind: str, prefix: str) -> tuple[TensorSpec, ...]:
        result = []
        if not schema.is_tensor_spec():
            columns = schema.inputs
            dtypes = {np.dtype(c.type.to_numpy()) for c in columns}
            if len(dtypes) != 1:
                raise MlflowException.invalid_parameter_value(
                    f"The signature's {kind}s are columns of mixed types {sorted(map(str, dtypes))}:"
                    " log a tensor-based signature (numpy arrays) for Triton."
                )
            name = f"{prefix}__0" if torch_names else kind
            dtype = triton_type(dtypes.pop(), f"signature {kind}")
            return (TensorSpec(name, dtype, (-1, len(columns)), kind),)
        for index, spec in enumerate(schema.inputs):
            source = spec.name or (kind if len(schema.inputs) == 1 else f"{kind}_{index}")
            name = f"{prefix}__{index}" if torch_names else source
            where = f"signature {kind} {source!r}"
            dtype = triton_type(spec.type, where)
            if torch_names and dtype in _TORCH_UNSUPPORTED:
                raise MlflowException.invalid_parameter_value(
                    f"{where}: {dtype} tensors are not supported by Triton's pytorch backend."
                )
            result.append(TensorSpec(name, dtype, tuple(int(d) for d in spec.shape), source))
        return tuple(result)

    return ModelIO(specs(signature.inputs, "input", "INPUT"), specs(signature.outputs, "output", "OUTPUT"))


def _dims(spec: TensorSpec, batched: bool, kind: str) -> list[int]:
    if any(d == 0 or d < -1 for d in spec.shape):
        raise MlflowException.invalid_parameter_value(
            f"{kind} {spec.source_name!r} has shape {list(spec.shape)}: Triton needs every "
            "dimension to be >= 1, or -1 for a variable size. Log the signature from a "
            "non-empty example."
        )
    if not batched:
        if not spec.shape:  # tritonserver: "scalar tensors are not supported" without batching
            raise MlflowException.invalid_parameter_value(
                f"{kind} {spec.source_name!r} is a scalar (shape []), which Triton cannot serve "
                "without batching. Deploy with max_batch_size > 0 and a dynamic batch axis, or "
                "export the tensor with shape [1]."
            )
        return list(spec.shape)
    if not spec.shape or spec.shape[0] != -1:
        raise MlflowException.invalid_parameter_value(
            f"{kind} {spec.source_name!r} has shape {list(spec.shape)} without a dynamic first "
            "(batch) axis, so Triton cannot batch it. Re-export the model with a dynamic batch "
            "axis, or deploy with -C max_batch_size=0."
        )
    return list(spec.shape[1:])


def _add_tensor(tensors, spec: TensorSpec, batched: bool, kind: str) -> None:
    """Add one tensor; a model tensor with no dims left (a scalar per sample) is declared
    ``dims: [1]`` with ``reshape { shape: [] }``, as Triton's model configuration requires."""
    dims = _dims(spec, batched, kind)
    tensor = tensors.add(name=spec.name, data_type=mc.DataType.Value(spec.data_type), dims=dims or [1])
    if not dims:
        tensor.reshape.SetInParent()


def build_model_config(
    name: str, flavor: str, io: ModelIO, config: DeploymentConfig, version: int,
    warmup: "WarmupPlan | None" = None,
) -> mc.ModelConfig:
    """The full Triton ``ModelConfig`` for one published version of ``name``.

    The generated fields, then the GPU options (:mod:`mlflow_triton.triton_config.acceleration`), then
    ``warmup``'s ``model_warmup`` entries, then the user's ``config_override``
    (:mod:`mlflow_triton.triton_config.override`); the result is checked as a whole.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE for a model or option Triton cannot serve.
    """
    if not io.inputs or not io.outputs:
        raise MlflowException.invalid_parameter_value(
            f"Model {name!r} declares no inputs or no outputs; Triton needs both."
        )
    batched = config.max_batch_size > 0
    message = mc.ModelConfig(
        name=name,
        backend=BACKENDS[flavor],
        max_batch_size=config.max_batch_size,
        default_model_filename=MODEL_FILENAMES[flavor],
    )
    for spec in io.inputs:
        _add_tensor(message.input, spec, batched, "input")
    for spec in io.outputs:
        _add_tensor(message.output, spec, batched, "output")
    message.instance_group.add(
        kind=INSTANCE_KINDS[config.instance_kind], count=config.instance_count
    )
    if batched and config.dynamic_batching:
        message.dynamic_batching.preferred_batch_size.extend(config.preferred_batch_size)
        message.dynamic_batching.max_queue_delay_microseconds = config.max_queue_delay_microseconds
    message.version_policy.specific.versions.append(version)
    names = {
        "inputs": {t.name: t.source_name for t in io.inputs},
        "outputs": {t.name: t.source_name for t in io.outputs},
    }
    # Backends ignore unknown parameters; predict() reads the MLflow names back from Triton.
    message.parameters[TENSOR_NAMES_PARAMETER].string_value = json.dumps(names, sort_keys=True)
    apply_acceleration(message, config, name)
    if warmup is not None:
        message.model_warmup.extend(warmup.entries)
    if config.config_override:
        merge_override(message, parse_override(config.config_override))
    check_generated(message)
    return message


def tensor_names(config: dict) -> dict[str, list[dict[str, str]]]:
    """MLflow ↔ Triton tensor names and datatypes from a config as Triton's API returns it."""
    raw = config.get("parameters", {}).get(TENSOR_NAMES_PARAMETER, {}).get("string_value")
    names = json.loads(raw) if raw else {"inputs": {}, "outputs": {}}

    def entries(kind: str, key: str) -> list[dict[str, str]]:
        return [
            {
                "mlflow": names[key].get(t["name"], t["name"]),
                "triton": t["name"],
                "datatype": protocol_dtype(t["data_type"]),
            }
            for t in config.get(kind, [])
        ]

    return {"inputs": entries("input", "inputs"), "outputs": entries("output", "outputs")}


def to_pbtxt(message: mc.ModelConfig) -> str:
    return text_format.MessageToString(message)


def parse_pbtxt(text: str | bytes) -> mc.ModelConfig:
    if isinstance(text, bytes):
        text = text.decode()
    return text_format.Parse(text, mc.ModelConfig())


def serving_versions(message: mc.ModelConfig) -> list[int]:
    """Versions a config pins with ``version_policy.specific`` (empty for other policies)."""
    if message.version_policy.WhichOneof("policy_choice") == "specific":
        return sorted(int(v) for v in message.version_policy.specific.versions)
    return []


def pin_version(message: mc.ModelConfig, version: int) -> mc.ModelConfig:
    """A copy of ``message`` whose ``version_policy`` serves exactly ``version``."""
    pinned = mc.ModelConfig()
    pinned.CopyFrom(message)
    pinned.version_policy.specific.ClearField("versions")
    pinned.version_policy.specific.versions.append(version)
    return pinned


def as_arrays(inputs: Any, specs: list[dict[str, str]]) -> dict[str, np.ndarray]:
    """One numpy array per MLflow input name, with Triton's dtypes, from user inputs.

    Accepts a dict keyed by input name, one array (single-input models) or a pandas DataFrame
    (columns named after inputs holding per-row lists, or the columns of one 2-D input).
    ``specs`` are ``tensor_names(...)["inputs"]`` entries.
    """
    import pandas as pd

    names = [s["mlflow"] for s in specs]
    if isinstance(inputs, pd.DataFrame):
        if set(names) <= set(inputs.columns):
            raw = {n: np.stack([np.asarray(v) for v in inputs[n]]) for n in names}
        elif len(names) == 1:
            raw = {names[0]: inputs.to_numpy()}
        else:
            raise MlflowException.invalid_parameter_value(
                f"DataFrame columns {list(inputs.columns)} do not name the model inputs {names}."
            )
    elif isinstance(inputs, Mapping):
        missing = [n for n in names if n not in inputs]
        if missing:
            raise MlflowException.invalid_parameter_value(
                f"Missing input(s) {missing}; the model expects {names}, got {sorted(inputs)}."
            )
        raw = {n: np.asarray(inputs[n]) for n in names}
    elif len(names) == 1 and inputs is not None:
        raw = {names[0]: np.asarray(inputs)}
    else:
        raise MlflowException.invalid_parameter_value(
            f"Inputs must be a dict of arrays keyed by {names}, a numpy array (one input) or a "
            f"pandas DataFrame; got {type(inputs).__name__}."
        )
    return {s["mlflow"]: np.ascontiguousarray(raw[s["mlflow"]], dtype=NUMPY_DTYPES[s["datatype"]]) for s in specs}
