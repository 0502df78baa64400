"""The deployment lease (mlflow_triton.repository.lease): exclusion, takeover, heartbeat, fencing.

Races are never left to timing: moto checks ``If-None-Match`` / ``If-Match`` and then writes
without a lock, so two truly concurrent writers could both "win" on it. Every race below is
an injected interleaving instead: a store wrapper hands a lease a stale snapshot, or runs the
other publisher's step between this one's read and its conditional write. What is asserted is
what the store decides once the interleaving is fixed.

Stores: the session stack's moto S3 (a fresh model name per test, under
``stack.model_repository``) and a :class:`~mlflow_triton.repository.store.LocalStore`. AWS's own answer
to racing conditional writes (409 ``ConditionalRequestConflict``) is replayed with botocore's
``Stubber``. A loopback HTTP proxy that drops the conditional headers stands for a store (or a
gateway) that ignores them.

Three tests were written as strict xfails against bugs they found (check() taking our own
renewal for a takeover; If-Match on a vanished key raising on S3 and on a local store); they
pass since the fixes.
"""

from __future__ import annotations

import datetime as dt
import http.client
import io
import json
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urlparse

import botocore.session
import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber
from mlflow.exceptions import MlflowException
from models import Scorer, log_onnx

from mlflow_triton.flavors.registry import resolve_model
from mlflow_triton.local.processes import free_port
from mlflow_triton.repository.layout import CONFIG_FILE, LEASE_FILE
from mlflow_triton.repository.lease import ConditionalWritesUnsupported, Lease, LeaseHeld, LeaseLost
from mlflow_triton.repository.local_store import LocalStore
from mlflow_triton.repository.s3_store import S3Store
from mlflow_triton.repository.store import StoredObject
from mlflow_triton.rollout.publisher import ModelPublisher
from mlflow_triton.rollout.switch import Rollout
from mlflow_triton.settings.deployment import DeploymentConfig

integration = pytest.mark.integration
CPU = {"instance_kind": "cpu"}
HISTORY_FILE = "mlflow-triton-history.json"


# -- helpers ----------------------------------------------------------------------------------
@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path):
    """``"s3"``: the stack's moto S3 through the plugin's own client; ``"local"``: a directory."""
    if request.param == "s3":
        stack = request.getfixturevalue("stack")
        return S3Store(stack.model_repository, endpoint_url=stack.s3_endpoint)
    (tmp_path / "repo").mkdir()
    return LocalStore(tmp_path / "repo")


BOTH_STORES = pytest.mark.parametrize(
    "store", [pytest.param("s3", marks=integration), "local"], indirect=True
)


@pytest.fixture
def name(store, unique_name: str):
    """A fresh deployment name; whatever a test leaves under it is removed afterwards."""
    yield unique_name
    store.delete_prefix(f"{unique_name}/")


class Intercepted:
    """A store that delegates everything, except the hooks a test sets for the lease key.

    ``snapshot``: what ``read_object`` of the lease returns (once), as if read earlier.
    ``before_replace``: runs (once) between this lease's read and its ``If-Match`` write, i.e.
    another publisher acting while this one is paused.
    ``before_read``: runs (once) just before a read of the lease.
    """

    def __init__(self, inner, key: str) -> None:
        self._inner, self._key = inner, key
        self.snapshot: StoredObject | None = None
        self.before_replace: Callable[[], Any] | None = None
        self.before_read: Callable[[], Any] | None = None

    def __getattr__(self, attribute: str):
        return getattr(self._inner, attribute)

    def read_object(self, key: str) -> StoredObject | None:
        if key == self._key and self.before_read is not None:
            hook, self.before_read = self.before_read, None
            hook()
        if key == self._key and self.snapshot is not None:
            snapshot, self.snapshot = self.snapshot, None
            return snapshot
        return self._inner.read_object(key)

    def replace_if_match(self, key: str, data: bytes, etag: str) -> str | None:
        if key == self._key and self.before_replace is not None:
            hook, self.before_replace = self.before_replace, None
            hook()
        return self._inner.replace_if_match(key, data, etag)


