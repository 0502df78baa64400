"""lightning_callbacks without an MLflow server: export, verify, the two-flavor model, errors."""

from __future__ import annotations

import logging
import socket
import warnings
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pytest
import pytorch_lightning as pl
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader

import lightning_callbacks.export as export_mod
from examples.tiny_model import TinyRegressor, make_data
from lightning_callbacks import (
    ExportBestCheckpoint,
    ExportError,
    ExportLoggingError,
    ExportVerificationError,
)
from lightning_callbacks.export import (
    check_batch_first,
    check_dynamic_batch,
    export_mode,
    export_onnx,
    export_torchscript,
)
from lightning_callbacks.log import _DualFlavor, build_signature, pip_requirements
from lightning_callbacks.model_io import ForwardIO, IONames, bind_example
from lightning_callbacks.verify import compare, raise_on_failure, verify_exports


class TwoInTwoOut(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, z: torch.Tensor):
        return self.proj(x) + z[:, :3], torch.relu(x - z)


class DataDependent(pl.LightningModule):
    """Doubles its output when the batch mean exceeds 0.5: tracing bakes in one branch."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 2)
        self.example_input_array = torch.ones(4, 8)  # mean 1.0: the trace takes the `* 2` branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        if x.mean() > 0.5:
            y = y * 2
        return y

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Alternating(torch.nn.Module):
    """Python-side state: every call takes the other branch, so two traces disagree."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 2)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.lin(x) if self.calls % 2 else self.lin(x) + 1


