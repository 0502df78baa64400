"""What can go wrong talking to Triton, as exception types decided by tritonclient's exception
and status, never by message text (see :mod:`mlflow_triton.fleet.server` for the rules), and
how one operation's failures over several replicas are reported."""

from __future__ import annotations

import http.client
from typing import Mapping

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INTERNAL_ERROR,
    RESOURCE_DOES_NOT_EXIST,
    TEMPORARILY_UNAVAILABLE,
)

from mlflow_triton.core.masking import mask_secrets

#: tritonclient's ``InferenceServerException.status()``: the HTTP status code, or
#: ``str(grpc.StatusCode)`` for gRPC.
MISSING_STATUSES = frozenset({"404", "StatusCode.NOT_FOUND"})
#: Statuses that mean no answer from Triton: a gateway's 502/504 (Triton never sends them), the
#: gRPC channel's failure to connect and a deadline. ``StatusCode.UNAVAILABLE`` is also what
#: Triton answers while not ready: :meth:`TritonServer._error` tells the two apart.
UNREACHABLE_STATUSES = frozenset(
    {"502", "504", "StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"}
)
GRPC_UNAVAILABLE = "StatusCode.UNAVAILABLE"
#: What the HTTP client raises when the connection fails: the socket's own errors (refused,
#: reset, timed out, name resolution, TLS) and geventhttpclient's ``HTTPConnectionClosed`` /
#: ``HTTPParseError`` (``http.client.HTTPException`` subclasses).
NETWORK_ERRORS: tuple[type[BaseException], ...] = (OSError, http.client.HTTPException)


class TritonError(MlflowException):
    """A Triton call failed; this class itself: Triton answered with an error (INTERNAL_ERROR).

    Attributes:
        url: the replica.
        status: tritonclient's status (HTTP ``"500"``, gRPC ``"StatusCode.INTERNAL"``), or None
            when the call failed below HTTP/gRPC.
    """

    error_code_default = INTERNAL_ERROR

    def __init__(self, message: str, url: str, status: str | None = None) -> None:
        super().__init__(message, error_code=self.error_code_default)
        self.url = url
        self.status = status


class ReplicaUnreachable(TritonError):
    """No answer from the replica: connection refused/reset/closed, name resolution, timeout."""

    error_code_default = TEMPORARILY_UNAVAILABLE


class ModelNotFound(TritonError):
    """Triton answered that it does not know the model (HTTP 404 / gRPC NOT_FOUND)."""

    error_code_default = RESOURCE_DOES_NOT_EXIST


def triton_status(err: BaseException) -> str | None:
    """tritonclient's status of ``err``; None unless it is an InferenceServerException."""
    from tritonclient.utils import InferenceServerException

    if isinstance(err, InferenceServerException) and err.status() is not None:
        return str(err.status())
    return None


def classify(err: BaseException) -> type[TritonError]:
    """The :class:`TritonError` class for an exception a tritonclient call raised.

    Decided by type and status only. A gRPC ``StatusCode.UNAVAILABLE`` classifies as
    :class:`ReplicaUnreachable` here; :class:`TritonServer` asks the replica whether it is
    live before it says so.
    """
    if isinstance(err, TritonError):
        return type(err)
    status = triton_status(err)
    if status is not None:
        if status in MISSING_STATUSES:
            return ModelNotFound
        if status in UNREACHABLE_STATUSES:
            return ReplicaUnreachable
        return TritonError
    if isinstance(err, NETWORK_ERRORS):
        return ReplicaUnreachable
    return TritonError  # tritonclient's own argument checks (status None), anything else


def is_unreachable(err: Exception | None) -> bool:
    """True for the error a replica gives when it cannot be reached at all."""
    return isinstance(err, ReplicaUnreachable)


def is_missing(err: Exception | None) -> bool:
    """True when Triton answered that it does not know the model."""
    return isinstance(err, ModelNotFound)


def describe_failures(action: str, failures: Mapping[str, Exception | None]) -> str:
    """One line naming each replica that failed ``action`` and its error."""
    failures = {url: err for url, err in failures.items() if err is not None}
    details = "; ".join(
        f"{mask_secrets(url)}: {err.message if isinstance(err, MlflowException) else err}"
        for url, err in failures.items()
    )
    return f"Could not {action} on {len(failures)} Triton server(s): {details}"


def raise_failures(action: str, failures: Mapping[str, Exception | None]) -> None:
    """Raise one MlflowException listing each replica's error, if any replica failed."""
    failures = {url: err for url, err in failures.items() if err is not None}
    if not failures:
        return
    message = describe_failures(action, failures)
    urls = ", ".join(failures)
    # The same kind on every replica keeps its class, so callers still decide by type: all
    # unreachable means "retry later", never "the model was refused".
    for kind in (ReplicaUnreachable, ModelNotFound):
        if all(isinstance(err, kind) for err in failures.values()):
            raise kind(message, urls)
    raise MlflowException(message, error_code=INTERNAL_ERROR)
