"""forward() as users write it, without a server: binding, default names, flat exports."""

from __future__ import annotations

from typing import Dict

import mlflow
import numpy as np
import onnx
import pytest
import torch
from mlflow_globals import tracking_uri

from lightning_callbacks import ExportBestCheckpoint, ExportError
from lightning_callbacks.dynamic_axes import infer_output_axes, resolve_dynamic_axes
from lightning_callbacks.export import export_mode
from lightning_callbacks.model_io import FlatForward, ForwardIO, IONames, OutputLayout, bind_example


def names_of(module: torch.nn.Module, sample, input_names=None, output_names=None) -> IONames:
    with export_mode(module):
        return IONames.resolve(ForwardIO.of(module, bind_example(module, sample)), input_names, output_names)


class Identity(torch.nn.Module):
    """Returns its first tensor argument, whatever forward()'s shape."""

    def forward(self, *args, **kwargs):
        return (list(args) + list(kwargs.values()))[0] * 1.0


def module_with(forward) -> torch.nn.Module:
    return type("M", (torch.nn.Module,), {"forward": forward})()


def test_a_tensor_binds_to_the_first_parameter_and_is_named_after_it():
    def forward(self, tokens):
        return tokens * 2

    bound = bind_example(module_with(forward), torch.ones(2, 3))
    assert (bound.arguments, bound.positional) == (("tokens",), 1)
    assert names_of(module_with(forward), torch.ones(2, 3)) == IONames(("tokens",), ("output",))


@pytest.mark.parametrize(
    ("forward", "sample_keys", "arguments", "positional"),
    [
        # a dict in another order than forward(): forward()'s order, all positional
        (lambda self, input_ids, attention_mask: input_ids, ("attention_mask", "input_ids"),
         ("input_ids", "attention_mask"), 2),
        # keyword-only parameters go by keyword
        (lambda self, x, *, mask: x, ("mask", "x"), ("x", "mask"), 1),
        # a parameter left at its default: the ones after it go by keyword
        (lambda self, x, bias=None, z=None: x, ("x", "z"), ("x", "z"), 1),
        # **kwargs: their keys
        (lambda self, x, **extra: x, ("x", "y"), ("x", "y"), 1),
    ],
)  # fmt: skip
def test_a_dict_binds_as_keyword_arguments_in_forward_order(forward, sample_keys, arguments, positional):
    module = module_with(forward)
    sample = {key: torch.full((2, 1), float(i)) for i, key in enumerate(sample_keys)}
    bound = bind_example(module, sample)
    assert (bound.arguments, bound.positional) == (arguments, positional)
    assert [t.item() for t in bound.tensors[0]] == [sample[arguments[0]][0].item()] * 2
    assert bound.call(module, bound.tensors) is not None  # calls forward the same way


def test_var_positional_names():
    tuple_of_three = (torch.ones(2, 1), torch.zeros(2, 1), torch.ones(2, 1))
    mixed = bind_example(module_with(lambda self, a, *rest: a), tuple_of_three)
    assert (mixed.arguments, mixed.positional) == (("a", "rest_0", "rest_1"), 3)
    only = bind_example(module_with(lambda self, *inputs: inputs[0]), tuple_of_three[:2])
    assert only.arguments == ("input_0", "input_1")  # no parameter names to use


@pytest.mark.parametrize(
    ("sample", "match"),
    [
        ({"nope": torch.ones(2, 1)}, r"does not fit M.forward\(x, \*\*extra\): missing .* 'x'"),
        ((torch.ones(2, 1), torch.ones(2, 1)), "does not fit"),
        (((torch.ones(2, 1),),), "nested tuples, dicts and non-tensor"),
        ({1: torch.ones(2, 1)}, "dict of tensors keyed by forward"),
        ({"x": torch.ones(2, 1), "y": torch.ones(3, 1)}, "disagree on the batch size"),
    ],
)
def test_examples_that_do_not_fit_forward_are_named(sample, match):
    with pytest.raises(ValueError, match=match):
        bind_example(module_with(lambda self, x, **extra: x), sample)


