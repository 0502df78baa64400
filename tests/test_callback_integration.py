"""ExportBestCheckpoint with a real Trainer and the real MLflow tracking server of the stack."""

from __future__ import annotations

import warnings
from pathlib import Path

import mlflow
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from mlflow import MlflowClient
from mlflow.models import Model
from pytorch_lightning.callbacks import ModelCheckpoint
from test_callback_unit import DataDependent, fit

from examples.tiny_model import TinyRegressor, train
from lightning_callbacks import ExportBestCheckpoint, ExportVerificationError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:'torch.load' received a zip file"),
]


def best_eager(checkpoint_path: str) -> TinyRegressor:
    model = TinyRegressor()
    model.load_state_dict(torch.load(checkpoint_path, weights_only=False)["state_dict"])
    return model.eval()


def batches(seed: int = 7) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, 8)).astype(np.float32) for n in (1, 7)]


def test_fit_logs_one_registered_model_with_both_flavors(stack, unique_name, tmp_path):
    export = train(stack.tracking_uri, unique_name, "champion", max_epochs=2, workdir=tmp_path)

    client = MlflowClient(stack.tracking_uri)
    version = client.get_model_version_by_alias(unique_name, "champion")
    assert version.version == export.registered_version.version == "1"
    assert version.run_id == export.run_id
    run = client.get_run(export.run_id)
    assert "val_loss" in run.data.metrics  # the MLFlowLogger's run holds the model too
    checkpoint = sorted((tmp_path / "checkpoints").glob("*.ckpt"))
    assert run.data.tags["best_model_path"] == export.last_exported_checkpoint
    assert Path(export.last_exported_checkpoint) in checkpoint
    score = float(run.data.tags["best_model_score"])
    assert score == pytest.approx(export.last_exported_score, rel=1e-5)
    assert run.data.tags["export_verification"] == "passed"
    assert run.data.tags["export_verification_onnx"] == "passed"
    assert run.data.metrics["export_verify_onnx_batch7_max_abs_diff"] < 1e-5
    assert run.data.metrics["export_verify_torchscript_batch1_max_abs_diff"] < 1e-5

    uri = f"models:/{unique_name}@champion"
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "download")))
    mlmodel = Model.load(str(local))
    assert {"onnx", "pytorch", "python_function"} <= set(mlmodel.flavors)
    assert mlmodel.flavors["onnx"]["data"] == "model.onnx"
    assert mlmodel.signature.inputs.input_names() == ["x"]  # TinyRegressor.forward(self, x)
    assert mlmodel.signature.outputs.input_names() == ["output"]
    assert mlmodel.saved_input_example_info is not None
    assert mlmodel.load_input_example(str(local))["x"].shape == (4, 8)

    eager = best_eager(export.last_exported_checkpoint)
    session = onnxruntime.InferenceSession(
        str(local / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    scripted = torch.jit.load(str(local / mlmodel.flavors["pytorch"]["model_data"] / "model.pth"))
    onnx_flavor = mlflow.onnx.load_model(uri)
    pytorch_flavor = mlflow.pytorch.load_model(uri)
    assert isinstance(onnx_flavor, onnx.ModelProto)
    assert isinstance(pytorch_flavor, torch.jit.ScriptModule)
    for x in batches():
        expected = eager(torch.from_numpy(x)).detach().numpy()
        (from_onnx,) = session.run(["output"], {"x": x})
        np.testing.assert_allclose(from_onnx, expected, rtol=1e-4, atol=1e-5)
        for module in (scripted, pytorch_flavor):
            got = module(torch.from_numpy(x)).detach().numpy()
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_broken_trace_fails_verification_and_registers_nothing(stack, unique_name, tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss")
    export = ExportBestCheckpoint(
        formats=("torchscript", "onnx"), registered_model_name=unique_name,
        output_dir=tmp_path / "out",
    )  # fmt: skip
    with pytest.raises(ExportVerificationError) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fit(DataDependent(), [checkpoint, export], tmp_path)

    message = str(info.value)
    assert (
        "torchscript export does not match eager at batch size 7: output 'output' (index 0)"
        in message
    )
    assert "onnx export does not match eager at batch size 7" in message
    assert "batch size 1" not in message  # the example's own branch is reproduced
    assert "> tolerance" in message and 'HINT: a traced export' in message
    client = MlflowClient(stack.tracking_uri)
    run = client.get_run(export.run_id)
    assert run.info.status == "FINISHED"  # the run the callback started is closed
    assert run.data.tags["export_verification"] == "failed"
    assert run.data.tags["export_verification_torchscript"] == "failed"
    assert run.data.metrics["export_verify_onnx_batch7_max_abs_diff"] > 1e-3
    assert client.search_model_versions(f"name='{unique_name}'") == []
    assert export.model_uri is None and export.exported_paths["onnx"].is_file()


def test_export_on_best_coexists_with_autolog(stack, unique_name, tmp_path):
    mlflow.pytorch.autolog(log_models=False, checkpoint=False, silent=True)
    try:
        export = train(
            None, unique_name, "newest", max_epochs=3, workdir=tmp_path, export_on="best",
            formats=("onnx",),
        )  # fmt: skip
    finally:
        mlflow.pytorch.autolog(disable=True)

    client = MlflowClient(stack.tracking_uri)
    versions = client.search_model_versions(f"name='{unique_name}'")
    assert len(versions) >= 2  # every new best was exported while training
    assert {v.run_id for v in versions} == {export.run_id}
    run = client.get_run(export.run_id)
    assert "train_loss" in run.data.metrics  # autolog's run
    latest = client.get_model_version_by_alias(unique_name, "newest")
    assert latest.version == export.registered_version.version == str(len(versions))
    best = sorted((tmp_path / "checkpoints").glob("*.ckpt"))[-1]
    assert run.data.tags["best_model_path"] == export.last_exported_checkpoint == str(best)
    assert set(Model.load(f"models:/{unique_name}@newest").flavors) == {"onnx", "python_function"}
    assert export.state_dict()["registered_version"] == latest.version
