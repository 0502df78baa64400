"""Tensors as Triton sees them: names, data types, shapes, and user inputs turned into arrays.

A :class:`TensorSpec` carries two names: the Triton tensor name (what the config and the
inference protocol use) and the MLflow name (what ``predict`` takes and returns). Data types
come from ``tritonclient.utils``, for every ``TYPE_*`` of the model config it knows::

    spec = TensorSpec("INPUT__0", "TYPE_FP32", (-1, 8), "features")
    arrays = as_arrays({"features": x}, [provenance_entry(spec)])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from mlflow.exceptions import MlflowException
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

#: Config parameter mapping Triton tensor names to MLflow names (backends ignore it).
TENSOR_NAMES_PARAMETER = "mlflow_triton.tensor_names"


def protocol_dtype(config_type: str) -> str:
    """The inference-protocol datatype of a config ``TYPE_*`` (``TYPE_STRING`` -> ``BYTES``)."""
    return "BYTES" if config_type == "TYPE_STRING" else config_type.removeprefix("TYPE_")


def config_dtype(protocol: str) -> str:
    """The config.pbtxt ``TYPE_*`` for a protocol datatype (``BYTES`` -> ``TYPE_STRING``)."""
    return "TYPE_STRING" if protocol == "BYTES" else f"TYPE_{protocol}"


#: Protocol datatype -> numpy type, from ``tritonclient.utils`` for every ``TYPE_*`` of the model
#: config it knows. BF16 is left out: numpy has no bfloat16 (only ``ml_dtypes``).
NUMPY_DTYPES: dict[str, Any] = {
    protocol: triton_to_np_dtype(protocol)
    for protocol in map(protocol_dtype, mc.DataType.keys())
    if protocol != "BF16" and triton_to_np_dtype(protocol) is not None
}


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: Triton name, ``TYPE_*`` data type, full shape (-1 = dynamic,
    the batch axis first when the model is batched).

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


def provenance_entry(spec: TensorSpec) -> dict[str, str]:
    """How provenance records one tensor: MLflow name, Triton name, protocol datatype."""
    return {"mlflow": spec.source_name, "triton": spec.name, "datatype": spec.triton_dtype}


def io_from_config(config: mc.ModelConfig) -> ModelIO:
    """Tensor specs of a config: full shapes as clients send them (a -1 batch axis first when
    batched), except that a per-sample scalar (``dims: [1]`` with ``reshape { shape: [] }``) is
    one value per row, as the model and its signature see it (see :func:`per_sample_scalars`).
    MLflow names come from the config's :data:`TENSOR_NAMES_PARAMETER`, else the Triton names."""
    raw = config.parameters[TENSOR_NAMES_PARAMETER].string_value if TENSOR_NAMES_PARAMETER in config.parameters else ""
    names = json.loads(raw) if raw else {}
    batch = (-1,) if config.max_batch_size > 0 else ()
    scalars = per_sample_scalars(config)

    def specs(tensors, kind: str) -> tuple[TensorSpec, ...]:
        mapping = names.get(kind, {})
        return tuple(
            TensorSpec(
                t.name, mc.DataType.Name(t.data_type),
                batch + (() if t.name in scalars else tuple(int(d) for d in t.dims)),
                mapping.get(t.name, t.name),
            )  # fmt: skip
            for t in tensors
        )

    return ModelIO(specs(config.input, "inputs"), specs(config.output, "outputs"))


def per_sample_scalars(config: mc.ModelConfig) -> set[str]:
    """Tensors of a batched model that are scalars per sample: declared ``dims: [1]`` with
    ``reshape { shape: [] }``, so Triton takes and returns ``[batch, 1]`` where the model (and
    its MLflow signature) has ``[batch]``."""
    if config.max_batch_size <= 0:
        return set()
    tensors = list(config.input) + list(config.output)
    return {t.name for t in tensors if t.HasField("reshape") and list(t.dims) == [1]}


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


def as_arrays(inputs: Any, specs: list[dict[str, str]]) -> dict[str, np.ndarray]:
    """One numpy array per MLflow input name, with Triton's dtypes, from user inputs.

    Accepts a dict keyed by input name, one array (single-input models) or a pandas DataFrame
    (columns named after inputs holding per-row lists, or the columns of one 2-D input).
    ``specs`` are ``tensor_names(...)["inputs"]`` (or :func:`provenance_entry`) entries.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE naming the expected inputs.
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
