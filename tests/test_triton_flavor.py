"""The ``triton`` flavor on the real stack: a logged Triton model directory deploys and answers.

* an ONNX model directory for the (stand-in) ``onnxruntime`` backend, logged with
  :func:`mlflow_triton.flavors.triton.log_model`, two version folders: the highest serves;
* a Python-backend directory logged exactly as NVIDIA's ``mlflow-triton-plugin`` logs it
  (an MLmodel with only ``flavors: triton: data: <folder>``), deployed unchanged; then an
  ensemble whose steps are that deployed model and a sibling folder logged beside it.

Each deploy targets one replica to keep the number of Triton loads small.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import mlflow
import numpy as np
import onnxruntime
import pytest
import yaml
from mlflow.deployments import get_deploy_client
from models import Scorer, export_onnx, sample
from tritonclient.grpc import model_config_pb2 as mc

from mlflow_triton.flavors import triton as triton_flavor
from mlflow_triton.repository.layout import LOGGED_CONFIG_FILE
from mlflow_triton.repository.stores import open_store
from mlflow_triton.triton_config.model_config import parse_pbtxt

CPU = {"instance_kind": "cpu"}

ONNX_CONFIG = """
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "features" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "scores" data_type: TYPE_FP32 dims: [ 3 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

ADDER_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 4
input [ {{ name: "A" data_type: TYPE_FP32 dims: [ 2 ] }}, {{ name: "B" data_type: TYPE_FP32 dims: [ 2 ] }} ]
output [ {{ name: "SUM" data_type: TYPE_FP32 dims: [ 2 ] }} ]
instance_group [ {{ kind: KIND_CPU }} ]
parameters {{ key: "user_setting" value: {{ string_value: "kept" }} }}
"""

SCALER_CONFIG = """
backend: "python"
max_batch_size: 4
input [ { name: "X" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 2 ] } ]
instance_group [ { kind: KIND_CPU } ]
"""

ENSEMBLE_CONFIG = """
platform: "ensemble"
max_batch_size: 4
input [ {{ name: "a" data_type: TYPE_FP32 dims: [ 2 ] }}, {{ name: "b" data_type: TYPE_FP32 dims: [ 2 ] }} ]
output [ {{ name: "scaled" data_type: TYPE_FP32 dims: [ 2 ] }} ]
ensemble_scheduling {{ step [
  {{ model_name: "{adder}" model_version: -1
     input_map {{ key: "A" value: "a" }} input_map {{ key: "B" value: "b" }}
     output_map {{ key: "SUM" value: "summed" }} }},
  {{ model_name: "{scaler}" model_version: -1
     input_map {{ key: "X" value: "summed" }} output_map {{ key: "Y" value: "scaled" }} }}
] }}
"""

PYTHON_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            {body}
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
'''
ADD = 'out = pb_utils.Tensor("SUM", (pb_utils.get_input_tensor_by_name(request, "A").as_numpy() + pb_utils.get_input_tensor_by_name(request, "B").as_numpy()).astype(np.float32))'
SCALE = 'out = pb_utils.Tensor("Y", (3 * pb_utils.get_input_tensor_by_name(request, "X").as_numpy()).astype(np.float32))'


def model_dir(root: Path, name: str, config: str, files: dict[str, str | bytes] | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.pbtxt").write_text(textwrap.dedent(config))
    for relative, content in (files or {}).items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return folder


def log_like_nvidia_plugin(folder: Path, tmp: Path) -> str:
    """What NVIDIA's plugin's ``triton_flavor.log_model`` writes: the folder and an MLmodel
    whose only flavor is ``triton: {data: <folder name>}`` (no signature, no pyfunc)."""
    root = tmp / "nvidia-logged"
    root.mkdir()
    import shutil

    shutil.copytree(folder, root / folder.name)
    (root / "MLmodel").write_text(yaml.safe_dump({"flavors": {"triton": {"data": folder.name}}}))
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(root), artifact_path="triton")
    return f"runs:/{run.info.run_id}/triton"


def infer(client, name: str, inputs: dict[str, np.ndarray]) -> dict[str, list]:
    return client.predict(deployment_name=name, inputs=inputs)["predictions"]


@pytest.mark.integration
def test_triton_flavor_onnx_directory_serves_its_highest_version(stack, unique_name, tmp_path):
    older, newer = Scorer(seed=1), Scorer(seed=2)
    folder = model_dir(tmp_path, "scorer", ONNX_CONFIG)
    for version, model in (("1", older), ("2", newer)):
        (folder / version).mkdir()
        export_onnx(model, folder / version / "model.onnx")
    with mlflow.start_run():
        info = triton_flavor.log_model(folder, name="model", input_example={"features": sample(3)})
    logged = mlflow.models.get_model_info(info.model_uri)
    assert logged.flavors["triton"]["data"] == "scorer"
    [spec] = logged.signature.inputs.inputs
    assert (spec.name, tuple(spec.shape), spec.type) == ("features", (-1, 4), np.dtype(np.float32))
    assert Path(triton_flavor.load_model(info.model_uri, str(tmp_path / "loaded"))).joinpath("2", "model.onnx").is_file()

    client = get_deploy_client(f"triton:/{stack.triton_urls[0]}")
    result = client.create_deployment(unique_name, info.model_uri, config={"flavor": "triton", **CPU})
    try:
        assert (result["version"], result["flavor"], result["verified"]) == (1, "triton", True), result
        x = sample(4, seed=7)
        want = onnxruntime.InferenceSession(str(folder / "2" / "model.onnx")).run(["scores"], {"features": x})[0]
        got = np.asarray(infer(client, unique_name, {"features": x})["scores"])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        store = open_store(stack.model_repository, stack.s3_endpoint)
        published = parse_pbtxt(store.read_bytes(f"{unique_name}/config.pbtxt"))
        assert published.backend == "onnxruntime" and list(published.version_policy.specific.versions) == [1]
        assert store.read_bytes(f"{unique_name}/1/model.onnx") == (folder / "2" / "model.onnx").read_bytes()
        assert store.read_bytes(f"{unique_name}/1/{LOGGED_CONFIG_FILE}") == (folder / "config.pbtxt").read_bytes()
    finally:
        client.delete_deployment(unique_name)


@pytest.mark.integration
def test_nvidia_layout_python_backend_deploys_unchanged_then_an_ensemble(stack, unique_name, tmp_path):
    adder, scaler, ensemble = f"{unique_name}-add", f"{unique_name}-scale", unique_name
    folder = model_dir(
        tmp_path / "adder-src", "adder", ADDER_CONFIG.format(name="adder"),
        {"1/model.py": PYTHON_MODEL.format(body=ADD)},
    )  # fmt: skip
    client = get_deploy_client(f"triton:/{stack.triton_urls[0]}")
    store = open_store(stack.model_repository, stack.s3_endpoint)
    a = np.arange(6, dtype=np.float32).reshape(3, 2)
    b = np.full((3, 2), 0.5, dtype=np.float32)
    try:
        # 1. NVIDIA's layout, no signature: the flavor is chosen (the only one) and served.
        result = client.create_deployment(adder, log_like_nvidia_plugin(folder, tmp_path), config=CPU)
        assert (result["version"], result["flavor"]) == (1, "triton"), result
        np.testing.assert_allclose(infer(client, adder, {"A": a, "B": b})["SUM"], a + b)
        # Unchanged: the user's config with only name and version_policy rewritten.
        published = parse_pbtxt(store.read_bytes(f"{adder}/config.pbtxt"))
        expected = parse_pbtxt(ADDER_CONFIG.format(name=adder))
        expected.version_policy.specific.versions.append(1)
        assert published == expected, f"{published}\n!=\n{expected}"
        assert published.parameters["user_setting"].string_value == "kept"

        # 2. An ensemble: one step already deployed (the adder), one logged beside it.
        source = tmp_path / "ensemble-src"
        ens = model_dir(source, "pipeline", ENSEMBLE_CONFIG.format(adder=adder, scaler=scaler))
        step = model_dir(source, scaler, SCALER_CONFIG, {"1/model.py": PYTHON_MODEL.format(body=SCALE)})
        with mlflow.start_run():
            info = triton_flavor.log_model(ens, name="model", composing_models=[step])
        result = client.create_deployment(ensemble, info.model_uri, config=CPU)
        assert result["composing_models"] == {scaler: 1}, result  # the adder was left as it was
        assert result["verified"], result
        got = infer(client, ensemble, {"a": a, "b": b})["scaled"]
        np.testing.assert_allclose(got, 3 * (a + b))
        config = parse_pbtxt(store.read_bytes(f"{ensemble}/config.pbtxt"))
        assert config.platform == "ensemble"
        assert [s.model_name for s in config.ensemble_scheduling.step] == [adder, scaler]

        # 3. One rollout: a new scaler with an ensemble Triton refuses (output dims [3] where
        # the step gives [2]): the scaler is published, then restored with the ensemble.
        source = tmp_path / "ensemble-v2"
        bad = ENSEMBLE_CONFIG.format(adder=adder, scaler=scaler).replace('"scaled" data_type: TYPE_FP32 dims: [ 2 ]', '"scaled" data_type: TYPE_FP32 dims: [ 3 ]')
        ens = model_dir(source, "pipeline", bad)
        step = model_dir(source, scaler, SCALER_CONFIG, {"1/model.py": PYTHON_MODEL.format(body=SCALE.replace("3 *", "5 *"))})
        with mlflow.start_run():
            info = triton_flavor.log_model(ens, name="model", composing_models=[step])
        with pytest.raises(mlflow.exceptions.MlflowException) as caught:
            client.update_deployment(ensemble, info.model_uri, config=CPU)
        assert caught.value.error_code == "INTERNAL_ERROR"
        assert f"{scaler}: 1" in caught.value.message, caught.value.message
        assert client.get_deployment(scaler)["serving_version"] == 1
        assert client.get_deployment(ensemble)["serving_version"] == 1
        np.testing.assert_allclose(infer(client, ensemble, {"a": a, "b": b})["scaled"], 3 * (a + b))
    finally:
        for name in (ensemble, scaler, adder):
            client.delete_deployment(name)


@pytest.mark.integration
def test_ensemble_naming_a_model_neither_logged_nor_deployed_writes_nothing(stack, unique_name, tmp_path):
    ens = model_dir(tmp_path, "pipeline", ENSEMBLE_CONFIG.format(adder=f"{unique_name}-a", scaler=f"{unique_name}-s"))
    with mlflow.start_run():
        info = triton_flavor.log_model(ens, name="model")
    client = get_deploy_client(f"triton:/{stack.triton_urls[0]}")
    with pytest.raises(mlflow.exceptions.MlflowException) as caught:
        client.create_deployment(unique_name, info.model_uri, config=CPU)
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
    assert f"{unique_name}-a" in caught.value.message and f"{unique_name}-s" in caught.value.message
    store = open_store(stack.model_repository, stack.s3_endpoint)
    assert store.list_dir(f"{unique_name}/") == ([], [])


@pytest.mark.integration
def test_invalid_config_pbtxt_in_a_logged_directory_is_refused_before_any_write(stack, unique_name, tmp_path):
    folder = model_dir(tmp_path, "broken", 'backend: "python"\ninput [ { name: "x" data_type: TYPE_NOPE } ]\n', {"1/model.py": ""})
    client = get_deploy_client(f"triton:/{stack.triton_urls[0]}")
    with pytest.raises(mlflow.exceptions.MlflowException) as caught:
        client.create_deployment(unique_name, log_like_nvidia_plugin(folder, tmp_path), config=CPU)
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "not a valid Triton ModelConfig" in caught.value.message and "TYPE_NOPE" in caught.value.message
    assert open_store(stack.model_repository, stack.s3_endpoint).list_dir(f"{unique_name}/") == ([], [])


def test_invalid_config_pbtxt_is_refused_before_logging(tmp_path):
    folder = model_dir(tmp_path, "broken", "backend: \"python\"\nmax_batch_size: [oops]\n", {"1/model.py": ""})
    with pytest.raises(mlflow.exceptions.MlflowException) as caught:
        triton_flavor.save_model(folder, tmp_path / "saved")
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "2:" in caught.value.message  # the parser's line
    assert not (tmp_path / "saved").exists()


def test_signature_from_config_uses_tritonclient_dtypes():
    config = mc.ModelConfig()
    config.max_batch_size = 2
    config.input.add(name="text", data_type=mc.TYPE_STRING, dims=[1])
    config.input.add(name="ids", data_type=mc.TYPE_INT64, dims=[-1])
    config.output.add(name="p", data_type=mc.TYPE_FP16, dims=[3])
    signature = triton_flavor.signature_from_config(config)
    assert [(s.name, s.type, tuple(s.shape)) for s in signature.inputs.inputs] == [
        ("text", np.dtype(object), (-1, 1)), ("ids", np.dtype(np.int64), (-1, -1)),
    ]
    assert [(s.name, s.type, tuple(s.shape)) for s in signature.outputs.inputs] == [("p", np.dtype(np.float16), (-1, 3))]
