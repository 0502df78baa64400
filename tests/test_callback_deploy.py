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
        response = client.predict(name, {"x": x})  # TinyRegressor.forward(self, x)
        np.testing.assert_allclose(
            np.asarray(response["predictions"]["output"]), expected, rtol=1e-4, atol=1e-5,
            err_msg=f"deployment {name} ({config}) differs from eager",
        )  # fmt: skip
    assert client.get_deployment(f"{unique_name}-onnx")["flavor"] == "onnx"
    assert client.get_deployment(f"{unique_name}-ts")["flavor"] == "torchscript"


def test_fp16_export_is_verified_and_served_with_an_fp16_config(stack, unique_name, tmp_path):
    import tritonclient.http as httpclient

    from lightning_callbacks import ExportBestCheckpoint

    model = TinyRegressor()
    export = ExportBestCheckpoint(
        formats=("onnx",), precision="fp16", registered_model_name=unique_name, alias="half",
        output_dir=tmp_path,
    )  # fmt: skip
    with pytest.warns(RuntimeWarning, match="current weights"):
        export.export(model)
    assert all(r.passed for r in export.verification)
    client = get_deploy_client("triton")
    client.create_deployment(unique_name, f"models:/{unique_name}@half", config={"instance_kind": "cpu"})

    url = stack.triton_urls[0].split("://", 1)[-1]
    config = httpclient.InferenceServerClient(url).get_model_config(unique_name)
    assert [t["data_type"] for t in (*config["input"], *config["output"])] == ["TYPE_FP16", "TYPE_FP16"]
    x = np.random.default_rng(4).normal(size=(5, 8)).astype(np.float16)
    got = np.asarray(client.predict(unique_name, {"x": x})["predictions"]["output"])
    expected = model.eval()(torch.from_numpy(x.astype(np.float32))).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-2, atol=1e-2)  # fp16 served vs fp32 eager
