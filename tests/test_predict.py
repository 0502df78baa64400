"""Predict like an application, on a private stack: moto S3 and two real tritonservers.

* ``scorer``: an ONNX model published through the plugin with ``max_batch_size: 16``;
  answers are compared with onnxruntime on the same file.
* ``talker``: a decoupled Python-backend model that sends three responses per request,
  ``0.2 s`` apart, each stamped with the server's clock when sent.
* ``picky``: a Python-backend model that refuses negative inputs (INVALID_ARG, HTTP 400) and
  fails on inputs over 1e6 (a model error, HTTP 500).

The Python models are written into the repository and loaded directly: the plugin's smoke
test cannot verify a decoupled model over HTTP. The last test kills a replica, so the
stack is this file's own.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow.onnx
import numpy as np
import onnx
import onnxruntime
import pandas as pd
import pytest
import requests
import torch
from mlflow.deployments import PredictionsResponse, get_deploy_client
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from models import Scorer, export_onnx

from mlflow_triton.fleet.server import TritonCluster
from mlflow_triton.inference import AsyncTritonPredictor
from mlflow_triton.local.stack import LocalStack

pytestmark = pytest.mark.integration

# The local stack's Python stub ignores PYTHONPATH: the models put the stack's virtualenv
# first, as the stand-in backends do (see tests/test_triton_flavor.py).
SITE_PATH_WORKAROUND = """
import os, site, sys
_before = list(sys.path)
for _entry in filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)):
    site.addsitedir(_entry)
sys.path[:] = [p for p in sys.path if p not in _before] + _before
"""
TALKER_CONFIG = """
backend: "python"
max_batch_size: 8
model_transaction_policy { decoupled: true }
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 2 ] }, { name: "SENT_AT" data_type: TYPE_FP64 dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU } ]
"""
TALKER = """
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            for k in range(3):
                sent = np.full((x.shape[0], 1), time.time(), dtype=np.float64)
                outputs = [pb_utils.Tensor("OUT", (x * (k + 1)).astype(np.float32)), pb_utils.Tensor("SENT_AT", sent)]
                sender.send(pb_utils.InferenceResponse(output_tensors=outputs))
                time.sleep(0.2)
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""
PICKY_CONFIG = """
backend: "python"
max_batch_size: 16
input [ { name: "X" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 2 ] } ]
instance_group [ { kind: KIND_CPU } ]
"""
PICKY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            if (x < 0).any():
                error = pb_utils.TritonError("negative input", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
            elif (x > 1e6).any():
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("input too large")))
            else:
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("Y", 2 * x)]))
        return responses