def lease_key(name: str) -> str:
    return f"{name}/{LEASE_FILE}"


def owner_of(store, name: str) -> str | None:
    held = store.read_object(lease_key(name))
    return json.loads(held.data)["owner"] if held is not None else None


def wait_expired(store, name: str, ttl_s: float) -> StoredObject:
    """Until the store itself says the lease is older than ``ttl_s`` (S3: whole seconds of
    ``Date`` minus ``Last-Modified``, so up to ~2 s more than ``ttl_s`` of real time)."""
    deadline = time.monotonic() + ttl_s + 6
    while True:
        held = store.read_object(lease_key(name))
        assert held is not None, "the lease vanished"
        if held.age_s > ttl_s:
            return held
        assert time.monotonic() < deadline, f"the lease never aged past {ttl_s}s (age {held.age_s})"
        time.sleep(0.2)


def lease_body(owner: str, ttl_s: float, renewed: float) -> bytes:
    return json.dumps({"owner": owner, "ttl_s": ttl_s, "renewed": renewed}).encode()


# -- 1. exclusion ------------------------------------------------------------------------------
@BOTH_STORES
def test_a_held_lease_excludes_others_until_released(store, name):
    first = Lease(store, name, ttl_s=30, wait_s=0).acquire()
    try:
        assert owner_of(store, name) == first.owner
        second = Lease(store, name, ttl_s=30, wait_s=0)
        with pytest.raises(LeaseHeld) as refused:
            second.acquire()
        assert type(refused.value) is LeaseHeld
        assert refused.value.error_code == "RESOURCE_ALREADY_EXISTS"
        assert second.etag is None and second._heartbeat is None
        first.check("the config swap")  # the refused attempt did not disturb the holder
        assert owner_of(store, name) == first.owner
    finally:
        first.release()
    assert store.read_object(lease_key(name)) is None
    assert store.list_dir(f"{name}/") == ([], [])  # neither lease nor probe object is left
    third = Lease(store, name, ttl_s=30, wait_s=0).acquire()  # released: free again
    try:
        assert owner_of(store, name) == third.owner and third.took_over is None
    finally:
        third.release()


# -- 2. takeover race --------------------------------------------------------------------------
@BOTH_STORES
@pytest.mark.parametrize("interleaving", ["same-snapshot", "paused-between-read-and-write"])
def test_two_takers_of_an_expired_lease_one_wins(store, name, interleaving):
    key = lease_key(name)
    dead = Lease(store, name, ttl_s=1)
    assert dead.try_acquire()  # no heartbeat: its holder "was killed" right after acquiring
    expired = wait_expired(store, name, 1)
    a_store, b_store = Intercepted(store, key), Intercepted(store, key)
    a, b = Lease(a_store, name, ttl_s=30), Lease(b_store, name, ttl_s=30)
    assert a.expired(expired) and b.expired(expired)
    if interleaving == "same-snapshot":
        a_store.snapshot = b_store.snapshot = expired  # both read the same expired lease
        assert a.try_acquire()  # A replaces first ...
        assert not b.try_acquire()  # ... so B's If-Match on the ETag it read must fail
    else:
        # B reads the expired lease, then pauses; A reads, takes over; B resumes its write.
        def a_takes_over() -> None:
            assert a.try_acquire(), "A could not take the expired lease over"

        b_store.before_replace = a_takes_over
        assert not b.try_acquire()
        assert b_store.before_replace is None, "B never reached its conditional replace"
    held = store.read_object(key)
    assert json.loads(held.data)["owner"] == a.owner and held.etag == a.etag
    assert a.took_over is not None and a.took_over["owner"] == dead.owner
    assert b.etag is None and b.took_over is None
    with pytest.raises(LeaseLost):
        b.check("the config swap")
    a.check("the config swap")
    assert not dead.renew()  # the dead holder waking up cannot renew A's lease ...
    dead.release()  # ... nor delete it
    assert owner_of(store, name) == a.owner
    a.release()
    assert store.read_object(key) is None


