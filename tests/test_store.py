"""Unit tests: repository stores and key safety (the local store needs no network)."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException

from mlflow_triton.repository.local_store import LocalStore
from mlflow_triton.repository.s3_store import S3Store
from mlflow_triton.repository.store import check_key
from mlflow_triton.repository.stores import open_store


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
    etag = store.create_exclusive("m/.lease", b"1")
    assert etag and store.create_exclusive("m/.lease", b"2") is None
    assert store.read_bytes("m/.lease") == b"1"
    held = store.read_object("m/.lease")
    assert (held.data, held.etag) == (b"1", etag) and 0 <= held.age_s < 60
    assert store.list_dir("m/") == ([], [".lease"])  # no temporary file is left behind


def test_replace_if_match_is_a_compare_and_swap(tmp_path):
    store = LocalStore(tmp_path)
    first = store.create_exclusive("m/.lease", b"1")
    second = store.replace_if_match("m/.lease", b"2", first)
    assert second and second != first and store.read_bytes("m/.lease") == b"2"
    assert store.replace_if_match("m/.lease", b"3", first) is None  # stale ETag: refused
    assert store.replace_if_match("m/missing", b"3", first) is None
    assert store.read_bytes("m/.lease") == b"2"


def test_copy_prefix_and_download_file(tmp_path):
    store = LocalStore(tmp_path / "repo")
    store.write_bytes("m/1/model.onnx", b"weights")
    store.write_bytes("m/1/mlflow-triton.json", b"{}")
    store.write_bytes("m_other/1/model.onnx", b"not copied")
    assert store.copy_prefix("m/1/", "_staging.m/1/") == 2
    assert store.list_dir("_staging.m/1/") == ([], ["mlflow-triton.json", "model.onnx"])
    assert store.download_file("_staging.m/1/model.onnx", tmp_path / "out" / "model.onnx") == 7
    assert (tmp_path / "out" / "model.onnx").read_bytes() == b"weights"
    store.delete_prefix("_staging.m/")
    assert store.list_dir("") == (["m", "m_other"], [])  # no empty folder is left


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
