"""The triton target end to end: real MLflow server, moto S3 repository, two tritonservers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow.deployments import get_deploy_client
from mlflow.exceptions import MlflowException
from models import Scorer, TwoHeads, log_onnx, log_torchscript, sample

from mlflow_triton.repository.stores import open_store
from mlflow_triton.triton_config.model_config import parse_pbtxt, serving_versions

pytestmark = pytest.mark.integration
CPU = {"instance_kind": "cpu"}


def repository(stack):
    return open_store(stack.model_repository)


def test_onnx_model_from_registry_serves_on_every_replica(stack, unique_name, tmp_path):
    model = Scorer(seed=3)
    log_onnx(model, tmp_path, registered_name=unique_name)
    client = get_deploy_client("triton")

    result = client.create_deployment(unique_name, f"models:/{unique_name}/1", config=CPU)

    assert result["version"] == 1 and result["flavor"] == "onnx"
    store = repository(stack)
    config = parse_pbtxt(store.read_bytes(f"{unique_name}/config.pbtxt"))
    assert config.backend == "onnxruntime" and config.max_batch_size == 32
    assert serving_versions(config) == [1]
    assert [t.name for t in config.input] == ["features"] and list(config.input[0].dims) == [4]
    assert config.HasField("dynamic_batching")
    x = sample(6, seed=9)
    expected = model(torch.from_numpy(x)).detach().numpy()
    for url in stack.triton_urls:
        replica = get_deploy_client(f"triton:/{url}")
        predictions = replica.predict(unique_name, {"features": x})["predictions"]
        np.testing.assert_allclose(np.asarray(predictions["scores"]), expected, rtol=1e-4, atol=1e-5)
    described = client.get_deployment(unique_name)
    assert described["serving_version"] == 1
    assert described["provenance"]["registered_model"] == unique_name
    assert all(s["versions"] == {"1": "READY"} for s in described["servers"].values())


def test_torchscript_two_inputs_two_outputs(stack, unique_name):
    model = TwoHeads(seed=4)
    log_torchscript(model, registered_name=unique_name, two_inputs=True)
    client = get_deploy_client("triton")

    result = client.create_deployment(unique_name, f"models:/{unique_name}/1", config=CPU)

    assert result["flavor"] == "torchscript"
    config = parse_pbtxt(repository(stack).read_bytes(f"{unique_name}/config.pbtxt"))
    assert config.backend == "pytorch"
    assert [t.name for t in config.input] == ["INPUT__0", "INPUT__1"]
    assert [t.name for t in config.output] == ["OUTPUT__0", "OUTPUT__1"]
    assert repository(stack).read_bytes(f"{unique_name}/1/model.pt") is not None
    x, z = sample(3, seed=5), sample(3, seed=6)
    a, b = model(torch.from_numpy(x), torch.from_numpy(z))
    predictions = client.predict(unique_name, {"x": x, "z": z})["predictions"]
    np.testing.assert_allclose(np.asarray(predictions["sum"]), a.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(predictions["relu"]), b.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_update_publishes_new_version_and_prunes(stack, unique_name, tmp_path):
    log_onnx(Scorer(seed=1), tmp_path, registered_name=unique_name)
    (tmp_path / "v2").mkdir()
    log_onnx(Scorer(seed=2), tmp_path / "v2", registered_name=unique_name)
    (tmp_path / "v3").mkdir()
    new = Scorer(seed=3)
    log_onnx(new, tmp_path / "v3", registered_name=unique_name)
    client = get_deploy_client("triton")
    client.create_deployment(unique_name, f"models:/{unique_name}/1", config=CPU)

    second = client.update_deployment(unique_name, f"models:/{unique_name}/2", config=CPU)
    third = client.update_deployment(unique_name, f"models:/{unique_name}/3", config=CPU)
    again = client.update_deployment(unique_name, f"models:/{unique_name}/3", config=CPU)

    assert (second["version"], third["version"]) == (2, 3)
    assert third["pruned_versions"] == [1]
    assert again["changed"] is False and again["bytes_uploaded"] == 0 and again["version"] == 3
    folders, _ = repository(stack).list_dir(f"{unique_name}/")
    assert sorted(folders) == ["2", "3"]
    # Triton still remembers the pruned version 1; get lists the repository's versions only
    servers = client.get_deployment(unique_name)["servers"]
    assert {url: sorted(s["versions"]) for url, s in servers.items()} == {url: ["2", "3"] for url in stack.triton_urls}
    assert all(s["versions"]["3"] == "READY" for s in servers.values())
    x = sample(2)
    out = client.predict(unique_name, {"features": x})["predictions"]["scores"]
    np.testing.assert_allclose(np.asarray(out), new(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_delete_is_prefix_safe_and_idempotent(stack, unique_name, tmp_path):
    uri = log_onnx(Scorer(), tmp_path)
    client = get_deploy_client("triton")
    client.create_deployment(unique_name, uri, config=CPU)
    client.create_deployment(f"{unique_name}_bar", uri, config=CPU)

    client.delete_deployment(unique_name)
    client.delete_deployment(unique_name)

    store = repository(stack)
    assert store.read_bytes(f"{unique_name}/config.pbtxt") is None
    assert store.read_bytes(f"{unique_name}_bar/config.pbtxt") is not None
    assert get_deploy_client("triton").predict(f"{unique_name}_bar", sample(1))["predictions"]
    with pytest.raises(MlflowException, match="No deployment named"):
        client.get_deployment(unique_name)
    client.delete_deployment(f"{unique_name}_bar")


def test_s3_artifacts_are_copied_server_side(stack, unique_name, tmp_path):
    uri = log_onnx(Scorer(seed=7), tmp_path)
    result = get_deploy_client("triton").create_deployment(unique_name, uri, config=CPU)
    provenance = get_deploy_client("triton").get_deployment(unique_name)["provenance"]
    assert provenance["source_uri"].startswith("s3://mlflow-artifacts/")
    assert result["bytes_uploaded"] == 0 and "etag" in provenance["artifact"]


def test_local_model_directory_is_downloaded_hashed_and_uploaded(stack, unique_name, tmp_path):
    import mlflow
    import onnx
    from models import export_onnx

    model_dir = tmp_path / "saved"
    mlflow.onnx.save_model(onnx.load(str(export_onnx(Scorer(seed=8), tmp_path / "m.onnx"))), str(model_dir))
    result = get_deploy_client("triton").create_deployment(unique_name, str(model_dir), config=CPU)
    provenance = get_deploy_client("triton").get_deployment(unique_name)["provenance"]
    assert result["bytes_uploaded"] > 0 and len(provenance["artifact"]["sha256"]) == 64
    x = sample(2)
    out = get_deploy_client("triton").predict(unique_name, {"features": x})["predictions"]["scores"]
    np.testing.assert_allclose(np.asarray(out), Scorer(seed=8)(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_grpc_protocol_for_control_and_inference(stack, unique_name, tmp_path):
    model = Scorer(seed=13)
    uri = log_onnx(model, tmp_path)
    grpc_urls = ",".join(f"grpc://{p.grpc_url}" for p in stack.tritons)
    client = get_deploy_client(f"triton:/{grpc_urls}")

    result = client.create_deployment(unique_name, uri, config={**CPU, "protocol": "grpc"})

    assert result["version"] == 1
    x = sample(4, seed=14)
    out = np.asarray(client.predict(unique_name, x)["predictions"]["scores"])
    np.testing.assert_allclose(out, model(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)
    client.delete_deployment(unique_name, config={"protocol": "grpc"})


def test_onnx_external_data_is_published_with_the_model(stack, unique_name, tmp_path):
    """mlflow.onnx saves weights over 1 KB to a .data file beside model.onnx by default."""
    import mlflow
    import onnx
    from mlflow.models import infer_signature
    from models import export_onnx

    class Wide(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(5)
            self.hidden, self.out = torch.nn.Linear(4, 512), torch.nn.Linear(512, 3)

        def forward(self, features):
            return self.out(torch.relu(self.hidden(features)))

    model = Wide().eval()
    x = sample(3, seed=15)
    expected = model(torch.from_numpy(x)).detach().numpy()
    signature = infer_signature({"features": x}, {"scores": expected})
    with mlflow.start_run():
        info = mlflow.onnx.log_model(onnx.load(str(export_onnx(model, tmp_path / "w.onnx"))),
                                     name="model", signature=signature)  # fmt: skip
    client = get_deploy_client("triton")

    result = client.create_deployment(unique_name, info.model_uri, config=CPU)

    provenance = client.get_deployment(unique_name)["provenance"]
    [external] = provenance["external_data"]
    assert external["file"].endswith(".data") and external["size"] > 8000
    assert result["bytes_uploaded"] == 0  # MLflow artifacts are on the same S3: copied server-side
    out = np.asarray(client.predict(unique_name, {"features": x})["predictions"]["scores"])
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    again = client.update_deployment(unique_name, info.model_uri, config=CPU)
    assert again["changed"] is False

    saved = tmp_path / "saved"  # a local MLflow model: downloaded, hashed, uploaded with its .data
    mlflow.onnx.save_model(onnx.load(str(tmp_path / "w.onnx")), str(saved), signature=signature)
    local = client.update_deployment(unique_name, str(saved), config=CPU)
    assert local["version"] == 2 and local["bytes_uploaded"] > 8000
    out = np.asarray(client.predict(unique_name, {"features": x})["predictions"]["scores"])
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
