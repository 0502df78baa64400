"""The real tritonserver loads a generated config with an override, a response cache and warmup.

One ONNX model is deployed on one replica of the shared stack with ``warmup=true`` (its
MLflow input example, stored in ``NAME/warmup/1/``), ``response_cache=true`` (the stack
starts tritonserver with ``--cache-config local``) and a ``config_override`` setting priority
levels and a backend parameter. Triton refuses a model whose ``input_data_file`` is missing or
too short at load, so READY means it read the warmup data from S3.
"""

from __future__ import annotations

import io
import uuid

import numpy as np
import onnxruntime
import pytest
import tritonclient.http as httpclient
from configs import generated_config
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mlflow.deployments import get_deploy_client
from models import Scorer, export_onnx, sample
from test_promotion_support import logged_model

from mlflow_triton.flavors.onnx import io_from_onnx
from mlflow_triton.fleet.server import TritonServer
from mlflow_triton.repository.layout import WARMUP_FOLDER
from mlflow_triton.repository.stores import open_store
from mlflow_triton.settings.deployment import DeploymentConfig
from mlflow_triton.triton_config.model_config import parse_pbtxt, to_pbtxt
from mlflow_triton.triton_config.warmup import plan_warmup

pytestmark = pytest.mark.integration
OVERRIDE = """
dynamic_batching { priority_levels: 2 default_priority_level: 2 }
parameters { key: "intra_op_thread_count" value { string_value: "1" } }
model_transaction_policy { decoupled: false }
"""
CONFIG = {"instance_kind": "cpu", "warmup": "true", "response_cache": "true", "config_override": OVERRIDE}


def test_override_cache_and_warmup_load_and_answer(stack, unique_name, tmp_path):
    uri = logged_model(21)  # logged once per session, shared with the promotion tests
    replica = stack.triton_urls[0]  # one replica: loading everywhere is tested elsewhere
    client = get_deploy_client(f"triton:/{replica}")
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
        for url in [replica]:
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


# -- the property, on the real server: CPU-valid generated configs load and answer ----------------
CPU_OVERRIDES = [
    None, "response_cache { enable: true }", "dynamic_batching { priority_levels: 2 default_priority_level: 1 }",
    "instance_group { kind: KIND_CPU count: 2 }", 'parameters { key: "intra_op_thread_count" value { string_value: "1" } }',
    "model_transaction_policy { decoupled: false }", "dynamic_batching { default_queue_policy { timeout_action: DELAY } }",
]  # fmt: skip


@pytest.fixture(scope="module")
def scorer_onnx(tmp_path_factory) -> tuple[bytes, onnxruntime.InferenceSession]:
    path = export_onnx(Scorer(seed=5), tmp_path_factory.mktemp("scorer") / "model.onnx")
    return path.read_bytes(), onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(  # an override's batcher on a model that does not batch, warmed up from its example
    override=CPU_OVERRIDES[2], response_cache=True, warmup=True, example=True, max_batch_size=0
).via("explicit")
@given(
    override=st.sampled_from(CPU_OVERRIDES), response_cache=st.booleans(), warmup=st.booleans(),
    example=st.booleans(), max_batch_size=st.sampled_from([0, 4, 32]),
)  # fmt: skip
def test_tritonserver_loads_cpu_valid_generated_configs(stack, scorer_onnx, override, response_cache, warmup, example, max_batch_size):
    """Written to the repository as generated (config, model, warmup files) and loaded directly
    on one replica: Triton must accept it and answer like onnxruntime."""
    model_bytes, session = scorer_onnx
    name = f"options-{uuid.uuid4().hex[:8]}"
    options = {
        "instance_kind": "cpu", "config_override": override, "response_cache": response_cache,
        "warmup": warmup, "max_batch_size": max_batch_size,
    }  # fmt: skip
    config = DeploymentConfig.from_dict(options)
    io_spec = io_from_onnx(io.BytesIO(model_bytes))
    x = sample(3, seed=4)
    plan = plan_warmup(io_spec, max_batch_size, {"features": x} if example else None, 1) if warmup else None
    message = generated_config(name, "onnx", io_spec, config, 1, plan)
    store = open_store(stack.model_repository, stack.s3_endpoint)
    store.write_bytes(f"{name}/1/model.onnx", model_bytes)
    for filename, data in (plan.files if plan else {}).items():
        store.write_bytes(f"{name}/{WARMUP_FOLDER}/{filename}", data)
    store.write_bytes(f"{name}/config.pbtxt", to_pbtxt(message).encode())
    with TritonServer(stack.triton_urls[0]) as triton:
        try:
            triton.load_model(name)
            assert triton.is_model_ready(name, 1), to_pbtxt(message)
            inputs = x if max_batch_size else x[:1].reshape(1, 4)  # unbatched: dims [-1, 4]
            answer = triton.infer(name, {"features": inputs}, {"features": "FP32"}, ["scores"])["scores"]
            [expected] = session.run(["scores"], {"features": inputs})
            np.testing.assert_allclose(answer, expected, rtol=1e-4, atol=1e-5)
        finally:
            triton.unload_model(name)
            store.delete_prefix(f"{name}/")