@pytest.mark.parametrize(
    ("output", "names"),
    [
        (torch.ones(2), ("output",)),
        ((torch.ones(2),), ("output_0",)),
        ([torch.ones(2), torch.ones(2)], ("output_0", "output_1")),
        ({"logits": torch.ones(2), "pooled": torch.ones(2)}, ("logits", "pooled")),
    ],
)
def test_default_output_names(output, names):
    assert OutputLayout.of(output).default_names() == names


@pytest.mark.parametrize(
    "output", [None, {"a": {"b": torch.ones(1)}}, (torch.ones(1), None), {}, {1: torch.ones(1)}]
)
def test_outputs_that_cannot_be_exported_are_refused(output):
    with pytest.raises(ValueError, match="dict of tensors with string keys"):
        OutputLayout.of(output)


def test_explicit_names_win_and_colliding_defaults_ask_for_them():
    def forward(self, output):
        return output + 1

    module = module_with(forward)
    with pytest.raises(ValueError, match=r"both contain \['output'\].*pass input_names or output_names"):
        names_of(module, torch.ones(2, 1))
    assert names_of(module, torch.ones(2, 1), output_names=["y"]) == IONames(("output",), ("y",))
    assert names_of(module, torch.ones(2, 1), ["x"], ["y"]) == IONames(("x",), ("y",))
    with pytest.raises(ValueError, match=r"2 output_names given \(\['a', 'b'\]\) but the model has 1"):
        names_of(module, torch.ones(2, 1), output_names=["a", "b"])


class KeywordHeads(torch.nn.Module):
    """A keyword-only input and a dict out."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 3)
        self.example_input_array = {"x": torch.ones(3, 4), "scale": torch.full((3, 1), 2.0)}

    def forward(self, x: torch.Tensor, *, scale: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"scores": self.layer(x) * scale, "features": torch.relu(x)}


class BranchingHeads(torch.nn.Module):
    """A dict in and out, with data-dependent control flow (only scripting keeps it)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 3)
        self.example_input_array = {"scale": torch.full((3, 1), 2.0), "x": torch.ones(3, 4)}

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> Dict[str, torch.Tensor]:
        y = self.layer(x)
        if bool(x.mean() > 0.5):
            y = y * 2
        return {"scores": y * scale, "features": torch.relu(x)}


def test_scripted_dict_model_exports_flat_files_that_keep_control_flow(tmp_path):
    callback = ExportBestCheckpoint(torchscript_method="script", output_dir=tmp_path, log_to_mlflow=False)
    with pytest.warns(RuntimeWarning, match="current weights"):
        paths = callback.export(BranchingHeads())
    assert all(r.passed for r in callback.verification) and len(callback.verification) == 4
    graph = onnx.load(str(paths["onnx"])).graph
    assert [v.name for v in graph.input] == ["x", "scale"]
    assert [v.name for v in graph.output] == ["scores", "features"]
    assert "If" in {node.op_type for node in graph.node}
    scripted = torch.jit.load(str(paths["torchscript"]))
    # Triton's libtorch calling convention: positional tensors in, a tuple out, in name order
    x, scale = torch.randn(5, 4), torch.rand(5, 1)
    scores, features = scripted(x, scale)
    expected = BranchingHeads().eval()(x, scale=scale)
    torch.testing.assert_close(scores, expected["scores"].detach())
    torch.testing.assert_close(features, expected["features"])
    assert len(list(scripted.forward.schema.arguments)) == 3  # self, x, scale


