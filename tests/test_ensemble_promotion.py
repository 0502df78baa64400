"""An ensemble with a logged composing model, rolled out by ``mlflow-triton sync`` and by a
webhook delivery: the composing model first, each step verified under its staging name, then
the ensemble.

The ensemble (``pipeline``) has one step, a Python-backend ``scaler`` logged beside it with
``triton.log_model(..., composing_models=[...])``. Version 1 scales by 3, version 2 by 5.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.deployments import get_deploy_client
from test_webhooks import SECRET, event, post, signed_headers

from mlflow_triton.daemons.webhooks import SECRET_ENV, WebhookReceiver
from mlflow_triton.flavors import triton as triton_flavor
from mlflow_triton.promotion import load_spec, sync

ALIAS = "production"
PIPELINE = """
platform: "ensemble"
max_batch_size: 4
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 2 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 2 ] }} ]
ensemble_scheduling {{ step [
  {{ model_name: "{scaler}" model_version: -1 input_map {{ key: "X" value: "x" }} output_map {{ key: "Y" value: "y" }} }}
] }}
"""
SCALER = """
backend: "python"
max_batch_size: 4
input [ { name: "X" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 2 ] } ]
"""
SCALER_MODEL = textwrap.dedent('''
    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            return [
                pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(
                    "Y", ({factor} * pb_utils.get_input_tensor_by_name(r, "X").as_numpy()).astype(np.float32)
                )])
                for r in requests
            ]
''')


def register_pipeline(tmp: Path, name: str, scaler: str, factor: int) -> None:
    root = tmp / f"factor-{factor}"
    (root / "pipeline").mkdir(parents=True)
    (root / "pipeline" / "config.pbtxt").write_text(PIPELINE.format(scaler=scaler))
    (root / scaler / "1").mkdir(parents=True)
    (root / scaler / "config.pbtxt").write_text(SCALER)
    (root / scaler / "1" / "model.py").write_text(SCALER_MODEL.format(factor=factor))
    with mlflow.start_run():
        triton_flavor.log_model(root / "pipeline", name="model", composing_models=[root / scaler], registered_model_name=name)


def assert_rolled_out_verified(client, name: str, scaler: str, factor: int, versions: tuple[int, int]) -> None:
    """``versions``: the scaler's and the ensemble's serving versions, each verified."""
    for deployment, version in zip((scaler, name), versions, strict=True):
        described = client.get_deployment(deployment)
        assert described["serving_version"] == version, described
        serving = [e for e in described["history"] if e["event"] == "serving"][-1]
        staged = [e for e in described["history"] if e["event"] == "staged"][-1]
        assert serving["version"] == version and staged["verified"] is True, described["history"]
    x = np.array([[1.0, -2.0], [0.5, 4.0]], np.float32)
    got = client.predict(name, {"x": x})["predictions"]["y"]
    np.testing.assert_allclose(np.asarray(got), factor * x)


@pytest.mark.integration
def test_sync_and_a_webhook_roll_out_an_ensemble_and_its_logged_step_each_verified(
    stack, unique_name, tmp_path, monkeypatch
):
    name, scaler = f"{unique_name}-pipe", f"{unique_name}-scaler"
    client = get_deploy_client(f"triton:/{stack.triton_urls[0]}?repository={stack.model_repository}")
    spec = load_spec(models=[name], alias=ALIAS, triton=stack.triton_urls[0])
    registry = MlflowClient()
    try:
        register_pipeline(tmp_path, name, scaler, factor=3)
        registry.set_registered_model_alias(name, ALIAS, "1")
        report = sync(spec)
        assert report.ok, [m.error for m in report.models]
        assert_rolled_out_verified(client, name, scaler, factor=3, versions=(1, 1))

        register_pipeline(tmp_path, name, scaler, factor=5)
        registry.set_registered_model_alias(name, ALIAS, "2")
        monkeypatch.setenv(SECRET_ENV, SECRET)
        with WebhookReceiver(spec, port=0) as receiver:
            body = event(name, version="2")
            assert post(receiver.url, body, signed_headers(body))[0] == 202
            deadline = time.monotonic() + 120
            while not receiver.reports and time.monotonic() < deadline:
                time.sleep(0.2)
            assert receiver.wait_idle(60)
        (model,) = [m for r in receiver.reports for m in r.models]
        assert model.action == "published", model.error
        # The ensemble's own config did not change (version 1 keeps serving, now as registry
        # version 2); its step did: version 2, verified before it served.
        assert_rolled_out_verified(client, name, scaler, factor=5, versions=(2, 1))
        assert client.get_deployment(name)["provenance"]["registered_version"] == "2"
    finally:
        for deployment in (name, scaler):
            client.delete_deployment(deployment)
