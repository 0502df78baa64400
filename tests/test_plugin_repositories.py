"""Repository variants and recovery: explicit S3 endpoint (MinIO-style), local directory,
and a model that Triton failed to load can still be updated and deleted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow.deployments import get_deploy_client
from models import Scorer, log_onnx, sample

from mlflow_triton.local.servers import make_backend_dir, tritonserver
from mlflow_triton.repository.stores import open_store

pytestmark = pytest.mark.integration
CPU = {"instance_kind": "cpu"}


def assert_serves(client, name, model, rows=3):
    x = sample(rows, seed=21)
    out = np.asarray(client.predict(name, {"features": x})["predictions"]["scores"])
    np.testing.assert_allclose(out, model(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_explicit_s3_endpoint_without_environment(stack, unique_name, tmp_path, monkeypatch):
    model = Scorer(seed=31)
    uri = log_onnx(model, tmp_path)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    client = get_deploy_client("triton")
    config = {**CPU, "model_repository": stack.model_repository, "s3_endpoint_url": stack.s3_endpoint}

    client.create_deployment(unique_name, uri, config=config)

    assert open_store(stack.model_repository, stack.s3_endpoint).read_bytes(f"{unique_name}/config.pbtxt")
    assert_serves(client, unique_name, model)
    client.delete_deployment(unique_name, config=config)


def test_model_that_failed_to_load_can_be_updated_and_deleted(stack, unique_name, tmp_path):
    store = open_store(stack.model_repository)
    store.write_bytes(f"{unique_name}/1/model.onnx", b"garbage, not onnx")
    store.write_bytes(
        f"{unique_name}/config.pbtxt",
        f'name: "{unique_name}" backend: "onnxruntime" max_batch_size: 4 '
        'input { name: "features" data_type: TYPE_FP32 dims: 4 } '
        'output { name: "scores" data_type: TYPE_FP32 dims: 3 } '
        "instance_group { kind: KIND_CPU }".encode(),
    )
    client = get_deploy_client("triton")
    from tritonclient.http import InferenceServerClient
    from tritonclient.utils import InferenceServerException

    triton = InferenceServerClient(stack.triton_urls[0].removeprefix("http://"))
    with pytest.raises(InferenceServerException):
        triton.load_model(unique_name)
    assert client.get_deployment(unique_name)["servers"][stack.triton_urls[0]]["versions"] == {"1": "UNAVAILABLE"}

    model = Scorer(seed=32)
    result = client.update_deployment(unique_name, log_onnx(model, tmp_path), config=CPU)

    assert result["version"] == 2
    assert_serves(client, unique_name, model)
    client.delete_deployment(unique_name)
    assert store.list_dir(f"{unique_name}/") == ([], [])


def test_local_directory_repository(tmp_path, stack, unique_name):
    repository = tmp_path / "repo"
    repository.mkdir()
    server = tritonserver(str(repository), make_backend_dir(tmp_path / "backends"),
                          tmp_path / "triton.log", env=dict(__import__("os").environ))  # fmt: skip
    server.start()
    try:
        model = Scorer(seed=33)
        client = get_deploy_client(f"triton:/{server.http_url}")
        config = {**CPU, "model_repository": str(repository)}
        client.create_deployment(unique_name, log_onnx(model, tmp_path), config=config)

        assert (repository / unique_name / "1" / "model.onnx").is_file()
        assert (repository / unique_name / "config.pbtxt").is_file()
        assert_serves(client, unique_name, model)
        client.delete_deployment(unique_name, config=config)
        assert not (repository / unique_name).exists()
    finally:
        server.stop()
