"""pyfunc models through Triton's Python backend, on the real stack, plus flavor selection.

A scikit-learn model and a custom ``PythonModel`` taking and returning strings serve the same
predictions as ``mlflow.pyfunc.load_model(...).predict``; a model whose code imports a
package the server lacks is refused at verification, naming the package. Each deploy targets
one replica: every Python-backend load imports mlflow in the stub, which costs seconds.
"""

from __future__ import annotations

import tarfile
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.deployments import get_deploy_client
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from sklearn.linear_model import LogisticRegression

from mlflow_triton.flavors import triton as triton_flavor
from mlflow_triton.flavors.pyfunc import EXECUTION_ENV_PARAMETER, PYFUNC_IO_PARAMETER, pyfunc_io
from mlflow_triton.flavors.registry import resolve_model
from mlflow_triton.repository.stores import open_store
from mlflow_triton.settings.deployment import DeploymentConfig
from mlflow_triton.triton_config.model_config import parse_pbtxt, to_pbtxt

CPU = {"instance_kind": "cpu"}
# Given, not inferred (that loads the model in a subprocess), and cloudpickle rather than the
# default skops, whose import costs seconds: the tests are about serving, not persistence.
REQS = ["scikit-learn", "pandas"]
MISSING_PACKAGE = "mlflow_triton_absent_package"

SHOUT_MODEL = '''
import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class Shout(PythonModel):
    def load_context(self, context):
        {load}

    def predict(self, context, model_input, params=None):
        text = model_input["text"].astype(str)
        return pd.DataFrame({{"upper": text.str.upper() + "!", "length": text.str.len().astype("int64")}})


mlflow.models.set_model(Shout())
'''
TEXT = pd.DataFrame({"text": ["hello", "Triton ünïcode", "", "a b c"]})


def log_shout(tmp: Path, load: str = "pass", example: bool = True) -> str:
    code = tmp / "shout.py"
    code.write_text(SHOUT_MODEL.format(load=load))
    signature = infer_signature(TEXT, pd.DataFrame({"upper": ["X!"], "length": [1]}))
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(code), signature=signature,
            input_example=TEXT.head(2) if example else None, pip_requirements=REQS,
        )  # fmt: skip
    return info.model_uri


def sklearn_model() -> tuple[LogisticRegression, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4))
    y = (x[:, 0] + 2 * x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1)
    return LogisticRegression(max_iter=200).fit(x, y), x


@pytest.mark.integration
def test_sklearn_pyfunc_serves_what_pyfunc_predicts(stack, unique_name):
    model, x = sklearn_model()
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model, name="model", signature=infer_signature(x, model.predict(x)), input_example=x[:3],
            pip_requirements=REQS, serialization_format="cloudpickle",
        )  # fmt: skip
    client = get_deploy_client(f"triton:/{stack.triton_urls[0]}")
    result = client.create_deployment(unique_name, info.model_uri, config=CPU)  # no flavor given
    try:
        assert (result["flavor"], result["verified"]) == ("python_function", True), result
        want = mlflow.pyfunc.load_model(info.model_uri).predict(x[:7])
        got = client.predict(deployment_name=unique_name, inputs=x[:7])["predictions"]["output"]
        np.testing.assert_array_equal(np.asarray(got).reshape(-1), want)
    finally:
        client.delete_deployment(unique_name)


@pytest.mark.integration
def test_string_pyfunc_serves_what_pyfunc_predicts_and_a_missing_package_is_named(stack, unique_name, tmp_path):
    uri = log_shout(tmp_path)
    client = get_deploy_client(f"triton:/{stack.triton_urls[0]}")
    store = open_store(stack.model_repository, stack.s3_endpoint)
    try:
        result = client.create_deployment(unique_name, uri, config={"flavor": "pyfunc", **CPU})
        assert (result["flavor"], result["verified"]) == ("python_function", True), result
        config = parse_pbtxt(store.read_bytes(f"{unique_name}/config.pbtxt"))
        assert config.backend == "python"
        assert [(t.name, t.data_type) for t in config.input] == [("text", 13)]  # TYPE_STRING
        want = mlflow.pyfunc.load_model(uri).predict(TEXT)
        got = client.predict(deployment_name=unique_name, inputs=TEXT)["predictions"]
        assert [v.decode() for v in np.asarray(got["upper"], dtype=object).reshape(-1)] == list(want["upper"])
        assert np.asarray(got["length"]).reshape(-1).tolist() == list(want["length"])

        # A new version whose code imports a package the server lacks: refused, named.
        (tmp_path / "broken").mkdir()
        broken = log_shout(tmp_path / "broken", load=f"import {MISSING_PACKAGE}", example=False)
        with pytest.raises(MlflowException) as caught:
            client.update_deployment(unique_name, broken, config={"flavor": "python_function", **CPU})
        assert caught.value.error_code == "INTERNAL_ERROR"
        assert repr(MISSING_PACKAGE) in caught.value.message, caught.value.message
        assert client.get_deployment(unique_name)["serving_version"] == 1
    finally:
        client.delete_deployment(unique_name)


