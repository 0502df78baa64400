"""Golden outputs: the documented format, and a smoke test that compares replicas with them."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
from mlflow.exceptions import MlflowException

from mlflow_triton.core.golden import GOLDEN_DIR, MANIFEST_FILE, GoldenCases, check_case
from mlflow_triton.rollout.verification import Candidate, SmokeTest


def cases(scale: float = 1.0) -> GoldenCases:
    rng = np.random.default_rng(0)
    inputs = [{"tokens": rng.integers(0, 9, (1, 4))}, {"tokens": rng.integers(0, 9, (3, 7))}]
    outputs = [{"scores": (x["tokens"][..., None] * np.ones(2) * scale).astype(np.float32)} for x in inputs]
    return GoldenCases(inputs, outputs, rtol=1e-3, atol=1e-5)


def test_format_round_trip_and_manifest(tmp_path):
    cases().save(tmp_path / GOLDEN_DIR)
    manifest = json.loads((tmp_path / GOLDEN_DIR / MANIFEST_FILE).read_text())
    assert manifest["format"] == "mlflow-triton-golden" and manifest["version"] == 1
    assert manifest["inputs"] == ["tokens"] and manifest["outputs"] == ["scores"]
    with np.load(tmp_path / GOLDEN_DIR / manifest["cases"][1]["file"]) as data:
        assert sorted(data.files) == ["input.tokens", "output.scores"]
    loaded = GoldenCases.load(tmp_path / GOLDEN_DIR)
    assert [x["tokens"].shape for x, _ in loaded] == [(1, 4), (3, 7)]
    np.testing.assert_array_equal(loaded.outputs[1]["scores"], cases().outputs[1]["scores"])
    manifest["version"] = 2
    (tmp_path / GOLDEN_DIR / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(MlflowException, match="version 2; this mlflow-triton reads") as err:
        GoldenCases.load(tmp_path / GOLDEN_DIR)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"


def test_check_case_names_what_differs():
    want = {"scores": np.array([[1.0, 2.0]], np.float32)}
    assert check_case(want, {"scores": np.array([[1.0, 2.0]], np.float16)}, 1e-3, 1e-5) == []
    assert "max abs diff 0.5" in check_case(want, {"scores": np.array([[1.0, 2.5]])}, 1e-3, 1e-5)[0]
    assert "shape (2,)" in check_case(want, {"scores": np.array([1.0, 2.0])}, 1e-3, 1e-5)[0]
    assert check_case(want, {}, 1e-3, 1e-5) == ["output 'scores' is missing"]


class FakeServer:
    """Answers like a model computing scores = tokens * scale (stands in for a replica)."""

    def __init__(self, scale: float, calls: list) -> None:
        self.scale, self.calls = scale, calls

    def infer(self, model, inputs, datatypes, outputs, version=None):
        self.calls.append({k: v.shape for k, v in inputs.items()})
        tokens = inputs["INPUT__0"]
        return {"OUTPUT__0": (tokens[..., None] * np.ones(2) * self.scale).astype(np.float32)}


class FakeCluster:
    def __init__(self, scale: float) -> None:
        self.scale, self.calls = scale, []

    @contextlib.contextmanager
    def server(self, url):
        yield FakeServer(self.scale, self.calls)


CANDIDATE = Candidate(
    deployment="tagger", model="tagger-staging", version=3, urls=("http://a", "http://b"),
    provenance={"tensors": {
        "inputs": [{"triton": "INPUT__0", "mlflow": "tokens", "datatype": "INT64"}],
        "outputs": [{"triton": "OUTPUT__0", "mlflow": "scores", "datatype": "FP32"}],
    }, "settings": {"max_batch_size": 2}},
)  # fmt: skip


def test_smoke_test_with_golden_outputs_needs_no_model_file_and_refuses_wrong_answers():
    right = FakeCluster(scale=1.0)
    SmokeTest(store=None, cluster=right, flavor="torchscript", golden=cases())(CANDIDATE)
    # every case on every replica, batches cut to max_batch_size, each length as logged
    assert right.calls == [{"INPUT__0": (1, 4)}, {"INPUT__0": (2, 7)}] * 2
    with pytest.raises(MlflowException, match="golden case 0: output 'scores' differs") as err:
        SmokeTest(store=None, cluster=FakeCluster(scale=1.01), flavor="torchscript", golden=cases())(CANDIDATE)
    assert err.value.error_code == "INTERNAL_ERROR" and "http://a" in err.value.message