class BatchReduction(torch.nn.Module):
    """Returns one row whatever the batch: cannot be served with a dynamic batch axis."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=0, keepdim=True)


def example_of(model: torch.nn.Module, sample=None) -> tuple[torch.Tensor, ...]:
    return bind_example(model, sample).tensors


def io_names(model, example, input_names=None, output_names=None) -> IONames:
    """The names the callback gives ``model`` for ``example`` (call inside export_mode)."""
    return IONames.resolve(ForwardIO.of(model, bind_example(model, example)), input_names, output_names)


def fit(model: pl.LightningModule, callbacks: list[Callback], tmp_path: Path, **trainer_kwargs):
    trainer_kwargs = {
        "max_epochs": 1, "limit_train_batches": 3, "limit_val_batches": 1, "logger": False,
        "enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu",
        "default_root_dir": tmp_path, **trainer_kwargs,
    }  # fmt: skip
    trainer = pl.Trainer(callbacks=callbacks, **trainer_kwargs)
    data = make_data(64)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        trainer.fit(model, DataLoader(data, batch_size=16), DataLoader(data, batch_size=32))
    return trainer


# --- export.py ------------------------------------------------------------------------------


def test_export_and_verify_two_inputs_two_outputs(tmp_path):
    model = TwoInTwoOut()
    example = example_of(model, (torch.randn(3, 4), torch.randn(3, 4)))
    with export_mode(model):
        names = io_names(model, example)
        ts, _ = export_torchscript(model, example, tmp_path / "model.pt")
        ox = export_onnx(model, example, tmp_path / "model.onnx", names, opset=17)
        paths = {"torchscript": ts, "onnx": ox}
        results = verify_exports(model, paths, example, names, batch_sizes=(1, 5))

    assert names == IONames(("x", "z"), ("output_0", "output_1"))  # forward(self, x, z)
    assert [(r.format, r.batch_size) for r in results] == [
        ("torchscript", 1), ("onnx", 1), ("torchscript", 5), ("onnx", 5)
    ]  # fmt: skip
    assert all(r.passed and r.max_abs_diff < 1e-5 for r in results)
    graph = onnx.load(str(ox)).graph
    assert [i.name for i in graph.input] == ["x", "z"]
    assert all(v.type.tensor_type.shape.dim[0].dim_param for v in (*graph.input, *graph.output))
    assert model.training  # restored


def test_export_restores_device_and_training_mode(tmp_path):
    model = TinyRegressor()
    model.train()
    with export_mode(model) as m:
        assert not m.training and not torch.is_grad_enabled()
    assert model.training and torch.is_grad_enabled()


def test_batch_one_example_still_exports_dynamic_batch(tmp_path):
    model = TinyRegressor()
    example = example_of(model, torch.randn(1, 8))
    with export_mode(model):
        names = io_names(model, example)
        path = export_onnx(model, example, tmp_path / "model.onnx", names)
        results = verify_exports(model, {"onnx": path}, example, names, batch_sizes=(1, 7))
    assert all(r.passed for r in results)


def test_reduction_over_the_batch_is_rejected(tmp_path):
    model = BatchReduction()
    example = example_of(model, torch.randn(3, 4))
    with export_mode(model), pytest.raises(ExportError, match="'output' has shape \\(1, 4\\)"):
        check_batch_first(model, example, io_names(model, example))


def test_fixed_batch_axis_in_the_graph_is_rejected(tmp_path):
    model = TinyRegressor()
    example = example_of(model)
    names = IONames(("input",), ("output",))
    with export_mode(model):  # no dynamic_axes: the legacy exporter fixes axis 0 to 4
        torch.onnx.export(model, example, str(tmp_path / "m.onnx"), input_names=["input"],
                          output_names=["output"], dynamo=False)  # fmt: skip
    with pytest.raises(ExportError, match="'input' has a fixed axis 0 of size 4"):
        check_dynamic_batch(tmp_path / "m.onnx", names)


def test_check_dynamic_batch_names_missing_tensor(tmp_path):
    model = TinyRegressor()
    example = example_of(model)
    with export_mode(model):
        path = export_onnx(model, example, tmp_path / "m.onnx", IONames(("input",), ("output",)))
    with pytest.raises(ExportError, match="'features' is missing"):
        check_dynamic_batch(path, IONames(("features",), ("output",)))


def test_large_models_use_external_data(tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "EXTERNAL_DATA_THRESHOLD_BYTES", 0)
    model = TinyRegressor()
    example = example_of(model)
    with export_mode(model):
        names = io_names(model, example)
        path = export_onnx(model, example, tmp_path / "model.onnx", names)
        results = verify_exports(model, {"onnx": path}, example, names)
    assert (tmp_path / "model.onnx.data").stat().st_size > 1000
    assert export_mod.onnx_uses_external_data(path)
    assert all(r.passed for r in results)


def test_no_example_input_is_a_value_error():
    model = TinyRegressor()
    model.example_input_array = None
    with pytest.raises(ValueError, match="example_input_array"):
        example_of(model)
    with pytest.raises(ValueError, match="disagree on the batch size"):
        example_of(model, (torch.zeros(2, 8), torch.zeros(3, 8)))
    with pytest.raises(ValueError, match="batch axis"):
        example_of(model, torch.tensor(1.0))


def test_untraceable_model_suggests_script(tmp_path):
    model = Alternating()
    example = example_of(model, torch.randn(2, 8))
    with export_mode(model), pytest.raises(ExportError, match='torchscript_method="script"'):
        export_torchscript(model, example, tmp_path / "model.pt")


def test_io_names_are_checked():
    model = TinyRegressor()
    example = example_of(model)
    assert io_names(model, example, ["features"], ["y"]) == IONames(("features",), ("y",))
    with pytest.raises(ValueError, match="1 output"):
        io_names(model, example, output_names=["a", "b"])
    with pytest.raises(ValueError, match="must differ"):
        io_names(model, example, ["x"], ["x"])


# --- verify.py ------------------------------------------------------------------------------


def test_data_dependent_trace_fails_verification_with_documented_message(tmp_path):
    model = DataDependent()
    example = example_of(model)
    with export_mode(model):
        names = io_names(model, example)
        with pytest.warns(RuntimeWarning, match="Python boolean"):
            ts, _ = export_torchscript(model, example, tmp_path / "model.pt")
        results = verify_exports(model, {"torchscript": ts}, example, names)
    batch1, batch7 = results
    assert batch1.passed and not batch7.passed
    with pytest.raises(ExportVerificationError) as info:
        raise_on_failure(results, rtol=1e-3, atol=1e-5)
    message = str(info.value)
    assert "torchscript export does not match eager at batch size 7" in message
    assert "output 'output' (index 0)" in message
    assert f"max abs diff {batch7.max_abs_diff:.3g} > tolerance" in message
    assert "atol=1e-05 + rtol=0.001" in message and 'torchscript_method="script"' in message
    assert info.value.results == [batch7]


def test_scripting_keeps_control_flow_in_both_formats(tmp_path):
    cb = ExportBestCheckpoint(torchscript_method="script", output_dir=tmp_path, log_to_mlflow=False)
    with pytest.warns(RuntimeWarning, match="exporting the current weights"):
        paths = cb.export(DataDependent())
    assert set(paths) == {"torchscript", "onnx"}
    assert all(r.passed for r in cb.verification) and len(cb.verification) == 4
    assert "If" in {n.op_type for n in onnx.load(str(paths["onnx"])).graph.node}


@settings(max_examples=40, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 3)),
    scale=st.floats(1e-3, 1e3),
    bump=st.floats(0.0, 10.0),
)
def test_compare_reports_worst_element(shape, scale, bump):
    rng = np.random.default_rng(0)
    want = (rng.normal(size=shape) * scale).astype(np.float32)
    got = want.copy()
    got.flat[-1] += np.float32(bump)
    result = compare("onnx", shape[0], [want], [got], ["y"], rtol=1e-3, atol=1e-5)
    diff = float(abs(np.float64(got.flat[-1]) - np.float64(want.flat[-1])))
    assert result.max_abs_diff == pytest.approx(diff, abs=1e-6)
    assert result.passed == bool(np.allclose(got, want, rtol=1e-3, atol=1e-5))


def test_compare_shape_and_nan():
    want = np.zeros((2, 3), np.float32)
    assert not compare("onnx", 2, [want], [np.zeros((2, 2))], ["y"], 1e-3, 1e-5).passed
    nan = np.full((2, 3), np.nan, np.float32)
    assert compare("onnx", 2, [nan], [nan.copy()], ["y"], 1e-3, 1e-5).passed
    assert not compare("onnx", 2, [want], [nan], ["y"], 1e-3, 1e-5).passed


# --- log.py (local model directory, no server) ------------------------------------------------


@pytest.mark.filterwarnings("ignore:'torch.load' received a zip file")
def test_one_model_directory_holds_both_flavors(tmp_path, monkeypatch):
    from mlflow.models import Model

    monkeypatch.setattr(export_mod, "EXTERNAL_DATA_THRESHOLD_BYTES", 0)  # exercise external data
    model = TinyRegressor()
    example = example_of(model)
    with export_mode(model):
        names = io_names(model, example)
        paths = {
            "torchscript": export_torchscript(model, example, tmp_path / "x" / "model.pt")[0],
            "onnx": export_onnx(model, example, tmp_path / "x" / "model.onnx", names),
        }
        expected = model(example[0]).numpy()
    signature, input_example = build_signature(names, [example[0].numpy()], [expected])
    target = tmp_path / "mlmodel"
    mlflow_model = Model()
    _DualFlavor().save_model(
        str(target), mlflow_model, paths=paths, signature=signature, input_example=input_example,
        requirements=pip_requirements(["onnx", "torchscript"]),
    )  # fmt: skip

    loaded = Model.load(str(target))
    assert set(loaded.flavors) == {"onnx", "pytorch", "python_function"}
    assert loaded.flavors["python_function"]["loader_module"] == "mlflow.onnx"
    assert (target / "model.onnx.data").exists() and (target / "data" / "model.pth").exists()
    assert loaded.signature.inputs.input_names() == ["x"]  # TinyRegressor.forward(self, x)
    assert loaded.signature.outputs.input_names() == ["output"]
    assert loaded.signature.inputs.inputs[0].shape == (-1, 8)
    requirements = (target / "requirements.txt").read_text()
    assert all(p in requirements for p in ("onnxruntime==", "torch==", "mlflow=="))
    scripted = mlflow.pytorch.load_model(str(target))
    assert isinstance(scripted, torch.jit.ScriptModule)
    got = scripted(example[0]).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert isinstance(mlflow.onnx.load_model(str(target)), onnx.ModelProto)
    pyfunc = mlflow.pyfunc.load_model(str(target))
    out = pyfunc.predict({"x": example[0].numpy()})
    np.testing.assert_allclose(out["output"], expected, rtol=1e-4, atol=1e-5)


# --- the callback without MLflow ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"formats": ("tflite",)},
            r"`formats` must be a non-empty subset of \('torchscript', 'onnx'\), got \('tflite',\)",
        ),
        ({"formats": ()}, "non-empty subset"),
        ({"export_on": "epoch"}, r"`export_on` must be one of \('fit_end', 'best'\), got 'epoch'"),
        ({"torchscript_method": "compile"}, r"one of \('trace', 'script'\), got 'compile'"),
        ({"verify_batch_size": 1}, "`verify_batch_size` must be an int >= 2"),
        ({"rtol": -1.0}, "`rtol` must be a number >= 0"),
        ({"alias": "champion"}, "needs `registered_model_name`"),
        ({"registered_model_name": "m", "alias": "latest"}, "'latest' is reserved"),
        ({"registered_model_name": "m", "alias": "V3"}, "'V3' is reserved"),
        ({"opset": 3}, "`opset` must be None or an ONNX opset"),
        ({"artifact_name": "a/b"}, "`artifact_name`"),
        ({"input_names": "tokens"}, r"`input_names` must be a list of unique non-empty names, e.g. \['tokens'\], got 'tokens'"),
        ({"output_names": ["a", "a"]}, r"`output_names` must be a list of unique non-empty names.*\('a', 'a'\)"),
    ],
)  # fmt: skip
def test_invalid_arguments(kwargs, match):
    with pytest.raises(MisconfigurationException, match=match):
        ExportBestCheckpoint(**kwargs)


def test_setup_requires_a_model_checkpoint(tmp_path):
    cb = ExportBestCheckpoint(log_to_mlflow=False)
    with pytest.raises(MisconfigurationException, match="(?s)no ModelCheckpoint.*HINT"):
        fit(TinyRegressor(), [cb], tmp_path, enable_checkpointing=False)


def test_fit_without_mlflow_exports_best_weights(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss")
    cb = ExportBestCheckpoint(output_dir=tmp_path / "out", log_to_mlflow=False)
    model = TinyRegressor()
    fit(model, [checkpoint, cb], tmp_path, max_epochs=2)

    assert cb.last_exported_checkpoint == checkpoint.best_model_path
    assert cb.last_exported_score == pytest.approx(float(checkpoint.best_model_score))
    stem = Path(checkpoint.best_model_path).stem
    assert cb.exported_paths["onnx"].parent == tmp_path / "out" / stem
    best = TinyRegressor()
    best.load_state_dict(torch.load(checkpoint.best_model_path, weights_only=False)["state_dict"])
    best.eval()
    x = torch.randn(3, 8)
    scripted = torch.jit.load(str(cb.exported_paths["torchscript"]))
    torch.testing.assert_close(scripted(x), best(x).detach())
    state = cb.state_dict()
    restored = ExportBestCheckpoint(log_to_mlflow=False)
    restored.load_state_dict({"last_exported_checkpoint": state["last_exported_checkpoint"]})
    assert restored.last_exported_checkpoint == checkpoint.best_model_path
    assert restored.run_id is None
    key = "ExportBestCheckpoint{'artifact_name': 'model', 'registered_model_name': None}"
    assert cb.state_key == key


def test_no_checkpoint_falls_back_to_current_weights(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=5)  # never saves
    cb = ExportBestCheckpoint(output_dir=tmp_path / "out", log_to_mlflow=False)
    with pytest.warns(RuntimeWarning, match="exporting the current weights"):
        fit(TinyRegressor(), [checkpoint, cb], tmp_path)
    assert cb.last_exported_checkpoint == ""
    assert cb.exported_paths["onnx"].parent.name == "current-weights"


class DeleteCheckpoints(Callback):
    def on_train_end(self, trainer, pl_module):
        for path in Path(trainer.checkpoint_callback.dirpath).glob("*.ckpt"):
            path.unlink()


def test_missing_checkpoint_file_is_a_clear_error(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss")
    cb = ExportBestCheckpoint(output_dir=tmp_path / "out", log_to_mlflow=False)
    match = r"best checkpoint .*epoch=0-step=3.ckpt no longer exists"
    with pytest.raises(FileNotFoundError, match=match):
        fit(TinyRegressor(), [checkpoint, DeleteCheckpoints(), cb], tmp_path)


def test_fast_dev_run_exports_nothing(tmp_path):
    cb = ExportBestCheckpoint(output_dir=tmp_path / "out", log_to_mlflow=False)
    fit(TinyRegressor(), [cb], tmp_path, fast_dev_run=True)
    assert cb.exported_paths == {} and not (tmp_path / "out").exists()


def test_mlflow_unreachable_keeps_files_and_prints_path(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as sock:  # a loopback port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss")
    cb = ExportBestCheckpoint(
        output_dir=tmp_path / "out", tracking_uri=f"http://127.0.0.1:{port}",
        registered_model_name="never", alias="a",
    )  # fmt: skip
    with caplog.at_level(logging.ERROR, logger="lightning_callbacks"), pytest.raises(
        ExportLoggingError, match=f"127.0.0.1:{port}.*unreachable"
    ) as info:
        fit(TinyRegressor(), [checkpoint, cb], tmp_path)

    onnx_path = cb.exported_paths["onnx"]
    assert onnx_path.is_file() and cb.exported_paths["torchscript"].is_file()
    assert str(onnx_path) in str(info.value) and str(onnx_path) in caplog.text
    assert info.value.paths == cb.exported_paths
    assert cb.model_uri is None and cb.registered_version is None


# --- issue 11: dynamic axes, precision, both Lightning packages, credentials -------------------


class Tagger(torch.nn.Module):
    """tokens [batch, seq] -> scores [batch, seq, 2]."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(16, 4)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(tokens)))


