"""Unit tests: S3 requests that do not depend on each other overlap, and their counts hold.

Against AWS S3 each request costs 10-30 ms of latency (``benchmarks/s3_latency.py`` measures
it through a delaying proxy). What is asserted here is deterministic: how many requests an
operation makes (moto in process, counted at botocore's ``before-call`` event), and that
independent requests are in flight together: a :class:`threading.Barrier` only opens when all
of them have arrived, so requests made one after the other break it (after its timeout)
instead of passing slowly.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections import Counter
from types import SimpleNamespace
from unittest import mock

import pytest

from mlflow_triton.local.stack import AWS_TEST_CREDENTIALS
from mlflow_triton.promotion import load_spec, sync
from mlflow_triton.repository.concurrency import concurrently
from mlflow_triton.repository.layout import LEASE_FILE
from mlflow_triton.repository.lease import Lease
from mlflow_triton.repository.local_store import LocalStore
from mlflow_triton.repository.snapshot import RepositoryCache
from mlflow_triton.repository.state import read_state

BARRIER_TIMEOUT_S = 20.0


@pytest.fixture
def moto_s3():
    """An S3Store on moto in process and the S3 calls of every boto3 client, by operation."""
    moto = pytest.importorskip("moto")
    import boto3

    from mlflow_triton.repository.s3_store import S3Store

    bucket = f"round-trips-{uuid.uuid4().hex[:12]}"
    calls: Counter[str] = Counter()
    lock = threading.Lock()

    def count(event_name: str, **_) -> None:
        with lock:
            calls[event_name.rsplit(".", 1)[-1]] += 1

    with mock.patch.dict(os.environ, AWS_TEST_CREDENTIALS), moto.mock_aws():
        for variable in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):  # the session stack's moto server
            os.environ.pop(variable, None)  # (restored by patch.dict)
        session = boto3._get_default_session()
        session.events.register("before-call.s3.*", count)  # clients copy the handlers when created
        client = boto3.client("s3", region_name=AWS_TEST_CREDENTIALS["AWS_DEFAULT_REGION"])
        client.create_bucket(Bucket=bucket)
        try:
            yield SimpleNamespace(store=S3Store(f"s3://{bucket}/repo", client=client), calls=calls, bucket=bucket)
        finally:
            session.events.unregister("before-call.s3.*", count)


def _provenance(name: str, version: int, **fields: object) -> bytes:
    """A provenance file as a publish writes it, with the fields a test reads."""
    return json.dumps({"name": name, "version": version, "flavor": "onnx", **fields}).encode()


def _config(name: str, version: int) -> bytes:
    return f'name: "{name}"\nbackend: "onnxruntime"\nversion_policy {{ specific {{ versions: {version} }} }}\n'.encode()


class Meeting:
    """Store calls that must be in flight together: each waits at a barrier for the others."""

    def __init__(self, inner, parties: int, meets) -> None:
        self._inner, self._meets = inner, meets
        self.barrier = threading.Barrier(parties, timeout=BARRIER_TIMEOUT_S)

    def __getattr__(self, attribute: str):
        method = getattr(self._inner, attribute)
        if not callable(method):
            return method

        def call(*args, **kwargs):
            if self._meets(attribute, *args):
                self.barrier.wait()  # threading.BrokenBarrierError when they run one after another
            return method(*args, **kwargs)

        return call


# -- the helper ------------------------------------------------------------------------------------
def test_concurrently_returns_in_order_and_raises_the_first_error_after_all_finished():
    assert concurrently() == [] and concurrently(lambda: 1) == [1]
    assert concurrently(lambda: 1, lambda: 2, lambda: 3) == [1, 2, 3]
    finished = threading.Event()

    def slow_success():
        finished.wait(0.2)
        finished.set()

    def fails(message: str):
        raise ValueError(message)

    with pytest.raises(ValueError, match="second"):
        concurrently(lambda: None, lambda: fails("second"), slow_success, lambda: fails("fourth"))
    assert finished.is_set()  # nothing is left running behind the caller
    with pytest.raises(ValueError, match="first"):
        concurrently(lambda: fails("first"), lambda: fails("second"))


# -- one deployment's state -----------------------------------------------------------------------
def test_read_state_reads_the_config_and_lists_at_once(tmp_path, moto_s3):
    local = LocalStore(tmp_path)
    for store in (local, moto_s3.store):
        store.write_bytes("m/config.pbtxt", _config("m", 2))
        store.write_bytes("m/2/mlflow-triton.json", _provenance("m", 2, registered_version="5"))
        store.write_bytes("m/1/model.onnx", b"")
        store.write_bytes(f"m/{LEASE_FILE}", b"{}")
    meeting = Meeting(local, 2, lambda op, *a: (op, a[0]) in {("read_bytes", "m/config.pbtxt"), ("list_dir", "m/")})
    state = read_state(meeting, "m")
    assert (state.versions, state.serving_version, state.leased) == ([1, 2], 2, True)
    assert state.provenance.registered_version == "5"

    moto_s3.calls.clear()
    assert read_state(moto_s3.store, "m") == state
    assert moto_s3.calls == {"GetObject": 2, "ListObjectsV2": 1}
    moto_s3.calls.clear()
    assert not read_state(moto_s3.store, "absent").exists
    assert moto_s3.calls == {"GetObject": 1, "ListObjectsV2": 1}  # no config: no provenance to read


# -- the lease -------------------------------------------------------------------------------------
def test_the_first_acquire_proves_conditional_writes_in_three_round_trips(tmp_path, moto_s3):
    lease = Lease(moto_s3.store, "m", ttl_s=30, wait_s=0)
    moto_s3.calls.clear()
    lease.acquire()
    lease.release()
    # probe create; create again + stale replace (refused); probe delete + the lease's create
    assert moto_s3.calls == {"PutObject": 4, "DeleteObject": 2, "GetObject": 1}
    moto_s3.calls.clear()
    again = Lease(moto_s3.store, "m", ttl_s=30, wait_s=0)
    again.acquire()  # the same store object is proven already
    again.release()
    assert moto_s3.calls == {"PutObject": 1, "GetObject": 1, "DeleteObject": 1}
    assert [o.key for o in moto_s3.store.list_objects("")] == []  # no probe, no lease left

    def overlapped(op: str, *args) -> bool:
        """The two writes that must be refused, then the probe's deletion and the lease's create."""
        key, data = args[0], (args[1] if len(args) > 1 else None)
        probe = ".mlflow-triton.probe-" in key
        return (op == "create_exclusive" and probe and data == b"probe-again") or (op == "replace_if_match" and probe)

    (tmp_path / "repo").mkdir()
    meeting = Meeting(LocalStore(tmp_path / "repo"), 2, overlapped)
    lease = Lease(meeting, "m", ttl_s=30, wait_s=0)
    lease.acquire()
    lease.release()

    cleanup = Meeting(LocalStore(tmp_path / "repo"), 2, lambda op, *a: (op == "delete" and "probe" in a[0])
                      or (op == "create_exclusive" and a[0] == f"m/{LEASE_FILE}"))  # fmt: skip
    lease = Lease(cleanup, "m", ttl_s=30, wait_s=0)
    lease.acquire()
    lease.release()
    assert list(LocalStore(tmp_path / "repo").list_objects("")) == []


def test_a_lease_taken_while_the_probe_could_not_be_deleted_is_released(tmp_path):
    class ProbeStuck(LocalStore):
        def delete(self, key: str) -> None:
            if ".mlflow-triton.probe-" in key:
                raise OSError("the store went away")
            super().delete(key)

    store = ProbeStuck(tmp_path)
    lease = Lease(store, "m", ttl_s=30, wait_s=0)
    with pytest.raises(OSError, match="went away"):
        lease.acquire()
    assert store.read_object(f"m/{LEASE_FILE}") is None  # not left to block others for its TTL
    assert lease._heartbeat is None


# -- many deployments: the reconciler's round ----------------------------------------------------
def test_snapshot_states_overlap_their_reads(tmp_path):
    store = LocalStore(tmp_path)
    names = [f"m{i}" for i in range(6)]
    for name in names:
        store.write_bytes(f"{name}/config.pbtxt", _config(name, 1))
        store.write_bytes(f"{name}/1/mlflow-triton.json", _provenance(name, 1, registered_model=name))
    meeting = Meeting(store, 6, lambda op, *a: op == "read_bytes" and a[0].endswith("config.pbtxt"))
    snapshot = RepositoryCache().snapshot(meeting)
    states = snapshot.states(names + ["absent"])
    assert sorted(states) == sorted(names + ["absent"]) and not states["absent"].exists
    assert all(states[n].provenance.registered_model == n for n in names)
    assert states == {n: RepositoryCache().snapshot(store).state(n) for n in names + ["absent"]}
    assert snapshot.states(["not a valid/name"]) == {}  # left for the caller to read and report


def test_a_no_op_sync_of_n_models_reads_two_objects_each_and_a_watch_round_none(moto_s3, monkeypatch):
    """A one-shot sync of N unchanged models: one listing and 2 N GETs (config, provenance; S3
    has no batch GET), all read ahead of the workers; with the cache of the last round: one
    listing and no GET."""
    triton = ["http://replica-1:8000", "http://replica-2:8000"]
    names = [f"model-{i:02d}" for i in range(30)]
    spec = load_spec(
        models=names, alias="production", repository=moto_s3.store.uri, triton=",".join(triton),
        config={"instance_kind": "cpu"}, smoke_test=False,
    )  # fmt: skip
    settings = spec.models[0].config.settings("onnx")
    for name in names:
        moto_s3.store.write_bytes(f"{name}/config.pbtxt", _config(name, 1))
        provenance = _provenance(name, 1, registered_model=name, registered_version="3", settings=settings)
        moto_s3.store.write_bytes(f"{name}/1/mlflow-triton.json", provenance)
        moto_s3.store.write_bytes(f"{name}/1/model.onnx", b"")

    class Page(list):
        token = None  # the last page

    class Registry:
        def search_registered_models(self, max_results, page_token=None):
            return Page(SimpleNamespace(name=n, aliases={"production": "3"}) for n in names)

    loaded = {url: {(n, "1") for n in names} for url in triton}
    monkeypatch.setattr("mlflow.MlflowClient", Registry)
    monkeypatch.setattr("mlflow_triton.fleet.server.TritonCluster.ready_models", lambda self: loaded)
    moto_s3.calls.clear()
    report = sync(spec)
    assert [m.action for m in report.models] == ["unchanged"] * len(names), [m.describe() for m in report.models]
    assert moto_s3.calls == {"ListObjectsV2": 1, "GetObject": 2 * len(names)}

    cache = RepositoryCache()
    sync(spec, cache=cache)
    moto_s3.calls.clear()
    assert sync(spec, cache=cache).ok
    assert moto_s3.calls == {"ListObjectsV2": 1}
