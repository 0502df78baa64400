"""What a replica serves: a model's tensors, batch size and instances, read from its config.

Everything :mod:`mlflow_triton.inference` checks and splits by comes from the config Triton
returns for the model (``GET /v2/models/NAME/config``), never from the MLflow model: the
served config is what decides whether a request is accepted. The MLflow names users send are
the ones the plugin stored in the ``mlflow_triton.tensor_names`` parameter
(:func:`~mlflow_triton.triton_config.model_config.tensor_names`); a model published by other
means keeps its Triton names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from mlflow_triton.triton_config.tensors import NUMPY_DTYPES, tensor_names


@dataclass(frozen=True)
class ServedTensor:
    """One input or output as the served config declares it.

    Attributes:
        mlflow_name: the name users send and receive (the MLflow signature's).
        triton_name: the name on the wire.
        datatype: Triton's protocol datatype (``FP32``, ``BYTES``...).
        dims: the config's ``dims`` (batch axis excluded; -1 = any size).
        scalar_per_row: ``dims: [1]`` with ``reshape { shape: [] }``: the model takes one value
            per row, which travels as ``[rows, 1]``.
    """

    mlflow_name: str
    triton_name: str
    datatype: str
    dims: tuple[int, ...]
    scalar_per_row: bool = False

    @property
    def numpy_dtype(self) -> np.dtype:
        """The numpy dtype of this tensor (``object`` for BYTES), as ``tritonclient.utils`` maps it."""
        return np.dtype(NUMPY_DTYPES[self.datatype])

    def expected_shape(self, batched: bool) -> list[int | str]:
        """The shape a caller must send, ``"rows"`` standing for the batch axis."""
        return (["rows"] if batched else []) + list(self.dims)

    def describe(self, batched: bool) -> str:
        """``shape [rows, 4] of FP32 (numpy float32)`` for error messages."""
        shape = ", ".join(str(d) for d in self.expected_shape(batched))
        numpy_name = "str or bytes" if self.datatype == "BYTES" else self.numpy_dtype.name
        return f"shape [{shape}] of {self.datatype} (numpy {numpy_name})"


@dataclass(frozen=True)
class ServedModel:
    """A model as a replica serves it.

    Attributes:
        name: the deployment (Triton model) name.
        max_batch_size: rows per request at most; 0: the model has no batch axis.
        instance_count: model instances per replica (the sum over ``instance_group``).
        decoupled: the model may send any number of responses per request (gRPC streaming only).
    """

    name: str
    max_batch_size: int
    instance_count: int
    inputs: tuple[ServedTensor, ...]
    outputs: tuple[ServedTensor, ...]
    decoupled: bool = False

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    @classmethod
    def from_config(cls, name: str, config: Mapping[str, Any]) -> "ServedModel":
        """Read a config as Triton's HTTP API returns it (or gRPC's, as JSON: int64 fields are
        strings there, so every number goes through ``int``)."""
        names = tensor_names(dict(config))

        def tensors(kind: str, entries: list[dict[str, str]]) -> tuple[ServedTensor, ...]:
            declared = {t["name"]: t for t in config.get(kind, [])}
            result = []
            for entry in entries:
                tensor = declared[entry["triton"]]
                dims = tuple(int(d) for d in tensor.get("dims", []))
                reshape = tensor.get("reshape")
                scalar = reshape is not None and not reshape.get("shape") and dims == (1,)
                result.append(ServedTensor(entry["mlflow"], entry["triton"], entry["datatype"], dims, scalar))
            return tuple(result)

        return cls(
            name=name,
            max_batch_size=int(config.get("max_batch_size", 0) or 0),
            instance_count=_instance_count(config),
            inputs=tensors("input", names["inputs"]),
            outputs=tensors("output", names["outputs"]),
            decoupled=bool((config.get("model_transaction_policy") or {}).get("decoupled", False)),
        )


def _instance_count(config: Mapping[str, Any]) -> int:
    """Model instances on one replica: each group's ``count`` (default 1), times its GPUs when
    the group lists them (Triton places ``count`` instances on each listed GPU)."""
    total = 0
    for group in config.get("instance_group", []) or []:
        count = int(group.get("count", 1) or 1)
        total += count * max(1, len(group.get("gpus", []) or []))
    return max(1, total)
