"""MLflow's response shape for predictions: numpy arrays in Python, lists in JSON.

``client.predict`` returns ``PredictionsResponse({"predictions": {output: ndarray}})``: the
arrays keep the served dtype and shape, as one large request would have returned them, and
cost nothing to build (a list per row does: a 100,000-row answer is 100,000 Python lists).
``mlflow deployments predict --output-path`` writes ``result.to_json(path)``, and MLflow's
``PredictionsResponse.to_json`` is a plain ``json.dump``, which serializes neither numpy arrays
nor the ``bytes`` of Triton's BYTES tensors: :class:`TritonPredictions` writes arrays as lists
and ``bytes`` as text, so that ``PredictionsResponse.from_json`` reads every file back.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Mapping

import numpy as np
from mlflow.deployments import PredictionsResponse


class _Encoder(json.JSONEncoder):
    """numpy -> lists and numbers; bytes -> UTF-8 text (``{"b64": ...}`` when not UTF-8)."""

    def default(self, o: Any) -> Any:
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, (bytes, bytearray)):
            try:
                return bytes(o).decode("utf-8")
            except UnicodeDecodeError:
                return {"b64": base64.b64encode(bytes(o)).decode("ascii")}
        return super().default(o)


def as_lists(value: Any) -> Any:
    """``value`` with every numpy array (nested in dicts and lists) turned into lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {k: as_lists(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_lists(v) for v in value]
    return value


class TritonPredictions(PredictionsResponse):
    """``PredictionsResponse({"predictions": {output: ndarray}})`` whose JSON always serializes."""

    def to_json(self, path: str | None = None) -> str | None:
        """The JSON text (arrays as lists, bytes as text); with ``path``, written there instead,
        as MLflow's CLI asks for ``--output-path``."""
        if path is None:
            return json.dumps(dict(self), cls=_Encoder)
        with open(path, "w") as handle:
            json.dump(dict(self), handle, cls=_Encoder)
        return None

    def get_predictions(self, predictions_format: str = "dataframe", dtype: Any = None) -> Any:
        """MLflow's ``get_predictions`` over the lists: an output of more than one dimension
        becomes a column of per-row lists (pandas takes only 1-D arrays as columns)."""
        return PredictionsResponse(as_lists(dict(self))).get_predictions(predictions_format, dtype)


def predictions_response(outputs: Mapping[str, np.ndarray]) -> TritonPredictions:
    """``{"predictions": {name: ndarray}}`` from predictor outputs (rows in input order)."""
    return TritonPredictions({"predictions": dict(outputs)})
