"""Credentials never reach logs, output or error messages.

The last test puts credentials into every URI (tracking, Triton, S3 endpoint) and runs the
commands a user runs, as processes.

The AWS secret is replaced by a recognizable value (moto accepts any), then succeeding and
failing publishes run with every logger at DEBUG (botocore included). Captured log records,
this process's stdout/stderr, a ``mlflow deployments`` subprocess's output and every
exception (with its causes and formatted traceback) are searched for the secret.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import boto3
import mlflow.onnx
import onnx
import pytest
import torch
from mlflow import MlflowClient
from mlflow.deployments import get_deploy_client
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from models import Scorer, export_onnx, sample
from test_promotion_support import ALIAS, deployment, register  # noqa: F401

from mlflow_triton.local.processes import free_port

pytestmark = pytest.mark.integration
CPU = {"instance_kind": "cpu"}
SECRET = f"Sekr3t-{uuid.uuid4().hex}-never-log-me"


@pytest.fixture
def secret_env(stack, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # the unreachable-S3 case fails without retries
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # new clients resolve the new secret
    yield
    # Clients created from now on must not reuse a session holding the test secret.
    monkeypatch.undo()
    boto3.DEFAULT_SESSION = None


def every_text(err: BaseException) -> str:
    """The exception, its causes/contexts and the formatted traceback, as one string."""
    texts, seen = [], set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current), getattr(current, "message", "") or ""]
        current = current.__cause__ or current.__context__
    texts += traceback.format_exception(err)
    return "\n".join(map(str, texts))


def test_secret_never_appears_in_logs_output_or_errors(stack, unique_name, secret_env, tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    model = Scorer(seed=71)
    x = sample()
    mlflow.onnx.save_model(
        onnx.load(str(export_onnx(model, tmp_path / "m.onnx"))), str(tmp_path / "model"),
        signature=infer_signature({"features": x}, {"scores": model(torch.from_numpy(x)).detach().numpy()}),
        pip_requirements=["onnx"],
    )  # fmt: skip
    uri = str(tmp_path / "model")
    client = get_deploy_client("triton")
    closed = f"http://127.0.0.1:{free_port()}"
    failures = {
        "missing bucket": lambda: client.create_deployment(
            f"{unique_name}-a", uri, config={**CPU, "model_repository": "s3://no-such-bucket/x"}),
        "S3 unreachable": lambda: client.create_deployment(
            f"{unique_name}-b", uri, config={**CPU, "s3_endpoint_url": closed}),
        "Triton unreachable": lambda: get_deploy_client(f"triton:/{closed}").create_deployment(
            f"{unique_name}-c", uri, config=CPU),
        "already exists": lambda: client.create_deployment(unique_name, uri, config=CPU),
        "missing deployment": lambda: client.get_deployment(f"{unique_name}-d"),
    }  # fmt: skip

    client.create_deployment(unique_name, uri, config=CPU)
    client.update_deployment(unique_name, uri, config=CPU)  # no-op path
    client.get_deployment(unique_name)
    client.list_deployments()
    client.predict(unique_name, {"features": x})
    errors = []
    for what, call in failures.items():
        with pytest.raises(MlflowException) as err:
            call()
        errors.append((what, every_text(err.value)))
    client.delete_deployment(unique_name)
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": SECRET}
    cli = subprocess.run(
        [sys.executable, "-m", "mlflow", "deployments", "create", "-t", "triton", "--name",
         f"{unique_name}-e", "-m", uri, "-C", "model_repository=s3://no-such-bucket/x"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert any(r.name.startswith("botocore") and r.levelno == logging.DEBUG for r in caplog.records)
    assert cli.returncode != 0 and "no-such-bucket" in cli.stdout + cli.stderr
    out, err_text = capfd.readouterr()
    places = {
        "log records": "\n".join(
            f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records
        ),
        "caplog text": caplog.text,
        "stdout": out,
        "stderr": err_text,
        "mlflow CLI output": cli.stdout + cli.stderr,
        **{f"error ({what})": text for what, text in errors},
    }
    for where, text in places.items():
        assert SECRET not in text, f"the AWS secret leaked into {where}"
        assert SECRET[:14] not in text, f"part of the AWS secret leaked into {where}"


def test_callback_never_shows_tracking_uri_credentials(tmp_path, caplog, capfd):
    """The export callback masks credentials of the tracking URI in its errors and log lines."""
    from examples.tiny_model import TinyRegressor
    from lightning_callbacks import ExportBestCheckpoint, ExportLoggingError

    caplog.set_level(logging.DEBUG)
    uri = f"http://alice:{SECRET}@127.0.0.1:{free_port()}"  # nothing listens there
    callback = ExportBestCheckpoint(formats=("onnx",), tracking_uri=uri, output_dir=tmp_path)
    with pytest.raises(ExportLoggingError) as err, pytest.warns(RuntimeWarning):
        callback.export(TinyRegressor())
    text = every_text(err.value)
    assert "http://***@127.0.0.1" in str(err.value) and "unreachable" in str(err.value)
    assert err.value.paths["onnx"].is_file()
    out, err_text = capfd.readouterr()
    logs = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records)
    for where, found in {"error": text, "logs": logs, "caplog": caplog.text, "stdout": out, "stderr": err_text}.items():
        assert SECRET not in found, f"the tracking URI's secret leaked into {where}"


# -- credentials in every URI: one masking rule at every boundary ---------------------------------
TRACKING_PW, TRITON_PW, S3_PW = (f"{kind}-{uuid.uuid4().hex[:12]}" for kind in ("trk", "tri", "s3e"))
CREDENTIALS = (TRACKING_PW, TRITON_PW, S3_PW)


def with_userinfo(url: str, user: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{password}@{rest}"


def run_cli(argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def finished(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out + err


def watched_for_two_rounds(argv: list[str], env: dict[str, str]) -> str:
    """Run ``mlflow-triton [--log-format json] watch ... --listen``; SIGTERM after round 2."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "mlflow_triton.cli", *argv, "--interval", "0.2",
                                "--listen", f"127.0.0.1:{port}"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        rounds = 0
        while rounds < 2:
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
            time.sleep(0.3)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
                    rounds = json.loads(response.read())["rounds"]
            except (urllib.error.URLError, ConnectionError):
                continue
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0]
        assert process.returncode == 0, output
        return output
    finally:
        if process.poll() is None:
            process.kill()


