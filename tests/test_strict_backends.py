"""The Python stand-ins for Triton's C++ onnxruntime / pytorch backends refuse at load what
the C++ backends refuse, and still serve what they accept.

One tritonserver (explicit model control, private local repository) serves the whole file.
Every refusal test writes a config the C++ backend refuses and checks that the real
tritonserver fails the load, keeps the model not READY and gives a reason naming the
offending tensor or setting; every rule has a matching accepted config that loads and answers.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import tritonclient.http as httpclient
from google.protobuf import text_format
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from mlflow_triton.local.processes import ManagedProcess
from mlflow_triton.local.servers import make_backend_dir, tritonserver

pytestmark = pytest.mark.integration

FLOAT, DOUBLE, INT64 = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64


@dataclass
class Triton:
    server: ManagedProcess
    repository: Path
    client: httpclient.InferenceServerClient

    def reason(self, name: str) -> str:
        entries = [e for e in self.client.get_model_repository_index() if e["name"] == name]
        return " ".join(f"{e.get('state', '')} {e.get('reason', '')}" for e in entries)


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory):
    root = Path(tmp_path_factory.mktemp("strict-backends"))
    repository = root / "repo"
    repository.mkdir()
    server = tritonserver(str(repository), make_backend_dir(root / "backends"), root / "triton.log",
                          env=dict(os.environ))  # fmt: skip
    server.start()
    client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    try:
        yield Triton(server, repository, client)
    finally:
        client.close()  # an open connection would hold tritonserver's exit for 5 s
        server.stop()


# --- model and config builders ---------------------------------------------------------------


def tensor(name: str, data_type: str, dims, reshape=None, **fields) -> dict:
    return {"name": name, "data_type": data_type, "dims": list(dims), "reshape": reshape, **fields}


def config_text(name: str, backend: str, inputs, outputs, max_batch_size: int = 0, **extra) -> str:
    message = mc.ModelConfig(name=name, backend=backend, max_batch_size=max_batch_size)
    for field, specs in (("input", inputs), ("output", outputs)):
        for spec in specs:
            spec = dict(spec)
            reshape = spec.pop("reshape")
            spec["data_type"] = mc.DataType.Value(spec["data_type"])
            added = getattr(message, field).add(**spec)
            if reshape is not None:
                added.reshape.shape.extend(reshape)
                added.reshape.SetInParent()
    message.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    for key, value in extra.pop("parameters", {}).items():
        message.parameters[key].string_value = value
    if extra:
        text_format.Merge(extra.pop("pbtxt"), message)
    assert not extra
    return text_format.MessageToString(message)


def onnx_graph(inputs, outputs, nodes, initializers=(), sequence_outputs=()) -> onnx.ModelProto:
    """A tiny ONNX model; ``inputs``/``outputs`` are (name, elem_type, shape) with None or a
    string for a dynamic dim."""
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(*spec) for spec in inputs],
        [helper.make_tensor_value_info(*spec) for spec in outputs]
        + [helper.make_tensor_sequence_value_info(name, FLOAT, None) for name in sequence_outputs],
        initializer=list(initializers),
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def relu(batch="N", feature=4, elem_type=FLOAT) -> onnx.ModelProto:
    """y = relu(x), both of shape [batch, feature]."""
    return onnx_graph([("x", elem_type, [batch, feature])], [("y", elem_type, [batch, feature])],
                      [helper.make_node("Relu", ["x"], ["y"])])  # fmt: skip


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def publish(
    triton: Triton, name: str, model_bytes: bytes | None, config: str, filename: str
) -> None:
    version = triton.repository / name / "1"
    version.mkdir(parents=True)
    if model_bytes is not None:
        (version / filename).write_bytes(model_bytes)
    (triton.repository / name / "config.pbtxt").write_text(config)


def publish_onnx(
    triton: Triton, model: onnx.ModelProto | None, inputs, outputs, max_batch_size=0, **extra
) -> str:
    name = unique("onnx")
    text = config_text(name, "onnxruntime", inputs, outputs, max_batch_size, **extra)
    publish(triton, name, None if model is None else model.SerializeToString(), text, "model.onnx")
    return name


def publish_torch(triton: Triton, module, inputs, outputs, max_batch_size=0, **extra) -> str:
    name = unique("torch")
    text = config_text(name, "pytorch", inputs, outputs, max_batch_size, **extra)
    if isinstance(module, bytes) or module is None:
        data = module
    else:
        path = triton.repository / f"{name}.tmp.pt"
        torch.jit.save(module, str(path))
        data = path.read_bytes()
        path.unlink()
    publish(triton, name, data, text, "model.pt")
    return name


def assert_refused(triton: Triton, name: str, *fragments: str) -> None:
    """The load fails, the model is not READY, and both the load error and the repository
    index reason carry every fragment (the C++ backend's wording and the offending tensor)."""
    with pytest.raises(InferenceServerException) as err:
        triton.client.load_model(name)
    assert not triton.client.is_model_ready(name)
    reason = triton.reason(name)
    assert "UNAVAILABLE" in reason
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)
        assert fragment in reason, reason