"""


class Served:
    """The stack and what it serves."""

    def __init__(self, stack: LocalStack, onnx_path: Path) -> None:
        self.stack = stack
        self.http = stack.triton_urls
        self.grpc = [f"grpc://{p.grpc_url}" for p in stack.tritons]
        self.session = onnxruntime.InferenceSession(str(onnx_path))

    def expected(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"features": x})[0]

    def target(self, protocol: str = "http") -> str:
        return "triton:/" + ",".join(self.http if protocol == "http" else self.grpc)

    def counts(self, name: str) -> list[dict[str, int]]:
        """Per replica: inferences (rows) and requests executed, from /v2/models/NAME/stats."""
        counts = []
        for url in self.http:
            entry = requests.get(f"{url}/v2/models/{name}/stats", timeout=10).json()["model_stats"][0]
            counts.append({"rows": int(entry["inference_count"]), "requests": int(entry["inference_stats"]["success"]["count"])})
        return counts

    def settled_counts(self, name: str) -> list[dict[str, int]]:
        """:meth:`counts` once they stop changing (requests a failed call left running finish)."""
        previous = self.counts(name)
        for _ in range(50):
            time.sleep(0.3)
            now = self.counts(name)
            if now == previous:
                return now
            previous = now
        return previous


def publish_python_model(stack: LocalStack, name: str, config: str, code: str) -> None:
    s3 = stack.s3_client()
    s3.put_object(Bucket=stack.bucket, Key=f"{stack.prefix}/{name}/config.pbtxt", Body=textwrap.dedent(config).encode())
    body = SITE_PATH_WORKAROUND + textwrap.dedent(code)
    s3.put_object(Bucket=stack.bucket, Key=f"{stack.prefix}/{name}/1/model.py", Body=body.encode())
    errors = TritonCluster(stack.triton_urls).load_model(name, 1)
    assert not any(errors.values()), errors


def save_scorer(folder: Path) -> Path:
    """An MLflow ONNX model of :class:`Scorer`, logged as users do (named signature)."""
    model = Scorer(seed=17)
    path = export_onnx(model, folder / "scorer.onnx")
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    signature = infer_signature({"features": x}, {"scores": model(torch.from_numpy(x)).detach().numpy()})
    mlflow.onnx.save_model(onnx.load(str(path)), str(folder / "model"), signature=signature, pip_requirements=["onnx"])
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    workdir = Path(tmp_path_factory.mktemp("predict-stack"))
    stack = LocalStack(workdir, replicas=2, with_mlflow=False)
    stack.start()
    try:
        with stack.exported_env():
            onnx_path = save_scorer(workdir)
            config = {"instance_kind": "cpu", "max_batch_size": 16, "verify": False}  # publish is not tested here
            with ThreadPoolExecutor(3) as pool:
                jobs = [
                    pool.submit(get_deploy_client("triton").create_deployment, "scorer", str(workdir / "model"), config=config),
                    pool.submit(publish_python_model, stack, "talker", TALKER_CONFIG, TALKER),
                    pool.submit(publish_python_model, stack, "picky", PICKY_CONFIG, PICKY),
                ]  # fmt: skip
                for job in jobs:
                    job.result()
            yield Served(stack, onnx_path)
    finally:
        stack.stop()


def features(rows: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, 4)).astype(np.float32)


def test_ten_thousand_rows_over_both_replicas_equal_onnxruntime(served):
    x = features(10_000)
    before = served.counts("scorer")
    scores = get_deploy_client(served.target()).predict("scorer", {"features": x})["predictions"]["scores"]
    after = served.counts("scorer")
    np.testing.assert_allclose(np.asarray(scores, dtype=np.float32), served.expected(x), rtol=1e-5, atol=1e-6)
    rows = [a["rows"] - b["rows"] for a, b in zip(after, before, strict=True)]
    sent = [a["requests"] - b["requests"] for a, b in zip(after, before, strict=True)]
    assert all(r > 0 for r in rows) and sum(rows) == 10_000, rows  # both replicas counted inferences
    assert sum(sent) == 625, sent  # 16 rows per request, none sent twice


def test_the_asyncio_api_over_grpc(served):
    x = features(3_001, seed=2)

    async def predict() -> list[dict[str, np.ndarray]]:
        async with AsyncTritonPredictor(served.target("grpc")) as predictor:
            return await asyncio.gather(*(predictor.predict("scorer", {"features": part}) for part in (x, x[:5])))

    whole, small = asyncio.run(predict())
    assert whole["scores"].dtype == np.float32 and whole["scores"].shape == (3_001, 3)
    np.testing.assert_allclose(whole["scores"], served.expected(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(small["scores"], whole["scores"][:5])


def test_mlflow_cli_predicts_every_row_of_a_5000_row_file(served, tmp_path):
    x = features(5_000, seed=3)
    (tmp_path / "rows.json").write_text(json.dumps([{"features": row} for row in x.tolist()]))  # records
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "deployments", "predict", "-t", served.target(), "--name", "scorer",
         "--input-path", str(tmp_path / "rows.json"), "--output-path", str(tmp_path / "out.json")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    response = PredictionsResponse.from_json((tmp_path / "out.json").read_text())
    scores = np.asarray(response["predictions"]["scores"], dtype=np.float32)
    assert scores.shape == (5_000, 3)
    np.testing.assert_allclose(scores, served.expected(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "document",
    [
        lambda x: {"features": x.tolist()},  # a column per input
        lambda x: {"inputs": {"features": x.tolist()}},  # NVIDIA's plugin
        lambda x: x.tolist(),  # the columns of the one 2-D input
    ],
    ids=["columns", "nvidia", "plain-2d"],
)
def test_json_layouts_as_mlflow_reads_them(served, document):
    x = features(40, seed=4).round(3)
    frame = pd.read_json(io.StringIO(json.dumps(document(x))))  # what the MLflow CLI hands predict
    scores = get_deploy_client(served.target()).predict("scorer", frame)["predictions"]["scores"]
    np.testing.assert_allclose(np.asarray(scores, dtype=np.float32), served.expected(x), rtol=1e-5, atol=1e-6)


def test_inputs_are_checked_against_the_served_config_before_anything_is_sent(served):
    client = get_deploy_client(served.target())
    before = served.counts("scorer")
    cases = [
        ({"features": np.zeros((20, 5), np.float32)}, ["'features'", "[20, 5]", "[rows, 4] of FP32"]),
        ({"features": [["a", "b", "c", "d"]] * 20}, ["'features'", "<U1", "[rows, 4] of FP32"]),
        ({"feature": np.zeros((20, 4), np.float32)}, ["Missing input(s) ['features']"]),
    ]
    for inputs, fragments in cases:
        with pytest.raises(MlflowException) as err:
            client.predict("scorer", inputs)
        assert err.value.error_code == "INVALID_PARAMETER_VALUE"
        assert all(f in err.value.message for f in fragments), err.value.message
    with pytest.raises(MlflowException) as err:
        client.predict("no-such-model", {"features": np.zeros((2, 4), np.float32)})
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert served.counts("scorer") == before


def test_a_refused_request_fails_once_and_a_model_error_is_retried_once_elsewhere(served):
    client = get_deploy_client(served.target())
    # 200 rows = 13 requests, all in flight at once; the bad row is in the last one.
    x = np.ones((200, 2), np.float32)
    x[199, 0] = -1
    before = served.counts("picky")
    with pytest.raises(MlflowException) as err:
        client.predict("picky", {"X": x})
    assert err.value.error_code == "INVALID_PARAMETER_VALUE" and "negative input" in err.value.message
    after = served.settled_counts("picky")
    assert sum(a["requests"] - b["requests"] for a, b in zip(after, before, strict=True)) == 13  # no retry

    x[199, 0] = 1e7
    with pytest.raises(MlflowException) as err:
        client.predict("picky", {"X": x})
    assert err.value.error_code == "INTERNAL_ERROR" and "input too large" in err.value.message
    assert all(url in err.value.message for url in served.http)
    final = served.settled_counts("picky")
    assert sum(f["requests"] - a["requests"] for f, a in zip(final, after, strict=True)) == 14  # one retry


def test_a_decoupled_model_streams_each_response_as_it_arrives(served):
    client = get_deploy_client(served.target("grpc"))
    x = np.arange(20, dtype=np.float32).reshape(10, 2)  # max_batch_size 8: two requests
    received = []
    for response in client.predict_stream("talker", {"IN": x}):
        received.append((time.time(), response))
    assert [r["request"] for _, r in received] == [0, 0, 0, 1, 1, 1]
    for k, (_, response) in enumerate(received):
        rows = x[:8] if response["request"] == 0 else x[8:]
        np.testing.assert_array_equal(np.asarray(response["predictions"]["OUT"]), rows * (k % 3 + 1))
    first_arrived = received[0][0]
    last_sent = received[-1][1]["predictions"]["SENT_AT"][0][0]
    assert first_arrived < last_sent  # delivered before the model had produced the last one

    with pytest.raises(MlflowException, match="needs gRPC"):
        list(get_deploy_client(served.target()).predict_stream("talker", {"IN": x}))
    with pytest.raises(MlflowException, match="predict_stream"):
        client.predict("talker", {"IN": x})


def test_the_asyncio_stream(served):
    async def collect() -> list:
        async with AsyncTritonPredictor(served.grpc) as predictor:
            return [r async for r in predictor.stream("talker", {"IN": np.ones((3, 2), np.float32)})]

    responses = asyncio.run(collect())
    assert [r.request for r in responses] == [0, 0, 0]
    assert [float(r.outputs["OUT"][0, 0]) for r in responses] == [1.0, 2.0, 3.0]


def test_a_replica_killed_during_a_predict_does_not_fail_it(served, caplog):
    """Last in this file: it leaves one replica dead."""
    caplog.set_level(logging.WARNING, logger="mlflow_triton.inference")
    client = get_deploy_client(served.target())
    x = features(60_000, seed=5)
    result: dict = {}
    call = threading.Thread(target=lambda: result.update(out=client.predict("scorer", {"features": x})))
    victim = served.stack.tritons[1]
    start = served.counts("scorer")[1]["requests"]
    call.start()
    deadline = time.monotonic() + 120
    while served.counts("scorer")[1]["requests"] < start + 50 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert call.is_alive(), "the predict ended before the replica could be killed: send more rows"
    os.killpg(victim.process.pid, signal.SIGKILL)
    call.join(300)
    assert "out" in result
    scores = np.asarray(result["out"]["predictions"]["scores"], dtype=np.float32)
    np.testing.assert_allclose(scores, served.expected(x), rtol=1e-5, atol=1e-6)
    assert f"Triton at {served.http[1]} failed during a predict of scorer" in caplog.text
