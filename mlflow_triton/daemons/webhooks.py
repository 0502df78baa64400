"""Receive MLflow Model Registry webhooks and roll alias moves out to Triton.

MLflow 3 (``mlflow server`` with a SQL backend) POSTs an event to every registered webhook
when an alias is set (``model_version_alias.created``). :class:`WebhookReceiver` is a
uvicorn + Starlette server (:mod:`mlflow_triton.daemons.ops_server`) that also answers ``/healthz``
and ``/metrics``. It checks each delivery's signature, then runs the same
reconciliation as :func:`mlflow_triton.promotion.sync`, limited to the model named in the
event. The event only triggers the work: the alias is resolved again in the registry, so a
late or reordered delivery cannot install a stale version::

    export MLFLOW_TRITON_WEBHOOK_SECRET=...           # the secret given to create_webhook
    mlflow-triton serve-webhooks --spec promotion.yaml --host 0.0.0.0 --port 8080 \
        --tls-cert tls.crt --tls-key tls.key

    # once, against the MLflow server:
    MlflowClient().create_webhook(name="triton", url="https://triton-hooks.internal:8080/",
                                  events=["model_version_alias.created"], secret=secret)

Each delivery's signature and body are checked as :mod:`mlflow_triton.daemons.deliveries`
describes (MLflow's HMAC scheme, a 300 s replay window); a delivery id seen within that
window is acknowledged but not acted on again.

Responses: ``401`` when the signature headers are missing, ``403`` for a wrong signature or
a stale timestamp, ``400`` for a signed body that is not an MLflow event (not JSON or nested
too deeply, not an object, ``data`` not an object, name or alias not strings), ``202`` when a
rollout was queued, ``200`` for an event that needs nothing (another model, another alias,
another event type, a duplicate delivery), ``413`` for a body over ``max_body_bytes`` (1 MiB),
``408`` when the body takes longer than ``body_timeout_s`` (10 s) to arrive. Rejected requests
change nothing. The secret is never logged; refusals are logged at most 10 a minute (the
rest are counted in the next line), and client-sent text (delivery id, names) is logged with
control characters escaped and cut to a bounded length. Connection limits:
:mod:`mlflow_triton.daemons.http_guard`.

Rollouts run on one worker thread, in arrival order. A model that is already queued is not
queued twice. The HTTP reply does not wait for the rollout, which takes longer than MLflow's
delivery timeout. MLflow blocks webhook URLs that resolve to private or loopback addresses
unless its server runs with ``MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true``. It accepts only
``https`` unless ``MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict, deque
from http import HTTPStatus
from typing import Any, Callable, Mapping

from mlflow.exceptions import MlflowException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mlflow_triton.daemons.deliveries import (  # noqa: F401 (SECRET_ENV, signature: public here too)
    DEFAULT_TOLERANCE_S,
    EVENTS,
    MAX_ID_CHARS,
    SECRET_ENV,
    parse_event,
    read_secret,
    signature,
    verify_signature,
)
from mlflow_triton.daemons.log_format import RateLimitedLog, loggable
from mlflow_triton.daemons.metrics import RolloutMetrics
from mlflow_triton.daemons.ops_server import BackgroundServer, TLSFiles, ops_routes
from mlflow_triton.promotion import PromotionSpec, SyncReport, sync

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
#: Seconds a sender has to deliver the whole body (slow-loris guard).
BODY_TIMEOUT_S = 10.0
_KEPT_REPORTS = 100
#: Refusal log lines (forged, stale, malformed deliveries) per minute; the rest are counted.
REFUSALS_LOGGED_PER_MINUTE = 10

Reconcile = Callable[[PromotionSpec, str], SyncReport]


def register_webhook(
    url: str, secret: str | None = None, name: str = "mlflow-triton", description: str | None = None
) -> Any:
    """Register ``url`` with the MLflow server (``MLFLOW_TRACKING_URI``) for alias events.

    Returns:
        The created ``mlflow.entities.webhook.Webhook``.
    """
    from mlflow import MlflowClient

    return MlflowClient().create_webhook(
        name=name, url=url, events=list(EVENTS), secret=read_secret(secret),
        description=description or "mlflow-triton: roll registry aliases out to Triton",
    )  # fmt: skip


class WebhookReceiver:
    """An HTTP(S) server (uvicorn + Starlette) that turns signed alias events into Triton rollouts.

    Thread-safe. Requests only verify and enqueue; one worker thread runs the rollouts.
    Routes: ``POST /`` (any path) for deliveries, ``GET /healthz``, ``GET /metrics``
    (:class:`~mlflow_triton.daemons.metrics.RolloutMetrics`) and ``GET /health`` (kept for old probes).

    Args:
        spec: the models (and aliases) to follow; events for others are acknowledged, ignored.
        host / port: where to listen (``port=0`` picks a free port; see :attr:`url`).
        secret: the webhook secret; default ``$MLFLOW_TRITON_WEBHOOK_SECRET``.
        tolerance_s: replay window for timestamps.
        reconcile: ``reconcile(spec, registered_model) -> SyncReport``; default
            :func:`mlflow_triton.promotion.sync`.
        tls: serve HTTPS with this certificate and key.
        max_body_bytes: larger deliveries get 413 without being read.
        body_timeout_s: a body not received within this time gets 408.
        metrics: where rollouts are counted; default a new :class:`RolloutMetrics`.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE when no secret is configured or the address
            cannot be bound.

    Example::

        with WebhookReceiver(load_spec("promotion.yaml"), port=8080) as receiver:
            stop_event.wait()     # the CLI sets it on SIGINT/SIGTERM
    """

    def __init__(
        self,
        spec: PromotionSpec,
        host: str = "127.0.0.1",
        port: int = 8080,
        secret: str | None = None,
        tolerance_s: float = DEFAULT_TOLERANCE_S,
        reconcile: Reconcile | None = None,
        tls: TLSFiles | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        body_timeout_s: float = BODY_TIMEOUT_S,
        metrics: RolloutMetrics | None = None,
    ) -> None:
        self.spec = spec
        self._secret = read_secret(secret)
        self.tolerance_s = tolerance_s
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self._reconcile = reconcile or (lambda s, name: sync(s, registered_model=name))
        self.metrics = metrics or RolloutMetrics()
        self.reports: deque[SyncReport] = deque(maxlen=_KEPT_REPORTS)
        self.counts: dict[int, int] = {}
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._queue: deque[str] = deque()
        self._busy = False
        self.reconciles = 0
        self._refusals = RateLimitedLog(logger, burst=REFUSALS_LOGGED_PER_MINUTE, period_s=60.0)
        self._lock = threading.Condition()
        self._stopping = False
        routes = [
            *ops_routes(self.metrics.registry, self.health),
            Route("/health", self._get_health, methods=["GET"]),
            Route("/", self._post, methods=["POST"]),
            Route("/{path:path}", self._post, methods=["POST"]),
        ]  # fmt: skip
        self._http = BackgroundServer(routes, host, port, tls)
        self._worker: threading.Thread | None = None

    def __repr__(self) -> str:  # never shows the secret
        return f"WebhookReceiver(url={self.url!r}, models={[m.registered_model for m in self.spec.models]})"

    @property
    def url(self) -> str:
        return self._http.url

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "WebhookReceiver":
        """Serve in background threads (HTTP + rollout worker)."""
        self._worker = threading.Thread(target=self._work, name="webhook-rollout", daemon=True)
        self._worker.start()
        self._http.start()
        logger.info("Listening for MLflow webhooks on %s (%s)", self.url, ", ".join(EVENTS))
        return self

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Stop accepting requests, finish the rollout in progress, drop the queued ones."""
        self._http.stop()
        with self._lock:
            self._stopping = True
            dropped = list(self._queue)
            self._queue.clear()
            self._lock.notify_all()
        if dropped:
            logger.warning("Webhook receiver stopping: dropped queued rollouts of %s", dropped)
        if self._worker is not None:
            self._worker.join(timeout_s)
        logger.info("Webhook receiver stopped")

    def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """Block until no rollout is queued or running; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._queue or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)
        return True

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while the rollout worker runs; reports the queue and the reconciliations run."""
        alive = self._worker is not None and self._worker.is_alive()
        with self._lock:
            return alive, {"rollout_worker": "running" if alive else "stopped",
                           "queued": list(self._queue), "busy": self._busy,
                           "reconciles": self.reconciles}  # fmt: skip

    def __enter__(self) -> "WebhookReceiver":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- requests -----------------------------------------------------------------------------
    async def _get_health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _post(self, request: Request) -> Response:
        status, reply = await self._read_and_handle(request)
        self._count(int(status))
        return JSONResponse(reply, status_code=int(status))

    async def _read_and_handle(self, request: Request) -> tuple[int, dict[str, Any]]:
        too_large = HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body over {self.max_body_bytes} bytes"}
        declared = request.headers.get("content-length")
        if declared is not None and (not (declared.isascii() and declared.isdigit()) or int(declared) > self.max_body_bytes):
            return too_large
        chunks: list[bytes] = []
        received = 0

        async def read() -> bool:
            nonlocal received
            async for chunk in request.stream():
                received += len(chunk)
                if received > self.max_body_bytes:
                    return False
                chunks.append(chunk)
            return True

        try:
            if not await asyncio.wait_for(read(), self.body_timeout_s):
                return too_large
        except asyncio.TimeoutError:
            return HTTPStatus.REQUEST_TIMEOUT, {"error": f"body not received within {self.body_timeout_s:g}s"}
        return self.handle(request.headers, b"".join(chunks))

    def handle(self, headers: Mapping[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        """Verify and dispatch one delivery; returns ``(HTTP status, JSON reply)``.

        Never raises for a bad request: unsigned or forged deliveries get 401/403, signed
        bodies that are not an MLflow event 400. Refusals are logged at a bounded rate.
        """
        try:
            delivery_id = verify_signature(self._secret, headers, body, self.tolerance_s)
        except MlflowException as err:
            status = HTTPStatus.UNAUTHORIZED if err.error_code == "UNAUTHENTICATED" else HTTPStatus.FORBIDDEN
            self._refusals.log(logging.WARNING, "Rejected webhook (%d): %s", status, err.message)
            return status, {"error": err.message}
        shown = loggable(delivery_id, MAX_ID_CHARS)
        if not self._first_delivery(delivery_id):
            logger.info("Webhook delivery %s: duplicate, ignored", shown)
            return HTTPStatus.OK, {"status": "duplicate"}
        try:
            event = parse_event(body)
        except ValueError as err:
            self._refusals.log(logging.WARNING, "Webhook delivery %s refused (400): %s", shown, err)
            return HTTPStatus.BAD_REQUEST, {"error": f"not an MLflow webhook event: {err}"}
        if event.kind not in EVENTS:
            logger.info("Webhook delivery %s: %s ignored (not an alias event)", shown, loggable(event.kind))
            return HTTPStatus.OK, {"status": "ignored", "reason": f"event {loggable(event.kind)}"}
        try:
            name, alias, version = event.alias_move()
        except ValueError as err:
            self._refusals.log(logging.WARNING, "Webhook delivery %s refused (400): %s", shown, err)
            return HTTPStatus.BAD_REQUEST, {"error": f"not an MLflow alias event: {err}"}
        followed = self.spec.select(name, alias).models
        if not followed:
            logger.info("Webhook delivery %s: %s@%s is not in the spec, ignored", shown, loggable(name), loggable(alias))
            return HTTPStatus.OK, {"status": "ignored", "reason": "model and alias not followed"}
        moved_at = event.moved_at(headers)
        for model in followed:
            self.metrics.alias_moved(model.deployment, version, moved_at)
        queued = self._enqueue(name)
        logger.info(
            "Webhook delivery %s: %s@%s -> version %s: rollout %s", shown, name, alias,
            loggable(version), "queued" if queued else "already queued",
        )  # fmt: skip
        return HTTPStatus.ACCEPTED, {"status": "queued", "registered_model": name,
                                     "deployments": [m.deployment for m in followed]}  # fmt: skip

    def _first_delivery(self, delivery_id: str) -> bool:
        now = time.monotonic()
        with self._lock:
            while self._seen and next(iter(self._seen.values())) < now - 2 * self.tolerance_s:
                self._seen.popitem(last=False)
            if delivery_id in self._seen:
                return False
            self._seen[delivery_id] = now
            return True

    def _count(self, status: int) -> None:
        with self._lock:
            self.counts[status] = self.counts.get(status, 0) + 1

    # -- the rollout worker -------------------------------------------------------------------
    def _enqueue(self, registered_model: str) -> bool:
        with self._lock:
            if registered_model in self._queue:
                return False
            self._queue.append(registered_model)
            self._lock.notify_all()
            return True

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
                name = self._queue.popleft()
                self._busy = True
            try:
                report = self._reconcile(self.spec, name)
                self.metrics.record(report, "webhook")
                self.reports.append(report)
            except Exception:  # the worker must survive any rollout error
                logger.exception("Rollout of %s failed", name)
            finally:
                with self._lock:
                    self._busy = False
                    self.reconciles += 1
                    self._lock.notify_all()