def infer(
    triton: Triton, name: str, arrays: dict[str, np.ndarray], outputs: list[str]
) -> list[np.ndarray]:
    triton.client.load_model(name)
    assert triton.client.is_model_ready(name)
    inputs = []
    for key, array in arrays.items():
        item = httpclient.InferInput(key, list(array.shape), _triton_dtype(array.dtype))
        item.set_data_from_numpy(array)
        inputs.append(item)
    result = triton.client.infer(
        name, inputs, outputs=[httpclient.InferRequestedOutput(o) for o in outputs]
    )
    return [result.as_numpy(o) for o in outputs]


def _triton_dtype(dtype: np.dtype) -> str:
    return {
        np.dtype(np.float32): "FP32",
        np.dtype(np.float64): "FP64",
        np.dtype(np.int64): "INT64",
    }[np.dtype(dtype)]


def sample(*shape: int) -> np.ndarray:
    return np.random.default_rng(7).normal(size=shape).astype(np.float32)


X4, Y4 = tensor("x", "TYPE_FP32", [4]), tensor("y", "TYPE_FP32", [4])


# --- onnxruntime: accepted configs ------------------------------------------------------------


def test_onnx_batched_config_loads_and_answers(triton):
    name = publish_onnx(triton, relu(), [X4], [Y4], max_batch_size=8)
    x = sample(3, 4)
    (y,) = infer(triton, name, {"x": x}, ["y"])
    np.testing.assert_allclose(y, np.maximum(x, 0))


def test_onnx_unbatched_config_with_full_shape_loads_and_answers(triton):
    name = publish_onnx(
        triton, relu(), [tensor("x", "TYPE_FP32", [-1, 4])], [tensor("y", "TYPE_FP32", [-1, 4])]
    )
    x = sample(2, 4)
    (y,) = infer(triton, name, {"x": x}, ["y"])
    np.testing.assert_allclose(y, np.maximum(x, 0))


def test_onnx_dynamic_input_dim_accepts_a_fixed_config_dim(triton):
    """CompareDimsSupported(compare_exact=false) for inputs: a dynamic graph dim matches any dim."""
    model = onnx_graph([("x", FLOAT, ["N", "K"])], [("y", FLOAT, ["N", 4])],
                       [helper.make_node("Relu", ["x"], ["y"])])  # fmt: skip
    name = publish_onnx(triton, model, [X4], [Y4], max_batch_size=8)
    x = sample(2, 4)
    np.testing.assert_allclose(infer(triton, name, {"x": x}, ["y"])[0], np.maximum(x, 0))


