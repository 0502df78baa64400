"""Build Triton's ``config.pbtxt`` as a ``ModelConfig`` protobuf message.

A flavor (:mod:`mlflow_triton.flavors`) knows the model's tensors and which backend serves
it; this module turns them and the deployment settings into the config. The batch axis becomes
``max_batch_size``; ``dynamic_batching``, ``instance_group`` and a ``version_policy`` pinning the
serving version are generated::

    message = build_model_config("fraud", io, settings, version=3, backend="onnxruntime",
                                 model_filename="model.onnx")
    text = to_pbtxt(message)          # what goes to <repo>/fraud/config.pbtxt
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Protocol

from google.protobuf import text_format
from mlflow.exceptions import MlflowException
from tritonclient.grpc import model_config_pb2 as mc

from mlflow_triton.triton_config.acceleration import (
    AccelerationSettings,
    apply_acceleration,
    check_generated,
)
from mlflow_triton.triton_config.override import merge_override, parse_override
from mlflow_triton.triton_config.tensors import TENSOR_NAMES_PARAMETER, ModelIO, TensorSpec

if TYPE_CHECKING:
    from mlflow_triton.triton_config.warmup import WarmupPlan

INSTANCE_KINDS = {"gpu": mc.ModelInstanceGroup.KIND_GPU, "cpu": mc.ModelInstanceGroup.KIND_CPU,
                  "auto": mc.ModelInstanceGroup.KIND_AUTO}  # fmt: skip


class GenerationSettings(AccelerationSettings, Protocol):
    """The deployment settings that shape a generated config (``DeploymentConfig`` has them)."""

    max_batch_size: int
    dynamic_batching: bool
    preferred_batch_size: list[int]
    max_queue_delay_microseconds: int
    instance_kind: str
    instance_count: int
    config_override: str | None


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
    name: str, io: ModelIO, config: GenerationSettings, version: int, backend: str, model_filename: str,
    warmup: "WarmupPlan | None" = None,
) -> mc.ModelConfig:  # fmt: skip
    """The full Triton ``ModelConfig`` for one published version of ``name``.

    The generated fields, then the GPU options (:mod:`mlflow_triton.triton_config.acceleration`),
    then ``warmup``'s ``model_warmup`` entries, then the user's ``config_override``
    (:mod:`mlflow_triton.triton_config.override`); the result is checked as a whole.

    Args:
        backend / model_filename: the Triton backend and ``default_model_filename`` (the flavor's).

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE for a model or option Triton cannot serve.
    """
    if not io.inputs or not io.outputs:
        raise MlflowException.invalid_parameter_value(
            f"Model {name!r} declares no inputs or no outputs; Triton needs both."
        )
    batched = config.max_batch_size > 0
    message = mc.ModelConfig(
        name=name, backend=backend, max_batch_size=config.max_batch_size, default_model_filename=model_filename,
    )  # fmt: skip
    for spec in io.inputs:
        _add_tensor(message.input, spec, batched, "input")
    for spec in io.outputs:
        _add_tensor(message.output, spec, batched, "output")
    message.instance_group.add(kind=INSTANCE_KINDS[config.instance_kind], count=config.instance_count)
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


def with_owned_fields(config: mc.ModelConfig, name: str, version: int) -> mc.ModelConfig:
    """A copy of a user's config with only what the plugin owns set: ``name`` and a
    ``version_policy`` serving exactly ``version``."""
    message = mc.ModelConfig()
    message.CopyFrom(config)
    message.name = name
    message.ClearField("version_policy")
    message.version_policy.specific.versions.append(version)
    return message


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
