"""Small real models, exported and logged to MLflow the way users do it."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.models import infer_signature


class Scorer(torch.nn.Module):
    """One input (batch, 4) → one output (batch, 3)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.layers = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class TwoHeads(torch.nn.Module):
    """Two inputs → two outputs, to exercise INPUT__i / OUTPUT__j mapping."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.proj = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, z: torch.Tensor):
        return self.proj(x) + z[:, :2], torch.relu(x - z)


def sample(batch: int = 5, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, 4)).astype(np.float32)


def export_onnx(model: torch.nn.Module, path: Path) -> Path:
    model.eval()
    torch.onnx.export(
        model, (torch.from_numpy(sample(2)),), str(path), input_names=["features"],
        output_names=["scores"], dynamic_axes={"features": {0: "batch"}, "scores": {0: "batch"}},
        dynamo=False,
    )  # fmt: skip
    return path


def log_onnx(model: torch.nn.Module, tmp: Path, registered_name: str | None = None) -> str:
    """Log ``model`` as ONNX with a named signature; returns the model URI."""
    import onnx

    path = export_onnx(model, tmp / "model.onnx")
    x = sample()
    y = model(torch.from_numpy(x)).detach().numpy()
    signature = infer_signature({"features": x}, {"scores": y})
    with mlflow.start_run():
        info = mlflow.onnx.log_model(
            onnx.load(str(path)), name="model", signature=signature,
            input_example={"features": x}, registered_model_name=registered_name,
        )  # fmt: skip
    return info.model_uri


def log_torchscript(model: torch.nn.Module, registered_name: str | None = None, two_inputs: bool = False) -> str:
    """Log ``torch.jit.trace(model)`` with the pytorch flavor (pickle: pt2 refuses ScriptModules)."""
    model.eval()
    x, z = sample(), sample(seed=2)
    if two_inputs:
        traced = torch.jit.trace(model, (torch.from_numpy(x), torch.from_numpy(z)))
        a, b = model(torch.from_numpy(x), torch.from_numpy(z))
        signature = infer_signature({"x": x, "z": z}, {"sum": a.detach().numpy(), "relu": b.detach().numpy()})
    else:
        traced = torch.jit.trace(model, (torch.from_numpy(x),))
        signature = infer_signature({"features": x}, {"scores": model(torch.from_numpy(x)).detach().numpy()})
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(
            traced, name="model", signature=signature, serialization_format="pickle",
            registered_model_name=registered_name,
        )  # fmt: skip
    return info.model_uri
