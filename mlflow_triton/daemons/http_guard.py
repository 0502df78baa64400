"""Connection limits for the daemons' HTTP side that an idle or slow client cannot exhaust.

The webhook receiver and ``watch --listen`` face the network for months. What a client may
hold, and for how long:

* **A request head within** :data:`HEAD_TIMEOUT_S` (10 s) of connecting, or of the previous
  response on a keep-alive connection. The deadline is absolute: bytes trickled one at a
  time (slowloris) do not extend it. Past it the connection is closed.
* **Heads of at most** :data:`MAX_HEAD_BYTES` (16 KiB, h11's bound); larger ones get 400.
* **Idle keep-alive** for ``timeout_keep_alive`` (5 s, see :mod:`.ops_server`).
* **A body** within the route's own limit (the webhook receiver: 10 s, 1 MiB, then 408/413).
* **At most** :func:`connection_limit` **connections** (256, or a quarter of the descriptor
  limit if that is lower, so that S3, Triton and MLflow connections always find
  descriptors). When a new connection would exceed it, the connection that has waited
  longest for its request head is closed to make room: a request that is actually sent is
  served, however many idle or half-sent connections a client holds. Only when every
  connection is busy with a request is the newcomer closed.

Why uvicorn with this subclass of its h11 protocol, rather than its settings alone or
another server: uvicorn's ``limit_concurrency`` counts idle connections, so 63 silent
sockets made every request, ``/healthz`` included, answer 503; and uvicorn has no timeout on
reading a request head (``timeout_keep_alive`` starts only after a response and any byte
cancels it). Hypercorn's ``read_timeout`` restarts with each byte received and it has no
connection cap either; granian runs its own worker processes, which does not fit a server
started in a thread of the daemon on a socket bound beforehand (``port=0`` in tests). The
guard is some 60 lines in a subclass of uvicorn's h11 protocol: it extends
``connection_made``, ``handle_events``, ``on_response_complete`` and ``connection_lost``
and reads ``cycle``, ``connections`` and ``transport``, which that class has had since long
before the oldest uvicorn this package accepts (``tests/test_daemon_limits.py`` would notice
a change).

TLS handshakes are bounded by asyncio's own ``ssl_handshake_timeout`` (60 s); a connection
counts toward the cap once its handshake completed.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)

#: Seconds a connection may take to deliver a complete request head.
HEAD_TIMEOUT_S = 10.0
#: Largest request head (request line and headers), h11's default bound made explicit.
MAX_HEAD_BYTES = 16 * 1024
#: Most connections held at once (see :func:`connection_limit`).
MAX_CONNECTIONS = 256


def connection_limit(maximum: int = MAX_CONNECTIONS) -> int:
    """``maximum``, or a quarter of this process's descriptor limit if that is lower (at
    least 16): the daemon's own S3, Triton and MLflow connections need descriptors too."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return maximum
    return max(16, min(maximum, soft // 4))


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head deadline and an evicting connection cap.

    uvicorn makes one instance per connection. Subclasses set :attr:`head_timeout_s` and
    :attr:`max_connections` (see :func:`guarded_protocol`).
    """

    head_timeout_s: float = HEAD_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Event-loop time since which this connection waits for a request head; None while
        #: a request is being served.
        self.waiting_since: float | None = None
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()
        live = [c for c in self.connections if not c.transport.is_closing()]
        if len(live) > self.max_connections:
            self._make_room(live)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a complete request head arrived
            self._stop_waiting()

    def on_response_complete(self) -> None:
        # Before uvicorn's handler: it may start a pipelined request, which stops the wait.
        if not self.transport.is_closing():
            self._await_head()
        super().on_response_complete()

    # -- the head deadline ----------------------------------------------------------------------
    def _await_head(self) -> None:
        self._stop_waiting()
        self.waiting_since = self.loop.time()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _stop_waiting(self) -> None:
        self.waiting_since = None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.waiting_since is not None and not self.transport.is_closing():
            logger.debug("Closed a connection from %s: no request head within %gs", self.client, self.head_timeout_s)
            self.transport.close()

    # -- the connection cap ---------------------------------------------------------------------
    def _make_room(self, live: list[Any]) -> None:
        waiting = [c for c in live if getattr(c, "waiting_since", None) is not None]
        others = [c for c in waiting if c is not self]
        victim = min(others, key=lambda c: c.waiting_since) if others else self
        logger.debug("%d connections (limit %d): closed the one idle longest", len(live), self.max_connections)
        victim._stop_waiting()
        victim.transport.close()


def guarded_protocol(head_timeout_s: float = HEAD_TIMEOUT_S, max_connections: int | None = None) -> type[GuardedH11Protocol]:
    """A :class:`GuardedH11Protocol` class with these limits, for ``uvicorn.Config(http=...)``.

    Args:
        head_timeout_s: seconds a connection may take to send a complete request head.
        max_connections: connections held at once; default :func:`connection_limit`.
    """
    limit = connection_limit() if max_connections is None else max_connections
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"head_timeout_s": head_timeout_s, "max_connections": limit})
