"""A crash-safe lease on one deployment: one publisher writes ``NAME/`` at a time.

The lease is one small object, ``NAME/.mlflow-triton.lease``, written only with conditional
writes, so the store itself arbitrates (S3, MinIO: ``If-None-Match`` / ``If-Match``):

* **acquire**: create it with ``If-None-Match: *``. If it exists and is still fresh, wait and
  poll; if its holder stopped renewing it for longer than its TTL (a publisher killed with
  SIGKILL, a CI job cancelled), take it over with ``If-Match: <the ETag we read>``. Of two
  takers that read the same expired lease only one can win: the other's ``If-Match`` fails
  (412, or 409 ``ConditionalRequestConflict`` on AWS).
* **heartbeat**: a daemon thread renews it every ``ttl/3`` with ``If-Match`` on our own ETag.
  A failed renewal means another publisher took over: the lease is marked lost.
* **fencing**: :meth:`Lease.check` runs before every write that changes what serves (the
  config swap, the history, prune). It fails when the lease is lost, when our last successful
  renewal is older than the TTL minus a safety margin, or when the stored ETag is not ours.
* **age** is judged by the store's clock alone (``Date`` minus ``Last-Modified``), so clock
  skew between machines cannot make a live lease look expired.

A store that silently ignores conditional writes would let two publishers in at once: before
the first acquire, :func:`check_conditional_writes` proves that it honours them, on a probe
object, and refuses to continue otherwise.

Limits: between a successful :meth:`Lease.check` and the write it guards there is a window
(milliseconds, a few requests) in which a paused process could lose its lease unnoticed; the
safety margin (``ttl/3`` without a renewal) makes that require a pause longer than that
margin at exactly that point. S3 offers no conditional write across two keys, so no lease on
S3 can close this window completely.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Callable, TypeVar

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import ABORTED, INVALID_STATE, RESOURCE_ALREADY_EXISTS

from mlflow_triton.repository.concurrency import concurrently
from mlflow_triton.repository.layout import LEASE_FILE
from mlflow_triton.repository.store import ModelRepositoryStore, StoredObject

logger = logging.getLogger(__name__)

#: A lease not renewed for this long is expired; a killed publisher blocks others this long.
DEFAULT_TTL_S = 30.0
#: How long a publisher waits for a lease held by a live publisher before giving up.
DEFAULT_WAIT_S = 120.0
POLL_S = 1.0

#: ``{lease URL: ETag}`` of leases this process held but could not delete (the store was
#: unreachable at release). Their holder is known to be done, so this process may take them
#: over at once, with ``If-Match`` on that ETag, instead of waiting for them to expire.
_ABANDONED: dict[str, str] = {}
_ABANDONED_LOCK = threading.Lock()

T = TypeVar("T")


class LeaseHeld(MlflowException):
    """Another live publisher holds the lease (RESOURCE_ALREADY_EXISTS)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=RESOURCE_ALREADY_EXISTS)


class LeaseLost(MlflowException):
    """This publisher's lease expired or was taken over: it must stop writing (ABORTED)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=ABORTED)


class ConditionalWritesUnsupported(MlflowException):
    """The store accepts conditional writes but does not honour them (INVALID_STATE)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_STATE)


def check_conditional_writes(
    store: ModelRepositoryStore, folder: str, then: Callable[[], T] | None = None
) -> T | None:
    """Prove on a probe object under ``folder`` that the store refuses a second
    ``If-None-Match: *`` create and an ``If-Match`` on a stale ETag; once per store object.

    Three round trips of latency: the probe's create, then both writes that must fail at once
    (each is refused or not on its own), then the probe's deletion at once with ``then`` (the
    lease's first acquire), which runs only once the proof holds.

    Args:
        then: called once the store is proven (or was proven before); its result is returned.

    Raises:
        ConditionalWritesUnsupported: before anything but the probe object was written.
    """
    if getattr(store, "_conditional_writes_checked", False):
        return then() if then is not None else None
    key = f"{folder}.mlflow-triton.probe-{uuid.uuid4().hex}"
    try:
        etag = store.create_exclusive(key, b"probe")
        created_again, replaced_stale = concurrently(
            lambda: store.create_exclusive(key, b"probe-again"),
            lambda: store.replace_if_match(key, b"probe-stale", "0" * 32),
        )
    except BaseException:
        store.delete(key)
        raise
    ignored = []
    if etag is None or created_again is not None:
        ignored.append("If-None-Match")
    if replaced_stale is not None:
        ignored.append("If-Match")
    if ignored:
        store.delete(key)
        raise ConditionalWritesUnsupported(
            f"The model repository {store.uri} ignores conditional writes ({' and '.join(ignored)}),"
            " so publishers could overwrite each other; nothing was published. Use AWS S3, MinIO "
            "or another store that honours If-None-Match/If-Match on PutObject, and check that no "
            "proxy between this process and the store drops those headers."
        )
    store._conditional_writes_checked = True  # type: ignore[attr-defined]
    return concurrently(lambda: then() if then is not None else None, lambda: store.delete(key))[0]


