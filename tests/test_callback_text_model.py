"""A text model with a variable sequence length, from the export callback to Triton.

The tagger is trained once per Lightning distribution (``lightning.pytorch`` and
``pytorch_lightning``), exported with ``dynamic_axes`` on the sequence axis and registered.
The ``lightning`` one is then deployed with both artifact paths (ONNX and TorchScript) and
served at two different sequence lengths.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from mlflow.deployments import get_deploy_client
from mlflow.models import Model
from text_model import VOCAB, best_eager, train_tagger

from mlflow_triton.flavors.source import read_logged_model

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:'torch.load' received a zip file"),
]
PACKAGES = ("lightning", "pytorch_lightning")


@pytest.fixture(scope="module")
def trained(stack, tmp_path_factory):
    """Per package: (callback, trainer, registered name), trained on first use."""
    cache: dict[str, tuple] = {}

    def get(package: str):
        if package not in cache:
            name = f"tagger-{package.replace('_', '-')}-{tmp_path_factory.getbasetemp().name}"
            workdir = tmp_path_factory.mktemp(f"tagger-{package}")
            export, trainer = train_tagger(package, workdir, registered_model_name=name, alias="champion")
            cache[package] = (export, trainer, name)
        return cache[package]

    return get


@pytest.mark.parametrize("package", PACKAGES)
def test_callback_of_each_lightning_package_registers_a_variable_length_model(trained, package, tmp_path):
    export, trainer, name = trained(package)
    assert type(trainer).__module__.split(".")[0] == package
    assert type(export).__name__ == {
        "lightning": "LightningExportBestCheckpoint", "pytorch_lightning": "PytorchLightningExportBestCheckpoint"
    }[package]  # fmt: skip
    # verification ran at two sequence lengths: the example's (6) and another (6 + 3)
    assert {r.input_shapes[0] for r in export.verification} == {(1, 6), (7, 9)}
    assert all(r.passed for r in export.verification) and len(export.verification) == 4
    version = MlflowClient().get_model_version_by_alias(name, "champion")
    assert version.version == export.registered_version.version
    mlmodel = Model.load(f"models:/{name}@champion")
    assert mlmodel.signature.inputs.inputs[0].shape == (-1, -1)
    assert mlmodel.signature.outputs.inputs[0].shape == (-1, -1, 2)
    assert mlmodel.metadata["onnx_exporter"] == "torchscript"
    assert mlmodel.metadata["onnx_opset"] >= 17 and mlmodel.metadata["export_precision"] == "fp32"
    golden = read_logged_model(f"models:/{name}/{version.version}").golden_cases(tmp_path)
    assert golden is not None and [x["tokens"].shape for x, _ in golden] == [(1, 6), (7, 9)]
    eager = best_eager(package, export.last_exported_checkpoint)
    for inputs, outputs in golden:
        expected = eager(torch.from_numpy(inputs["tokens"])).detach().numpy()
        np.testing.assert_allclose(outputs["scores"], expected, rtol=1e-6, atol=1e-6)


def test_text_model_serves_two_sequence_lengths_on_both_artifact_paths(trained, stack):
    export, _, name = trained("lightning")
    eager = best_eager("lightning", export.last_exported_checkpoint)
    rng = np.random.default_rng(5)
    requests = [rng.integers(0, VOCAB, size=(2, length)).astype(np.int64) for length in (5, 13)]
    client = get_deploy_client("triton")
    for flavor in ("onnx", "torchscript"):
        deployment = f"{name}-{flavor}"
        client.create_deployment(deployment, f"models:/{name}@champion", config={"flavor": flavor, "instance_kind": "cpu"})
        assert client.get_deployment(deployment)["flavor"] == flavor
        for tokens in requests:
            expected = eager(torch.from_numpy(tokens)).detach().numpy()
            got = np.asarray(client.predict(deployment, {"tokens": tokens})["predictions"]["scores"])
            assert got.shape == (2, tokens.shape[1], 2)
            np.testing.assert_allclose(
                got, expected, rtol=1e-4, atol=1e-5, err_msg=f"{flavor} at length {tokens.shape[1]}"
            )


BLOCKED_DEPLOY = r"""
import importlib.abc, json, logging, sys

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "onnxruntime"):
            raise ModuleNotFoundError(f"{name} is blocked in this process", name=name)
        return None

sys.meta_path.insert(0, Blocker())
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stdout)
from mlflow.deployments import get_deploy_client

name, model_uri, flavor = sys.argv[1:4]
client = get_deploy_client("triton")
client.create_deployment(name, model_uri, config={"flavor": flavor, "instance_kind": "cpu"})
print(json.dumps({"loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnxruntime"))}))
"""


def test_golden_outputs_verify_a_rollout_with_torch_and_onnxruntime_absent(trained, stack):
    import json
    import subprocess
    import sys

    _, _, name = trained("lightning")
    deployment = f"{name}-golden"
    run = subprocess.run(
        [sys.executable, "-c", BLOCKED_DEPLOY, deployment, f"models:/{name}@champion", "torchscript"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"loaded": []}
    assert f"Verified {deployment} version 1 on 2 replica(s) against 2 golden case(s)" in run.stdout
    assert "checks that Triton answers" not in run.stdout + run.stderr  # not the weaker fallback