def test_onnx_reshape_is_what_is_compared_to_the_graph(triton):
    """Graph [N] (a scalar per sample): dims [1] with reshape [] is the plugin's way to declare it."""
    model = onnx_graph(
        [("x", FLOAT, ["N"])], [("y", FLOAT, ["N"])], [helper.make_node("Relu", ["x"], ["y"])]
    )
    scalar_in = tensor("x", "TYPE_FP32", [1], reshape=[])
    scalar_out = tensor("y", "TYPE_FP32", [1], reshape=[])
    name = publish_onnx(triton, model, [scalar_in], [scalar_out], max_batch_size=8)
    x = sample(3, 1)
    (y,) = infer(triton, name, {"x": x}, ["y"])
    assert y.shape == (3, 1)  # Triton reshapes the model's [3] back to the config's [-1, 1]
    np.testing.assert_allclose(y, np.maximum(x, 0))


# --- onnxruntime: refused configs -------------------------------------------------------------


def test_onnx_input_name_not_in_graph_is_refused(triton):
    name = publish_onnx(
        triton, relu(), [tensor("features", "TYPE_FP32", [4])], [Y4], max_batch_size=8
    )
    assert_refused(triton, name, "unexpected inference input 'features', allowed inputs are: x")


def test_onnx_output_name_not_in_graph_is_refused(triton):
    name = publish_onnx(
        triton, relu(), [X4], [tensor("scores", "TYPE_FP32", [4])], max_batch_size=8
    )
    assert_refused(triton, name, "unexpected inference output 'scores', allowed outputs are: y")


def test_onnx_input_data_type_must_equal_the_graph(triton):
    name = publish_onnx(triton, relu(), [tensor("x", "TYPE_FP64", [4])], [Y4], max_batch_size=8)
    assert_refused(
        triton,
        name,
        "configuration expects datatype TYPE_FP64 for input 'x', model provides TYPE_FP32",
    )


def test_onnx_output_data_type_must_equal_the_graph(triton):
    name = publish_onnx(triton, relu(elem_type=DOUBLE), [tensor("x", "TYPE_FP64", [4])],
                        [tensor("y", "TYPE_FP32", [4])], max_batch_size=8)  # fmt: skip
    assert_refused(
        triton,
        name,
        "configuration expects datatype TYPE_FP32 for output 'y', model provides TYPE_FP64",
    )


def test_onnx_data_type_without_onnx_mapping_is_refused(triton):
    name = publish_onnx(triton, relu(), [tensor("x", "TYPE_BF16", [4])], [Y4], max_batch_size=8)
    assert_refused(triton, name, "unsupported datatype TYPE_BF16 for input 'x'")


def test_onnx_batching_needs_a_dynamic_first_graph_dim(triton):
    name = publish_onnx(triton, relu(batch=2), [X4], [Y4], max_batch_size=8)
    assert_refused(triton, name, "tensor 'x': for the model to support batching the shape should have at least 1 "
                   "dimension and the first dimension must be -1; but shape expected by the model is [2,4]")  # fmt: skip


def test_onnx_fixed_graph_without_batching_loads_and_answers(triton):
    name = publish_onnx(
        triton,
        relu(batch=2),
        [tensor("x", "TYPE_FP32", [2, 4])],
        [tensor("y", "TYPE_FP32", [2, 4])],
    )
    x = sample(2, 4)
    np.testing.assert_allclose(infer(triton, name, {"x": x}, ["y"])[0], np.maximum(x, 0))


def test_onnx_rank_mismatch_is_refused(triton):
    name = publish_onnx(triton, relu(), [tensor("x", "TYPE_FP32", [4, 1])], [Y4], max_batch_size=8)
    assert_refused(triton, name, "tensor 'x': the model expects 2 dimensions (shape [-1,4]) but the model "
                   "configuration specifies 3 dimensions")  # fmt: skip


