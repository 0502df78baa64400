"""Golden outputs: the documented format, and a smoke test that compares replicas with them."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
from configs import generated_config
from mlflow.exceptions import MlflowException

from mlflow_triton.core.golden import GOLDEN_DIR, MANIFEST_FILE, GoldenCases
from mlflow_triton.core.tolerance import compare_outputs
from mlflow_triton.flavors.torchscript import TORCHSCRIPT
from mlflow_triton.repository.provenance import ModelOrigin, Provenance
from mlflow_triton.rollout.smoke_inputs import derive_smoke_inputs
from mlflow_triton.rollout.verification import Candidate, SmokeTest
from mlflow_triton.settings.deployment import DeploymentConfig
from mlflow_triton.triton_config.model_config import to_pbtxt
from mlflow_triton.triton_config.tensors import ModelIO, TensorSpec, provenance_entry


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
    assert compare_outputs(want, {"scores": np.array([[1.0, 2.0]], np.float16)}, 1e-3, 1e-5) == []
    assert "max abs diff 0.5" in compare_outputs(want, {"scores": np.array([[1.0, 2.5]])}, 1e-3, 1e-5)[0]
    assert "shape (2,)" in compare_outputs(want, {"scores": np.array([1.0, 2.0])}, 1e-3, 1e-5)[0]
    assert compare_outputs(want, {}, 1e-3, 1e-5) == ["output 'scores' is missing"]


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


IO = ModelIO(
    (TensorSpec("INPUT__0", "TYPE_INT64", (-1, -1), "tokens"),),
    (TensorSpec("OUTPUT__0", "TYPE_FP32", (-1, -1, 2), "scores"),),
)
CONFIG = generated_config("tagger", "torchscript", IO, DeploymentConfig(max_batch_size=2, instance_kind="cpu"), 3)
CANDIDATE = Candidate(
    deployment="tagger", model="tagger-staging", version=3, urls=("http://a", "http://b"),
    provenance=Provenance(
        name="tagger", version=3, flavor="torchscript", backend="pytorch", origin=ModelOrigin("m", "m"),
        files=({"file": "model.pt"},), settings={"max_batch_size": 2}, config_pbtxt=to_pbtxt(CONFIG),
        tensors={"inputs": [provenance_entry(t) for t in IO.inputs], "outputs": [provenance_entry(t) for t in IO.outputs]},
    ),
)  # fmt: skip


class GoldenModel:
    """A logged model that carries golden cases (what derive_smoke_inputs reads of it)."""

    model_uri = "models:/tagger/1"

    def golden_cases(self, workdir):
        return cases()


def test_smoke_test_with_golden_outputs_needs_no_model_file_and_refuses_wrong_answers(tmp_path):
    inputs = derive_smoke_inputs(GoldenModel(), IO, 2, tmp_path)
    assert inputs.origin == "golden" and [c.inputs["tokens"].shape for c in inputs.cases] == [(1, 4), (2, 7)]
    right = FakeCluster(scale=1.0)
    SmokeTest(store=None, cluster=right, flavor=TORCHSCRIPT, inputs=inputs)(CANDIDATE)
    # every case on every replica, batches cut to max_batch_size, each length as logged
    assert right.calls == [{"INPUT__0": (1, 4)}, {"INPUT__0": (2, 7)}] * 2
    with pytest.raises(MlflowException, match="golden case 0: output 'scores' differs") as err:
        SmokeTest(store=None, cluster=FakeCluster(scale=1.01), flavor=TORCHSCRIPT, inputs=inputs)(CANDIDATE)
    assert err.value.error_code == "INTERNAL_ERROR" and "http://a" in err.value.message
