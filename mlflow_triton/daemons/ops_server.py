"""The daemons' HTTP side: uvicorn + Starlette in a background thread, ``/healthz`` and ``/metrics``.

``watch --listen`` serves only these two routes; ``serve-webhooks`` adds its POST route
(:mod:`mlflow_triton.daemons.webhooks`). uvicorn runs in a thread on a socket bound before it starts,
so ``port=0`` works (tests) and :attr:`BackgroundServer.url` is known at once; uvicorn's own
loggers propagate to the root logger, so ``--log-format json`` covers them too.

Connections are guarded by :mod:`mlflow_triton.daemons.http_guard`: a request head within
10 s, idle keep-alive for 5 s, a connection cap that closes the longest-idle connection to
make room instead of refusing everyone, so ``/healthz`` answers however many idle or
half-sent connections a client holds. Handlers only read state (``/healthz``, ``/metrics``)
or verify and enqueue (webhooks): nothing slow runs on the event loop, so the endpoints stay
answerable while rollouts run or queue.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import uvicorn
from mlflow.exceptions import MlflowException
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from mlflow_triton.daemons.http_guard import HEAD_TIMEOUT_S, MAX_HEAD_BYTES, guarded_protocol

#: ``() -> (healthy, details)``: what ``/healthz`` answers (200 or 503).
HealthCheck = Callable[[], "tuple[bool, dict]"]

#: Seconds uvicorn keeps an idle keep-alive connection open.
KEEP_ALIVE_S = 5


@dataclass(frozen=True)
class TLSFiles:
    """A PEM certificate (chain) and its private key; both paths must exist.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE when only one is given.
    """

    cert: str
    key: str

    @staticmethod
    def from_options(cert: str | None, key: str | None) -> "TLSFiles | None":
        if bool(cert) != bool(key):
            raise MlflowException.invalid_parameter_value(
                "TLS needs both --tls-cert (PEM certificate) and --tls-key (its private key); "
                f"got only {'--tls-cert' if cert else '--tls-key'}."
            )
        return TLSFiles(cert, key) if cert and key else None  # type: ignore[arg-type]


def ops_routes(registry: CollectorRegistry, health: HealthCheck) -> list[BaseRoute]:
    """``GET /healthz`` (200 or 503 with a JSON body) and ``GET /metrics`` (Prometheus text)."""

    async def healthz(request: Request) -> Response:
        healthy, details = health()
        return JSONResponse({"status": "ok" if healthy else "unhealthy", **details},
                            status_code=200 if healthy else 503)  # fmt: skip

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return [Route("/healthz", healthz, methods=["GET"]), Route("/metrics", metrics, methods=["GET"])]


class Heartbeat:
    """``/healthz`` of ``watch``: unhealthy when no round ended for ``stale_after_s``.

    The CLI uses 3 intervals plus :attr:`GRACE_S` (an hour): a round that publishes a large
    model takes minutes, and a liveness probe must not kill it mid-rollout; it catches a hang.
    """

    GRACE_S = 3600.0

    def __init__(self, stale_after_s: float) -> None:
        self.stale_after_s = stale_after_s
        self.last_beat = time.monotonic()
        self.rounds = 0

    def beat(self) -> None:
        """A round ended."""
        self.last_beat = time.monotonic()
        self.rounds += 1

    def check(self) -> tuple[bool, dict]:
        """A :data:`HealthCheck`."""
        since = time.monotonic() - self.last_beat
        return since < self.stale_after_s, {"rounds": self.rounds, "seconds_since_last_round": round(since, 1)}


class BackgroundServer:
    """A uvicorn server for a Starlette app, in a daemon thread.

    Args:
        routes: the app's routes.
        host / port: where to listen; ``port=0`` picks a free port (see :attr:`url`).
        tls: serve HTTPS with these files.
        head_timeout_s: seconds a connection may take to send a request head.
        max_connections: connections held at once (default: 256, or a quarter of the
            descriptor limit if lower); beyond, the longest-idle one is closed.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE when the address cannot be bound.
    """

    def __init__(
        self, routes: Sequence[BaseRoute], host: str, port: int, tls: TLSFiles | None = None,
        head_timeout_s: float = HEAD_TIMEOUT_S, max_connections: int | None = None,
    ) -> None:  # fmt: skip
        self.app = Starlette(routes=list(routes))
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
        except OSError as err:
            self._socket.close()
            raise MlflowException.invalid_parameter_value(
                f"Cannot listen on {host}:{port}: {err.strerror}. Pick a free port or another address."
            ) from err
        bound_host, bound_port = self._socket.getsockname()[:2]
        bound_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        self._url = f"{'https' if tls else 'http'}://{bound_host}:{bound_port}/"
        config = uvicorn.Config(
            self.app, log_config=None, access_log=False, lifespan="off",
            http=guarded_protocol(head_timeout_s, max_connections),
            timeout_keep_alive=KEEP_ALIVE_S, h11_max_incomplete_event_size=MAX_HEAD_BYTES,
            ssl_certfile=tls.cert if tls else None, ssl_keyfile=tls.key if tls else None,
        )  # fmt: skip
        try:
            config.load()  # here, not in the thread: a bad certificate is the caller's error
        except (ssl.SSLError, OSError) as err:
            self._socket.close()
            raise MlflowException.invalid_parameter_value(
                f"Cannot serve HTTPS with --tls-cert {tls.cert if tls else ''} --tls-key "
                f"{tls.key if tls else ''}: {err}. Give a PEM certificate and its matching private key."
            ) from err
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self._url

    @property
    def open_connections(self) -> int:
        """Connections the server holds now (not yet closed)."""
        return sum(not c.transport.is_closing() for c in list(self._server.server_state.connections))

    def start(self, timeout_s: float = 30.0) -> "BackgroundServer":
        """Start serving; returns once uvicorn accepts connections."""
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="uvicorn", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise MlflowException(f"HTTP server on {self.url} did not start (see the log above).")
            time.sleep(0.02)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop accepting, finish requests in flight (up to ``timeout_s``), close the socket."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._socket.close()
