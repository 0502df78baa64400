"""Triton errors are classified by exception type and status, never by message text.

Measured with tritonclient 2.73 against the wheel's tritonserver (2.51):

* closed port: HTTP raises ``ConnectionRefusedError``; gRPC ``InferenceServerException``
  ``StatusCode.UNAVAILABLE``. Both are :class:`ReplicaUnreachable`.
* a load that fails (broken config.pbtxt, a model that does not initialise, an unreachable S3
  repository): HTTP 500/400, gRPC INTERNAL/INVALID_ARGUMENT. Triton answered: not unreachable.
* a Triton whose S3 repository was unreachable at start-up (``--exit-on-error=false``) answers
  every control call 503 / gRPC UNAVAILABLE "Server not ready": not unreachable either.
* unknown model: unload answers 200; config/infer answer 404 / NOT_FOUND (:class:`ModelNotFound`).

Assertions are on types, statuses and error codes only.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from tritonclient.utils import InferenceServerException

from mlflow_triton.fleet.errors import (
    ModelNotFound,
    ReplicaUnreachable,
    TritonError,
    classify,
    is_unreachable,
    raise_failures,
)
from mlflow_triton.fleet.server import TritonCluster, TritonServer
from mlflow_triton.local.processes import ManagedProcess, free_port
from mlflow_triton.local.servers import make_backend_dir, moto_s3, tritonserver
from mlflow_triton.local.stack import AWS_TEST_CREDENTIALS
from mlflow_triton.repository.s3_store import S3Store

CONFIG = (
    'name: "{name}" backend: "onnxruntime" max_batch_size: 4 '
    'input {{ name: "features" data_type: TYPE_FP32 dims: 4 }} '
    'output {{ name: "scores" data_type: TYPE_FP32 dims: 3 }} '
    "instance_group {{ kind: KIND_CPU }}"
)


def _s3_client(endpoint_url: str | None = None):
    import boto3

    return boto3.client(
        "s3", endpoint_url=endpoint_url, region_name=AWS_TEST_CREDENTIALS["AWS_DEFAULT_REGION"],
        aws_access_key_id=AWS_TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip


def closed_url(scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{free_port()}"


def grpc_url(process: ManagedProcess) -> str:
    return f"grpc://{process.grpc_url}"  # type: ignore[attr-defined]


def assert_answered(err: Exception | None, kind: type[TritonError] = TritonError) -> None:
    """Triton answered with an error: typed, not unreachable."""
    assert type(err) is kind, repr(err)
    assert not is_unreachable(err)
    assert err.error_code != "TEMPORARILY_UNAVAILABLE"
    assert err.status is not None


# -- classification of what tritonclient raises (no server needed) --------------------------


def _ise(status: str | None) -> InferenceServerException:
    return InferenceServerException("any text at all", status=status)


@pytest.mark.parametrize(
    ("err", "kind"),
    [
        (ConnectionRefusedError(111, "refused"), ReplicaUnreachable),
        (ConnectionResetError(104, "reset"), ReplicaUnreachable),
        (TimeoutError("timed out"), ReplicaUnreachable),
        (socket.gaierror(-2, "unknown host"), ReplicaUnreachable),
        (_ise("StatusCode.UNAVAILABLE"), ReplicaUnreachable),
        (_ise("StatusCode.DEADLINE_EXCEEDED"), ReplicaUnreachable),
        (_ise("502"), ReplicaUnreachable),
        (_ise("504"), ReplicaUnreachable),
        (_ise("404"), ModelNotFound),
        (_ise("StatusCode.NOT_FOUND"), ModelNotFound),
        (_ise("400"), TritonError),
        (_ise("500"), TritonError),
        (_ise("503"), TritonError),
        (_ise("StatusCode.INTERNAL"), TritonError),
        (_ise("StatusCode.INVALID_ARGUMENT"), TritonError),
        (_ise(None), TritonError),  # tritonclient's own argument checks
        (ValueError("connect: not found, unknown model"), TritonError),  # text is ignored
    ],
)
def test_classify_by_type_and_status(err, kind):
    assert classify(err) is kind


def test_http_connection_closed_is_unreachable():
    from geventhttpclient.response import HTTPConnectionClosed

    assert classify(HTTPConnectionClosed("closed")) is ReplicaUnreachable


def test_error_codes():
    assert ReplicaUnreachable("m", "u").error_code == "TEMPORARILY_UNAVAILABLE"
    assert ModelNotFound("m", "u").error_code == "RESOURCE_DOES_NOT_EXIST"
    assert TritonError("m", "u").error_code == "INTERNAL_ERROR"
    assert all(issubclass(k, MlflowException) for k in (ReplicaUnreachable, ModelNotFound))


def test_raise_failures_codes():
    missing = {"a": ModelNotFound("m", "a", "404"), "b": ModelNotFound("m", "b", "404")}
    with pytest.raises(MlflowException) as err:
        raise_failures("x", missing)
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert isinstance(err.value, ModelNotFound)
    # Every replica unreachable: "retry later" (a rollout must not record a refusal).
    with pytest.raises(ReplicaUnreachable) as err:
        raise_failures("x", {"d": ReplicaUnreachable("m", "d"), "e": ReplicaUnreachable("m", "e")})
    assert err.value.error_code == "TEMPORARILY_UNAVAILABLE"
    for mixed in (
        {**missing, "c": TritonError("m", "c", "500")},
        {"d": ReplicaUnreachable("m", "d"), "c": TritonError("m", "c", "500")},
    ):
        with pytest.raises(MlflowException) as err:
            raise_failures("x", mixed)
        assert err.value.error_code == "INTERNAL_ERROR" and not isinstance(err.value, TritonError)
    raise_failures("x", {"a": None})


# -- a replica that does not answer -----------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_closed_port_is_unreachable(scheme):
    url = closed_url(scheme)
    errors = TritonCluster([url], protocol=scheme).load_model("m", version=1)
    assert type(errors[url]) is ReplicaUnreachable and is_unreachable(errors[url])
    assert errors[url].error_code == "TEMPORARILY_UNAVAILABLE"
    with TritonServer(url, protocol=scheme) as server:
        for call in (lambda: server.unload_model("m"), server.repository_index,
                     lambda: server.is_model_ready("m")):  # fmt: skip
            with pytest.raises(ReplicaUnreachable):
                call()


def _listener(close: bool) -> tuple[str, socket.socket]:
    """A port that accepts connections and closes them, or keeps them silent."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.close() if close else held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return f"127.0.0.1:{sock.getsockname()[1]}", sock