def test_onnx_fixed_graph_dim_must_equal_the_config_dim(triton):
    name = publish_onnx(triton, relu(), [tensor("x", "TYPE_FP32", [5])], [Y4], max_batch_size=8)
    assert_refused(
        triton,
        name,
        "tensor 'x': the model expects 2 dimensions (shape [-1,4])",
        "complete shape [-1,5]",
    )


def test_onnx_variable_config_dim_against_a_fixed_graph_dim_is_refused(triton):
    name = publish_onnx(triton, relu(), [tensor("x", "TYPE_FP32", [-1])], [Y4], max_batch_size=8)
    assert_refused(triton, name, "tensor 'x'", "complete shape [-1,-1]")


def test_onnx_dynamic_output_dim_needs_a_variable_config_dim(triton):
    """CompareDimsSupported(compare_exact=true) for outputs; the same dims pass for the input
    (onnxruntime reports y as [N, K] since x is [N, K])."""
    model = onnx_graph(
        [("x", FLOAT, ["N", "K"])],
        [("y", FLOAT, ["N", "K"])],
        [helper.make_node("Relu", ["x"], ["y"])],
    )
    name = publish_onnx(triton, model, [X4], [Y4], max_batch_size=8)
    assert_refused(
        triton,
        name,
        "tensor 'y': the model expects 2 dimensions (shape [-1,-1])",
        "complete shape [-1,4]",
    )


def test_onnx_without_batching_the_config_dims_are_the_full_shape(triton):
    name = publish_onnx(triton, relu(), [X4], [Y4], max_batch_size=0)
    assert_refused(triton, name, "tensor 'x': the model expects 2 dimensions (shape [-1,4]) but the model "
                   "configuration specifies 1 dimensions (shape [4])")  # fmt: skip


def test_onnx_scalar_per_sample_without_reshape_is_refused(triton):
    model = onnx_graph(
        [("x", FLOAT, ["N"])], [("y", FLOAT, ["N"])], [helper.make_node("Relu", ["x"], ["y"])]
    )
    name = publish_onnx(triton, model, [tensor("x", "TYPE_FP32", [1])], [tensor("y", "TYPE_FP32", [1], reshape=[])],
                        max_batch_size=8)  # fmt: skip
    assert_refused(
        triton,
        name,
        "tensor 'x': the model expects 1 dimensions (shape [-1])",
        "complete shape [-1,1]",
    )


def test_onnx_scalar_graph_tensor_only_accepts_dims_of_one(triton):
    model = onnx_graph(
        [("x", FLOAT, [])], [("y", FLOAT, [])], [helper.make_node("Relu", ["x"], ["y"])]
    )
    name = publish_onnx(
        triton, model, [tensor("x", "TYPE_FP32", [2])], [tensor("y", "TYPE_FP32", [1])]
    )
    assert_refused(
        triton, name, "scalar tensor 'x', should only provide 1 in the model configuration"
    )


def test_onnx_graph_input_missing_from_the_config_is_refused(triton):
    model = onnx_graph([("x", FLOAT, ["N", 4]), ("z", FLOAT, ["N", 4])], [("y", FLOAT, ["N", 4])],
                       [helper.make_node("Add", ["x", "z"], ["y"])])  # fmt: skip
    name = publish_onnx(triton, model, [X4], [Y4], max_batch_size=8)
    assert_refused(triton, name, "configuration expects 1 inputs, model provides 2")


def _with_initializer() -> onnx.ModelProto:
    """y = x + w where w is an overridable initializer (an initializer also listed as input)."""
    w = helper.make_tensor("w", FLOAT, [4], [1.0, 2.0, 3.0, 4.0])
    return onnx_graph([("x", FLOAT, [2, 4]), ("w", FLOAT, [4])], [("y", FLOAT, [2, 4])],
                      [helper.make_node("Add", ["x", "w"], ["y"])], initializers=[w])  # fmt: skip


