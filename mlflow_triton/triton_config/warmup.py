"""``model_warmup``: requests Triton runs itself while loading a model, before it is READY.

The first request to a freshly loaded model often pays for lazy work (ONNX Runtime's or
TensorRT's kernel selection, CUDA context and memory arenas, TorchScript's profiling
executor). With ``model_warmup`` in config.pbtxt, Triton sends those requests at load, so the
first client request does not pay for them; and because a rollout loads a candidate before it
serves, clients never do.

The sample is the MLflow input example (the same one the smoke test sends), stored as raw
row-major files in ``NAME/warmup/<version>/`` (Triton reads ``input_data_file`` from the
model directory's ``warmup`` folder); without an example, ``zero_data`` shaped like the
signature with every dynamic dimension set to 1. ``-C warmup=auto`` (default) generates it for
instance groups that may be on GPUs (``gpu``, ``auto``); ``true`` / ``false`` force it::

    plan = plan_warmup(io, max_batch_size=32, example={"features": x}, version=3)
    plan.entries   # [ModelWarmup]; plan.files: {"3/input_0": b"..."}
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from mlflow.exceptions import MlflowException
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import serialize_byte_tensor

from mlflow_triton.triton_config.tensors import ModelIO

__all__ = ["WARMUP_MODES", "WarmupPlan", "plan_warmup", "warmup_enabled"]

WARMUP_MODES: tuple[str, ...] = ("auto", "true", "false")


@dataclass
class WarmupPlan:
    """The ``model_warmup`` entries and the data files they read (relative to the model's
    ``warmup/`` folder, :data:`mlflow_triton.repository.layout.WARMUP_FOLDER`)."""

    entries: list[mc.ModelWarmup]
    files: dict[str, bytes] = field(default_factory=dict)


def warmup_enabled(mode: str, instance_kind: str) -> bool:
    """``auto``: for instance groups that may be on GPUs (``gpu``, and ``auto``, which Triton
    places on GPUs where the server has them), where first requests pay most for lazy init;
    not for ``cpu``."""
    return mode == "true" or (mode == "auto" and instance_kind in ("gpu", "auto"))


def plan_warmup(
    io: ModelIO, max_batch_size: int, example: dict[str, np.ndarray] | None, version: int, count: int = 1
) -> WarmupPlan:
    """One warmup request from the input example (arrays by MLflow input name), or zeros.

    Args:
        io: the model's :class:`~mlflow_triton.triton_config.model_config.ModelIO`.
        max_batch_size: the config's; the example's batch is cut to it (1 without batching).
        example: the MLflow input example as arrays with Triton's dtypes, or None for zeros.
        version: the version whose ``warmup/<version>/`` folder holds the files.
        count: how many times Triton sends the request at load (the flavor's: TorchScript's
            profiling executor optimizes the graph on its second call, so it asks for two).

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE when the example contradicts the config dims.
    """
    warmup = mc.ModelWarmup(name="mlflow_input_example" if example else "zeros", count=count)
    batched = max_batch_size > 0
    if not example:
        warmup.batch_size = 1
        for spec in io.inputs:
            dims = [d if d > 0 else 1 for d in (spec.shape[1:] if batched else spec.shape)]
            warmup.inputs[spec.name].CopyFrom(
                mc.ModelWarmup.Input(data_type=mc.DataType.Value(spec.data_type), dims=dims or [1], zero_data=True)
            )
        return WarmupPlan([warmup])
    arrays = {spec.name: np.asarray(example[spec.source_name]) for spec in io.inputs}
    batch = 1
    if batched:
        sizes = {a.shape[0] if a.ndim else 1 for a in arrays.values()}
        batch = max(1, min(min(sizes), max_batch_size))
    warmup.batch_size = batch
    files: dict[str, bytes] = {}
    for index, spec in enumerate(io.inputs):
        array = arrays[spec.name]
        if batched:
            array = array[:batch] if array.ndim else array.reshape(1)
            dims = list(array.shape[1:])
        else:
            dims = list(array.shape)
        expected = list(spec.shape[1:] if batched else spec.shape)
        if len(dims) != len(expected) or any(e != -1 and e != d for e, d in zip(expected, dims, strict=True)):
            if not (not expected and dims in ([], [1])):
                raise MlflowException.invalid_parameter_value(
                    f"The input example's {spec.source_name!r} has shape {list(array.shape)}, which "
                    f"does not fit the model's {list(spec.shape)}, so it cannot warm the model up. "
                    "Log a matching input_example, or deploy with -C warmup=false."
                )
        data = np.ascontiguousarray(array)
        payload = serialize_byte_tensor(data).item() if spec.data_type == "TYPE_STRING" else data.tobytes()
        filename = f"{version}/input_{index}"  # tensor names may hold '/' or ':'
        files[filename] = bytes(payload)
        warmup.inputs[spec.name].CopyFrom(
            mc.ModelWarmup.Input(
                data_type=mc.DataType.Value(spec.data_type), dims=dims or [1],
                input_data_file=filename,
            )  # fmt: skip
        )
    return WarmupPlan([warmup], files)
