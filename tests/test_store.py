"""Unit tests: repository stores and key safety (the local store needs no network)."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException

from mlflow_triton.store import LocalStore, S3Store, check_key, open_store


def test_local_store_roundtrip_and_listing(tmp_path):
    store = LocalStore(tmp_path / "repo")
    (tmp_path / "repo").mkdir()
    store.check()
    store.write_bytes("m/config.pbtxt", b"x")
    source = tmp_path / "blob"
    source.write_bytes(b"abc" * 100)
    assert store.upload_file(source, "m/1/model.onnx") == 300
    assert store.list_dir("") == (["m"], [])
    assert store.list_dir("m/") == (["1"], ["config.pbtxt"])
    assert store.read_bytes("m/1/model.onnx") == b"abc" * 100
    assert store.read_bytes("m/2/model.onnx") is None


def test_create_exclusive_is_exclusive(tmp_path):
    store = LocalStore(tmp_path)
    assert store.create_exclusive("m/.lease", b"1") is True
    assert store.create_exclusive("m/.lease", b"2") is False
    assert store.read_bytes("m/.lease") == b"1"


def test_delete_prefix_does_not_touch_siblings(tmp_path):
    store = LocalStore(tmp_path)
    store.write_bytes("foo/config.pbtxt", b"a")
    store.write_bytes("foo_bar/config.pbtxt", b"b")
    assert store.delete_prefix("foo/") == 1
    assert store.read_bytes("foo_bar/config.pbtxt") == b"b"
    with pytest.raises(ValueError):
        store.delete_prefix("foo")


@pytest.mark.parametrize("key", ["", "/abs", "../x", "a/../b", "a//b", "./a", "a\\b"])
def test_keys_cannot_escape_the_repository(key):
    with pytest.raises(MlflowException, match="Refusing repository key"):
        check_key(key)


def test_missing_local_repository(tmp_path):
    with pytest.raises(MlflowException, match="does not exist"):
        LocalStore(tmp_path / "nope").check()


@pytest.mark.parametrize("uri", ["gs://bucket/x", "hdfs://x/y"])
def test_unsupported_repository_uri(uri):
    with pytest.raises(MlflowException, match="Unsupported model repository"):
        open_store(uri)


def test_s3_uri_needs_a_bucket():
    with pytest.raises(MlflowException, match="expected s3://bucket/prefix"):
        S3Store("s3:///prefix", client=object())
    store = S3Store("s3://bucket/some/prefix/", client=object())
    assert (store.bucket, store.prefix, store.url("m/config.pbtxt")) == (
        "bucket", "some/prefix", "s3://bucket/some/prefix/m/config.pbtxt",
    )
