"""Streaming publish: artifact bytes pass once, hashed on the way, in bounded memory, and an
interrupted stream leaves nothing behind (local store, the real moto S3, a real HTTP server)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.exceptions import MlflowException

from mlflow_triton.repository.artifacts import HashingReader, _IterReader, open_artifact, streamable
from mlflow_triton.repository.local_store import LocalStore
from mlflow_triton.repository.s3_store import S3Store
from mlflow_triton.repository.store import STREAM_CHUNKSIZE
from mlflow_triton.settings.deployment import DeploymentConfig


class Broken(io.RawIOBase):
    """Yields ``good`` bytes, then fails like a dropped connection."""

    def __init__(self, good: int) -> None:
        self.left = good

    def read(self, amount: int = -1) -> bytes:
        if self.left <= 0:
            raise ConnectionResetError("the artifact server went away")
        amount = self.left if amount is None or amount < 0 else min(amount, self.left)
        self.left -= amount
        return b"x" * amount


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=5000), chunks=st.lists(st.integers(1, 700), min_size=1, max_size=20))
def test_iter_reader_returns_exactly_what_is_asked_for(data, chunks):
    pieces = [data[i : i + 97] for i in range(0, len(data), 97)]
    reader = _IterReader(iter(pieces))
    out = b""
    for size in chunks:
        block = reader.read(size)
        assert len(block) == min(size, len(data) - len(out))
        out += block
    assert out + reader.read() == data


def test_hashing_reader_hashes_counts_and_spools_in_one_pass(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    hashing = HashingReader(io.BytesIO(data), spool=tmp_path / "copy" / "model.onnx")
    assert not hasattr(hashing, "seek")  # boto3 must read it in order
    while hashing.read(1024 * 1024):
        pass
    hashing.close()
    assert hashing.sha256 == hashlib.sha256(data).hexdigest() and hashing.size == len(data)
    assert (tmp_path / "copy" / "model.onnx").read_bytes() == data


def test_local_store_stream_is_atomic(tmp_path):
    store = LocalStore(tmp_path)
    assert store.upload_stream(io.BytesIO(b"abc" * 1000), "m/1/model.onnx") == 3000
    with pytest.raises(ConnectionResetError):
        store.upload_stream(Broken(STREAM_CHUNKSIZE + 5), "m/2/model.onnx")
    assert store.list_dir("m/") == (["1"], [])  # no partial object, no temporary file


@pytest.mark.integration
def test_s3_stream_is_multipart_and_never_half_written(stack):
    import boto3

    store = S3Store("s3://triton-models/streaming", endpoint_url=stack.s3_endpoint)
    data = os.urandom(2 * STREAM_CHUNKSIZE + 1234)
    chunks = iter([data[i : i + 65536] for i in range(0, len(data), 65536)])
    assert store.upload_stream(_IterReader(chunks), "m/1/model.onnx") == len(data)
    client = boto3.client("s3", endpoint_url=stack.s3_endpoint)
    head = client.head_object(Bucket="triton-models", Key="streaming/m/1/model.onnx")
    assert head["ETag"].strip('"').endswith("-3")  # three parts of STREAM_CHUNKSIZE at most
    assert store.read_bytes("m/1/model.onnx") == data

    with pytest.raises((ConnectionResetError, MlflowException)):  # the reader's error, or the store's
        store.upload_stream(Broken(2 * STREAM_CHUNKSIZE + 5), "m/2/model.onnx")
    assert store.read_bytes("m/2/model.onnx") is None
    uploads = client.list_multipart_uploads(Bucket="triton-models", Prefix="streaming/m/2/")
    assert not uploads.get("Uploads")  # aborted, not left to accrue storage


def test_open_artifact_streams_through_an_http_artifact_server(tmp_path):
    """The MLflow server's artifact proxy path: one streaming GET, size from Content-Length."""
    folder = tmp_path / "api" / "2.0" / "mlflow-artifacts" / "artifacts" / "exp" / "model"
    folder.mkdir(parents=True)
    data = os.urandom(2 * 1024 * 1024 + 3)
    (folder / "model.onnx").write_bytes(data)
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        uri = f"http://127.0.0.1:{server.server_port}/api/2.0/mlflow-artifacts/artifacts/exp/model/model.onnx"
        assert streamable(uri) and streamable(str(folder)) and not streamable("runs:/abc/model")
        with open_artifact(uri) as artifact:
            hashing = HashingReader(artifact.reader)
            while hashing.read(300_000):
                pass
        assert artifact.size == len(data) and hashing.sha256 == hashlib.sha256(data).hexdigest()
    finally:
        server.shutdown()
        server.server_close()


