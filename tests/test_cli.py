"""The ``mlflow-triton`` CLI: usage errors, rollback, and a watch stopped by SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from test_promotion_support import ALIAS, CPU, assert_every_replica_serves, deployment, register  # noqa: F401

from mlflow_triton.cli import cli
from mlflow_triton.promotion import load_spec, sync
from mlflow_triton.rollout.publisher import ModelPublisher


# -- usage (no stack) ------------------------------------------------------------------------------
def test_commands_are_listed():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("sync", "watch", "serve-webhooks", "rollback"):
        assert command in result.output


def test_malformed_config_pair_is_a_usage_error():
    result = CliRunner().invoke(cli, ["sync", "--model", "fraud", "-C", "instance_kind"])
    assert result.exit_code == 2 and "NAME=VALUE" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["sync", "--repo", "s3://b/p", "--triton", "http://127.0.0.1:9"], "names no model"),
        (["sync", "--model", "fraud", "--repo", "s3://b/p", "--triton", "ftp://x"], "Invalid Triton URL"),
        (["sync", "--model", "fraud", "--repo", "s3://b/p", "--triton", "http://127.0.0.1:9",
          "-C", "colour=red"], "Unknown config key"),  # fmt: skip
        (["sync", "--model", "a/b", "--repo", "s3://b/p", "--triton", "http://127.0.0.1:9"], "Invalid deployment name"),
        (["serve-webhooks", "--model", "fraud", "--repo", "s3://b/p", "--triton", "http://127.0.0.1:9"],
         "MLFLOW_TRITON_WEBHOOK_SECRET"),  # fmt: skip
    ],
)
def test_bad_options_exit_1_before_any_work(args, message, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRITON_WEBHOOK_SECRET", raising=False)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and message in result.output, result.output


BAD_KEY = ["sync", "--model", "fraud", "--repo", "s3://b/p", "--triton", "http://127.0.0.1:9", "-C", "instance_knd=cpu"]


def test_an_error_is_one_line_and_a_hint():
    result = CliRunner().invoke(cli, BAD_KEY)
    assert result.exit_code == 1 and "Traceback" not in result.output
    error, hint = result.output.strip().splitlines()
    assert error.startswith("Error: Unknown config key(s) 'instance_knd' (did you mean 'instance_kind'?)")
    assert error.endswith("response_cache.")  # the whole message on its first line
    assert hint == "Hint: mlflow-triton --debug sync ... shows the traceback."


def test_debug_prints_the_traceback_of_the_original_error():
    result = CliRunner().invoke(cli, ["--debug", *BAD_KEY])
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.output and "MlflowException: Unknown config key" in result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: Unknown config key")  # no hint


def test_an_unexpected_error_is_one_line_with_its_type(monkeypatch):
    from mlflow_triton.cli import commands

    def broken(spec, **options):
        raise RuntimeError("boom")

    monkeypatch.setattr(commands.promotion, "sync", broken)
    result = CliRunner().invoke(cli, ["sync", "--model", "fraud", "--repo", "s3://b/p", "--triton", "http://127.0.0.1:9"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-2:] == [
        "Error: RuntimeError: boom", "Hint: mlflow-triton --debug sync ... shows the traceback.",
    ]  # fmt: skip


# -- on the real stack -----------------------------------------------------------------------------
@pytest.mark.integration
def test_rollback_serves_the_previous_version_on_every_replica(stack, deployment):
    v1, v2 = register(deployment, 21, 22)
    registry = MlflowClient()
    spec = load_spec(models=[deployment], alias=ALIAS, config=CPU)
    for version in ("1", "2"):
        registry.set_registered_model_alias(deployment, ALIAS, version)
        assert sync(spec).ok
    runner = CliRunner()

    result = runner.invoke(cli, ["rollback", deployment, "-C", "instance_kind=cpu"])

    assert result.exit_code == 0, result.output
    assert f"{deployment}: rolled back from version 2 to 1" in result.output
    assert "they will roll forward unless you move it (--set-alias)" in result.output
    publisher = ModelPublisher.for_config(spec.models[0].config, stack.triton_urls)
    assert publisher.read_state(deployment).serving_version == 1
    assert_every_replica_serves(stack.triton_urls, deployment, v1)

    # Back to 2, moving the alias with it: the next sync has nothing to undo.
    result = runner.invoke(cli, ["rollback", deployment, "--to", "2", "--set-alias", ALIAS, "--no-smoke-test"])
    assert result.exit_code == 0 and "alias 'production' moved" in result.output, result.output
    assert str(registry.get_model_version_by_alias(deployment, ALIAS).version) == "2"  # int from a SQL store
    assert sync(spec).models[0].action == "unchanged"
    assert_every_replica_serves(stack.triton_urls, deployment, v2)

    missing = runner.invoke(cli, ["rollback", deployment, "--to", "7"])
    assert missing.exit_code == 1 and "no published version 7" in missing.output


@pytest.mark.integration
def test_watch_finishes_the_round_on_sigterm_and_exits_0(stack, deployment):
    (v1,) = register(deployment, 21)
    MlflowClient().set_registered_model_alias(deployment, ALIAS, "1")
    argv = [sys.executable, "-m", "mlflow_triton.cli", "watch", "--model", deployment,
            "--alias", ALIAS, "-C", "instance_kind=cpu", "--interval", "1"]  # fmt: skip
    process = subprocess.Popen(argv, env=dict(os.environ), stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    copied = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if f"Copied {deployment} version 1" in line:
                process.send_signal(signal.SIGTERM)  # mid-publish: the round must complete
                copied.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert process.wait(timeout=120) == 0, "".join(lines)
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(5)
    log = "".join(lines)
    assert copied.is_set(), log
    assert "Received SIGTERM" in log and "Watch stopped after 1 round(s)" in log
    assert "published registry version 1 as Triton version 1" in log
    publisher = ModelPublisher.for_config(load_spec(models=[deployment], config=CPU).models[0].config, stack.triton_urls)
    assert publisher.read_state(deployment).serving_version == 1
    assert publisher.store.read_bytes(f"{deployment}/.mlflow-triton.lease") is None
    assert_every_replica_serves(stack.triton_urls, deployment, v1)