def test_dynamic_sequence_axis_is_exported_verified_at_two_lengths_and_marked_in_the_signature(tmp_path):
    model = Tagger()
    example = example_of(model, torch.randint(0, 16, (3, 5)))
    axes_given = {"tokens": {1: "seq"}, "scores": {1: "seq"}}
    with export_mode(model):
        names = io_names(model, example, ["tokens"], ["scores"])
        axes = export_mod.resolve_dynamic_axes(names, example, [model(*example)], axes_given)
        path = export_onnx(model, example, tmp_path / "model.onnx", names, dynamic_axes=axes_given)
        results = verify_exports(model, {"onnx": path}, example, names, dynamic_axes=axes)
        outputs = [model(*example).numpy()]
    assert axes == {"tokens": {0: "batch", 1: "seq"}, "scores": {0: "batch", 1: "seq"}}
    graph = onnx.load(str(path)).graph
    assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim] == ["batch", "seq"]
    assert graph.output[0].type.tensor_type.shape.dim[1].dim_param == "seq"
    assert [r.input_shapes for r in results] == [((1, 5),), ((7, 8),)]
    assert all(r.passed for r in results)
    signature, _ = build_signature(names, [example[0].numpy()], outputs, axes)
    assert signature.inputs.inputs[0].shape == (-1, -1)
    assert signature.outputs.inputs[0].shape == (-1, -1, 2)
    default, _ = build_signature(names, [example[0].numpy()], outputs)
    assert default.inputs.inputs[0].shape == (-1, 5)  # the default stays batch only


