"""Which failures of an inference request move it to another replica, and which end the call.

Decided from the exception's type and tritonclient's status, never from its text:

* **The replica failed** (:func:`is_replica_failure`): the asyncio HTTP client raised a socket
  error (``OSError``: refused, reset; ``TimeoutError`` is one too) or an ``aiohttp.ClientError``
  (server disconnected, payload cut); Triton or a gateway answered 5xx; the gRPC client's
  status is UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN, ABORTED or CANCELLED (a
  stream torn down by a dying server). The request is retried on another replica and this one
  is left out for the rest of the call.
* **The request failed** (everything else): Triton answered 4xx or a gRPC status such as
  INVALID_ARGUMENT or NOT_FOUND (wrong name, shape, dtype, a model that refused the input),
  or tritonclient refused an argument before sending. Every replica would answer the same:
  the call fails at once, with :func:`request_error`.
"""

from __future__ import annotations

import asyncio
from typing import Mapping

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from mlflow_triton.fleet.errors import ModelNotFound, ReplicaUnreachable, TritonError

#: gRPC statuses (``str(grpc.StatusCode)``) that say the replica, not the request, failed.
GRPC_REPLICA_STATUSES = frozenset({
    "StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.INTERNAL",
    "StatusCode.UNKNOWN", "StatusCode.ABORTED", "StatusCode.CANCELLED",
})  # fmt: skip
GRPC_NOT_FOUND = "StatusCode.NOT_FOUND"
GRPC_INVALID_ARGUMENT = "StatusCode.INVALID_ARGUMENT"


def _transport_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (OSError, asyncio.TimeoutError, EOFError)
    try:
        import aiohttp
    except ImportError:  # only the gRPC extra installed
        return errors
    return (*errors, aiohttp.ClientError)


#: What the asyncio HTTP client raises when the connection, not Triton, failed.
TRANSPORT_ERRORS = _transport_errors()


def status_of(err: BaseException) -> str | None:
    """tritonclient's status of ``err`` (``"503"``, ``"StatusCode.UNAVAILABLE"``) or None."""
    from tritonclient.utils import InferenceServerException

    if isinstance(err, InferenceServerException) and err.status() is not None:
        return str(err.status())
    return None


def is_replica_failure(err: BaseException) -> bool:
    """True when ``err`` says the replica failed and another one may answer the request."""
    status = status_of(err)
    if status is not None:
        if status.isdigit():
            return int(status) >= 500
        return status in GRPC_REPLICA_STATUSES
    return isinstance(err, TRANSPORT_ERRORS)


def _text(err: BaseException) -> str:
    text = err.message() if callable(getattr(err, "message", None)) else str(err)
    return text or type(err).__name__


def request_error(err: BaseException, url: str, model: str) -> MlflowException:
    """The error a caller gets for a request Triton refused (not a replica failure).

    404 / NOT_FOUND: :class:`~mlflow_triton.fleet.server.ModelNotFound`
    (RESOURCE_DOES_NOT_EXIST); 400 / INVALID_ARGUMENT: INVALID_PARAMETER_VALUE (the inputs);
    any other: :class:`~mlflow_triton.fleet.server.TritonError` (INTERNAL_ERROR).
    """
    status = status_of(err)
    message = f"Triton at {url} refused the request to {model!r}: {_text(err)}"
    if status in ("404", GRPC_NOT_FOUND):
        return ModelNotFound(message, url, status)
    if status in ("400", GRPC_INVALID_ARGUMENT):
        return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)
    return TritonError(message, url, status)


#: Statuses of an answer from Triton itself that a retry elsewhere did not cure: a model that
#: fails on these inputs everywhere, reported as INTERNAL_ERROR rather than "unreachable".
SERVER_ERROR_STATUSES = frozenset({"500", "StatusCode.INTERNAL", "StatusCode.UNKNOWN"})


def all_replicas_failed(model: str, failures: Mapping[str, BaseException]) -> TritonError:
    """The error of a call that no replica could answer, naming each replica and its failure.

    :class:`~mlflow_triton.fleet.server.ReplicaUnreachable` (TEMPORARILY_UNAVAILABLE) when
    the replicas were down, timed out or unavailable; :class:`TritonError` (INTERNAL_ERROR)
    when one of them answered with a server error (the model failed on the inputs).
    """
    details = "; ".join(f"{url}: {_text(err)}" for url, err in failures.items())
    urls = ", ".join(failures)
    if any(status_of(err) in SERVER_ERROR_STATUSES for err in failures.values()):
        return TritonError(f"Triton failed to run {model!r} on every replica ({details}).", urls)
    return ReplicaUnreachable(
        f"No Triton replica could answer for {model!r} ({details}). Check that the servers run "
        "and that the target URI / TRITON_URL lists them.",
        urls,
    )