def test_onnx_overridable_initializer_is_not_a_required_input(triton):
    x2, y2 = tensor("x", "TYPE_FP32", [2, 4]), tensor("y", "TYPE_FP32", [2, 4])
    refused = publish_onnx(triton, _with_initializer(), [x2, tensor("w", "TYPE_FP32", [4])], [y2])
    assert_refused(triton, refused, "configuration expects 2 inputs, model provides 1")

    x = sample(2, 4)
    accepted = publish_onnx(triton, _with_initializer(), [x2], [y2])
    np.testing.assert_allclose(
        infer(triton, accepted, {"x": x}, ["y"])[0], x + [1.0, 2.0, 3.0, 4.0], rtol=1e-6
    )


def test_onnx_optional_input_is_refused_with_batching(triton):
    model = onnx_graph([("x", FLOAT, ["N", 4]), ("w", FLOAT, [4])], [("y", FLOAT, ["N", 4])],
                       [helper.make_node("Add", ["x", "w"], ["y"])],
                       initializers=[helper.make_tensor("w", FLOAT, [4], [0.0] * 4)])  # fmt: skip
    name = publish_onnx(
        triton, model, [X4, tensor("w", "TYPE_FP32", [4], optional=True)], [Y4], max_batch_size=8
    )
    assert_refused(
        triton, name, "optional input 'w' is not supported for models that support batching"
    )


def test_onnx_ragged_input_needs_graph_shape_minus_one(triton):
    ragged = tensor("x", "TYPE_FP32", [4], allow_ragged_batch=True)
    name = publish_onnx(
        triton, relu(), [ragged], [Y4], max_batch_size=8, pbtxt="dynamic_batching {}"
    )
    assert_refused(triton, name, "configuration expects model provides input with shape [-1]  for ragged input "
                   "'x', model provides [-1,4]")  # fmt: skip


def test_onnx_non_tensor_graph_output_is_refused(triton):
    model = onnx_graph([("x", FLOAT, ["N", 4])], [("y", FLOAT, ["N", 4])],
                       [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("SequenceConstruct", ["x"], ["s"])],
                       sequence_outputs=["s"])  # fmt: skip
    name = publish_onnx(triton, model, [X4], [Y4], max_batch_size=8)
    assert_refused(triton, name, "Unsupported ONNX Type 'ONNX_TYPE_SEQUENCE' for I/O 's'")


def test_onnx_sequence_control_must_be_a_graph_input(triton):
    pbtxt = ('sequence_batching { control_input { name: "START" control { kind: CONTROL_SEQUENCE_START '
             "int32_false_true: [0, 1] } } }")  # fmt: skip
    name = publish_onnx(triton, relu(), [X4], [Y4], max_batch_size=8, pbtxt=pbtxt)
    assert_refused(
        triton,
        name,
        "configuration specified sequence control 'START', but model does not provide that input",
    )


def test_onnx_invalid_execution_mode_and_cpu_accelerator_are_refused(triton):
    name = publish_onnx(
        triton, relu(), [X4], [Y4], max_batch_size=8, parameters={"execution_mode": "2"}
    )
    assert_refused(triton, name, "Expected values for  execution_mode are 0 or 1 but got 2")
    pbtxt = (
        'optimization { execution_accelerators { cpu_execution_accelerator { name: "tensorrt" } } }'
    )
    name = publish_onnx(triton, relu(), [X4], [Y4], max_batch_size=8, pbtxt=pbtxt)
    assert_refused(triton, name, "unknown Execution Accelerator 'tensorrt' is requested")


def test_onnx_missing_model_file_is_refused(triton):
    name = publish_onnx(triton, None, [X4], [Y4], max_batch_size=8)
    assert_refused(triton, name, "unable to find '", f"{name}/1/model.onnx'")


# --- pytorch (libtorch) ------------------------------------------------------------------------


class TwoInTwoOut(torch.nn.Module):
    def forward(self, x: torch.Tensor, z: torch.Tensor):
        return x + 2 * z, x - z