class Lease:
    """The lease on one deployment; use :meth:`ModelPublisher.lease` to hold it.

    Args:
        store: the repository.
        name: the deployment (model folder).
        ttl_s: seconds without renewal after which others may take the lease over.
        wait_s: how long :meth:`acquire` waits for a live holder before raising.
        clock: monotonic clock (injectable for tests).
    """

    def __init__(
        self,
        store: ModelRepositoryStore,
        name: str,
        ttl_s: float = DEFAULT_TTL_S,
        wait_s: float = DEFAULT_WAIT_S,
        clock=time.monotonic,
    ) -> None:
        if ttl_s <= 0:
            raise MlflowException.invalid_parameter_value(f"Lease TTL must be > 0 s, got {ttl_s}.")
        self.store = store
        self.name = name
        self.key = f"{name}/{LEASE_FILE}"
        self.ttl_s = ttl_s
        self.wait_s = wait_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.etag: str | None = None
        self.lost_reason: str | None = None
        self.took_over: dict[str, Any] | None = None
        self._clock = clock
        self._renewed_at = 0.0
        self._lock = threading.Lock()
        #: Serializes renew(), check() and release() against each other: otherwise check()
        #: could read the store between a renewal's write and its ETag update, and take our
        #: own renewal for a takeover.
        self._io_lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    # -- acquiring ---------------------------------------------------------------------------
    def body(self) -> bytes:
        return json.dumps({"owner": self.owner, "ttl_s": self.ttl_s, "renewed": time.time()}).encode()

    def _ours(self, held: StoredObject | None) -> bool:
        """True when the stored lease carries our owner token (unique to this object): after
        a conditional write answered "not written", this tells a client retry of a write that
        did reach the store (a lost response, a timeout: the retry gets 412) from a loss."""
        return held is not None and _describe(held).get("owner") == self.owner

    def try_acquire(self) -> bool:
        """One attempt: create the lease, or take over an expired one. True when held."""
        etag = self.store.create_exclusive(self.key, self.body())
        if etag is None:
            held = self.store.read_object(self.key)
            if held is None:  # released between our create and our read: try again
                etag = self.store.create_exclusive(self.key, self.body())
            elif self._ours(held):
                etag = held.etag
            elif self.expired(held) or self._abandoned_by_us(held):
                etag = self.store.replace_if_match(self.key, self.body(), held.etag)
                if etag is None and self._ours(current := self.store.read_object(self.key)):
                    etag = current.etag
                if etag is not None:
                    self.took_over = _describe(held)
                    logger.warning(
                        "Took over the lease of %s from %s (not renewed for %.0fs)", self.name,
                        self.took_over.get("owner"), held.age_s,
                    )  # fmt: skip
        if etag is None:
            return False
        with self._lock:
            self.etag, self._renewed_at, self.lost_reason = etag, self._clock(), None
        with _ABANDONED_LOCK:
            _ABANDONED.pop(self.store.url(self.key), None)
        return True

    def _abandoned_by_us(self, held: StoredObject) -> bool:
        with _ABANDONED_LOCK:
            return _ABANDONED.get(self.store.url(self.key)) == held.etag

    def expired(self, held: StoredObject) -> bool:
        """A lease is expired when its holder did not renew it within the holder's TTL."""
        ttl = _describe(held).get("ttl_s")
        ttl = float(ttl) if isinstance(ttl, (int, float)) and ttl > 0 else self.ttl_s
        return held.age_s > ttl

    def acquire(self) -> "Lease":
        """Acquire, waiting up to ``wait_s`` for a live holder; then start the heartbeat.

        Raises:
            LeaseHeld: another publisher kept the lease alive for ``wait_s`` seconds.
            ConditionalWritesUnsupported: the store does not honour conditional writes.
        """
        deadline = self._clock() + self.wait_s
        try:
            held = check_conditional_writes(self.store, f"{self.name}/", then=self.try_acquire)
        except BaseException:
            if self.etag is not None:  # acquired while the probe's deletion failed
                self.release()
            raise
        while not held:
            if self._clock() >= deadline:
                holder = self.store.read_object(self.key)
                owner = _describe(holder).get("owner") if holder else "unknown"
                raise LeaseHeld(
                    f"Another publish of {self.name!r} holds the lease {self.store.url(self.key)} "
                    f"(owner {owner}) and kept it alive for {self.wait_s:.0f}s; retry when it "
                    f"finishes. A dead publisher's lease expires by itself after {self.ttl_s:.0f}s."
                )
            time.sleep(POLL_S)
            held = self.try_acquire()
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._beat, name=f"lease-{self.name}", daemon=True)
        self._heartbeat.start()
        return self

    # -- holding -----------------------------------------------------------------------------
    def renew(self) -> bool:
        """Rewrite the lease with ``If-Match`` on our ETag; False (and lost) if it is not ours."""
        with self._io_lock:
            with self._lock:
                etag = self.etag
            if etag is None or self.lost_reason:
                return False
            new = self.store.replace_if_match(self.key, self.body(), etag)
            if new is None and self._ours(current := self.store.read_object(self.key)):
                new = current.etag
            with self._lock:
                if new is None:
                    self.lost_reason = "another publisher took the lease over"
                    return False
                self.etag, self._renewed_at = new, self._clock()
            return True

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.renew():
                    logger.error("Lost the lease of %s: %s", self.name, self.lost_reason)
                    return
            except Exception as err:  # the store is unreachable: check() fences on the age
                logger.warning("Could not renew the lease of %s: %s", self.name, err)

    def held_locally(self) -> bool:
        """True while no one can have taken the lease over, judged without the store: it is
        not known lost and was renewed within 2/3 of its TTL (a taker waits the whole TTL).
        For clean-up after a failure, when the store itself may be what failed."""
        with self._lock:
            return self.lost_reason is None and self._clock() - self._renewed_at <= self.ttl_s * 2 / 3

    def check(self, before: str) -> None:
        """Fencing: raise :class:`LeaseLost` unless this publisher still holds the lease.

        Args:
            before: what is about to be written, for the message.
        """
        with self._io_lock:
            with self._lock:
                reason = self.lost_reason
                stale = self._clock() - self._renewed_at
                etag = self.etag
            if reason is None and stale > self.ttl_s * 2 / 3:
                reason = f"not renewed for {stale:.0f}s (TTL {self.ttl_s:.0f}s)"
            if reason is None:
                held = self.store.read_object(self.key)
                if held is None or held.etag != etag:
                    reason = "the lease object changed: another publisher took it over"
        if reason is not None:
            with self._lock:
                self.lost_reason = reason
            raise LeaseLost(
                f"Stopped before {before} of {self.name!r}: this publisher lost its lease "
                f"({reason}). Nothing more was written; the publisher holding the lease now "
                "finishes or cleans up."
            )

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours. Never raises."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
        try:
            with self._io_lock:
                # A lease not renewed for 2/3 of its TTL may be taken over between our read
                # and our delete: leave it to expire rather than delete someone else's.
                fresh = self.held_locally()
                held = self.store.read_object(self.key)
                if fresh and held is not None and held.etag == self.etag:
                    self.store.delete(self.key)
        except Exception as err:  # S3 unreachable: the lease expires by itself after its TTL
            if self.etag is not None and not self.lost_reason:
                with _ABANDONED_LOCK:
                    _ABANDONED[self.store.url(self.key)] = self.etag
            logger.warning(
                "Could not release the lease %s (%s); it expires by itself in %.0fs (at once "
                "for this process).",
                self.store.url(self.key), err, self.ttl_s,
            )  # fmt: skip

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _describe(held: StoredObject | None) -> dict[str, Any]:
    if held is None:
        return {}
    try:
        body = json.loads(held.data)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
