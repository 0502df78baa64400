"""The real tritonserver loads a generated config with an override, a response cache and warmup.

One ONNX model is deployed on both replicas of the shared stack with ``warmup=true`` (its
MLflow input example, stored in ``NAME/warmup/1/``), ``response_cache=true`` (the stack
starts tritonserver with ``--cache-config local``) and a ``config_override`` setting priority
levels and a backend parameter. Triton refuses a model whose ``input_data_file`` is missing or
too short at load, so READY on both replicas means it read the warmup data from S3.
"""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import tritonclient.http as httpclient
from mlflow.deployments import get_deploy_client

from mlflow_triton.model_config import parse_pbtxt
from mlflow_triton.store import open_store
from models import Scorer, export_onnx, sample
from test_promotion_support import logged_model

pytestmark = pytest.mark.integration
OVERRIDE = """
dynamic_batching { priority_levels: 2 default_priority_level: 2 }
parameters { key: "intra_op_thread_count" value { string_value: "1" } }
model_transaction_policy { decoupled: false }
"""
CONFIG = {"instance_kind": "cpu", "warmup": "true", "response_cache": "true", "config_override": OVERRIDE}


def test_override_cache_and_warmup_load_and_answer(stack, unique_name, tmp_path):
    uri = logged_model(21)  # logged once per session, shared with the promotion tests
    client = get_deploy_client("triton:/" + ",".join(stack.triton_urls))
    store = open_store(stack.model_repository, stack.s3_endpoint)
    session = onnxruntime.InferenceSession(str(export_onnx(Scorer(seed=21), tmp_path / "m.onnx")))
    try:
        created = client.create_deployment(unique_name, uri, config=CONFIG)
        assert created["version"] == 1 and created["verified"], created

        written = parse_pbtxt(store.read_bytes(f"{unique_name}/config.pbtxt"))
        assert written.response_cache.enable
        assert (written.dynamic_batching.priority_levels, written.dynamic_batching.default_priority_level) == (2, 2)
        assert written.dynamic_batching.max_queue_delay_microseconds == 200  # generated, kept
        assert written.parameters["intra_op_thread_count"].string_value == "1"
        assert "mlflow_triton.tensor_names" in written.parameters  # map merged key by key
        [warmup] = written.model_warmup
        example = sample()  # tests.models.log_onnx logs sample() as the input example
        assert warmup.batch_size == example.shape[0]
        assert warmup.inputs["features"].input_data_file == "1/input_0"
        assert store.read_bytes(f"{unique_name}/warmup/1/input_0") == example.tobytes()

        x = sample(3, seed=9)
        [expected] = session.run(["scores"], {"features": x})
        for url in stack.triton_urls:
            with httpclient.InferenceServerClient(url.split("://", 1)[1]) as triton:
                served = triton.get_model_config(unique_name)
                assert served["response_cache"] == {"enable": True}, served
                assert served["model_warmup"][0]["inputs"]["features"]["input_data_file"] == "1/input_0"
                for _ in range(2):  # the second identical request is answered from the cache
                    request = httpclient.InferInput("features", list(x.shape), "FP32")
                    request.set_data_from_numpy(x)
                    answer = triton.infer(unique_name, [request]).as_numpy("scores")
                    np.testing.assert_allclose(answer, expected, rtol=1e-4, atol=1e-5, err_msg=url)
                [stats] = triton.get_inference_statistics(unique_name)["model_stats"]
                assert stats["inference_stats"]["cache_hit"]["count"] >= 1, (url, stats)

        # The same override (re-indented: its canonical text is compared) is a no-op; a changed
        # one changes the recorded settings (tests/test_generated_options.py), so a new version.
        same = client.update_deployment(unique_name, uri, config={**CONFIG, "config_override": OVERRIDE.strip()})
        assert same["changed"] is False and same["version"] == 1, same
    finally:
        client.delete_deployment(unique_name)
