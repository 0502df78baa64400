"""Bad input gives a clear MlflowException and leaves the model repository exactly as it was.

The last tests cover unusual but valid models that a naive publisher mangles (ONNX weights in
external data files) and a pickled eager module that reaches Triton on the server-side copy
path. Refusal tests snapshot the whole repository (``{key: etag}``) before and after. Models
are MLflow model directories on disk (the plugin's download path) unless a test needs the
server-side copy path, which takes a registered model whose artifacts are on the stack's S3.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import boto3
import mlflow
import mlflow.onnx
import mlflow.pyfunc
import mlflow.pytorch
import numpy as np
import onnx
import pytest
import torch
from mlflow.deployments import get_deploy_client
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from models import Scorer, export_onnx, sample

from mlflow_triton.fleet.server import TritonServer
from mlflow_triton.local.processes import free_port
from mlflow_triton.local.stack import LocalStack
from mlflow_triton.repository.stores import open_store
from mlflow_triton.triton_config.model_config import parse_pbtxt, serving_versions

pytestmark = pytest.mark.integration
CPU = {"instance_kind": "cpu"}
#: Explicit requirements spare MLflow's requirement inference (seconds per saved model).
REQUIREMENTS = ["onnx", "torch"]


def snapshot(stack: LocalStack) -> dict[str, str]:
    """Every object of the Triton repository bucket with its ETag."""
    pages = stack.s3_client().get_paginator("list_objects_v2").paginate(Bucket=stack.bucket)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


@contextmanager
def nothing_written(stack: LocalStack) -> Iterator[None]:
    before = snapshot(stack)
    yield
    assert snapshot(stack) == before, "the repository changed"


def refused(error: pytest.ExceptionInfo, code: str, *fragments: str) -> str:
    message = error.value.message
    assert error.value.error_code == code, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def signature_for(model: torch.nn.Module):
    x = sample()
    return infer_signature({"features": x}, {"scores": model(torch.from_numpy(x)).detach().numpy()})


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return Path(tmp_path_factory.mktemp("bad-models"))


@pytest.fixture(scope="module")
def onnx_dir(models_dir) -> str:
    model = Scorer(seed=61)
    path = str(models_dir / "onnx")
    mlflow.onnx.save_model(
        onnx.load(str(export_onnx(model, models_dir / "scorer.onnx"))), path,
        signature=signature_for(model), pip_requirements=REQUIREMENTS,
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def corrupt_onnx_dir(onnx_dir, models_dir) -> str:
    """An ``onnx`` flavor whose model.onnx is not a protobuf at all."""
    import shutil

    path = models_dir / "corrupt"
    shutil.copytree(onnx_dir, path)
    (path / "model.onnx").write_bytes(b"\x08\x07not an onnx model \xff\xfe" * 64)
    return str(path)


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def test_unknown_flavor(stack, unique_name, onnx_dir):
    client = get_deploy_client("triton")
    with nothing_written(stack), pytest.raises(MlflowException) as err:
        client.create_deployment(unique_name, onnx_dir, flavor="sklearn", config=CPU)
    refused(err, "INVALID_PARAMETER_VALUE", "Unknown flavor 'sklearn'", "onnx, torchscript")
    with nothing_written(stack), pytest.raises(MlflowException) as err:
        client.create_deployment(unique_name, onnx_dir, flavor="torchscript", config=CPU)
    refused(err, "INVALID_PARAMETER_VALUE", "has no torchscript flavor", "['onnx', 'python_function']")


def test_model_without_a_servable_flavor(stack, unique_name, models_dir):
    # A pyfunc is served by the Python backend, but only with a signature (its tensors).
    path = str(models_dir / "pyfunc")
    mlflow.pyfunc.save_model(path, python_model=Echo(), pip_requirements=["mlflow"])
    with nothing_written(stack), pytest.raises(MlflowException) as err:
        get_deploy_client("triton").create_deployment(unique_name, path, config=CPU)
    refused(err, "INVALID_PARAMETER_VALUE", "python_function model has no MLflow signature", "infer_signature")
    # No flavor the target serves at all.
    other = models_dir / "keras-only"
    other.mkdir()
    model = mlflow.models.Model()
    model.add_flavor("keras", keras_version="3")
    model.save(str(other / "MLmodel"))
    with nothing_written(stack), pytest.raises(MlflowException) as err:
        get_deploy_client("triton").create_deployment(unique_name, str(other), config=CPU)
    refused(err, "INVALID_PARAMETER_VALUE", "has flavors ['keras']", "mlflow.onnx.log_model")


def test_eager_pytorch_pickle_is_not_torchscript(stack, unique_name, models_dir):
    model = Scorer(seed=62)
    path = str(models_dir / "eager")
    mlflow.pytorch.save_model(
        model, path, signature=signature_for(model), serialization_format="pickle",
        pip_requirements=REQUIREMENTS,
    )  # fmt: skip
    with nothing_written(stack), pytest.raises(MlflowException) as err:
        get_deploy_client("triton").create_deployment(unique_name, path, config=CPU)
    refused(err, "INVALID_PARAMETER_VALUE", "is not TorchScript", "torch.jit.script")


def test_torchscript_without_signature(stack, unique_name, models_dir):
    model = Scorer(seed=63).eval()
    path = str(models_dir / "unsigned")
    traced = torch.jit.trace(model, (torch.from_numpy(sample()),))
    mlflow.pytorch.save_model(traced, path, serialization_format="pickle", pip_requirements=REQUIREMENTS)
    with nothing_written(stack), pytest.raises(MlflowException) as err:
        get_deploy_client("triton").create_deployment(unique_name, path, config=CPU)
    refused(err, "INVALID_PARAMETER_VALUE", "no MLflow signature", "infer_signature")


@pytest.mark.parametrize("name", ["a/b", "../escape", "..", "x/../../y", "with space", " lead", "tab\t", "new\nline", ""])
def test_unsafe_deployment_names(stack, name, onnx_dir):
    client = get_deploy_client("triton")
    for call in (
        lambda: client.create_deployment(name, onnx_dir, config=CPU),
        lambda: client.update_deployment(name, onnx_dir, config=CPU),
        lambda: client.delete_deployment(name),
        lambda: client.get_deployment(name),
        lambda: client.predict(name, sample(1)),
    ):
        with nothing_written(stack), pytest.raises(MlflowException) as err:
            call()
        refused(err, "INVALID_PARAMETER_VALUE", "Invalid deployment name")


@pytest.mark.parametrize(
    "target", ["triton:/127.0.0.1:8000", "triton:/http://127.0.0.1:port", "triton:/ftp://h:1", "triton:/"]
)
def test_malformed_target_uri(target):
    with pytest.raises(MlflowException) as err:
        get_deploy_client(target)
    refused(err, "INVALID_PARAMETER_VALUE", "Triton", target.removeprefix("triton:/"))


@pytest.mark.parametrize(
    "repository, fragment",
    [
        ("gs://bucket/models", "Unsupported model repository"),
        ("s3://", "expected s3://bucket/prefix"),
        ("s3:///models", "expected s3://bucket/prefix"),
        ("s3://triton-models/../escape", "Refusing repository key"),
    ],
)
def test_malformed_repository_uri(stack, unique_name, onnx_dir, repository, fragment):
    with nothing_written(stack), pytest.raises(MlflowException) as err:
        get_deploy_client("triton").create_deployment(
            unique_name, onnx_dir, config={**CPU, "model_repository": repository}
        )
    refused(err, "INVALID_PARAMETER_VALUE", fragment)


def test_missing_bucket(stack, unique_name, onnx_dir):
    with nothing_written(stack), pytest.raises(MlflowException) as err:
        get_deploy_client("triton").create_deployment(
            unique_name, onnx_dir, config={**CPU, "model_repository": "s3://no-such-bucket/models"}
        )
    refused(err, "RESOURCE_DOES_NOT_EXIST", "'no-such-bucket' does not exist", stack.s3_endpoint)


def test_no_aws_credentials(stack, unique_name, onnx_dir, monkeypatch, tmp_path):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # a fresh session resolves again
    with nothing_written(stack), pytest.raises(MlflowException) as err:
        get_deploy_client("triton").create_deployment(unique_name, onnx_dir, config=CPU)
    refused(err, "INTERNAL_ERROR", "no AWS credentials found", "AWS_SECRET_ACCESS_KEY")


def test_triton_unreachable(stack, unique_name, onnx_dir):
    closed = f"http://127.0.0.1:{free_port()}"
    with nothing_written(stack), pytest.raises(MlflowException) as err:
        get_deploy_client(f"triton:/{stack.triton_urls[0]},{closed}").create_deployment(
            unique_name, onnx_dir, config=CPU
        )
    refused(err, "TEMPORARILY_UNAVAILABLE", f"Triton unreachable at {closed}", "nothing was published")


def test_corrupt_onnx_is_refused_and_nothing_is_left(stack, unique_name, corrupt_onnx_dir):
    """Streamed, the file is inspected from its uploaded copy: refused, and the copy removed."""
    with nothing_written(stack), pytest.raises(MlflowException) as err:
        get_deploy_client("triton").create_deployment(unique_name, corrupt_onnx_dir, config=CPU)
    refused(err, "INVALID_PARAMETER_VALUE", "model.onnx is not a readable ONNX model")


def test_corrupt_onnx_copied_server_side_is_refused_before_anything_is_written(
    stack, unique_name, onnx_dir, corrupt_onnx_dir
):
    """Registered with S3 artifacts, the file is not downloaded, yet its graph is read with
    ranged GETs (the same walk as on the download path), so the plugin refuses it first."""
    client = get_deploy_client("triton")
    client.create_deployment(unique_name, onnx_dir, config=CPU)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(corrupt_onnx_dir, "model")
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", unique_name).version
    store = open_store(stack.model_repository)
    config_before = store.read_bytes(f"{unique_name}/config.pbtxt")

    with nothing_written(stack), pytest.raises(MlflowException) as err:
        client.update_deployment(unique_name, f"models:/{unique_name}/{version}", config=CPU)

    refused(err, "INVALID_PARAMETER_VALUE", "not a readable ONNX model")
    assert store.read_bytes(f"{unique_name}/config.pbtxt") == config_before
    assert serving_versions(parse_pbtxt(config_before)) == [1]
    for url in stack.triton_urls:
        with TritonServer(url) as triton:
            assert triton.is_model_ready(unique_name, 1), url
    model = Scorer(seed=61)
    x = sample(2, seed=64)
    out = np.asarray(client.predict(unique_name, {"features": x})["predictions"]["scores"])
    np.testing.assert_allclose(out, model(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)
    with nothing_written(stack), pytest.raises(MlflowException) as err:
        client.create_deployment(unique_name, onnx_dir, config=CPU)
    refused(err, "RESOURCE_ALREADY_EXISTS", "already exists", "mlflow deployments update")
    client.delete_deployment(unique_name)


def test_update_of_a_missing_deployment(stack, unique_name, onnx_dir):
    with nothing_written(stack), pytest.raises(MlflowException) as err:
        get_deploy_client("triton").update_deployment(unique_name, onnx_dir, config=CPU)
    refused(err, "RESOURCE_DOES_NOT_EXIST", "does not exist", "create it first")



def test_eager_pytorch_pickle_copied_server_side(stack, unique_name):
    """Registered with S3 artifacts the file is copied server-side; its zip directory is still
    read (ranged GETs), so the plugin refuses it before Triton sees it."""
    model = Scorer(seed=65)
    with mlflow.start_run():
        mlflow.pytorch.log_model(
            model, name="model", signature=signature_for(model), serialization_format="pickle",
            registered_model_name=unique_name, pip_requirements=REQUIREMENTS,
        )  # fmt: skip
    with nothing_written(stack), pytest.raises(MlflowException) as err:
        get_deploy_client("triton").create_deployment(unique_name, f"models:/{unique_name}/1", config=CPU)
    refused(err, "INVALID_PARAMETER_VALUE", "is not TorchScript", "torch.jit.script")


@pytest.mark.parametrize("registered", [False, True], ids=["downloaded", "copied"])
def test_onnx_weights_in_external_data_files(stack, unique_name, models_dir, registered):
    """``mlflow.onnx.save_model`` defaults to ``save_as_external_data=True``: every initializer
    over 1 KB goes to a ``<uuid>.data`` file next to model.onnx, which Triton needs too."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))
    path = models_dir / f"external-{registered}"
    mlflow.onnx.save_model(
        onnx.load(str(export_onnx(model, models_dir / f"wide-{registered}.onnx"))), str(path),
        signature=signature_for(model), pip_requirements=REQUIREMENTS,
    )  # fmt: skip
    (data_file,) = path.glob("*.data")
    uri = str(path)
    if registered:
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(path), "model")
        version = mlflow.register_model(f"runs:/{run.info.run_id}/model", unique_name).version
        uri = f"models:/{unique_name}/{version}"
    client = get_deploy_client("triton")

    client.create_deployment(unique_name, uri, config=CPU)

    provenance = client.get_deployment(unique_name)["provenance"]
    assert [entry["file"] for entry in provenance["external_data"]] == [data_file.name]
    assert ("etag" if registered else "sha256") in provenance["artifact"]  # copied vs uploaded
    assert open_store(stack.model_repository).read_bytes(f"{unique_name}/1/{data_file.name}") == data_file.read_bytes()
    x = sample(3, seed=66)
    out = np.asarray(client.predict(unique_name, {"features": x})["predictions"]["scores"])
    np.testing.assert_allclose(out, model(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)
    client.delete_deployment(unique_name)
