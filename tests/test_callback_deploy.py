"""End to end: train with ExportBestCheckpoint, deploy the registered model to Triton, predict.

One registered version holds both flavors; it is deployed twice (ONNX, then TorchScript)
with the ``triton`` MLflow deployment target and both deployments must reproduce eager.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow.deployments import get_deploy_client

from examples.tiny_model import TinyRegressor, train

pytestmark = pytest.mark.integration


def test_trained_model_serves_both_flavors_on_triton(stack, unique_name, tmp_path):
    export = train(stack.tracking_uri, unique_name, "champion", max_epochs=2, workdir=tmp_path)
    eager = TinyRegressor()
    checkpoint = torch.load(export.last_exported_checkpoint, weights_only=False)
    eager.load_state_dict(checkpoint["state_dict"])
    eager.eval()
    x = np.random.default_rng(3).normal(size=(6, 8)).astype(np.float32)
    expected = eager(torch.from_numpy(x)).detach().numpy()
    client = get_deploy_client("triton")
    model_uri = f"models:/{unique_name}@champion"

    deployments = {
        f"{unique_name}-onnx": {"instance_kind": "cpu"},
        f"{unique_name}-ts": {"flavor": "torchscript", "instance_kind": "cpu"},
    }
    for name, config in deployments.items():
        client.create_deployment(name, model_uri, config=config)
        response = client.predict(name, {"input": x})
        np.testing.assert_allclose(
            np.asarray(response["predictions"]["output"]), expected, rtol=1e-4, atol=1e-5,
            err_msg=f"deployment {name} ({config}) differs from eager",
        )  # fmt: skip
    assert client.get_deployment(f"{unique_name}-onnx")["flavor"] == "onnx"
    assert client.get_deployment(f"{unique_name}-ts")["flavor"] == "torchscript"
