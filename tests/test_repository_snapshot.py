"""Unit tests: deployment states read from one repository listing (mlflow_triton.repository.snapshot)
agree with the per-model reader, on a local directory and on S3 (moto, in process), and the
cache reads an object again exactly when its ETag changed."""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from unittest import mock

import pytest

from mlflow_triton.local.stack import AWS_TEST_CREDENTIALS
from mlflow_triton.repository.layout import LEASE_FILE, staging_name
from mlflow_triton.repository.local_store import LocalStore
from mlflow_triton.repository.snapshot import RepositoryCache
from mlflow_triton.repository.state import list_deployments, read_state


def _config(name: str, *versions: int) -> bytes:
    pins = "".join(f" versions: {v}" for v in versions)
    policy = f"version_policy {{ specific {{{pins} }} }}\n" if versions else ""
    return f'name: "{name}"\nbackend: "onnxruntime"\n{policy}'.encode()


def _provenance(name: str, registered_version: int, version: int = 1) -> bytes:
    """The provenance of ``NAME/<version>/``, published from registry version ``registered_version``."""
    return json.dumps({
        "name": name, "version": version, "registered_model": name,
        "registered_version": str(registered_version), "settings": {},
    }).encode()  # fmt: skip


def _fill(store) -> list[str]:
    """Deployments in the shapes the reconciler meets: serving, two pinned versions, an
    unpinned config, a leased one, a version without provenance, a folder without config,
    a staging model, and a name that is a prefix of another."""
    layout = {
        "alpha": _config("alpha", 2),
        "alpha-2": _config("alpha-2", 1),
        "beta": _config("beta", 1, 3),
        "gamma": _config("gamma"),
        "delta": _config("delta", 1),
        "nocfg": None,
        staging_name("alpha"): _config(staging_name("alpha"), 2),
    }
    for name, config in layout.items():
        if config is not None:
            store.write_bytes(f"{name}/config.pbtxt", config)
        for version in (1, 2, 3):
            store.write_bytes(f"{name}/{version}/model.onnx", b"\0" * 64)
            if not (name == "delta" and version == 1):
                store.write_bytes(f"{name}/{version}/mlflow-triton.json", _provenance(name, version, version))
        store.write_bytes(f"{name}/mlflow-triton-history.json", b"[]")
    store.write_bytes(f"beta/{LEASE_FILE}", b"{}")
    return ["alpha", "alpha-2", "beta", "gamma", "delta", "nocfg", "missing"]


def _as_tuple(state):
    return (state.name, state.config_bytes, state.versions, state.serving_version, state.provenance, state.leased)


class CountingLocalStore(LocalStore):
    """A LocalStore that counts content reads (what the cache must avoid)."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.reads: Counter[str] = Counter()

    def read_bytes(self, key):
        self.reads[key] += 1
        return super().read_bytes(key)


@pytest.fixture
def s3_store():
    moto = pytest.importorskip("moto")
    import boto3

    from mlflow_triton.repository.s3_store import S3Store

    bucket = f"snapshot-{uuid.uuid4().hex[:12]}"
    with mock.patch.dict(os.environ, AWS_TEST_CREDENTIALS), moto.mock_aws():
        for variable in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):  # the session stack's moto server
            os.environ.pop(variable, None)  # (restored by patch.dict)
        client = boto3.client("s3", region_name=AWS_TEST_CREDENTIALS["AWS_DEFAULT_REGION"])
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="other/alpha/config.pbtxt", Body=b"outside the prefix")
        yield S3Store(f"s3://{bucket}/repo", client=client)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    return LocalStore(tmp_path) if request.param == "local" else request.getfixturevalue("s3_store")


def test_snapshot_states_equal_the_per_model_reader(store):
    names = _fill(store)
    snapshot = RepositoryCache().snapshot(store)
    for name in names:
        assert _as_tuple(snapshot.state(name)) == _as_tuple(read_state(store, name)), name
    assert [_as_tuple(s) for s in snapshot.deployments()] == [_as_tuple(s) for s in list_deployments(store)]
    assert staging_name("alpha") not in snapshot.names
    assert snapshot.state("delta").provenance is None and snapshot.state("beta").leased


def test_unchanged_objects_are_not_read_again_and_a_changed_etag_is(tmp_path):
    store = CountingLocalStore(tmp_path)
    _fill(store)
    cache = RepositoryCache()
    first = {n: _as_tuple(cache.snapshot(store).state(n)) for n in ("alpha", "beta", "gamma")}
    assert sum(store.reads.values()) == 6  # config + serving provenance of each
    store.reads.clear()

    snapshot = cache.snapshot(store)
    assert {n: _as_tuple(snapshot.state(n)) for n in first} == first
    assert sum(store.reads.values()) == 0 and cache.hits == 6

    store.write_bytes("alpha/2/mlflow-triton.json", _provenance("alpha", 7, version=2))
    store.write_bytes("beta/config.pbtxt", _config("beta", 1))
    snapshot = cache.snapshot(store)
    assert snapshot.state("alpha").provenance.registered_version == "7"
    beta = snapshot.state("beta")
    assert beta.serving_version == 1 and beta.provenance.registered_version == "1"
    assert snapshot.state("gamma").config_bytes == _config("gamma")
    assert dict(store.reads) == {
        "alpha/2/mlflow-triton.json": 1, "beta/config.pbtxt": 1, "beta/1/mlflow-triton.json": 1,
    }  # fmt: skip


def test_a_no_op_round_on_s3_is_one_listing_and_no_get(s3_store):
    for i in range(3):
        s3_store.write_bytes(f"m{i}/config.pbtxt", _config(f"m{i}", 1))
        s3_store.write_bytes(f"m{i}/1/mlflow-triton.json", _provenance(f"m{i}", 1))
    calls: Counter[str] = Counter()
    s3_store.client.meta.events.register("before-call.s3.*", lambda event_name, **_: calls.update([event_name.split(".")[-1]]))
    cache = RepositoryCache()
    snapshot = cache.snapshot(s3_store)
    cold = [snapshot.state(f"m{i}") for i in range(3)]
    assert calls == {"ListObjectsV2": 1, "GetObject": 6}
    calls.clear()
    snapshot = cache.snapshot(s3_store)
    assert [_as_tuple(snapshot.state(f"m{i}")) for i in range(3)] == [_as_tuple(s) for s in cold]
    assert calls == {"ListObjectsV2": 1}

    s3_store.delete_prefix("m1/")  # a deleted deployment: gone from the state and from the cache
    s3_store.write_bytes("m2/1/mlflow-triton.json", _provenance("m2", 5))
    calls.clear()
    snapshot = cache.snapshot(s3_store)
    assert not snapshot.state("m1").exists
    assert snapshot.state("m2").provenance.registered_version == "5"
    assert calls == {"ListObjectsV2": 1, "GetObject": 1}
    assert all("m1/" not in key for _, key in cache._entries)


def test_listing_pages_hold_1000_keys(s3_store):
    calls: Counter[str] = Counter()
    s3_store.client.meta.events.register("before-call.s3.ListObjectsV2", lambda **_: calls.update(["list"]))
    for i in range(1001):
        s3_store.client.put_object(Bucket=s3_store.bucket, Key=f"repo/m{i:04d}/1/x", Body=b"")
    assert len(list(s3_store.list_objects(""))) == 1001
    assert calls["list"] == 2