def test_a_stream_is_uploaded_hashed_inspected_and_spooled_in_one_pass(tmp_path):
    """The download path for a remote artifact store: HTTP in, repository out, the graph read
    back from the uploaded copy, a local copy for the reference run made on the way."""
    from models import Scorer, export_onnx

    from mlflow_triton.flavors.onnx import ONNX
    from mlflow_triton.flavors.source import LoggedModel, ModelSource
    from mlflow_triton.repository.transfer import locate, transfer

    folder = tmp_path / "site" / "api" / "2.0" / "mlflow-artifacts" / "artifacts" / "exp" / "model"
    folder.mkdir(parents=True)
    model_file = export_onnx(Scorer(seed=2), folder / "model.onnx")
    handler = functools.partial(_QuietHandler, directory=str(tmp_path / "site"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}/api/2.0/mlflow-artifacts/artifacts/exp/model"
        source = ModelSource(LoggedModel(base, base, {"onnx": {}}), ONNX, "model.onnx")
        plan = ONNX.plan(source, DeploymentConfig(), tmp_path)
        store = LocalStore(tmp_path / "repo")
        located = locate(store, plan.files, plan.inspect, tmp_path)
        assert located.kind == "stream" and located.entries is None  # nothing known before the bytes pass
        uploaded, copied = transfer(store, located, "m/1/", spool=tmp_path / "spool")
    finally:
        server.shutdown()
        server.server_close()
    data = model_file.read_bytes()
    assert (uploaded, copied) == (len(data), 0)
    assert located.entries == [{"file": "model.onnx", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}]
    io = located.inspection.io
    assert [t.name for t in io.inputs] == ["features"] and [t.name for t in io.outputs] == ["scores"]
    assert store.read_bytes("m/1/model.onnx") == data
    assert located.complete_local_copy.read_bytes() == data


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


@pytest.mark.integration
def test_a_local_model_is_published_in_place_not_downloaded(stack, unique_name, tmp_path, monkeypatch):
    """A local MLflow model is read where it is: no copy to a temporary folder first."""
    import mlflow
    import onnx
    import torch
    from mlflow.deployments import get_deploy_client
    from mlflow.models import infer_signature
    from models import Scorer, export_onnx, sample

    x = sample(2, seed=3)
    model = Scorer(seed=21)
    saved = tmp_path / "saved"
    signature = infer_signature({"features": x}, {"scores": model(torch.from_numpy(x)).detach().numpy()})
    mlflow.onnx.save_model(
        onnx.load(str(export_onnx(model, tmp_path / "m.onnx"))), str(saved), signature=signature,
        input_example={"features": x},
    )  # fmt: skip

    def no_download(*args, **kwargs):
        raise AssertionError("a local model must not be downloaded first")

    monkeypatch.setattr("mlflow_triton.repository.transfer.download_artifact", no_download)
    client = get_deploy_client("triton")
    result = client.create_deployment(unique_name, str(saved), config={"instance_kind": "cpu"})

    provenance = client.get_deployment(unique_name)["provenance"]
    files = [provenance["artifact"]] + provenance["external_data"]
    for entry in files:
        on_disk = Path(saved, entry["file"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(on_disk).hexdigest() and entry["size"] == len(on_disk)
    assert result["bytes_uploaded"] == sum(e["size"] for e in files) and result["verified"] is True