def test_a_declared_dynamic_axis_that_came_out_fixed_is_rejected(tmp_path):
    model = Tagger()
    example = example_of(model, torch.randint(0, 16, (3, 5)))
    names = IONames(("tokens",), ("scores",))
    with export_mode(model):  # only the batch is dynamic in the file
        export_onnx(model, example, tmp_path / "m.onnx", names)
    axes = {"tokens": {0: "batch", 1: "seq"}, "scores": {0: "batch"}}
    with pytest.raises(ExportError, match="'tokens' has a fixed axis 1 of size 5, declared dynamic"):
        check_dynamic_batch(tmp_path / "m.onnx", names, axes)


@pytest.mark.parametrize(
    ("axes", "match"),
    [
        ({"token": {1: "seq"}}, "names 'token', which is not an input or output"),
        ({"tokens": {2: "seq"}}, "'tokens' has rank 2"),
        ({"tokens": {1: ""}}, "must be a non-empty name"),
        ({"tokens": [1]}, "must map axis numbers to names"),
    ],
)
def test_bad_dynamic_axes_are_named(axes, match):
    model = Tagger()
    example = example_of(model, torch.randint(0, 16, (3, 5)))
    names = IONames(("tokens",), ("scores",))
    with pytest.raises(ValueError, match=match):
        export_mod.resolve_dynamic_axes(names, example, [model(*example)], axes)