def test_credentials_in_tracking_triton_and_s3_urls_never_appear(stack, deployment):  # noqa: F811 (fixture)
    """Userinfo in the tracking URI, the Triton URLs and the S3 endpoint: a failing create (S3,
    then Triton unreachable), a failing and a succeeding sync, a get, and two watch rounds in
    text and JSON logs; then the registry tags and every object of the deployment."""
    register(deployment, 41)
    MlflowClient().set_registered_model_alias(deployment, ALIAS, "1")
    triton_urls = [with_userinfo(url, "tu", TRITON_PW) for url in stack.triton_urls]
    closed = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": with_userinfo(stack.tracking_uri, "mluser", TRACKING_PW),
           "TRITON_URL": ",".join(triton_urls), "AWS_MAX_ATTEMPTS": "1",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}  # fmt: skip
    create = ["mlflow", "deployments", "create", "--name", deployment, "-m", f"models:/{deployment}/1",
              "-C", "instance_kind=cpu"]  # fmt: skip
    promote = ["mlflow_triton.cli", "sync", "--model", deployment, "--alias", ALIAS, "-C", "instance_kind=cpu"]
    failing = {
        "create, S3 endpoint unreachable": run_cli(
            [*create, "-t", "triton", "-C", f"s3_endpoint_url=http://s3u:{S3_PW}@{closed}"], env),
        "create, Triton unreachable": run_cli(
            [*create, "-t", f"triton:/http://tu:{TRITON_PW}@{closed}"], env),
        "sync, registry unreachable": run_cli(
            promote, {**env, "MLFLOW_TRACKING_URI": f"http://mluser:{TRACKING_PW}@{closed}"}),
        "sync, S3 endpoint unreachable": run_cli(
            [*promote, "-C", f"s3_endpoint_url=http://s3u:{S3_PW}@{closed}"], env),
    }  # fmt: skip
    outputs = {}
    for what, process in failing.items():
        code, outputs[what] = finished(process)
        assert code != 0 and "***@" in outputs[what], (what, outputs[what])  # the URL is named, masked
    code, outputs["sync"] = finished(run_cli(promote, env))
    assert code == 0 and "published registry version 1" in outputs["sync"], outputs["sync"]
    get = run_cli(["mlflow", "deployments", "get", "-t", "triton", "--name", deployment], env)
    follow = ["watch", "--model", deployment, "--alias", ALIAS, "-C", "instance_kind=cpu"]
    with ThreadPoolExecutor(2) as pool:  # the two watches overlap
        text, as_json = pool.map(lambda argv: watched_for_two_rounds(argv, env), [follow, ["--log-format", "json", *follow]])
    outputs["watch (text logs)"], outputs["watch (JSON logs)"] = text, as_json
    code, outputs["get"] = finished(get)
    assert code == 0 and "http://tu:***@" not in outputs["get"] and "***@127.0.0.1" in outputs["get"], outputs["get"]
    for watched in ("watch (text logs)", "watch (JSON logs)"):
        assert "unchanged (registry version 1" in outputs[watched], outputs[watched]

    tags = MlflowClient().get_model_version(deployment, "1").tags
    assert tags.get(f"triton.{deployment}.state") == "serving" and "***@" in tags[f"triton.{deployment}.target"]
    s3 = stack.s3_client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=stack.bucket, Prefix=f"{stack.prefix}/{deployment}/")["Contents"]]
    objects = b"".join(s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read() for key in keys)
    places = {**outputs, "tags": json.dumps(tags), "repository objects": objects.decode("latin-1")}
    for where, text in places.items():
        for secret in CREDENTIALS:
            assert secret not in text, f"{secret[:3]} credential leaked into {where}:\n{text[-2000:]}"