@pytest.mark.parametrize(("scheme", "close"), [("http", True), ("http", False), ("grpc", True)])
def test_connection_closed_or_silent_is_unreachable(scheme, close):
    address, sock = _listener(close)
    try:
        with TritonServer(f"{scheme}://{address}", protocol=scheme, timeout_s=1.0) as server:
            with pytest.raises(ReplicaUnreachable):
                server.load_model("m")
    finally:
        sock.close()


def test_raw_tritonclient_exceptions_classify_as_measured():
    """What tritonclient itself raises on a closed port and on a deadline (gRPC)."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionRefusedError) as refused:
        httpclient.InferenceServerClient(address).load_model("m")
    with pytest.raises(InferenceServerException) as unavailable:
        grpcclient.InferenceServerClient(address).load_model("m")
    assert unavailable.value.status() == "StatusCode.UNAVAILABLE"
    silent, sock = _listener(close=False)
    try:
        with pytest.raises(InferenceServerException) as deadline:
            grpcclient.InferenceServerClient(silent).load_model("m", client_timeout=1)
    finally:
        sock.close()
    assert deadline.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    for err in (refused.value, unavailable.value, deadline.value):
        assert classify(err) is ReplicaUnreachable


# -- missing models -----------------------------------------------------------------------------


class _Refusing:
    """A tritonclient stand-in whose unload answers ``status`` (404: an older Triton)."""

    def __init__(self, status: str) -> None:
        self.status = status

    def unload_model(self, name: str) -> None:
        raise InferenceServerException(f"unload {name}", status=self.status)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("status", ["404", "StatusCode.NOT_FOUND"])
def test_unload_of_a_missing_model_is_ignored_or_reported(monkeypatch, status):
    urls = [closed_url(), closed_url()]

    def server(self, url=None):
        replica = TritonServer(url or self.urls[0])
        replica.client = _Refusing(status)
        return replica

    monkeypatch.setattr(TritonCluster, "server", server)
    cluster = TritonCluster(urls)
    cluster.unload_model("gone")  # ignore_missing=True: nothing raised
    with pytest.raises(MlflowException) as err:
        cluster.unload_model("gone", ignore_missing=False)
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    errors = cluster._each(lambda s: s.unload_model("gone"))
    assert all(type(e) is ModelNotFound and e.status == status for e in errors.values())


def test_unload_failure_other_than_missing_is_raised(monkeypatch):
    def server(self, url=None):
        replica = TritonServer(url or self.urls[0])
        replica.client = _Refusing("500")
        return replica

    monkeypatch.setattr(TritonCluster, "server", server)
    with pytest.raises(MlflowException) as err:
        TritonCluster([closed_url()]).unload_model("m")
    assert err.value.error_code == "INTERNAL_ERROR"


# -- a real Triton that answers with errors ----------------------------------------------------


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    """A tritonserver on a local repository holding broken models."""
    tmp = tmp_path_factory.mktemp("classification")
    repository = tmp / "repo"
    (repository / "badcfg").mkdir(parents=True)
    (repository / "badcfg" / "config.pbtxt").write_text("this is { not a config")
    (repository / "badonnx" / "1").mkdir(parents=True)
    (repository / "badonnx" / "1" / "model.onnx").write_bytes(b"garbage, not onnx")
    (repository / "badonnx" / "config.pbtxt").write_text(CONFIG.format(name="badonnx"))
    server = tritonserver(str(repository), make_backend_dir(tmp / "backends"), tmp / "triton.log",
                          env=dict(os.environ))  # fmt: skip
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize(("model", "status"), [
    ("badcfg", {"http": "500", "grpc": "StatusCode.INTERNAL"}),
    ("badonnx", {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}),
])  # fmt: skip
def test_failed_load_is_not_unreachable(triton, protocol, model, status):
    url = triton.http_url if protocol == "http" else grpc_url(triton)
    errors = TritonCluster([url], protocol=protocol).load_model(model, version=1)
    assert_answered(errors[url])
    assert errors[url].status == status[protocol]
    with pytest.raises(MlflowException) as err:
        raise_failures(f"load {model}", errors)
    assert err.value.error_code == "INTERNAL_ERROR"


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unknown_model(triton, protocol):
    url = triton.http_url if protocol == "http" else grpc_url(triton)
    cluster = TritonCluster([url], protocol=protocol)
    cluster.unload_model("no-such-model", ignore_missing=False)  # Triton answers 200
    with TritonServer(url, protocol=protocol) as server:
        assert server.is_model_ready("no-such-model") is False
        with pytest.raises(ModelNotFound) as config:
            server.model_config("no-such-model")
        with pytest.raises(ModelNotFound) as infer:
            server.infer("no-such-model", {"features": np.zeros((1, 4), np.float32)},
                         {"features": "FP32"}, ["scores"])  # fmt: skip
        with pytest.raises(TritonError) as load:  # "failed to poll": 500, not a 404
            server.load_model("no-such-model")
    assert_answered(config.value, ModelNotFound)
    assert_answered(infer.value, ModelNotFound)
    assert_answered(load.value)
    with pytest.raises(MlflowException) as err:
        raise_failures("read config", {url: config.value})
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"


# -- a Triton that cannot reach its S3 repository ------------------------------------------------


def _wait_answers(process: ManagedProcess, timeout_s: float = 240.0) -> None:
    """Wait until ``process`` answers HTTP at all (it is never ready: no 200 on health)."""
    deadline = time.monotonic() + timeout_s
    with TritonServer(process.http_url, timeout_s=2.0) as probe:  # type: ignore[attr-defined]
        while not probe._answers():
            if not process.running:
                pytest.fail(f"tritonserver exited:\n{process.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"tritonserver did not answer after {timeout_s}s:\n{process.log_tail()}")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def s3_down(tmp_path_factory):
    """Two tritonservers on an S3 repository they cannot reach.

    ``never_reached``: the endpoint is a closed loopback port from the start; tritonserver only
    keeps running with ``--exit-on-error=false`` (without it: "Unable to create S3 filesystem
    client", exit 1) and answers after ~50 s of S3 retries, never ready. ``lost``: the S3
    server (moto) stops after tritonserver started.
    """
    tmp = tmp_path_factory.mktemp("s3-down")
    env = {**os.environ, **AWS_TEST_CREDENTIALS}
    backends = make_backend_dir(tmp / "backends")
    flags = ["--exit-on-error=false", "--strict-readiness=false"]
    never = tritonserver(f"s3://http://127.0.0.1:{free_port()}/bucket/repo", backends,
                         tmp / "never.log", env)  # fmt: skip
    never.argv += flags
    s3_port = free_port()
    moto = moto_s3(s3_port, tmp / "moto.log")
    lost = tritonserver(f"s3://http://127.0.0.1:{s3_port}/bucket/repo", backends, tmp / "lost.log", env)
    lost.argv += flags
    try:
        never.launch()  # its ~50 s of retries overlap the rest
        moto.start()
        store = S3Store("s3://bucket/repo", client=_s3_client(f"http://127.0.0.1:{s3_port}"))
        store.client.create_bucket(Bucket="bucket")
        store.write_bytes("m/config.pbtxt", CONFIG.format(name="m").encode())
        lost.start()
        moto.stop()
        yield SimpleNamespace(never_reached=never, lost=lost)
    finally:
        for process in (never, lost, moto):
            process.stop()


def _call(url: str, protocol: str, action: str) -> Exception | None:
    with TritonServer(url, protocol=protocol, timeout_s=120.0) as server:
        try:
            server.load_model("m") if action == "load" else server.repository_index()
        except Exception as err:
            return err
    return None


@pytest.mark.integration
def test_triton_that_lost_its_s3_repository_is_not_unreachable(s3_down):
    """Each call waits out Triton's S3 retries (~25 s), one at a time inside Triton."""
    lost = s3_down.lost
    calls = [
        (lost.http_url, "http", "load", "500"),  # "failed to poll from model repository"
        (grpc_url(lost), "grpc", "index", "StatusCode.INTERNAL"),  # "... Couldn't connect to server"
    ]
    with ThreadPoolExecutor(len(calls)) as pool:
        errors = list(pool.map(lambda c: _call(*c[:3]), calls))
    for err, (_, protocol, action, status) in zip(errors, calls, strict=True):
        assert_answered(err)
        assert err.status == status, (protocol, action)


@pytest.mark.integration
def test_triton_that_never_reached_its_s3_repository_is_not_unreachable(s3_down):
    never = s3_down.never_reached
    _wait_answers(never)
    for url, protocol, status in ((never.http_url, "http", "503"),
                                  (grpc_url(never), "grpc", "StatusCode.UNAVAILABLE")):  # fmt: skip
        errors = TritonCluster([url], protocol=protocol, timeout_s=30.0).load_model("m", version=1)
        assert_answered(errors[url])
        assert errors[url].status == status  # "Server not ready", from Triton itself
        with TritonServer(url, protocol=protocol) as server:
            for call in (lambda: server.unload_model("m"), server.repository_index):
                with pytest.raises(TritonError) as err:
                    call()
                assert_answered(err.value)


# -- S3 per-key delete errors ------------------------------------------------------------------


def _stubbed_store():
    from botocore.stub import Stubber

    client = _s3_client()
    return S3Store("s3://bucket/repo", client=client), Stubber(client)


def _page(keys: list[str], truncated: bool = False) -> dict:
    page = {"Contents": [{"Key": k} for k in keys], "IsTruncated": truncated, "KeyCount": len(keys)}
    if truncated:
        page["NextContinuationToken"] = "next"
    return page


def _delete_params(keys: list[str]) -> dict:
    return {"Bucket": "bucket", "Delete": {"Objects": [{"Key": k} for k in keys], "Quiet": True}}


def test_delete_prefix_surfaces_per_key_errors():
    store, stub = _stubbed_store()
    first, second = ["repo/m/1/a", "repo/m/1/b"], ["repo/m/2/c"]
    stub.add_response("list_objects_v2", _page(first, truncated=True), {"Bucket": "bucket", "Prefix": "repo/m/"})
    stub.add_response("delete_objects", {"Errors": [{"Key": "repo/m/1/b", "Code": "AccessDenied", "Message": "no"}]},
                      _delete_params(first))  # fmt: skip
    stub.add_response("list_objects_v2", _page(second),
                      {"Bucket": "bucket", "Prefix": "repo/m/", "ContinuationToken": "next"})  # fmt: skip
    stub.add_response("delete_objects", {}, _delete_params(second))
    with stub, pytest.raises(MlflowException) as err:
        store.delete_prefix("m/")
    assert err.value.error_code == "INTERNAL_ERROR"
    stub.assert_no_pending_responses()  # the other page was still deleted


def test_delete_prefix_counts_deleted_objects():
    store, stub = _stubbed_store()
    keys = ["repo/m/1/a", "repo/m/config.pbtxt"]
    stub.add_response("list_objects_v2", _page(keys), {"Bucket": "bucket", "Prefix": "repo/m/"})
    stub.add_response("delete_objects", {}, _delete_params(keys))  # Quiet: no "Deleted" list
    with stub:
        assert store.delete_prefix("m/") == 2
    stub.assert_no_pending_responses()
