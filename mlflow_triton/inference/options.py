"""How a predictor sends requests: :class:`PredictSettings`, every knob and its default."""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.exceptions import MlflowException

from mlflow_triton.inference.replicas import DEFAULT_MAX_CONNECTIONS

GiB = 1024**3
DEFAULT_REQUEST_TIMEOUT_S = 120.0
#: Tensor bytes in flight over all replicas at most, whatever the concurrency asks for.
DEFAULT_MAX_INFLIGHT_BYTES = 1 * GiB


@dataclass(frozen=True)
class PredictSettings:
    """How a predictor sends requests.

    Args:
        concurrency: requests in flight per replica; None: 2 x max_batch_size x instance
            count of the served model (Triton's optimization guide), 2 x instances without
            batching.
        request_timeout_s: a request unanswered for this long leaves its replica out.
        max_request_bytes: tensor bytes per request; None: 64 MiB minus a header allowance
            over HTTP (Triton's default ``--http-max-input-size``), 2 GiB over gRPC.
        max_inflight_bytes: tensor bytes in flight over all replicas; lowers the concurrency
            for large requests.
        max_connections: HTTP connections per replica at most.
        progress: show a tqdm bar on stderr; None: when stderr is a terminal and the call
            sends at least 8 requests.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE for a value that is not positive.
    """

    concurrency: int | None = None
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    max_request_bytes: int | None = None
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    progress: bool | None = None

    def __post_init__(self) -> None:
        for key in ("concurrency", "request_timeout_s", "max_request_bytes", "max_inflight_bytes", "max_connections"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise MlflowException.invalid_parameter_value(f"{key} must be positive, got {value!r}.")