def test_scripting_keyword_only_arguments_is_refused_with_a_hint(tmp_path):
    callback = ExportBestCheckpoint(torchscript_method="script", output_dir=tmp_path, log_to_mlflow=False)
    with pytest.raises(ExportError, match=r"keyword-only argument\(s\) \['scale'\].*HINT: declare them before"):
        with pytest.warns(RuntimeWarning, match="current weights"):
            callback.export(KeywordHeads())


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_traced_dict_and_list_models_export_with_both_onnx_exporters(tmp_path, exporter):
    class ListOut(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 2)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
            hidden = self.layer(torch.nn.functional.one_hot(input_ids, 4).float())
            return [hidden * attention_mask.unsqueeze(-1), hidden.mean(dim=1)]

    module = ListOut()
    sample = {"attention_mask": torch.ones(2, 5, dtype=torch.int64), "input_ids": torch.randint(0, 4, (2, 5))}
    callback = ExportBestCheckpoint(
        input_sample=sample, dynamic_axes={"input_ids": {1: "seq"}, "attention_mask": {1: "seq"}},
        onnx_exporter=exporter, output_dir=tmp_path, log_to_mlflow=False,
    )  # fmt: skip
    with pytest.warns(RuntimeWarning, match="current weights"):
        paths = callback.export(module)
    assert all(r.passed for r in callback.verification)
    assert {r.input_shapes for r in callback.verification} == {((1, 5), (1, 5)), ((7, 8), (7, 8))}
    graph = onnx.load(str(paths["onnx"])).graph
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in (*graph.input, *graph.output)}
    # the first output's sequence axis follows input_ids' without being declared
    assert dims == {
        "input_ids": ["batch", "seq"], "attention_mask": ["batch", "seq"],
        "output_0": ["batch", "seq", 2], "output_1": ["batch", 2],
    }  # fmt: skip
    assert isinstance(torch.jit.load(str(paths["torchscript"]))(*sample.values()), tuple)


def test_output_axes_that_follow_an_input_axis_are_found():
    class Stretch(torch.nn.Module):
        def forward(self, tokens):
            return tokens * 2, tokens.repeat(1, 2), tokens[:, :1]

    module, example = Stretch(), (torch.ones(2, 3),)
    names = IONames(("tokens",), ("same", "double", "fixed"))
    outputs = module(*example)
    axes = resolve_dynamic_axes(names, example, outputs, {"tokens": {1: "seq"}})
    longer = (torch.ones(4, 5),)
    found = infer_output_axes(names, axes, (example, outputs), (longer, module(*longer)))
    assert found == {
        "tokens": {0: "batch", 1: "seq"}, "same": {0: "batch", 1: "seq"},
        "double": {0: "batch", 1: "double_dim1"}, "fixed": {0: "batch"},
    }  # fmt: skip
    given = resolve_dynamic_axes(names, example, outputs, {"tokens": {1: "seq"}, "double": {1: "twice"}})
    assert infer_output_axes(names, given, (example, outputs), (longer, module(*longer)))["double"] == {
        0: "batch", 1: "twice"
    }  # fmt: skip


def test_flat_forward_calls_keywords_and_returns_a_tuple():
    module = KeywordHeads().eval()
    bound = bind_example(module, module.example_input_array)
    io = ForwardIO.of(module, bound)
    assert io.needs_adapter and isinstance(io.export_module(module), FlatForward)
    flat = io.flat(module)
    scores, features = flat(*bound.tensors)
    torch.testing.assert_close(scores, module(bound.tensors[0], scale=bound.tensors[1])["scores"])
    plain = torch.nn.Linear(2, 2)
    plain_io = ForwardIO.of(plain, bind_example(plain, torch.ones(1, 2)))
    assert not plain_io.needs_adapter and plain_io.export_module(plain) is plain


@pytest.mark.filterwarnings("ignore:'torch.load' received a zip file")
def test_torchscript_only_dict_model_logs_named_signature_without_a_pyfunc_warning(tmp_path, caplog):
    with tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}"):
        callback = ExportBestCheckpoint(formats=("torchscript",), output_dir=tmp_path / "out")
        with pytest.warns(RuntimeWarning, match="current weights"):
            callback.export(KeywordHeads())
        signature = mlflow.models.Model.load(callback.model_uri).signature
    assert [s.name for s in signature.inputs.inputs] == ["x", "scale"]
    assert [(s.name, s.shape) for s in signature.outputs.inputs] == [("scores", (-1, 3)), ("features", (-1, 4))]
    assert "Failed to validate serving input example" not in caplog.text
    assert np.isfinite(callback.verification[0].max_abs_diff)
