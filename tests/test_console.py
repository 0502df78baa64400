"""Unit tests: what a plugin call shows on a terminal (mlflow_triton.plugin.console).

No progress bars unless asked; under a click command (MLflow's CLI) an error is one line and a
hint, still an MlflowException with its error code; outside click, the original exception.
"""

from __future__ import annotations

import logging
import threading

import click
import mlflow.artifacts
import pytest
from click.testing import CliRunner
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from mlflow_triton.plugin.console import (
    DEBUG_ENV,
    DeploymentCommandError,
    plugin_call,
    quiet_downloads,
)

BAR_VARIABLE = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@plugin_call
def download(source, destination):
    return mlflow.artifacts.download_artifacts(artifact_uri=str(source), dst_path=str(destination))


@plugin_call
def fail(error: Exception):
    raise error


@pytest.fixture
def artifacts(tmp_path):
    source = tmp_path / "model"
    source.mkdir()
    for name in ("MLmodel", "model.onnx", "input_example.json"):
        (source / name).write_text(name)
    return source


def test_mlflow_draws_download_bars_and_a_plugin_call_does_not(artifacts, tmp_path, capfd, monkeypatch):
    monkeypatch.delenv(BAR_VARIABLE, raising=False)
    mlflow.artifacts.download_artifacts(artifact_uri=str(artifacts), dst_path=str(tmp_path / "plain"))
    assert "Downloading artifacts" in capfd.readouterr().err  # what users saw on every create
    download(artifacts, tmp_path / "quiet")
    assert "Downloading artifacts" not in capfd.readouterr().err
    assert (tmp_path / "quiet" / "model" / "model.onnx").exists()


def test_bars_stay_when_asked_for(artifacts, tmp_path, capfd, monkeypatch, caplog):
    monkeypatch.setenv(BAR_VARIABLE, "true")  # the user's choice wins
    download(artifacts, tmp_path / "asked")
    assert "Downloading artifacts" in capfd.readouterr().err
    monkeypatch.delenv(BAR_VARIABLE)
    with caplog.at_level(logging.DEBUG, logger="mlflow_triton"):  # or DEBUG logs of the plugin
        download(artifacts, tmp_path / "debug")
    assert "Downloading artifacts" in capfd.readouterr().err


def test_nested_and_concurrent_quiet_blocks_restore_the_environment_once(monkeypatch):
    import os

    monkeypatch.delenv(BAR_VARIABLE, raising=False)
    inside, release = threading.Barrier(2), threading.Event()

    def worker():
        with quiet_downloads():
            inside.wait(5)
            release.wait(5)

    thread = threading.Thread(target=worker)
    thread.start()
    with quiet_downloads():
        inside.wait(5)
        with quiet_downloads():
            assert os.environ[BAR_VARIABLE] == "false"
    assert os.environ[BAR_VARIABLE] == "false"  # the worker's block still runs
    release.set()
    thread.join(5)
    assert BAR_VARIABLE not in os.environ


def test_outside_click_the_original_exception_is_raised(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    error = MlflowException("No deployment named 'x'.", error_code=RESOURCE_DOES_NOT_EXIST)
    with pytest.raises(MlflowException) as raised:
        fail(error)
    assert raised.value is error


@click.command()
@click.argument("kind")
def command(kind: str) -> None:
    if kind == "mlflow":
        fail(MlflowException("No deployment named 'x' in s3://b/p.", error_code=RESOURCE_DOES_NOT_EXIST))
    fail(RuntimeError("boom"))


def test_under_click_an_error_is_one_line_and_a_hint(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    result = CliRunner().invoke(command, ["mlflow"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.splitlines() == [
        "Error: No deployment named 'x' in s3://b/p.", f"Hint: set {DEBUG_ENV}=1 to see the traceback.",
    ]  # fmt: skip
    result = CliRunner().invoke(command, ["other"])
    assert result.output.splitlines()[0] == "Error: RuntimeError: boom"


def test_the_converted_error_keeps_the_mlflow_type_code_and_cause(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    original = MlflowException("gone", error_code=RESOURCE_DOES_NOT_EXIST)
    with click.Context(command):
        with pytest.raises(DeploymentCommandError) as raised:
            fail(original)
    assert isinstance(raised.value, MlflowException) and isinstance(raised.value, click.ClickException)
    assert raised.value.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST) and raised.value.message == "gone"
    assert raised.value.__cause__ is original


def test_debug_variable_gives_the_traceback(monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "1")
    result = CliRunner().invoke(command, ["mlflow"])
    assert isinstance(result.exception, MlflowException) and not isinstance(result.exception, click.ClickException)
