"""One model, one config: the copy path and the download path generate the same config.pbtxt.

A model whose MLflow artifacts sit on the repository's S3 endpoint is copied server-side
(nothing downloaded or uploaded); the same MLflow model from a local folder is hashed and
uploaded. Both must read the tensors from the same place (the ONNX graph, with the MLflow
signature's names) so that Triton sees byte-identical configs.

The model here is text-like: ``tokens`` int64 (batch, seq) with a dynamic sequence axis in the
graph, while the MLflow signature, inferred from a fixed-length example, says (-1, 5). The
config must follow the graph (dims ``[-1]``), or Triton would refuse other lengths.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import tritonclient.http as httpclient
from mlflow import MlflowClient
from mlflow.deployments import get_deploy_client
from mlflow.models import infer_signature
from test_promotion_support import assert_every_replica_serves, local, register
from tritonclient.grpc import model_config_pb2 as mc

from mlflow_triton.repository.stores import open_store
from mlflow_triton.triton_config.model_config import parse_pbtxt

pytestmark = pytest.mark.integration
CPU = {"instance_kind": "cpu"}
EXAMPLE_SEQ = 5
SERVED_SEQS = (3, 11)  # neither is the example's length


class BagOfTokens(torch.nn.Module):
    """tokens (batch, seq) int64 -> scores (batch, 3): embedding, mean over seq, linear."""

    def __init__(self, vocab: int, dim: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.vocab = vocab
        self.embed = torch.nn.Embedding(vocab, dim)
        self.head = torch.nn.Linear(dim, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens).mean(dim=1))


def tokens(model: BagOfTokens, batch: int, seq: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, model.vocab, size=(batch, seq), dtype=np.int64)


def log_text_model(model: BagOfTokens, tmp: Path, registered_name: str, external: bool) -> None:
    model.eval()
    path = tmp / "text.onnx"
    torch.onnx.export(
        model, (torch.from_numpy(tokens(model, 2, EXAMPLE_SEQ, 0)),), str(path), dynamo=False,
        input_names=["tokens"], output_names=["scores"],
        dynamic_axes={"tokens": {0: "batch", 1: "seq"}, "scores": {0: "batch"}},
    )  # fmt: skip
    x = tokens(model, 4, EXAMPLE_SEQ, 1)  # a fixed sequence length: the signature says (-1, 5)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy()
    with mlflow.start_run():
        mlflow.onnx.log_model(
            onnx.load(str(path)), name="model", signature=infer_signature({"tokens": x}, {"scores": y}),
            input_example={"tokens": x}, registered_model_name=registered_name,
            save_as_external_data=external,
        )  # fmt: skip


def triton_host(url: str) -> str:
    return url.split("://", 1)[-1]


def assert_serves_every_length(stack, name: str, model_file: Path) -> None:
    """Every replica answers both sequence lengths as onnxruntime does on the same file."""
    session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    for seq in SERVED_SEQS:
        x = np.random.default_rng(seq).integers(0, 50, size=(3, seq), dtype=np.int64)
        [expected] = session.run(["scores"], {"tokens": x})
        for url in stack.triton_urls:
            with httpclient.InferenceServerClient(triton_host(url)) as client:
                request = httpclient.InferInput("tokens", list(x.shape), "INT64")
                request.set_data_from_numpy(x)
                answer = client.infer(name, [request], outputs=[httpclient.InferRequestedOutput("scores")])
            got = answer.as_numpy("scores")
            assert got.shape == (3, 3), (url, seq, got.shape)
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=f"{url} seq={seq}")


def check_parity(stack, name: str, tmp_path: Path, external: bool) -> None:
    model = BagOfTokens(5000, 16, seed=3) if external else BagOfTokens(50, 8, seed=2)
    log_text_model(model, tmp_path, name, external)
    uri = f"models:/{name}/1"
    [signed] = mlflow.models.get_model_info(uri).signature.inputs.inputs
    assert tuple(signed.shape) == (-1, EXAMPLE_SEQ)  # the signature disagrees with the graph
    downloaded = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "downloaded")))
    model_file = downloaded / "model.onnx"
    has_data = sorted(p.name for p in downloaded.iterdir() if p.suffix == ".data")
    assert bool(has_data) == external, sorted(p.name for p in downloaded.iterdir())
    client = get_deploy_client("triton:/" + ",".join(stack.triton_urls))
    store = open_store(stack.model_repository, stack.s3_endpoint)
    config_key = f"{name}/config.pbtxt"

    try:
        # 1. The registry model: artifacts on the repository's S3 endpoint, copied server-side.
        copied = client.create_deployment(name, uri, config=CPU)
        assert copied["version"] == 1 and copied["bytes_uploaded"] == 0, copied
        provenance = client.get_deployment(name)["provenance"]
        assert provenance["source_uri"].startswith("s3://"), provenance["source_uri"]
        assert bool(provenance["external_data"]) == external, provenance["external_data"]
        first = store.read_bytes(config_key)
        config = parse_pbtxt(first)
        assert config.max_batch_size > 0
        assert [t.name for t in config.input] == ["tokens"]
        assert mc.DataType.Name(config.input[0].data_type) == "TYPE_INT64"
        # The graph's dynamic seq axis, not the signature's 5 (dims exclude the batch axis).
        assert list(config.input[0].dims) == [-1], first.decode()
        assert [t.name for t in config.output] == ["scores"] and list(config.output[0].dims) == [3]
        assert_serves_every_length(stack, name, model_file)

        # 2. The same MLflow model from a local folder: downloaded, hashed, uploaded.
        client.delete_deployment(name)
        assert store.read_bytes(config_key) is None
        uploaded = client.create_deployment(name, str(downloaded), config=CPU)
        assert uploaded["version"] == 1 and uploaded["bytes_uploaded"] > 0, uploaded
        provenance = client.get_deployment(name)["provenance"]
        assert len(provenance["artifact"]["sha256"]) == 64
        assert [e["file"] for e in provenance["external_data"]] == has_data
        second = store.read_bytes(config_key)
        assert second == first, f"copy path:\n{first.decode()}\ndownload path:\n{second.decode()}"
        assert_serves_every_length(stack, name, model_file)
    finally:
        client.delete_deployment(name)


def test_copy_and_download_paths_give_the_same_config(stack, unique_name, tmp_path):
    check_parity(stack, unique_name, tmp_path, external=False)


def test_external_data_model_gives_the_same_config_on_both_paths(stack, unique_name, tmp_path):
    check_parity(stack, unique_name, tmp_path, external=True)


def test_update_without_model_uri_republishes_the_resolved_version_not_the_alias(stack, unique_name):
    v1, v2 = register(unique_name, 71, 72)
    registry = MlflowClient()
    registry.set_registered_model_alias(unique_name, "champion", "1")
    client = get_deploy_client("triton:/" + ",".join(stack.triton_urls))
    store = open_store(stack.model_repository, stack.s3_endpoint)
    try:
        created = client.create_deployment(unique_name, f"models:/{unique_name}@champion", config=CPU)
        assert created["version"] == 1
        assert client.get_deployment(unique_name)["provenance"]["registered_version"] == "1"
        registry.set_registered_model_alias(unique_name, "champion", "2")

        updated = client.update_deployment(unique_name, config={**CPU, "max_batch_size": 16})

        assert updated["changed"] is True and updated["version"] == 2, updated
        described = client.get_deployment(unique_name)
        assert described["serving_version"] == 2
        assert described["provenance"]["registered_model"] == unique_name
        assert described["provenance"]["registered_version"] == "1"
        assert described["provenance"]["settings"]["max_batch_size"] == 16
        assert parse_pbtxt(store.read_bytes(f"{unique_name}/config.pbtxt")).max_batch_size == 16
        assert_every_replica_serves(stack.triton_urls, unique_name, v1)
        x = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
        assert not np.allclose(local(v1, x), local(v2, x))  # the answers tell the versions apart
    finally:
        client.delete_deployment(unique_name)