class OneIn(torch.nn.Module):
    def forward(self, x: torch.Tensor):
        return x * 3


class DictIn(torch.nn.Module):
    def forward(self, inputs: dict[str, torch.Tensor]):
        return inputs["a"] - inputs["b"]


class IntArgument(torch.nn.Module):
    def forward(self, x: torch.Tensor, n: int):
        return x * n


class TwoDicts(torch.nn.Module):
    def forward(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]):
        return a["x"] + b["x"]


class NoArguments(torch.nn.Module):
    def forward(self):
        return torch.zeros(1)


def f32(name: str, dims=(4,)) -> dict:
    return tensor(name, "TYPE_FP32", dims)


def test_torch_named_index_config_loads_and_maps_indices(triton):
    """INPUT__<i> is forward()'s i-th argument, OUTPUT__<j> the j-th returned tensor, whatever
    their order in the config."""
    name = publish_torch(triton, torch.jit.script(TwoInTwoOut()), [f32("INPUT__1"), f32("INPUT__0")],
                         [f32("OUTPUT__1"), f32("OUTPUT__0")], max_batch_size=8)  # fmt: skip
    x, z = sample(3, 4), sample(3, 4) + 1
    diff, total = infer(triton, name, {"INPUT__0": x, "INPUT__1": z}, ["OUTPUT__1", "OUTPUT__0"])
    np.testing.assert_allclose(total, x + 2 * z, rtol=1e-6)
    np.testing.assert_allclose(diff, x - z, rtol=1e-6)


def test_torch_forward_argument_names_load_and_map_by_name(triton):
    name = publish_torch(triton, torch.jit.script(TwoInTwoOut()), [f32("z"), f32("x")],
                         [f32("OUTPUT__0")], max_batch_size=8)  # fmt: skip
    x, z = sample(2, 4), sample(2, 4) + 1
    (total,) = infer(triton, name, {"x": x, "z": z}, ["OUTPUT__0"])
    np.testing.assert_allclose(total, x + 2 * z, rtol=1e-6)


def test_torch_other_names_fall_back_to_config_order(triton):
    """libtorch does not refuse such names (GetNamingConvention: STRICT_CONFIG_ORDERING)."""
    name = publish_torch(triton, torch.jit.script(TwoInTwoOut()), [f32("first"), f32("second")],
                         [f32("sum"), f32("difference")], max_batch_size=8)  # fmt: skip
    x, z = sample(2, 4), sample(2, 4) + 1
    total, diff = infer(triton, name, {"first": x, "second": z}, ["sum", "difference"])
    np.testing.assert_allclose(total, x + 2 * z, rtol=1e-6)
    np.testing.assert_allclose(diff, x - z, rtol=1e-6)


def test_torch_dict_input_loads_and_answers(triton):
    name = publish_torch(
        triton,
        torch.jit.script(DictIn()),
        [f32("b"), f32("a")],
        [f32("OUTPUT__0")],
        max_batch_size=8,
    )
    a, b = sample(2, 4), sample(2, 4) + 1
    np.testing.assert_allclose(
        infer(triton, name, {"a": a, "b": b}, ["OUTPUT__0"])[0], a - b, rtol=1e-6
    )


def test_torch_input_count_must_match_forward(triton):
    name = publish_torch(
        triton,
        torch.jit.script(TwoInTwoOut()),
        [f32("INPUT__0")],
        [f32("OUTPUT__0")],
        max_batch_size=8,
    )
    assert_refused(triton, name, "configuration expects 1 inputs, model provides 2")


@pytest.mark.parametrize("data_type", ["TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_BF16"])
def test_torch_unmappable_input_data_type_is_refused(triton, data_type):
    name = publish_torch(triton, torch.jit.script(OneIn()), [tensor("INPUT__0", data_type, [4])],
                         [f32("OUTPUT__0")], max_batch_size=8)  # fmt: skip
    assert_refused(triton, name, f"unsupported datatype {data_type} for input 'INPUT__0'")


