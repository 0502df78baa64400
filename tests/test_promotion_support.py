"""Helpers shared by the promotion, webhook and CLI tests (no tests here).

Logging an ONNX model takes seconds; registering an already logged one takes ~0.2 s. Each
Scorer seed is therefore logged once per tracking server and registered as often as needed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from models import Scorer, log_onnx, sample

from mlflow_triton.plugin.client import TritonDeploymentClient

CPU = {"instance_kind": "cpu"}
ALIAS = "production"
_LOGGED: dict[tuple[str, int], str] = {}


def logged_model(seed: int) -> str:
    """The URI of a Scorer(seed) logged as ONNX on the current tracking server."""
    key = (mlflow.get_tracking_uri(), seed)
    if key not in _LOGGED:
        _LOGGED[key] = log_onnx(Scorer(seed=seed), Path(tempfile.mkdtemp(prefix=f"scorer{seed}-")))
    return _LOGGED[key]


def register(name: str, *seeds: int) -> list[Scorer]:
    """Register one version of ``name`` per seed (versions 1, 2, ...); returns the models."""
    for seed in seeds:
        mlflow.register_model(logged_model(seed), name)
    return [Scorer(seed=seed) for seed in seeds]


def local(model: Scorer, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def assert_every_replica_serves(urls: list[str], name: str, model: Scorer) -> None:
    x = sample(4, seed=31)
    for url in urls:
        out = TritonDeploymentClient(f"triton:/{url}").predict(name, {"features": x})["predictions"]["scores"]
        np.testing.assert_allclose(np.asarray(out), local(model, x), rtol=1e-4, atol=1e-5, err_msg=url)


@pytest.fixture
def deployment(stack, unique_name):
    """A fresh deployment (and registered model) name; unloaded and deleted afterwards."""
    yield unique_name
    from mlflow_triton.rollout.publisher import ModelPublisher
    from mlflow_triton.settings.deployment import DeploymentConfig

    ModelPublisher.for_config(DeploymentConfig.from_dict(CPU), stack.triton_urls).delete(unique_name)
