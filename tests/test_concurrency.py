"""Concurrent publishes of different models do not interfere.

Eight threads create eight deployments at once (download path: local model directories),
then eight threads update them at once to registered versions (server-side copy path).
Every deployment must end up serving its own model, with provenance naming its own source.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import mlflow.onnx
import numpy as np
import onnx
import pytest
import torch
from mlflow.deployments import get_deploy_client
from mlflow.models import infer_signature
from models import Scorer, export_onnx, sample

from mlflow_triton.fleet.server import TritonServer

pytestmark = pytest.mark.integration
CPU = {"instance_kind": "cpu"}
THREADS = 8


def signature_for(model: torch.nn.Module):
    x = sample()
    return infer_signature({"features": x}, {"scores": model(torch.from_numpy(x)).detach().numpy()})


def onnx_model(model: torch.nn.Module, tmp: Path) -> onnx.ModelProto:
    return onnx.load(str(export_onnx(model, tmp)))


def run_together(fn, count: int) -> list:
    """Run ``fn(i)`` for i < count on ``count`` threads released at the same instant."""
    start = threading.Barrier(count)

    def call(i: int):
        start.wait()
        return fn(i)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(call, range(count)))


def test_eight_threads_publish_eight_models(stack, unique_name, tmp_path):
    names = [f"{unique_name}-{i}" for i in range(THREADS)]
    first = [Scorer(seed=100 + i) for i in range(THREADS)]
    second = [Scorer(seed=200 + i) for i in range(THREADS)]
    local_uris = []
    for i, model in enumerate(first):
        path = tmp_path / f"local-{i}"
        mlflow.onnx.save_model(
            onnx_model(model, tmp_path / f"first-{i}.onnx"), str(path),
            signature=signature_for(model), pip_requirements=["onnx"],
        )  # fmt: skip
        local_uris.append(str(path))
    for i, model in enumerate(second):
        with mlflow.start_run():
            mlflow.onnx.log_model(
                onnx_model(model, tmp_path / f"second-{i}.onnx"), name="model",
                signature=signature_for(model), pip_requirements=["onnx"],
                registered_model_name=names[i],
            )  # fmt: skip
    registered_uris = [f"models:/{name}/1" for name in names]
    client = get_deploy_client("triton")

    created = run_together(lambda i: client.create_deployment(names[i], local_uris[i], config=CPU), THREADS)
    updated = run_together(lambda i: client.update_deployment(names[i], registered_uris[i], config=CPU), THREADS)

    assert [r["version"] for r in created] == [1] * THREADS
    assert [(r["version"], r["changed"]) for r in updated] == [(2, True)] * THREADS
    x = sample(4, seed=99)
    for i, name in enumerate(names):
        described = client.get_deployment(name)
        provenance = described["provenance"]
        assert described["serving_version"] == 2
        assert provenance["name"] == name and provenance["model_uri"] == registered_uris[i]
        assert (provenance["registered_model"], provenance["registered_version"]) == (name, "1")
        assert "etag" in provenance["artifact"]  # copied server-side from its own artifact
        assert all(s["versions"].get("2") == "READY" for s in described["servers"].values())
        expected = second[i](torch.from_numpy(x)).detach().numpy()
        for url in stack.triton_urls:
            with TritonServer(url) as triton:
                out = triton.infer(name, {"features": x}, {"features": "FP32"}, ["scores"])["scores"]
            np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5, err_msg=f"{name} on {url}")
    run_together(lambda i: client.delete_deployment(names[i]), THREADS)