def test_torch_unmappable_output_data_type_is_refused(triton):
    name = publish_torch(triton, torch.jit.script(OneIn()), [f32("INPUT__0")],
                         [tensor("OUTPUT__0", "TYPE_UINT32", [4])], max_batch_size=8)  # fmt: skip
    assert_refused(triton, name, "unsupported datatype TYPE_UINT32 for output 'OUTPUT__0'")


def test_torch_mappable_data_type_loads_and_answers(triton):
    name = publish_torch(triton, torch.jit.script(OneIn()), [tensor("INPUT__0", "TYPE_INT64", [4])],
                         [tensor("OUTPUT__0", "TYPE_INT64", [4])], max_batch_size=8)  # fmt: skip
    x = np.arange(8, dtype=np.int64).reshape(2, 4)
    np.testing.assert_array_equal(infer(triton, name, {"INPUT__0": x}, ["OUTPUT__0"])[0], x * 3)


def test_torch_string_tensor_must_be_one_dimensional(triton):
    name = publish_torch(triton, torch.jit.script(OneIn()), [tensor("INPUT__0", "TYPE_STRING", [2])],
                         [f32("OUTPUT__0")], max_batch_size=8)  # fmt: skip
    assert_refused(
        triton, name, "Triton only supports 1 dimensional List of String as input for 'INPUT__0'"
    )


def test_torch_non_tensor_forward_argument_is_refused(triton):
    name = publish_torch(triton, torch.jit.script(IntArgument()), [f32("INPUT__0"), f32("INPUT__1")],
                         [f32("OUTPUT__0")], max_batch_size=8)  # fmt: skip
    assert_refused(triton, name, "An input of type 'int' was detected in the model")


def test_torch_several_dict_arguments_are_refused(triton):
    name = publish_torch(
        triton,
        torch.jit.script(TwoDicts()),
        [f32("a"), f32("b")],
        [f32("OUTPUT__0")],
        max_batch_size=8,
    )
    assert_refused(triton, name, "Multiple inputs of kind DictType were detected")


def test_torch_config_needs_an_input(triton):
    name = publish_torch(triton, torch.jit.script(NoArguments()), [], [f32("OUTPUT__0")])
    assert_refused(
        triton, name, "model configuration must contain at least one input, none were specified."
    )


def test_torch_sequence_control_must_follow_naming_convention(triton):
    pbtxt = ('sequence_batching { control_input { name: "START" control { kind: CONTROL_SEQUENCE_START '
             "int32_false_true: [0, 1] } } }")  # fmt: skip
    name = publish_torch(triton, torch.jit.script(TwoInTwoOut()), [f32("INPUT__0")], [f32("OUTPUT__0")],
                         max_batch_size=8, pbtxt=pbtxt)  # fmt: skip
    assert_refused(triton, name, "input 'START' does not follow <name>__<index> naming convention.")


def test_torch_invalid_parameter_is_refused(triton):
    name = publish_torch(triton, torch.jit.script(OneIn()), [f32("INPUT__0")], [f32("OUTPUT__0")],
                         max_batch_size=8, parameters={"INFERENCE_MODE": "maybe"})  # fmt: skip
    assert_refused(triton, name, "failed to convert 'maybe' to boolean")


def test_torch_missing_or_corrupt_model_file_is_refused(triton):
    name = publish_torch(triton, None, [f32("INPUT__0")], [f32("OUTPUT__0")], max_batch_size=8)
    assert_refused(triton, name, "unable to find '", f"{name}/1/model.pt'")
    name = publish_torch(
        triton, b"not torchscript", [f32("INPUT__0")], [f32("OUTPUT__0")], max_batch_size=8
    )
    assert_refused(triton, name, f"failed to load model '{name}'")