def test_pyfunc_columns_and_tensors_map_to_triton_tensors():
    io, mapping = pyfunc_io(infer_signature(TEXT.assign(n=[1, 2, 3, 4]), pd.DataFrame({"upper": ["a"], "length": [1]})))
    assert [(t.name, t.data_type, t.shape) for t in io.inputs] == [("text", "TYPE_STRING", (-1,)), ("n", "TYPE_INT64", (-1,))]
    assert [(t.name, t.data_type) for t in io.outputs] == [("upper", "TYPE_STRING"), ("length", "TYPE_INT64")]
    assert mapping == {"input_mode": "columns", "decode": ["text"]}
    x = np.zeros((2, 4), np.float32)
    io, mapping = pyfunc_io(infer_signature(x, np.zeros(2, np.int64)))
    assert [(t.name, t.data_type, t.shape) for t in io.inputs] == [("input", "TYPE_FP32", (-1, 4))]
    assert mapping["input_mode"] == "array"
    with pytest.raises(MlflowException, match="signature"):
        pyfunc_io(None)


def test_python_env_ships_the_archive_and_sets_execution_env_path(tmp_path):
    model, x = sklearn_model()
    mlflow.sklearn.save_model(model, tmp_path / "sk", signature=infer_signature(x, model.predict(x)), pip_requirements=REQS, serialization_format="cloudpickle")
    archive = tmp_path / "sk-env.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "sk" / "MLmodel", arcname="bin/placeholder")
    source = resolve_model(str(tmp_path / "sk"))
    assert source.flavor.name == "python_function"
    config = DeploymentConfig.from_dict({"python_env": str(archive), **CPU})
    work = tmp_path / "work"
    work.mkdir()
    plan = source.flavor.plan(source, config, work)
    targets = [f.target for f in plan.files]
    assert targets[0] == "model.py" and "mlflow_model/MLmodel" in targets and "python_env.tar.gz" in targets
    message = plan.config("sk", 7, plan.io, None)
    assert message.parameters[EXECUTION_ENV_PARAMETER].string_value == "$$TRITON_MODEL_DIRECTORY/7/python_env.tar.gz"
    assert message.backend == "python" and PYFUNC_IO_PARAMETER in message.parameters
    assert parse_pbtxt(to_pbtxt(message)) == message
    assert config.settings("python_function")["python_env"] == str(archive)
    assert "python_env" not in DeploymentConfig().settings("onnx")  # older provenance stays equal
    with pytest.raises(MlflowException, match="tar.gz"):
        DeploymentConfig.from_dict({"python_env": "s3://bucket/env.zip"})


def test_flavor_selection_order_and_names(tmp_path):
    model, x = sklearn_model()
    mlflow.sklearn.save_model(model, tmp_path / "sk", signature=infer_signature(x, model.predict(x)), pip_requirements=REQS, serialization_format="cloudpickle")
    assert resolve_model(str(tmp_path / "sk")).flavor.name == "python_function"
    assert resolve_model(str(tmp_path / "sk"), "pyfunc").flavor.name == "python_function"
    with pytest.raises(MlflowException) as caught:
        resolve_model(str(tmp_path / "sk"), "triton")
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE" and "python_function" in caught.value.message
    folder = tmp_path / "tm"
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(textwrap.dedent("""
        backend: "python"
        input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]
        output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]
    """))
    (folder / "1" / "model.py").write_text("")
    # A triton flavor beside a pyfunc: triton is preferred (ONNX > TorchScript > triton > pyfunc).
    model_info = mlflow.models.Model()
    model_info.add_flavor("python_function", loader_module="mlflow_triton.flavors.triton")
    triton_flavor.save_model(folder, tmp_path / "both", mlflow_model=model_info)
    assert resolve_model(str(tmp_path / "both")).flavor.name == "triton"
    assert resolve_model(str(tmp_path / "both"), "python_function").flavor.name == "python_function"
    with pytest.raises(MlflowException, match="python_function"):
        DeploymentConfig.from_dict({"flavor": "sklearn"})
    assert DeploymentConfig.from_dict({"flavor": "pyfunc"}).flavor == "python_function"
    with pytest.raises(MlflowException, match="'pyfunc' for python_function"):
        resolve_model(str(tmp_path / "sk"), "sklearn")
