"""Credentials never reach logs, output or error messages.

The AWS secret is replaced by a recognizable value (moto accepts any), then succeeding and
failing publishes run with every logger at DEBUG (botocore included). Captured log records,
this process's stdout/stderr, a ``mlflow deployments`` subprocess's output and every
exception (with its causes and formatted traceback) are searched for the secret.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import traceback
import uuid

import boto3
import mlflow.onnx
import onnx
import pytest
import torch
from mlflow.deployments import get_deploy_client
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from models import Scorer, export_onnx, sample

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
