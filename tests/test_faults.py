"""Faults in the middle of a publish, on a private stack (moto S3 + one tritonserver).

These tests kill things, so they do not use the session stack:

* S3 dies mid-upload. A loopback TCP proxy sits between the plugin and moto and is cut after
  a few MB of a multipart upload (moto itself keeps running, so its in-memory state survives
  and "S3 comes back" is the proxy listening again). Triton reads moto directly.
* Triton dies after the upload, before the staged load. The version stays in the repository,
  unverified and not pinned; once Triton is back, the same update verifies and switches to it
  without uploading again.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

import mlflow.onnx
import numpy as np
import onnx
import pytest
import torch
from mlflow.deployments import get_deploy_client
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from models import Scorer, export_onnx, sample
from onnx import TensorProto, helper, numpy_helper

from mlflow_triton.fleet.server import TritonServer
from mlflow_triton.local.processes import free_port
from mlflow_triton.local.stack import AWS_TEST_CREDENTIALS, LocalStack
from mlflow_triton.repository import store as store_module
from mlflow_triton.repository.s3_store import S3Store
from mlflow_triton.repository.store import MB
from mlflow_triton.triton_config.model_config import parse_pbtxt, serving_versions

pytestmark = pytest.mark.integration
CPU = {"instance_kind": "cpu"}
#: Explicit requirements spare MLflow's requirement inference (seconds per saved model).
NO_REQUIREMENTS = ["onnx"]


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 in front of ``target_port`` that can be cut and restored.

    ``cut()`` closes the listening socket (new connections are refused) and resets every open
    connection, which is what a client sees when the server process dies. ``cut_after`` cuts
    automatically once that many bytes went from the clients to the server.
    """

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = free_port()
        self.cut_after: int | None = None
        self.sent = 0
        self.cuts = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "CuttableProxy":
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, outbound: bool) -> None:
        try:
            while data := source.recv(256 * 1024):
                if outbound:
                    with self._lock:
                        self.sent += len(data)
                        over = self.cut_after is not None and self.sent >= self.cut_after
                    if over:
                        self.cut()
                        return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                _close(sock)

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, set()
            self.cut_after = None
            self.cuts += 1
        if listener is not None:
            listener.close()
        for sock in sockets:
            _close(sock)

    def restore(self) -> None:
        self.start()


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory):
    """moto S3 + one tritonserver (no MLflow server: models come from local directories)."""
    stack = LocalStack(Path(tmp_path_factory.mktemp("fault-stack")), replicas=1, with_mlflow=False)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def aws_env(monkeypatch):
    """The stack's credentials for the plugin's own boto3 clients (no session stack needed)."""
    for key, value in AWS_TEST_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)


def save_scorer(model: torch.nn.Module, folder: Path) -> str:
    """An MLflow ONNX model directory (the plugin downloads, hashes and uploads it)."""
    folder.mkdir(parents=True)
    path = export_onnx(model, folder / "export.onnx")
    x = sample()
    signature = infer_signature({"features": x}, {"scores": model(torch.from_numpy(x)).detach().numpy()})
    mlflow.onnx.save_model(
        onnx.load(str(path)), str(folder / "model"), signature=signature, pip_requirements=NO_REQUIREMENTS
    )
    return str(folder / "model")


