"""The inference client without servers: splitting, layouts, checks, failover and its errors.

Replicas are fakes implementing :class:`mlflow_triton.inference.replicas.Replica` (the real
ones are exercised in ``test_predict.py`` against two tritonservers). A fake computes
``y = 2 * x`` per request, so every answer can be checked row by row.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.deployments import PredictionsResponse
from mlflow.exceptions import MlflowException
from tritonclient.utils import InferenceServerException

from mlflow_triton.inference import AsyncTritonPredictor, TritonPredictor
from mlflow_triton.inference.errors import is_replica_failure
from mlflow_triton.inference.layouts import input_arrays
from mlflow_triton.inference.responses import predictions_response
from mlflow_triton.inference.served import ServedModel
from mlflow_triton.inference.splitting import (
    HTTP_MAX_INPUT_BYTES,
    plan_requests,
    reassemble,
    row_bytes,
)

A, B = "http://a:8000", "http://b:8000"


def config(max_batch_size: int = 4, dims: list[int] | None = None, **extra: Any) -> dict[str, Any]:
    names = {"inputs": {"x": "features"}, "outputs": {"y": "scores"}}
    return {
        "name": "m", "max_batch_size": max_batch_size,
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": dims or [2]}],
        "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": dims or [2]}],
        "instance_group": [{"kind": "KIND_CPU", "count": 1}],
        "parameters": {"mlflow_triton.tensor_names": {"string_value": json.dumps(names)}},
        **extra,
    }  # fmt: skip


class FakeReplica:
    """Answers ``y = 2 * x``; ``fail(i)`` decides, per request number, whether to raise instead."""

    def __init__(
        self, url: str, cfg: dict[str, Any], fail=None, delay: float = 0.0, ready: bool = True, down: bool = False
    ) -> None:  # fmt: skip
        self.url, self.protocol, self.cfg = url, "http", cfg
        self.fail, self.delay, self.ready, self.down = fail, delay, ready, down
        self.requests: list[np.ndarray] = []
        self.in_flight = self.most_in_flight = 0
        self.closed = False

    async def is_model_ready(self, name: str) -> bool:
        if self.down:
            raise ConnectionRefusedError(111, "Connection refused")
        return self.ready

    async def model_config(self, name: str) -> dict[str, Any]:
        return self.cfg

    async def infer(self, model: ServedModel, inputs) -> dict[str, np.ndarray]:
        number = len(self.requests)
        self.requests.append(inputs["x"])
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay * random.random() if self.delay else 0)
            error = self.fail(number) if self.fail else None
            if error is not None:
                raise error
            return {"y": 2 * inputs["x"]}
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        self.closed = True


def predictor(replicas: dict[str, FakeReplica], **settings: Any) -> AsyncTritonPredictor:
    return AsyncTritonPredictor(list(replicas), connector=lambda url, _: replicas[url], **settings)


def rows(n: int) -> np.ndarray:
    return np.arange(2 * n, dtype=np.float32).reshape(n, 2)


# -- splitting -------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 300), max_batch=st.integers(1, 40), width=st.integers(1, 5),
    limit_rows=st.integers(1, 50),
)  # fmt: skip
def test_plan_covers_every_row_in_order_within_both_limits(n, max_batch, width, limit_rows):
    x = np.zeros((n, width), np.float32)
    limit = limit_rows * 4 * width
    slices = plan_requests({"x": x}, max_batch, limit)
    covered = [i for s in slices for i in range(s.start, s.stop)]
    assert covered == list(range(n))
    assert all(0 < s.stop - s.start <= min(max_batch, limit_rows) for s in slices)
    assert all(int(row_bytes(x[s]).sum()) <= limit for s in slices)


def test_text_rows_are_sized_as_serialized_and_oversized_rows_refused():
    text = np.array(["a" * 10, "é" * 10, "b"], dtype=object)
    assert row_bytes(text).tolist() == [14, 24, 5]  # 4-byte length + UTF-8
    assert plan_requests({"t": text}, 8, 30) == [slice(0, 1), slice(1, 3)]
    with pytest.raises(MlflowException) as err:
        plan_requests({"x": np.zeros((3, 20 * 2**20), np.float32)}, 8, HTTP_MAX_INPUT_BYTES)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "Row 0 is 80.0 MiB" in err.value.message and "--http-max-input-size" in err.value.message


def test_without_batching_one_request_and_reassembly_keeps_dtypes():
    assert plan_requests({"x": np.zeros((3, 3))}, 0, 1000) == [slice(None)]
    parts = [{"y": np.array([[1]], np.int64)}, {"y": np.array([[2], [3]], np.int64)}]
    joined = reassemble(parts, ["y"])["y"]
    assert joined.dtype == np.int64 and joined.tolist() == [[1], [2], [3]]


# -- layouts ---------------------------------------------------------------------------------
def two_inputs() -> ServedModel:
    cfg = config(8)
    cfg["input"] = [
        {"name": "a", "data_type": "TYPE_FP32", "dims": [2]},
        {"name": "b", "data_type": "TYPE_INT64", "dims": [1], "reshape": {"shape": []}},
    ]
    cfg["parameters"] = {}
    return ServedModel.from_config("two", cfg)


@pytest.mark.parametrize(
    "document",
    [
        {"a": [[1, 2], [3, 4]], "b": [5, 6]},  # a column per input
        [{"a": [1, 2], "b": 5}, {"a": [3, 4], "b": 6}],  # records
        {"inputs": {"a": [[1, 2], [3, 4]], "b": [[5], [6]]}},  # NVIDIA's plugin
        {"instances": [{"a": [1, 2], "b": 5}, {"a": [3, 4], "b": 6}]},  # MLflow serving
        {"dataframe_records": [{"a": [1, 2], "b": 5}, {"a": [3, 4], "b": 6}]},  # MLflow serving
        {"dataframe_split": {"columns": ["a", "b"], "index": [0, 1], "data": [[[1, 2], 5], [[3, 4], 6]]}},
    ],
    ids=["columns", "records", "nvidia", "instances", "dataframe_records", "dataframe_split"],
)
def test_every_json_layout_mlflow_reads_gives_the_same_arrays(document):
    frame = pd.read_json(io.StringIO(json.dumps(document)))  # what `mlflow deployments predict` does
    for inputs in (frame, document):  # from the CLI, and the same document from Python
        if isinstance(inputs, list):
            continue  # records from Python are a list of dicts: not one of the Python layouts
        arrays = input_arrays(inputs, two_inputs())
        assert arrays["a"].dtype == np.float32 and arrays["a"].tolist() == [[1, 2], [3, 4]]
        assert arrays["b"].dtype == np.int64 and arrays["b"].tolist() == [[5], [6]]


def test_dataframe_split_of_a_single_2d_input():
    document = {"dataframe_split": {"columns": [0, 1], "data": [[1, 2], [3, 4]]}}
    frame = pd.read_json(io.StringIO(json.dumps(document)))
    assert input_arrays(frame, ServedModel.from_config("m", config()))["x"].tolist() == [[1, 2], [3, 4]]


def test_single_input_layouts_and_mlflow_names():
    model = ServedModel.from_config("m", config())
    want = [[1.0, 2.0], [3.0, 4.0]]
    for inputs in (
        np.array(want), want, {"features": want}, {"x": want},
        pd.DataFrame({"c0": [1, 3], "c1": [2, 4]}), pd.read_json(io.StringIO("[[1, 2], [3, 4]]")),
        pd.DataFrame({"anything": [[1, 2], [3, 4]]}),
    ):  # fmt: skip
        assert input_arrays(inputs, model)["x"].tolist() == want, inputs


@pytest.mark.parametrize(
    "given, fragments",
    [
        ({"features": [["a", "b"]]}, ["'features'", "<U1", "shape [rows, 2] of FP32 (numpy float32)"]),
        ({"features": [[1.0, 2.0, 3.0]]}, ["'features'", "shape [1, 3]", "[rows, 2] of FP32", "more are split"]),
        ({"other": [[1.0, 2.0]]}, ["Missing input(s) ['features']", "got ['other']"]),
        ({"features": [[1, 2], [3]]}, ["'features'", "rows have different shapes", "[rows, 2]"]),
        ("text", ["takes inputs ['features']", "got str"]),
    ],
)
def test_inputs_the_config_refuses_are_named_with_the_expected_shape_and_dtype(given, fragments):
    with pytest.raises(MlflowException) as err:
        input_arrays(given, ServedModel.from_config("m", config()))
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    for fragment in fragments:
        assert fragment in err.value.message, err.value.message


def test_float_inputs_are_not_truncated_into_an_integer_model():
    cfg = config()
    cfg["input"][0]["data_type"] = "TYPE_INT64"
    with pytest.raises(MlflowException, match=r"float64 .*astype\(numpy.int64\).*INT64"):
        input_arrays({"x": [[0.5, 1.5]]}, ServedModel.from_config("m", cfg))
    assert input_arrays({"x": [[1, 2]]}, ServedModel.from_config("m", cfg))["x"].dtype == np.int64


def test_served_config_over_grpc_json_reads_the_same():
    grpc_json = config(16, instance_group=[{"count": 2, "kind": "KIND_GPU", "gpus": [0, 1]}])
    grpc_json["input"][0]["dims"] = ["2"]  # int64 fields are strings in protobuf JSON
    model = ServedModel.from_config("m", grpc_json)
    assert (model.max_batch_size, model.instance_count, model.inputs[0].dims) == (16, 4, (2,))
    assert (model.inputs[0].mlflow_name, model.inputs[0].triton_name) == ("features", "x")


# -- failover --------------------------------------------------------------------------------
def refused(_number: int) -> Exception:
    return ConnectionRefusedError(111, "Connection refused")


def test_rows_split_spread_and_come_back_in_order():
    fakes = {A: FakeReplica(A, config(4), delay=0.01), B: FakeReplica(B, config(4), delay=0.01)}
    x = rows(103)
    out = asyncio.run(predictor(fakes).predict("m", {"features": x}))
    np.testing.assert_array_equal(out["scores"], 2 * x)
    assert all(len(r) <= 4 for f in fakes.values() for r in f.requests)
    assert sum(len(f.requests) for f in fakes.values()) == 26 and all(f.requests for f in fakes.values())
    # Triton's guide: 2 x max_batch_size x instances in flight per replica.
    assert max(f.most_in_flight for f in fakes.values()) <= 8


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "refused"),
        InferenceServerException("unavailable", status="503"),
        InferenceServerException("down", status="StatusCode.UNAVAILABLE"),
        None,  # a timeout
    ],
    ids=["refused", "http-503", "grpc-unavailable", "timeout"],
)
def test_a_failing_replica_is_left_out_and_its_requests_retried_elsewhere(error, caplog):
    async def hang() -> None:
        await asyncio.sleep(10)

    slow = FakeReplica(A, config(4), fail=lambda n: error if n >= 2 else None)
    if error is None:
        slow.delay, slow.fail = 0, None
        original = slow.infer

        async def infer(model, inputs):
            if len(slow.requests) >= 2:
                slow.requests.append(inputs["x"])
                await hang()
            return await original(model, inputs)

        slow.infer = infer  # type: ignore[method-assign]
    fakes = {A: slow, B: FakeReplica(B, config(4))}
    x = rows(60)
    out = asyncio.run(predictor(fakes, request_timeout_s=0.3).predict("m", {"features": x}))
    np.testing.assert_array_equal(out["scores"], 2 * x)
    assert len(fakes[B].requests) >= 15 - 2
    assert f"Triton at {A} failed during a predict of m" in caplog.text


def test_a_request_triton_refuses_fails_once_and_fast():
    bad = InferenceServerException("unexpected shape for input 'x'", status="400")
    fakes = {A: FakeReplica(A, config(4), fail=lambda n: bad), B: FakeReplica(B, config(4), fail=lambda n: bad)}
    with pytest.raises(MlflowException) as err:
        asyncio.run(predictor(fakes, concurrency=1).predict("m", {"features": rows(40)}))
    assert err.value.error_code == "INVALID_PARAMETER_VALUE" and "unexpected shape" in err.value.message
    assert sum(len(f.requests) for f in fakes.values()) <= 2  # one in flight per replica, no retry


def test_every_replica_down_is_temporarily_unavailable_and_a_model_failing_everywhere_internal():
    fakes = {A: FakeReplica(A, config(4), fail=refused), B: FakeReplica(B, config(4), fail=refused)}
    with pytest.raises(MlflowException) as err:
        asyncio.run(predictor(fakes).predict("m", {"features": rows(10)}))
    assert err.value.error_code == "TEMPORARILY_UNAVAILABLE" and A in err.value.message and B in err.value.message

    crash = InferenceServerException("model crashed", status="500")
    fakes = {A: FakeReplica(A, config(4), fail=lambda n: crash), B: FakeReplica(B, config(4), fail=lambda n: crash)}
    with pytest.raises(MlflowException) as err:
        asyncio.run(predictor(fakes).predict("m", {"features": rows(10)}))
    assert err.value.error_code == "INTERNAL_ERROR" and "model crashed" in err.value.message


def test_unready_and_unreachable_replicas_are_skipped_before_sending():
    down = FakeReplica(A, config(4), down=True)
    fakes = {A: down, B: FakeReplica(B, config(4))}
    out = asyncio.run(predictor(fakes).predict("m", {"features": rows(9)}))
    assert out["scores"].shape == (9, 2) and not down.requests

    fakes = {A: FakeReplica(A, config(4), ready=False), B: FakeReplica(B, config(4), ready=False)}
    with pytest.raises(MlflowException) as err:
        asyncio.run(predictor(fakes).predict("m", {"features": rows(9)}))
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST" and "not READY on any" in err.value.message


def test_decoupled_models_are_sent_to_predict_stream():
    fakes = {A: FakeReplica(A, config(4, model_transaction_policy={"decoupled": True}))}
    with pytest.raises(MlflowException, match="predict_stream"):
        asyncio.run(predictor(fakes).predict("m", {"features": rows(3)}))


@pytest.mark.parametrize(
    "error, replica",
    [
        (InferenceServerException("x", status="500"), True),
        (InferenceServerException("x", status="502"), True),
        (InferenceServerException("x", status="400"), False),
        (InferenceServerException("x", status="404"), False),
        (InferenceServerException("x", status="StatusCode.DEADLINE_EXCEEDED"), True),
        (InferenceServerException("x", status="StatusCode.INVALID_ARGUMENT"), False),
        (InferenceServerException("tritonclient's own check"), False),
        (asyncio.TimeoutError(), True),
        (ConnectionResetError(), True),
        (ValueError("bad"), False),
    ],
)
def test_classification_by_type_and_status(error, replica):
    assert is_replica_failure(error) is replica


def test_aiohttp_disconnects_are_replica_failures():
    import aiohttp

    assert is_replica_failure(aiohttp.ServerDisconnectedError())
    assert is_replica_failure(aiohttp.ClientPayloadError("cut"))


# -- the synchronous predictor, progress, responses ------------------------------------------
def test_the_sync_predictor_keeps_its_connections_across_calls_and_threads():
    from concurrent.futures import ThreadPoolExecutor

    fakes = {A: FakeReplica(A, config(4)), B: FakeReplica(B, config(4))}
    connected: list[str] = []

    def connector(url, _settings):
        connected.append(url)
        return fakes[url]

    with TritonPredictor([A, B], connector=connector) as sync:
        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(lambda n: sync.predict("m", {"features": rows(n)}), range(1, 30)))
    assert [o["scores"].shape[0] for o in outs] == list(range(1, 30))
    assert sorted(connected) == [A, B]
    assert all(f.closed for f in fakes.values())


def test_ctrl_c_during_a_blocking_predict_cancels_its_requests():
    import os
    import signal
    import threading
    import time

    slow = FakeReplica(A, config(4), delay=5.0)
    with TritonPredictor([A], connector=lambda url, _: slow) as sync:
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()  # Ctrl-C
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            sync.predict("m", {"features": rows(400)})
        assert time.monotonic() - started < 4
        deadline = time.monotonic() + 5
        while slow.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        assert slow.in_flight == 0 and slow.requests  # sent, then cancelled
        slow.delay = 0
        assert sync.predict("m", {"features": rows(5)})["scores"].shape == (5, 2)  # still usable


class Terminal(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("tty", [True, False])
def test_a_progress_bar_only_on_a_terminal(tty, monkeypatch):
    terminal = Terminal(tty)
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    fakes = {A: FakeReplica(A, config(4))}
    asyncio.run(predictor(fakes).predict("m", {"features": rows(100)}))
    assert ("predict m" in terminal.getvalue()) is tty
    terminal.truncate(0)
    asyncio.run(predictor(fakes).predict("m", {"features": rows(8)}))  # 2 requests: no bar
    assert terminal.getvalue() == ""


def test_predictions_json_reads_back_with_numpy_and_text_outputs(tmp_path):
    response = predictions_response({
        "scores": np.array([[0.5, 1.5]], np.float32), "label": np.array([b"cat", "ünï".encode()], dtype=object),
        "raw": np.array([b"\xff\x00"], dtype=object),
    })  # fmt: skip
    assert response["predictions"]["scores"].dtype == np.float32  # as Triton answered
    response.to_json(str(tmp_path / "out.json"))
    back = PredictionsResponse.from_json((tmp_path / "out.json").read_text())
    assert back["predictions"] == {"scores": [[0.5, 1.5]], "label": ["cat", "ünï"], "raw": [{"b64": "/wA="}]}
    assert PredictionsResponse.from_json(response.to_json())["predictions"]["scores"] == [[0.5, 1.5]]
    rows = predictions_response({"scores": np.array([[0.5, 1.5], [2, 3]], np.float32), "label": np.array([b"a", b"b"])})
    frame = rows.get_predictions()  # MLflow's DataFrame view: a column of per-row lists
    assert frame["scores"].tolist() == [[0.5, 1.5], [2.0, 3.0]] and frame["label"].tolist() == [b"a", b"b"]
