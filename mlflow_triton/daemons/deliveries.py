"""What a webhook delivery is: MLflow's signature scheme and the event it carries.

Verification follows ``mlflow.webhooks.delivery`` (Standard Webhooks conventions):

- headers ``X-MLflow-Delivery-Id``, ``X-MLflow-Timestamp`` (unix seconds) and
  ``X-MLflow-Signature`` = ``v1,`` + base64(HMAC-SHA256(secret,
  ``"{delivery_id}.{timestamp}.{raw body}"``)); several space-separated signatures are
  accepted (secret rotation);
- the signature is compared in constant time (``hmac.compare_digest``);
- a timestamp further than ``tolerance_s`` (300 s) from now is refused (replay window).

:func:`parse_event` then checks the signed body's shape: a body that is not an MLflow event
(not JSON, nested too deeply, not an object, ``data`` not an object, name or alias not
strings) raises ``ValueError``, which the receiver answers with 400, never 500.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, UNAUTHENTICATED

SECRET_ENV = "MLFLOW_TRITON_WEBHOOK_SECRET"
SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
#: Deliveries older (or newer) than this many seconds are refused as replays.
DEFAULT_TOLERANCE_S = 300.0
ALIAS_CREATED = "model_version_alias.created"
#: Events the receiver subscribes to (what ``register_webhook`` asks MLflow for).
EVENTS = (ALIAS_CREATED,)
#: Characters of a delivery id or version kept (logs, metrics): MLflow sends UUIDs.
MAX_ID_CHARS = 64


def read_secret(secret: str | None = None) -> str:
    """``secret``, else ``$MLFLOW_TRITON_WEBHOOK_SECRET``.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE when neither is set (a receiver never runs
            unauthenticated).
    """
    value = secret if secret is not None else os.environ.get(SECRET_ENV, "")
    if not value:
        raise MlflowException.invalid_parameter_value(
            f"No webhook secret: set {SECRET_ENV} to the secret given to "
            "MlflowClient.create_webhook(..., secret=...). Unsigned webhooks are refused."
        )
    return value


def signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The ``X-MLflow-Signature`` value MLflow sends for this delivery (``v1,<base64>``)."""
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def verify_signature(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> str:
    """Check one delivery as MLflow signs it; returns its delivery id.

    Args:
        secret: the webhook secret.
        headers: the request headers (case-insensitive mapping, e.g. ``http.client``'s).
        body: the raw request body, exactly as received.
        tolerance_s: largest accepted distance between the timestamp and ``now``.
        now: the current unix time (tests).

    Raises:
        MlflowException: UNAUTHENTICATED (401) when a signature header is missing;
            PERMISSION_DENIED (403) for a wrong signature or a stale or malformed timestamp.
    """
    delivery_id = headers.get(DELIVERY_ID_HEADER)
    timestamp = headers.get(TIMESTAMP_HEADER)
    signatures = headers.get(SIGNATURE_HEADER)
    missing = [
        name for name, value in
        ((SIGNATURE_HEADER, signatures), (TIMESTAMP_HEADER, timestamp), (DELIVERY_ID_HEADER, delivery_id))
        if not value
    ]  # fmt: skip
    if missing:
        raise MlflowException(f"Unsigned webhook: missing {', '.join(missing)}.", error_code=UNAUTHENTICATED)
    assert delivery_id is not None and timestamp is not None and signatures is not None
    expected = signature(secret, delivery_id, timestamp, body).encode()
    # Compare against every offered signature, without stopping early.
    matched = False
    for offered in signatures.split():
        matched |= hmac.compare_digest(offered.encode(), expected)
    if not matched:
        raise MlflowException("Webhook signature mismatch.", error_code=PERMISSION_DENIED)
    try:  # a huge integer overflows the float subtraction: malformed too
        sent_ago = (time.time() if now is None else now) - int(timestamp)
    except (ValueError, OverflowError) as err:
        raise MlflowException("Malformed webhook timestamp.", error_code=PERMISSION_DENIED) from err
    if abs(sent_ago) > tolerance_s:
        raise MlflowException(
            f"Stale webhook: sent {int(sent_ago)}s ago, tolerance {int(tolerance_s)}s.",
            error_code=PERMISSION_DENIED,
        )
    return delivery_id


@dataclass(frozen=True)
class WebhookEvent:
    """A signed delivery's body, checked to be an MLflow webhook event (see :func:`parse_event`)."""

    kind: str
    data: Mapping[str, Any]
    timestamp: Any = None

    def alias_move(self) -> tuple[str, str, str | None]:
        """``(registered model, alias, version)`` of an alias event.

        Raises:
            ValueError: the name or alias is not a string, or the version is neither a
                string nor an integer.
        """
        name, alias, version = self.data.get("name"), self.data.get("alias"), self.data.get("version")
        if not isinstance(name, str) or not isinstance(alias, str):
            raise ValueError("data.name and data.alias must be strings")
        if version is not None and (isinstance(version, bool) or not isinstance(version, (str, int))):
            raise ValueError("data.version must be a string or an integer")
        return name, alias, None if version is None else str(version)[:MAX_ID_CHARS]

    def moved_at(self, headers: Mapping[str, str]) -> float:
        """When MLflow created the event (its ``timestamp``), else when it was sent (the header)."""
        try:
            return datetime.fromisoformat(str(self.timestamp)).timestamp()
        except (ValueError, OverflowError, OSError):
            return float(headers.get(TIMESTAMP_HEADER) or time.time())


def parse_event(body: bytes) -> WebhookEvent:
    """The MLflow webhook event in ``body``.

    Raises:
        ValueError: ``body`` is not JSON (or nested beyond the parser's limit), not an object,
            its ``entity``/``action`` are not strings or its ``data`` is not an object.
    """
    try:
        event = json.loads(body)
    except RecursionError as err:
        raise ValueError("JSON nested too deeply") from err
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, int digits limit
        raise ValueError(f"invalid JSON ({type(err).__name__})") from err
    if not isinstance(event, dict):
        raise ValueError(f"expected a JSON object, got {type(event).__name__}")
    entity, action, data = event.get("entity"), event.get("action"), event.get("data")
    if not isinstance(entity, str) or not isinstance(action, str):
        raise ValueError("entity and action must be strings")
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"data must be a JSON object, got {type(data).__name__}")
    return WebhookEvent(f"{entity}.{action}", data or {}, event.get("timestamp"))
