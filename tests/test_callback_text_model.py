"""A text model with a variable sequence length, from the export callback to Triton.

Trained under each Lightning distribution (``lightning.pytorch`` and ``pytorch_lightning``),
exported with ``dynamic_axes`` on the sequence axis, registered, deployed with both artifact
paths (ONNX and TorchScript) and served at two different sequence lengths.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from mlflow.deployments import get_deploy_client
from mlflow.models import Model

from mlflow_triton import model_config as mcfg
from text_model import VOCAB, best_eager, train_tagger

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:'torch.load' received a zip file"),
]


@pytest.mark.parametrize("package", ["lightning", "pytorch_lightning"])
def test_text_model_serves_two_sequence_lengths_on_both_artifact_paths(stack, unique_name, tmp_path, package):
    export, trainer = train_tagger(package, tmp_path, registered_model_name=unique_name, alias="champion")
    assert type(trainer).__module__.startswith(package.replace("lightning", "lightning.pytorch", 1) if package == "lightning" else package)

    # verification ran at two sequence lengths: the example's (6) and another (6 + 3)
    shapes = {r.input_shapes[0] for r in export.verification}
    assert {s[1] for s in shapes} == {6, 9} and all(r.passed for r in export.verification)
    model_uri = f"models:/{unique_name}@champion"
    mlmodel = Model.load(model_uri)
    assert mlmodel.signature.inputs.inputs[0].shape == (-1, -1)
    assert mlmodel.signature.outputs.inputs[0].shape == (-1, -1, 2)
    assert mlmodel.metadata["onnx_exporter"] == "torchscript" and mlmodel.metadata["onnx_opset"] >= 17
    version = MlflowClient().get_model_version_by_alias(unique_name, "champion")
    assert version.version == export.registered_version.version

    eager = best_eager(package, export.last_exported_checkpoint)
    rng = np.random.default_rng(5)
    requests = [rng.integers(0, VOCAB, size=(2, length)).astype(np.int64) for length in (5, 13)]
    client = get_deploy_client("triton")
    for flavor in ("onnx", "torchscript"):
        name = f"{unique_name}-{flavor[:4]}"
        client.create_deployment(name, model_uri, config={"flavor": flavor, "instance_kind": "cpu"})
        config = mcfg.parse_pbtxt(client.get_deployment(name)["config_pbtxt"]) if "config_pbtxt" in client.get_deployment(name) else None
        if config is not None:
            assert list(config.input[0].dims) == [-1]
        for tokens in requests:
            expected = eager(torch.from_numpy(tokens)).detach().numpy()
            response = client.predict(name, {"tokens": tokens})
            got = np.asarray(response["predictions"]["scores"])
            assert got.shape == (2, tokens.shape[1], 2)
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=f"{flavor} at length {tokens.shape[1]}")
        client.delete_deployment(name)