def test_fp16_export_is_verified_against_fp32_eager_with_fp16_dtypes(tmp_path):
    from lightning_callbacks.precision import DEFAULT_TOLERANCES

    model = TinyRegressor()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cb = ExportBestCheckpoint(precision="fp16", output_dir=tmp_path, log_to_mlflow=False)
    assert (cb.rtol, cb.atol) == DEFAULT_TOLERANCES["fp16"] == (1e-2, 1e-3)
    with pytest.warns(RuntimeWarning, match="exporting the current weights"):
        paths = cb.export(model)
    assert all(r.passed for r in cb.verification) and len(cb.verification) == 4
    assert max(r.max_abs_diff for r in cb.verification) > 1e-6  # really half precision
    graph = onnx.load(str(paths["onnx"])).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    scripted = torch.jit.load(str(paths["torchscript"]))
    assert scripted(torch.randn(2, 8, dtype=torch.float16)).dtype == torch.float16
    for key, value in model.state_dict().items():  # fp32 weights are restored exactly
        assert value.dtype == torch.float32 and torch.equal(value, before[key])
    tight = ExportBestCheckpoint(precision="fp16", rtol=0, atol=1e-7, output_dir=tmp_path / "t", log_to_mlflow=False)
    with pytest.raises(ExportVerificationError), pytest.warns(RuntimeWarning):
        tight.export(model)  # overridable tolerances, and they are applied