# -- 3. AWS's 409 ConditionalRequestConflict ---------------------------------------------------
def stubbed_s3() -> tuple[S3Store, Stubber]:
    client = botocore.session.get_session().create_client(
        "s3", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    return S3Store("s3://bucket/repo", client=client), Stubber(client)


def put_params(key: str, **condition: str) -> dict[str, Any]:
    return {"Bucket": "bucket", "Key": f"repo/{key}", "Body": ANY, **condition}


def get_response(data: bytes, etag: str, age_s: int) -> dict[str, Any]:
    modified = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    return {
        "Body": StreamingBody(io.BytesIO(data), len(data)),
        "ETag": f'"{etag}"',
        "LastModified": modified,
        "ResponseMetadata": {
            "HTTPStatusCode": 200,
            "HTTPHeaders": {"date": formatdate(modified.timestamp() + age_s, usegmt=True)},
        },
    }


CONFLICTS = [(409, "ConditionalRequestConflict"), (412, "PreconditionFailed")]


def stub_conditional_puts(stub: Stubber, code: str, status: int) -> None:
    """The error for a create (``If-None-Match: *``), then for a replace (``If-Match``)."""
    for condition in ({"IfNoneMatch": "*"}, {"IfMatch": '"e1"'}):
        stub.add_client_error(
            "put_object", code, "failed", status, expected_params=put_params("m/k", **condition)
        )


@pytest.mark.parametrize("status,code", CONFLICTS)
def test_a_failed_condition_means_not_written(status, code):
    store, stub = stubbed_s3()
    stub_conditional_puts(stub, code, status)
    with stub:
        assert store.create_exclusive("m/k", b"x") is None
        assert store.replace_if_match("m/k", b"x", "e1") is None
    stub.assert_no_pending_responses()


@pytest.mark.parametrize(
    "status,code", [(500, "InternalError"), (403, "AccessDenied"), (400, "InvalidRequest")]
)
def test_any_other_error_of_a_conditional_write_raises(status, code):
    store, stub = stubbed_s3()
    stub_conditional_puts(stub, code, status)
    with stub:
        with pytest.raises(MlflowException) as create:
            store.create_exclusive("m/k", b"x")
        with pytest.raises(MlflowException) as replace:
            store.replace_if_match("m/k", b"x", "e1")
    for raised in (create, replace):
        assert raised.value.error_code == "INTERNAL_ERROR" and code in raised.value.message
    stub.assert_no_pending_responses()


@pytest.mark.parametrize("holder", ["live", "expired"])
def test_try_acquire_that_loses_a_409_race_returns_false(holder):
    """The create loses to a concurrent writer (409). A live winner: False. An expired lease
    that another taker replaces at the same instant (409 again): False, not an exception."""
    store, stub = stubbed_s3()
    key = lease_key("m")
    stub.add_client_error(
        "put_object", "ConditionalRequestConflict", "race", 409,
        expected_params=put_params(key, IfNoneMatch="*"),
    )  # fmt: skip
    body = lease_body("winner", 30, time.time())
    stub.add_response(
        "get_object", get_response(body, "e1", 1 if holder == "live" else 100),
        expected_params={"Bucket": "bucket", "Key": f"repo/{key}"},
    )  # fmt: skip
    if holder == "expired":
        stub.add_client_error(
            "put_object", "ConditionalRequestConflict", "race", 409,
            expected_params=put_params(key, IfMatch='"e1"'),
        )  # fmt: skip
        # "Not written" is double-checked: was it our write, its response lost? No: the other taker's.
        stub.add_response(
            "get_object", get_response(lease_body("other-taker", 30, time.time()), "e2", 0),
            expected_params={"Bucket": "bucket", "Key": f"repo/{key}"},
        )  # fmt: skip
    lease = Lease(store, "m", ttl_s=30)
    with stub:
        assert lease.try_acquire() is False
    stub.assert_no_pending_responses()
    assert lease.etag is None and lease.took_over is None


# -- 4. heartbeat ------------------------------------------------------------------------------
@pytest.mark.parametrize("store", [pytest.param("s3", marks=integration)], indirect=True)
def test_heartbeat_keeps_the_lease_and_a_paused_holder_loses_it(store, name):
    ttl = 3.0
    holder = Lease(store, name, ttl_s=ttl, wait_s=0).acquire()
    try:
        started, renewals, last = time.monotonic(), 0, holder.etag
        while time.monotonic() - started < 2 * ttl + 1:
            # Each renewal must come within the TTL; checking right after one keeps the
            # holder's own next renewal (ttl/3 later) out of the check's read.
            deadline = time.monotonic() + ttl
            while (held := store.read_object(lease_key(name))).etag == last or holder.etag != held.etag:
                assert time.monotonic() < deadline, "the heartbeat did not renew within the TTL"
                time.sleep(0.05)
            last, renewals = held.etag, renewals + 1
            holder.check("the config swap")
            with pytest.raises(LeaseHeld):
                Lease(store, name, ttl_s=ttl, wait_s=0).acquire()
        assert renewals >= 5  # about one per ttl/3
        assert owner_of(store, name) == holder.owner and holder.lost_reason is None

        # The holder's process pauses (its heartbeat stops); past the TTL another takes over.
        holder._stop.set()
        holder._heartbeat.join(timeout=5)
        assert not holder._heartbeat.is_alive()
        wait_expired(store, name, ttl)
        taker = Lease(store, name, ttl_s=ttl, wait_s=0).acquire()
        try:
            assert taker.took_over is not None and taker.took_over["owner"] == holder.owner
            with pytest.raises(LeaseLost) as lost:
                holder.check("the config swap")
            assert type(lost.value) is LeaseLost and lost.value.error_code == "ABORTED"
            assert not holder.renew()  # the holder resumes: its renewal is refused
            holder.release()  # and its release leaves the new holder's lease alone
            assert owner_of(store, name) == taker.owner
            taker.check("the config swap")
        finally:
            taker.release()
    finally:
        holder.release()


def test_check_fences_on_the_stored_etag_even_when_recently_renewed(tmp_path):
    """Taken over while our own clock says we renewed just now (a frozen clock): still lost."""
    store = LocalStore(tmp_path)
    holder = Lease(store, "m", ttl_s=30, clock=lambda: 1000.0)
    assert holder.try_acquire()
    holder.check("the config swap")
    store.write_bytes(lease_key("m"), lease_body("intruder", 30, time.time()))
    with pytest.raises(LeaseLost) as lost:
        holder.check("the config swap")
    assert lost.value.error_code == "ABORTED"


def test_check_does_not_mistake_our_own_renewal_for_a_takeover(tmp_path):
    store = Intercepted(LocalStore(tmp_path), lease_key("m"))
    holder = Lease(store, "m", ttl_s=30)
    assert holder.try_acquire()
    renewed: list[bool] = []
    heartbeat = threading.Thread(target=lambda: renewed.append(holder.renew()))

    def heartbeat_fires_now() -> None:  # the heartbeat thread wakes during check()'s read
        heartbeat.start()
        heartbeat.join(0.5)  # it must wait for check() to finish, not slip in between

    store.before_read = heartbeat_fires_now
    holder.check("the config swap")
    heartbeat.join(10)
    assert renewed == [True]
    holder.check("the config swap")  # the renewal's new ETag is ours too


# -- 5. fencing in a real publish --------------------------------------------------------------
def logged(tmp_path: Path, seed: int):
    folder = tmp_path / f"model-{seed}"
    folder.mkdir()
    return resolve_model(log_onnx(Scorer(seed=seed), folder))


@integration
def test_a_publisher_that_lost_its_lease_does_not_swap_the_config(stack, unique_name, tmp_path, monkeypatch):
    from tritonclient.http import InferenceServerClient

    config = DeploymentConfig.from_dict(
        {**CPU, "model_repository": stack.model_repository, "s3_endpoint_url": stack.s3_endpoint}
    )
    publisher = ModelPublisher.for_config(config, stack.triton_urls)
    store, name = publisher.store, unique_name
    try:
        assert publisher.publish(name, logged(tmp_path, 1)).version == 1
        config_before = store.read_bytes(f"{name}/{CONFIG_FILE}")
        history_before = store.read_bytes(f"{name}/{HISTORY_FILE}")
        intruder = lease_body("another-publisher", 30, time.time())
        original, reached = Rollout.switch, []

        def switch(self, *args, **kwargs):
            # A taker overwrote our lease while we verified (we were paused past the TTL).
            self.store.write_bytes(self.lease.key, intruder)
            reached.append(args[0])
            return original(self, *args, **kwargs)

        monkeypatch.setattr(Rollout, "switch", switch)
        second = logged(tmp_path, 2)
        with pytest.raises(LeaseLost) as lost:
            publisher.publish(name, second)
        assert type(lost.value) is LeaseLost and lost.value.error_code == "ABORTED"
        assert reached == [2]
        assert store.read_bytes(f"{name}/{CONFIG_FILE}") == config_before
        assert store.read_bytes(f"{name}/{HISTORY_FILE}") == history_before
        assert store.read_bytes(lease_key(name)) == intruder  # the new holder's lease is kept
        for url in stack.triton_urls:
            triton = InferenceServerClient(urlparse(url).netloc)
            try:
                assert triton.is_model_ready(name, "1"), url
                assert not triton.is_model_ready(name, "2"), url
            finally:
                triton.close()
    finally:
        monkeypatch.undo()
        store.delete(lease_key(name))  # the test's intruder: otherwise delete() waits out its TTL
        publisher.delete(name)


# -- 6. a store that ignores conditional writes -----------------------------------------------
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
    "upgrade", "expect", "content-length",
}  # fmt: skip
MAX_BODY = 64 * 1024 * 1024


