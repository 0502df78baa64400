"""GPU options of the generated config: execution accelerator, GPUs, response cache.

``-C accelerator=tensorrt|cuda|none``, ``-C precision=fp16|fp32``, ``-C trt_workspace_bytes=N``,
``-C gpus=0,1`` and ``-C response_cache=true`` become protobuf fields of the ``ModelConfig``::

    apply_acceleration(message, config, deployment_name="fraud")
    check_generated(message)   # after the user's config_override is merged

Each refusal implements a rule Triton documents (or a setting Triton would silently ignore):

* **ONNX** (``onnxruntime`` backend README, "ONNX Runtime with TensorRT optimization" and
  "... with CUDA Execution Provider optimization"): ``optimization.execution_accelerators.
  gpu_execution_accelerator`` named ``tensorrt`` (parameters ``precision_mode`` FP32/FP16,
  ``max_workspace_size_bytes``, ``trt_engine_cache_enable``, ``trt_engine_cache_path``) or
  ``cuda``; ``cpu_execution_accelerator`` may only be ``openvino``. Any other name is refused
  at load by the backend ("unknown Execution Accelerator '...' is requested").
* GPU execution accelerators configure GPU instances only: the backend reads them for
  ``KIND_GPU`` instances and ignores them elsewhere (TensorFlow's backend even refuses them:
  "GPU Execution Accelerator can only be set on non-CPU backend context"). A GPU accelerator
  with a CPU (or ``auto``) instance group would silently do nothing: refused.
* Flavors whose backend documents no execution accelerator (TorchScript's ``pytorch``
  backend, Python-backend models, a user's own Triton config) refuse ``accelerator`` in their
  own plan (:mod:`mlflow_triton.flavors`).
* ``instance_group.gpus`` (model_config.proto: "GPU(s) where instances should be available")
  is only valid for ``KIND_GPU``: Triton refuses a ``KIND_CPU`` group that lists GPUs, and
  ``KIND_AUTO`` becomes ``KIND_CPU`` on a machine without GPUs.
* ``precision`` and ``trt_workspace_bytes`` are TensorRT parameters: refused without
  ``accelerator=tensorrt`` (they would configure nothing).

The TensorRT engine cache path is stable per deployment (``<root>/<deployment name>``), the
same for the staging load and the serving load of a version, so the engine built while a
candidate is verified is reused when it starts serving, and ONNX Runtime's cache keys (a hash
of the graph) keep versions apart.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from mlflow.exceptions import MlflowException
from tritonclient.grpc import model_config_pb2 as mc


class AccelerationSettings(Protocol):
    """The ``-C`` settings this module reads (``DeploymentConfig`` has them)."""

    accelerator: str
    precision: str | None
    trt_workspace_bytes: int | None
    gpus: list[int]
    response_cache: bool

__all__ = [
    "ACCELERATORS", "PRECISIONS", "TRT_ENGINE_CACHE_ROOT", "apply_acceleration", "check_generated",
    "check_settings",
]  # fmt: skip

ACCELERATORS: tuple[str, ...] = ("none", "tensorrt", "cuda")
PRECISIONS: tuple[str, ...] = ("fp16", "fp32")
#: Where Triton's onnxruntime backend keeps TensorRT engines (on the Triton host).
TRT_ENGINE_CACHE_ROOT = "/tmp/mlflow-triton/trt-engines"
_ONNX_GPU_ACCELERATORS = ("tensorrt", "cuda")
_ONNX_CPU_ACCELERATORS = ("openvino",)
_GPU = mc.ModelInstanceGroup.KIND_GPU


def check_settings(
    accelerator: str, precision: str | None, trt_workspace_bytes: int | None, gpus: Sequence[int],
    instance_kind: str,
) -> None:  # fmt: skip
    """Refuse invalid combinations of ``-C`` keys, before a model is even resolved.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE naming the keys and the fix.
    """
    if accelerator != "none" and instance_kind != "gpu":
        raise MlflowException.invalid_parameter_value(
            f"accelerator={accelerator} needs instance_kind=gpu (got {instance_kind}): Triton "
            "applies GPU execution accelerators to KIND_GPU instances only, so on this instance "
            "group it would silently do nothing."
        )
    if accelerator != "tensorrt":
        tensorrt_only = (("precision", precision), ("trt_workspace_bytes", trt_workspace_bytes))
        extra = [key for key, value in tensorrt_only if value is not None]
        if extra:
            raise MlflowException.invalid_parameter_value(
                f"{' and '.join(extra)} only apply to the TensorRT execution accelerator: add "
                f"-C accelerator=tensorrt (got accelerator={accelerator}) or remove them."
            )
    if trt_workspace_bytes is not None and trt_workspace_bytes < 1:
        raise MlflowException.invalid_parameter_value(
            f"trt_workspace_bytes must be >= 1, got {trt_workspace_bytes}."
        )
    if gpus and instance_kind != "gpu":
        raise MlflowException.invalid_parameter_value(
            f"gpus={','.join(map(str, gpus))} needs instance_kind=gpu (got {instance_kind}): "
            "Triton refuses GPUs on a KIND_CPU instance group (and KIND_AUTO is CPU without GPUs)."
        )
    if any(gpu < 0 for gpu in gpus) or len(set(gpus)) != len(gpus):
        raise MlflowException.invalid_parameter_value(
            f"gpus must be distinct GPU indices >= 0, e.g. 0,1; got {list(gpus)}."
        )


def apply_acceleration(message: mc.ModelConfig, config: AccelerationSettings, deployment_name: str) -> None:
    """Add the accelerator, GPUs and response cache that ``config`` asks for to ``message``."""
    if config.gpus:
        for group in message.instance_group:
            group.gpus.extend(config.gpus)
    if config.response_cache:
        message.response_cache.enable = True
    if config.accelerator == "none":
        return
    accelerator = message.optimization.execution_accelerators.gpu_execution_accelerator.add(
        name=config.accelerator
    )
    if config.accelerator == "tensorrt":
        parameters: dict[str, Any] = {
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": f"{TRT_ENGINE_CACHE_ROOT}/{deployment_name}",
        }
        if config.precision is not None:
            parameters["precision_mode"] = config.precision.upper()
        if config.trt_workspace_bytes is not None:
            parameters["max_workspace_size_bytes"] = str(config.trt_workspace_bytes)
        accelerator.parameters.update(parameters)


def check_generated(message: mc.ModelConfig) -> None:
    """Refuse a final config (generated, then overridden) that Triton would refuse or ignore.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE naming the field and the rule.
    """
    accelerators = message.optimization.execution_accelerators
    gpu_names = [a.name for a in accelerators.gpu_execution_accelerator]
    cpu_names = [a.name for a in accelerators.cpu_execution_accelerator]
    for group in message.instance_group:
        kind = mc.ModelInstanceGroup.Kind.Name(group.kind)
        if group.gpus and group.kind != _GPU:
            raise MlflowException.invalid_parameter_value(
                f"instance_group {group.name or kind} lists gpus {list(group.gpus)} with {kind}: "
                "Triton refuses GPUs outside KIND_GPU. Use -C instance_kind=gpu."
            )
        if gpu_names and group.kind != _GPU:
            raise MlflowException.invalid_parameter_value(
                f"gpu_execution_accelerator {gpu_names} with an instance group of {kind}: Triton "
                "applies GPU accelerators to KIND_GPU instances only. Use -C instance_kind=gpu."
            )
    if message.backend == "pytorch" and (gpu_names or cpu_names):
        raise MlflowException.invalid_parameter_value(
            f"execution accelerators {gpu_names + cpu_names} for backend pytorch: Triton's "
            "libtorch backend documents none. Remove them, or log the model as ONNX."
        )
    if message.backend == "onnxruntime":
        unknown = [n for n in gpu_names if n not in _ONNX_GPU_ACCELERATORS]
        unknown += [n for n in cpu_names if n not in _ONNX_CPU_ACCELERATORS]
        if unknown:
            raise MlflowException.invalid_parameter_value(
                f"execution accelerator(s) {unknown} are unknown to Triton's onnxruntime backend "
                f"(GPU: {', '.join(_ONNX_GPU_ACCELERATORS)}; CPU: {', '.join(_ONNX_CPU_ACCELERATORS)})."
            )
    for warmup in message.model_warmup:
        if message.max_batch_size == 0 and warmup.batch_size > 1:
            raise MlflowException.invalid_parameter_value(
                f"model_warmup {warmup.name!r} has batch_size {warmup.batch_size} but the model "
                "does not batch (max_batch_size 0): Triton requires batch_size 1."
            )
        if message.max_batch_size > 0 and warmup.batch_size > message.max_batch_size:
            raise MlflowException.invalid_parameter_value(
                f"model_warmup {warmup.name!r} has batch_size {warmup.batch_size} > max_batch_size "
                f"{message.max_batch_size}: Triton refuses it at load."
            )