def save_big_matmul(folder: Path, rows: int = 1024, cols: int = 6144, seed: int = 0) -> tuple[str, np.ndarray]:
    """``y = x @ W`` with a ``rows x cols`` float32 initializer (24 MB), weights embedded."""
    weights = np.random.default_rng(seed).standard_normal((rows, cols), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, cols])],
        [numpy_helper.from_array(weights, "W")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.ones((2, rows), dtype=np.float32)
    signature = infer_signature({"x": x}, {"y": x @ weights})
    mlflow.onnx.save_model(
        model, str(folder), signature=signature, save_as_external_data=False,
        pip_requirements=NO_REQUIREMENTS,
    )  # fmt: skip
    return str(folder), weights


def repo_objects(stack: LocalStack, name: str) -> dict[str, str]:
    """``{key: etag}`` under ``NAME/``, read straight from moto (not through the proxy)."""
    pages = stack.s3_client().get_paginator("list_objects_v2").paginate(
        Bucket=stack.bucket, Prefix=f"{stack.prefix}/{name}/"
    )
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def direct_store(stack: LocalStack) -> S3Store:
    return S3Store(stack.model_repository, client=stack.s3_client())


def test_s3_dies_mid_upload_then_the_retry_completes(own_stack, aws_env, tmp_path, monkeypatch, caplog):
    name = "s3-cut"
    proxy = CuttableProxy(own_stack.s3_port).start()
    # Small parts, few in flight and no retries, so the cut lands in the middle of the upload.
    monkeypatch.setattr(store_module, "MULTIPART_THRESHOLD", 5 * MB)
    monkeypatch.setattr(store_module, "MULTIPART_CHUNKSIZE", 5 * MB)
    monkeypatch.setattr(store_module, "MAX_CONCURRENCY", 2)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    target = f"triton:/{own_stack.triton_urls[0]}"
    config = {**CPU, "model_repository": own_stack.model_repository, "s3_endpoint_url": proxy.url}
    client = get_deploy_client(target)
    client.create_deployment(name, save_scorer(Scorer(seed=41), tmp_path / "v1"), config=config)
    before = repo_objects(own_stack, name)
    config_before = direct_store(own_stack).read_bytes(f"{name}/config.pbtxt")
    big_uri, weights = save_big_matmul(tmp_path / "big")

    proxy.sent, proxy.cut_after = 0, 9 * MB
    with caplog.at_level(logging.WARNING), pytest.raises(MlflowException) as err:
        client.update_deployment(name, big_uri, config=config)

    assert proxy.cuts == 1
    message = err.value.message
    assert "Cannot upload to" in message and f"{name}/2/model.onnx" in message, message
    assert proxy.url.removeprefix("http://") in message  # names the endpoint that failed
    # S3 is back: the old version still serves, and nothing Triton could load was left behind.
    proxy.restore()
    assert direct_store(own_stack).read_bytes(f"{name}/config.pbtxt") == config_before
    # The cleanup could not run either: the publisher's lease object and the claim on version 2
    # (an incomplete folder: no provenance) are left over; the retry removes both.
    lease = f"{own_stack.prefix}/{name}/.mlflow-triton.lease"
    claim = f"{own_stack.prefix}/{name}/2/.mlflow-triton.claim"
    left = repo_objects(own_stack, name)
    assert left == {**before, lease: left[lease], claim: left[claim]}
    assert "Could not release the lease" in caplog.text and "Could not remove the partial upload" in caplog.text
    with TritonServer(own_stack.triton_urls[0]) as triton:
        triton.load_model(name)  # what a restarted replica would do
        assert triton.is_model_ready(name, 1) and not triton.is_model_ready(name, 2)

    result = client.update_deployment(name, big_uri, config=config)

    # Version 2 was claimed by the failed attempt: its number is not reused.
    assert result["version"] == 3 and result["changed"] is True
    assert lease not in repo_objects(own_stack, name) and claim not in repo_objects(own_stack, name)
    assert result["bytes_uploaded"] == Path(big_uri, "model.onnx").stat().st_size
    config_after = parse_pbtxt(direct_store(own_stack).read_bytes(f"{name}/config.pbtxt"))
    assert serving_versions(config_after) == [3]
    x = np.random.default_rng(3).standard_normal((2, weights.shape[0]), dtype=np.float32)
    out = np.asarray(client.predict(name, {"x": x})["predictions"]["y"])
    np.testing.assert_allclose(out, x @ weights, rtol=1e-4, atol=1e-3)
    client.delete_deployment(name, config=config)
    proxy.cut()


def restart(process, attempts: int = 5) -> None:
    """Start a killed server again on its own ports. They were free while it was down, so a
    stack of another test worker may hold one for a moment: retry briefly."""
    for attempt in range(attempts):
        try:
            process.start()
            return
        except RuntimeError:
            if attempt == attempts - 1:
                raise
            time.sleep(2)


def test_triton_dies_before_the_reload_then_update_finishes_without_upload(
    own_stack, aws_env, tmp_path, monkeypatch
):
    name = "triton-down"
    triton_process = own_stack.tritons[0]
    target = f"triton:/{own_stack.triton_urls[0]}"
    config = {**CPU, "model_repository": own_stack.model_repository, "s3_endpoint_url": own_stack.s3_endpoint}
    client = get_deploy_client(target)
    client.create_deployment(name, save_scorer(Scorer(seed=51), tmp_path / "v1"), config=config)
    new_model = Scorer(seed=52)
    new_uri = save_scorer(new_model, tmp_path / "v2")
    upload = S3Store.upload_file  # a local model is uploaded from where it is

    def upload_then_kill_triton(self, *args, **kwargs):
        sent = upload(self, *args, **kwargs)
        os.killpg(triton_process.process.pid, signal.SIGKILL)  # a crash: after check_servers,
        triton_process.process.wait(30)  # before the staged load and verification
        return sent

    monkeypatch.setattr(S3Store, "upload_file", upload_then_kill_triton)
    try:
        with pytest.raises(MlflowException) as err:
            client.update_deployment(name, new_uri, config=config)
    finally:
        monkeypatch.setattr(S3Store, "upload_file", upload)
        restart(triton_process)

    assert err.value.error_code == "TEMPORARILY_UNAVAILABLE"
    message = err.value.message
    assert "version 2 is uploaded" in message and "could not be verified" in message, message
    assert "Rerun" in message and "nothing will be uploaded again" in message
    # Never verified, so never pinned: a replica restarting now loads version 1.
    store = direct_store(own_stack)
    assert serving_versions(parse_pbtxt(store.read_bytes(f"{name}/config.pbtxt"))) == [1]
    assert store.read_bytes(f"{name}/2/model.onnx") is not None
    assert store.read_bytes(f"{name}/2/mlflow-triton.json") is not None

    again = client.update_deployment(name, new_uri, config=config)

    assert (again["version"], again["changed"], again["bytes_uploaded"]) == (2, True, 0)
    assert again["verified"] is True
    with TritonServer(own_stack.triton_urls[0]) as triton:
        assert triton.is_model_ready(name, 2)
    x = sample(3, seed=53)
    out = np.asarray(client.predict(name, {"features": x})["predictions"]["scores"])
    np.testing.assert_allclose(out, new_model(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)
    client.delete_deployment(name, config=config)