class _StrippingHandler(BaseHTTPRequestHandler):
    """Forwards to ``proxy.target`` without the headers named in ``proxy.strip``."""

    proxy: "HeaderStrippingProxy"

    protocol_version = "HTTP/1.1"
    timeout = 30

    def log_message(self, *args: Any) -> None:
        pass

    def read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, size = [], 0
            while (length := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                size += length
                if size > MAX_BODY:
                    raise ValueError("request body too large")
                chunks.append(self.rfile.read(length))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("request body too large")
        return self.rfile.read(length) if length else None

    def forward(self) -> None:
        try:
            body = self.read_body()
        except ValueError:
            self.send_error(413)
            self.close_connection = True
            return
        headers = {}
        for header, value in self.headers.items():
            if header.lower() in self.proxy.strip:
                with self.proxy._lock:
                    self.proxy.stripped[header.lower()] = self.proxy.stripped.get(header.lower(), 0) + 1
            elif header.lower() not in HOP_BY_HOP:
                headers[header] = value
        if body is not None:
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(*self.proxy.target, timeout=30)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            response_headers = response.getheaders()
            length = response.getheader("Content-Length", "0")
        finally:
            upstream.close()
        # send_response_only: no second Date/Server header beside the store's own.
        self.send_response_only(response.status, response.reason)
        for header, value in response_headers:
            if header.lower() not in HOP_BY_HOP:
                self.send_header(header, value)
        self.send_header("Content-Length", length if self.command == "HEAD" else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward


class _BoundedServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slots = threading.BoundedSemaphore(16)  # one proxy's threads at most

    def process_request(self, request, client_address):
        if not self.slots.acquire(timeout=30):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class HeaderStrippingProxy:
    """A loopback HTTP proxy in front of ``target`` that drops the request headers ``strip``.

    Bounded: at most 16 connections served at once, 64 MB per request body, 30 s per upstream
    request; ``with`` starts and stops it.
    """

    def __init__(self, target: str, strip: Iterable[str]) -> None:
        parsed = urlparse(target)
        self.target = (parsed.hostname, parsed.port)
        self.strip = {h.lower() for h in strip}
        self.stripped: dict[str, int] = {}
        self.port = free_port()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "HeaderStrippingProxy":
        handler = type("Handler", (_StrippingHandler,), {"proxy": self})
        self._server = _BoundedServer(("127.0.0.1", self.port), handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def repo_objects(stack, name: str) -> dict[str, str]:
    """``{key: etag}`` under ``NAME/``, listed straight from moto (never through the proxy)."""
    pages = stack.s3_client().get_paginator("list_objects_v2").paginate(
        Bucket=stack.bucket, Prefix=f"{stack.prefix}/{name}/"
    )
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


CONDITIONAL = ("If-None-Match", "If-Match")


@integration
@pytest.mark.parametrize(
    "strip", [CONDITIONAL, ("If-None-Match",), ("If-Match",), ()], ids=lambda s: "-".join(s) or "none"
)
def test_acquire_refuses_a_store_that_ignores_conditional_writes(stack, unique_name, strip):
    with HeaderStrippingProxy(stack.s3_endpoint, strip) as proxy:
        proxied = S3Store(stack.model_repository, endpoint_url=proxy.url)
        lease = Lease(proxied, unique_name, ttl_s=30, wait_s=0)
        assert repo_objects(stack, unique_name) == {}
        if strip:
            with pytest.raises(ConditionalWritesUnsupported) as refused:
                lease.acquire()
            assert type(refused.value) is ConditionalWritesUnsupported
            assert refused.value.error_code == "INVALID_STATE"
            assert lease._heartbeat is None and lease.etag is None
            assert set(proxy.stripped) == {h.lower() for h in strip}  # the proxy did its part
        else:  # the same path with the headers intact: the proxy itself is transparent
            lease.acquire()
            try:
                assert repo_objects(stack, unique_name) == {
                    f"{stack.prefix}/{lease_key(unique_name)}": f'"{lease.etag}"'
                }
            finally:
                lease.release()
            assert proxy.stripped == {}
    assert repo_objects(stack, unique_name) == {}


@integration
def test_publish_refuses_a_store_that_ignores_conditional_writes(stack, unique_name, tmp_path):
    source = logged(tmp_path, 3)
    settings = {**CPU, "model_repository": stack.model_repository}
    with HeaderStrippingProxy(stack.s3_endpoint, CONDITIONAL) as proxy:
        config = DeploymentConfig.from_dict({**settings, "s3_endpoint_url": proxy.url})
        proxied = ModelPublisher.for_config(config, stack.triton_urls)
        assert repo_objects(stack, unique_name) == {}
        with pytest.raises(ConditionalWritesUnsupported) as refused:
            proxied.publish(unique_name, source)
        assert refused.value.error_code == "INVALID_STATE"
        assert proxy.stripped  # the probe's conditional headers went through it and were lost
    assert repo_objects(stack, unique_name) == {}  # no lease, no probe, no version

    direct = ModelPublisher.for_config(
        DeploymentConfig.from_dict({**settings, "s3_endpoint_url": stack.s3_endpoint}), stack.triton_urls
    )
    try:
        assert direct.publish(unique_name, source).version == 1  # the same publish, direct
        objects = repo_objects(stack, unique_name)
        assert f"{stack.prefix}/{unique_name}/{CONFIG_FILE}" in objects
        assert not any(LEASE_FILE in k or "probe" in k for k in objects)
    finally:
        direct.delete(unique_name)


# -- 7. expiry by the store's clock ------------------------------------------------------------
def test_expiry_is_judged_by_age_not_by_the_body_timestamp():
    judge = Lease(LocalStore("/nonexistent"), "m", ttl_s=30)
    future = lease_body("fast-clock", 5, time.time() + 10 * 365 * 86400)
    past = lease_body("slow-clock", 5, 0.0)
    assert judge.expired(StoredObject(future, "e", age_s=6))
    assert not judge.expired(StoredObject(past, "e", age_s=0))
    assert not judge.expired(StoredObject(past, "e", age_s=5))  # not past its TTL yet
    # The holder's TTL counts, not the taker's: a long-TTL holder is alive at 31 s of age.
    assert not judge.expired(StoredObject(lease_body("patient", 120, 0.0), "e", age_s=31))
    assert judge.expired(StoredObject(b"not json", "e", age_s=31))  # unreadable: the taker's TTL


@BOTH_STORES
def test_expiry_on_a_real_store_ignores_the_holders_clock(store, name):
    key = lease_key(name)
    # A holder whose clock is far in the past: its lease is fresh and must not be taken.
    store.write_bytes(key, lease_body("slow-clock", 1, 0.0))
    taker = Lease(store, name, ttl_s=30)
    assert not taker.try_acquire()
    assert owner_of(store, name) == "slow-clock"
    # A holder whose clock is far in the future: its lease still expires by the store's age.
    store.write_bytes(key, lease_body("fast-clock", 1, time.time() + 10 * 365 * 86400))
    assert not taker.try_acquire()  # fresh
    wait_expired(store, name, 1)
    assert taker.try_acquire()
    assert taker.took_over is not None and taker.took_over["owner"] == "fast-clock"
    assert owner_of(store, name) == taker.owner
    taker.release()


# -- store contract: a lease that vanished between a taker's read and its If-Match -------------
@pytest.mark.parametrize(
    "store,deployment",
    [
        pytest.param("s3", "new", marks=[integration]),
        pytest.param("s3", "existing", marks=[integration]),
        pytest.param("local", "new"),
        pytest.param("local", "existing"),
    ],
    indirect=["store"],
)
def test_a_lease_released_between_a_takers_read_and_its_replace(store, name, deployment):
    """The lease a taker saw expired is deleted between the taker's read and its ``If-Match``
    (by an operator, or a holder's release). The taker must see "not replaced" and retry, not
    crash. ``new``: the lease is alone in ``NAME/`` (a first publish); ``existing``: beside a
    config.pbtxt. A holder whose lease went stale no longer deletes it (that could be someone
    else's by now): checked last."""
    key = lease_key(name)
    if deployment == "existing":
        store.write_bytes(f"{name}/{CONFIG_FILE}", b'name: "x"')
    slow = Lease(store, name, ttl_s=1)
    assert slow.try_acquire()
    wait_expired(store, name, 1)
    taker_store = Intercepted(store, key)
    taker = Lease(taker_store, name, ttl_s=30)
    taker_store.before_replace = lambda: store.delete(key)  # gone before the If-Match
    assert taker.try_acquire() is False  # not an exception: the next poll creates it
    assert taker_store.before_replace is None and store.read_object(key) is None
    assert taker.try_acquire() and owner_of(store, name) == taker.owner
    slow.release()  # stale: it must leave the taker's lease alone
    assert owner_of(store, name) == taker.owner
    taker.release()


class _LostResponses:
    """A store whose conditional writes land, but whose client sees "not written" (what a
    retried request gets after a lost response: the retry's precondition no longer holds)."""

    def __init__(self, store: LocalStore) -> None:
        self.store = store

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.store, attribute)

    def replace_if_match(self, key: str, data: bytes, etag: str) -> str | None:
        self.store.replace_if_match(key, data, etag)
        return None

    def create_exclusive(self, key: str, data: bytes) -> str | None:
        self.store.create_exclusive(key, data)
        return None


def test_a_write_whose_response_was_lost_is_still_ours(tmp_path):
    store = _LostResponses(LocalStore(tmp_path))
    holder = Lease(store, "m", ttl_s=30)
    assert holder.try_acquire()  # the create landed: the stored owner is ours
    assert holder.renew() and holder.lost_reason is None  # so did the renewal
    holder.check("the config swap")
    assert holder.etag == store.read_object(lease_key("m")).etag
    other = Lease(LocalStore(tmp_path), "m", ttl_s=30)
    assert other.try_acquire() is False  # and it is no one else's
