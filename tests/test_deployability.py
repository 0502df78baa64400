"""The deployability matrix: every flavor x input example x signature, logged the ordinary way,
with default settings, on the real stack.

Each cell either deploys, is verified on its replica and answers what the model computes
locally, or is refused before anything is written under the deployment's prefix, with a
message that names the fix. The expected outcome of every cell is :data:`EXPECTED`; the
README prints the same table (checked here, so the two cannot drift apart).

Signatures: ``none`` (logged without one, ``signature=False`` where MLflow would infer it
from the example), ``unnamed`` (``infer_signature(numpy_x, numpy_y)``), ``named`` (dicts of
arrays), ``columns`` (a DataFrame). The triton flavor carries its own config: ``none`` is
NVIDIA's layout (an MLmodel with only the flavor), ``named`` is ``triton.log_model`` (which
derives a tensor signature from the config). Deploys target one replica: Python-backend loads
(the triton and pyfunc cells) cost seconds each.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import cloudpickle
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.deployments import get_deploy_client
from mlflow.exceptions import MlflowException
from mlflow.models import Model, infer_signature
from models import Scorer, export_onnx, sample
from test_user_python_model import DOUBLER_CONFIG, DOUBLER_MODEL  # NVIDIA's example layout

from mlflow_triton.flavors import triton as triton_flavor
from mlflow_triton.repository.layout import staging_name
from mlflow_triton.repository.stores import open_store

README = Path(__file__).resolve().parents[1] / "README.md"
FLAVORS = ("onnx", "torchscript", "triton", "python_function")
SIGNATURES = ("none", "unnamed", "named", "columns")
DEPLOYS, REFUSED, NOT_APPLICABLE = "deploys", "refused", "n/a"

#: flavor -> signature -> (without example, with example)
EXPECTED = {
    "onnx": {s: (DEPLOYS, DEPLOYS) for s in SIGNATURES},
    "torchscript": {"none": (REFUSED, REFUSED), **{s: (DEPLOYS, DEPLOYS) for s in SIGNATURES[1:]}},
    "triton": {
        "none": (DEPLOYS, DEPLOYS), "unnamed": (NOT_APPLICABLE,) * 2, "named": (DEPLOYS, DEPLOYS),
        "columns": (NOT_APPLICABLE,) * 2,
    },
    "python_function": {"none": (REFUSED, REFUSED), **{s: (DEPLOYS, DEPLOYS) for s in SIGNATURES[1:]}},
}  # fmt: skip
#: What a refusal must say: how to log the model so that it deploys.
FIX = "signature=infer_signature"
FEATURES = [f"f{i}" for i in range(4)]

def matrix_markdown() -> str:
    """EXPECTED as the README prints it."""
    rows = ["| flavor | signature | no input example | input example |", "|---|---|---|---|"]
    for flavor in FLAVORS:
        for signature in SIGNATURES:
            plain, example = EXPECTED[flavor][signature]
            rows.append(f"| {flavor} | {signature} | {plain} | {example} |")
    return "\n".join(rows)


def test_the_readme_prints_this_matrix():
    assert matrix_markdown() in README.read_text()


# -- models, logged as users log them ---------------------------------------------------------
def _signature(kind: str, x: np.ndarray, y: np.ndarray):
    if kind == "unnamed":
        return infer_signature(x, y)
    if kind == "named":
        return infer_signature({"features": x}, {"scores": y})
    if kind == "columns":
        return infer_signature(pd.DataFrame(x, columns=FEATURES), y)
    return False  # none: not even inferred from the example


def _inputs(kind: str, x: np.ndarray):
    if kind == "named":
        return {"features": x}
    if kind == "columns":
        return pd.DataFrame(x, columns=FEATURES)
    return x


def log_onnx(signature: str, example: bool, tmp: Path) -> tuple[str, callable]:
    import onnx

    model = Scorer(seed=5)
    x = sample(5)
    y = model(torch.from_numpy(x)).detach().numpy()
    with mlflow.start_run():
        info = mlflow.onnx.log_model(
            onnx.load(str(export_onnx(model, tmp / "m.onnx"))), name="model", signature=_signature(signature, x, y),
            input_example=_inputs(signature, x) if example else None,
        )  # fmt: skip
    return info.model_uri, lambda x: model(torch.from_numpy(x)).detach().numpy()


def log_torchscript(signature: str, example: bool, tmp: Path) -> tuple[str, callable]:
    model = Scorer(seed=6).eval()
    x = sample(5)
    y = model(torch.from_numpy(x)).detach().numpy()
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(
            torch.jit.script(model), name="model", signature=_signature(signature, x, y),
            input_example=_inputs(signature, x) if example else None, serialization_format="pickle",
        )  # fmt: skip
    return info.model_uri, lambda x: model(torch.from_numpy(x)).detach().numpy()


class Affine(mlflow.pyfunc.PythonModel):
    """y = x @ w + 1 for an array, a dict {"features": x} or a DataFrame of the four features."""

    def predict(self, context, model_input, params=None):
        if isinstance(model_input, dict):
            model_input = model_input["features"]
        x = np.asarray(model_input, dtype=np.float32).reshape(-1, 4)
        return x @ np.arange(12, dtype=np.float32).reshape(4, 3) / 10 + 1


def log_pyfunc(signature: str, example: bool, tmp: Path) -> tuple[str, callable]:
    x = sample(5)
    y = Affine().predict(None, x)
    # Pickled by value, as a class defined in the user's training script is (by reference, the
    # stub would need this test module importable: a packaged class needs code_paths).
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(
                name="model", python_model=Affine(), signature=_signature(signature, x, y),
                input_example=_inputs(signature, x) if example else None, pip_requirements=["numpy"],
            )  # fmt: skip
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    return info.model_uri, lambda x: Affine().predict(None, x)


def log_triton(signature: str, example: bool, tmp: Path) -> tuple[str, callable]:
    folder = tmp / "doubler"
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(textwrap.dedent(DOUBLER_CONFIG).lstrip())
    (folder / "1" / "model.py").write_text(DOUBLER_MODEL.lstrip())
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with mlflow.start_run():
        if signature == "named":
            info = triton_flavor.log_model(folder, name="model", input_example={"IN": x} if example else None)
            uri = info.model_uri
        else:  # NVIDIA's plugin's layout: the flavor and the files, nothing else
            mlmodel = Model()
            mlmodel.add_flavor("triton", data="doubler")
            if example:
                from mlflow.models.utils import _save_example

                _save_example(mlmodel, {"IN": x}, str(tmp))
            mlmodel.save(str(tmp / "MLmodel"))
            mlflow.log_artifacts(str(tmp), artifact_path="model")
            uri = f"runs:/{mlflow.active_run().info.run_id}/model"
    return uri, lambda x: 2.0 * x + 1.0


LOGGERS = {"onnx": log_onnx, "torchscript": log_torchscript, "triton": log_triton, "python_function": log_pyfunc}
CELLS = [
    (flavor, signature, example)
    for flavor in FLAVORS
    for signature in SIGNATURES
    for example in (False, True)
    if EXPECTED[flavor][signature][example] != NOT_APPLICABLE
]


@pytest.mark.integration
@pytest.mark.parametrize("flavor, signature, example", CELLS, ids=["-".join(map(str, c)) for c in CELLS])
def test_each_ordinarily_logged_model_deploys_with_defaults_or_is_refused_with_the_fix(
    stack, unique_name, tmp_path, flavor, signature, example
):
    model_uri, compute = LOGGERS[flavor](signature, example, tmp_path)
    client = get_deploy_client(f"triton:/{stack.triton_urls[0]}")
    store = open_store(stack.model_repository, stack.s3_endpoint)
    if EXPECTED[flavor][signature][example] == REFUSED:
        with pytest.raises(MlflowException) as err:
            client.create_deployment(unique_name, model_uri, flavor=flavor)
        assert err.value.error_code == "INVALID_PARAMETER_VALUE" and FIX in err.value.message, err.value.message
        assert store.list_dir(f"{unique_name}/") == ([], [])  # nothing written under the prefix
        assert store.list_dir(f"{staging_name(unique_name)}/") == ([], [])
        return
    try:
        result = client.create_deployment(unique_name, model_uri, flavor=flavor)
        assert result["verified"] and result["flavor"] == flavor
        x = np.random.default_rng(7).normal(size=(3, 3 if flavor == "triton" else 4)).astype(np.float32)
        inputs = {"IN": x} if flavor == "triton" else _inputs(signature, x)
        [answer] = client.predict(unique_name, inputs)["predictions"].values()
        np.testing.assert_allclose(np.asarray(answer, np.float32).reshape(3, -1), compute(x), rtol=1e-4, atol=1e-5)
    finally:
        client.delete_deployment(unique_name)
