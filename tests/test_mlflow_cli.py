"""The plugin from the shell: `mlflow deployments ... -t triton`, as users type it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from models import Scorer, log_onnx, sample

pytestmark = pytest.mark.integration


def mlflow_cli(*args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "deployments", *args],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=300,
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"mlflow deployments {args} failed:\n{result.stdout}\n{result.stderr}")
    return result


def test_create_predict_get_list_delete_from_the_shell(stack, unique_name, tmp_path):
    model = Scorer(seed=11)
    log_onnx(model, tmp_path, registered_name=unique_name)
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(unique_name, "production", "1")

    help_text = mlflow_cli("help", "-t", "triton").stdout
    assert "model_repository" in help_text and "triton:/http://" in help_text

    created = mlflow_cli(
        "create", "-t", "triton", "--name", unique_name, "-m", f"models:/{unique_name}@production",
        "-C", f"model_repository={stack.model_repository}", "-C", "instance_kind=cpu",
        "-C", "max_batch_size=8",
    )  # fmt: skip
    assert unique_name in created.stdout

    x = sample(3, seed=12)
    (tmp_path / "input.json").write_text(json.dumps({"features": x.tolist()}))
    predicted = mlflow_cli("predict", "-t", "triton", "--name", unique_name, "--input-path", str(tmp_path / "input.json"))
    scores = np.asarray(json.loads(predicted.stdout.strip().splitlines()[-1])["predictions"]["scores"])
    np.testing.assert_allclose(scores, model(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)

    described = mlflow_cli("get", "-t", "triton", "--name", unique_name).stdout
    assert "serving_version" in described and "READY" in described
    assert unique_name in mlflow_cli("list", "-t", "triton").stdout

    mlflow_cli("delete", "-t", "triton", "--name", unique_name)
    assert unique_name not in mlflow_cli("list", "-t", "triton").stdout


def test_shell_errors_are_clear(stack, unique_name):
    bad_name = mlflow_cli("create", "-t", "triton", "--name", "a/b", "-m", "models:/x/1", check=False)
    assert bad_name.returncode != 0 and "Invalid deployment name 'a/b'" in bad_name.stderr
    bad_target = mlflow_cli("create", "-t", "triton:/nohost", "--name", "m", "-m", "models:/x/1", check=False)
    assert bad_target.returncode != 0 and "Invalid Triton URL" in bad_target.stderr
    bad_key = mlflow_cli("create", "-t", "triton", "--name", "m", "-m", "models:/x/1", "-C", "batch=2", check=False)
    assert bad_key.returncode != 0 and "Unknown config key" in bad_key.stderr
    # One line (the whole message) and a hint, not MLflow's 30-60 line traceback
    for failed in (bad_name, bad_target, bad_key):
        assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
        assert failed.stderr.strip().splitlines() == [
            failed.stderr.splitlines()[0], "Hint: set MLFLOW_TRITON_DEBUG=1 to see the traceback."
        ] and failed.stderr.startswith("Error: ")  # fmt: skip
    typo = mlflow_cli("create", "-t", "triton", "--name", "m", "-m", "models:/x/1", "-C", "instance_knd=cpu", check=False)
    assert "'instance_knd' (did you mean 'instance_kind'?)" in typo.stderr.splitlines()[0]
    debug = mlflow_cli("create", "-t", "triton", "--name", "m", "-m", "models:/x/1", "-C", "instance_knd=cpu",
                       check=False, MLFLOW_TRITON_DEBUG="1")  # fmt: skip
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("mlflow.exceptions.MlflowException: Unknown config key")


def test_run_local_serves_until_interrupted(tmp_path):
    """`mlflow deployments run-local -t triton` starts its own S3 + tritonserver and stops them."""
    import re
    import signal

    import mlflow
    import onnx
    import tritonclient.http as httpclient
    from models import export_onnx

    model = Scorer(seed=17)
    mlflow.onnx.save_model(onnx.load(str(export_onnx(model, tmp_path / "m.onnx"))), str(tmp_path / "saved"))
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "deployments", "run-local", "-t", "triton", "--name", "local-scorer",
         "-m", str(tmp_path / "saved")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ),
    )  # fmt: skip
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("Serving local-scorer"):
                break
        match = re.search(r"at http://(\S+)", lines[-1])
        assert match, "".join(lines[-20:])
        triton = httpclient.InferenceServerClient(match[1])
        assert triton.is_model_ready("local-scorer")
        x = sample(2)
        request = httpclient.InferInput("features", list(x.shape), "FP32")
        request.set_data_from_numpy(x)
        out = triton.infer("local-scorer", [request]).as_numpy("scores")
        np.testing.assert_allclose(out, model(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    with pytest.raises(OSError):  # connection refused: the stack's Triton is gone
        triton.is_server_live()