def test_bf16_onnx_is_refused_with_a_hint():
    with pytest.raises(MisconfigurationException, match='formats=\\("torchscript",\\) for bf16'):
        ExportBestCheckpoint(precision="bf16")
    ExportBestCheckpoint(precision="bf16", formats=("torchscript",))


@pytest.mark.parametrize("package", ["lightning", "pytorch_lightning"])
def test_each_lightning_package_gets_its_own_callback_class(package):
    import lightning_callbacks
    from lightning_callbacks.packages import lightning_package

    classes = {
        "lightning": lightning_callbacks.LightningExportBestCheckpoint,
        "pytorch_lightning": lightning_callbacks.PytorchLightningExportBestCheckpoint,
    }
    lightning = lightning_package(package)
    cb = classes[package](registered_model_name="m")
    assert isinstance(cb, lightning.Callback)
    other = lightning_package("pytorch_lightning" if package == "lightning" else "lightning")
    assert not isinstance(cb, other.Callback)
    with pytest.raises(lightning.MisconfigurationException, match="`export_on` must be one of"):
        classes[package](export_on="epoch")
    # a checkpoint written under one package resumes under the other
    assert cb.state_key == classes["lightning"](registered_model_name="m").state_key


def test_mask_credentials():
    from lightning_callbacks import mask_credentials

    assert mask_credentials("see https://alice:s3cret@host:5000/x?a=1") == "see https://***@host:5000/x?a=1"
    assert mask_credentials("databricks://tok@profile") == "databricks://***@profile"
    assert mask_credentials("http://h/api?token=abc&x=1&sig=zz") == "http://h/api?token=***&x=1&sig=***"
    assert mask_credentials("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_dynamo_exporter_keeps_the_sequence_axis_and_is_recorded(tmp_path, monkeypatch):
    from lightning_callbacks.onnx_exporters import recorded_exporter

    monkeypatch.setattr(export_mod, "EXTERNAL_DATA_THRESHOLD_BYTES", 0)  # the >2 GiB path
    model = Tagger()
    example = example_of(model, torch.randint(0, 16, (3, 5)))
    axes_given = {"tokens": {1: "seq"}, "scores": {1: "seq"}}
    with export_mode(model):
        names = io_names(model, example, ["tokens"], ["scores"])
        axes = export_mod.resolve_dynamic_axes(names, example, [model(*example)], axes_given)
        path = export_onnx(model, example, tmp_path / "model.onnx", names, dynamic_axes=axes_given, exporter="dynamo")
        results = verify_exports(model, {"onnx": path}, example, names, dynamic_axes=axes)
    assert recorded_exporter(path) == "dynamo"
    assert export_mod.onnx_uses_external_data(path) and (tmp_path / "model.onnx.data").is_file()
    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, True]
    assert [r.input_shapes for r in results] == [((1, 5),), ((7, 8),)] and all(r.passed for r in results)


def test_auto_exporter_falls_back_to_torchscript_with_a_logged_reason(tmp_path, caplog):
    from lightning_callbacks.onnx_exporters import recorded_exporter

    caplog.set_level(logging.WARNING, "lightning_callbacks.onnx_exporters")
    cb = ExportBestCheckpoint(
        torchscript_method="script", onnx_exporter="auto", output_dir=tmp_path, log_to_mlflow=False
    )  # a ScriptModule: torch.export refuses it
    with pytest.warns(RuntimeWarning, match="current weights"):
        paths = cb.export(DataDependent())
    assert recorded_exporter(paths["onnx"]) == "torchscript"
    assert all(r.passed for r in cb.verification)
    (record,) = [r for r in caplog.records if "falling back to the TorchScript exporter" in r.getMessage()]
    assert "TypeError: a ScriptModule cannot be exported by torch.export" in record.getMessage()
