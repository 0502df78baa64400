"""Property-based tests (hypothesis): the config builder, names, keys and URIs.

* Any MLflow tensor signature gives a ``config.pbtxt`` that parses back to the same message
  with the dims and data types the signature implies, or a clear INVALID_PARAMETER_VALUE.
* A few hypothesis-chosen ONNX Identity models are published through the plugin and loaded
  by the real tritonserver, which must accept the generated config and echo the input.
* No deployment name or repository key escapes its prefix, and malformed URIs are refused
  with MlflowException (never another exception type).
"""

from __future__ import annotations

import posixpath
import uuid
from pathlib import Path

import mlflow.onnx
import numpy as np
import pytest
from configs import generated_config, signature_io
from google.protobuf import text_format
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import Schema, TensorSpec
from onnx import helper
from tritonclient.grpc import model_config_pb2 as mc

from mlflow_triton.fleet.server import TritonServer
from mlflow_triton.repository.layout import validate_model_name
from mlflow_triton.repository.local_store import LocalStore
from mlflow_triton.repository.s3_store import S3Store
from mlflow_triton.repository.store import check_key
from mlflow_triton.repository.stores import open_store
from mlflow_triton.settings.deployment import DeploymentConfig
from mlflow_triton.settings.target import parse_target_uri
from mlflow_triton.triton_config.model_config import parse_pbtxt, serving_versions, to_pbtxt

TRITON_TYPES = {
    np.bool_: "TYPE_BOOL", np.uint8: "TYPE_UINT8", np.uint16: "TYPE_UINT16",
    np.uint32: "TYPE_UINT32", np.uint64: "TYPE_UINT64", np.int8: "TYPE_INT8",
    np.int16: "TYPE_INT16", np.int32: "TYPE_INT32", np.int64: "TYPE_INT64",
    np.float16: "TYPE_FP16", np.float32: "TYPE_FP32", np.float64: "TYPE_FP64",
    np.object_: "TYPE_STRING", np.str_: "TYPE_STRING", np.bytes_: "TYPE_STRING",
}  # fmt: skip
UNSUPPORTED = [np.complex64, np.complex128, np.dtype("datetime64[s]"), np.dtype("timedelta64[ms]")]
TORCH_UNSUPPORTED = {"TYPE_STRING", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64"}

dtypes = st.sampled_from([np.dtype(t) for t in TRITON_TYPES] + [np.dtype(t) for t in UNSUPPORTED])
dims = st.sampled_from([-1, 0, 1, 2, 3, 16]) | st.integers(min_value=1, max_value=2**31 - 1)
shapes = st.lists(dims, max_size=5).map(tuple)
tensor_names = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True)


@st.composite
def schemas(draw) -> Schema:
    names = draw(st.lists(tensor_names, min_size=1, max_size=3, unique=True))
    return Schema([TensorSpec(draw(dtypes), draw(shapes), name) for name in names])


@st.composite
def deployments(draw) -> DeploymentConfig:
    max_batch_size = draw(st.sampled_from([0, 1, 8, 32]))
    return DeploymentConfig(
        max_batch_size=max_batch_size,
        dynamic_batching=draw(st.booleans()),
        preferred_batch_size=draw(st.sampled_from([[], [max_batch_size]])) if max_batch_size else [],
        max_queue_delay_microseconds=draw(st.integers(0, 10_000)),
        instance_kind=draw(st.sampled_from(["gpu", "cpu", "auto"])),
        instance_count=draw(st.integers(1, 4)),
    )


def expected_type(dtype: np.dtype) -> str | None:
    if dtype.kind in ("U", "S"):
        return "TYPE_STRING"
    return TRITON_TYPES.get(dtype.type)


def refusal_is_justified(schema_list: list[Schema], flavor: str, config: DeploymentConfig) -> bool:
    """Whether a signature/config pair has something Triton cannot serve."""
    batched = config.max_batch_size > 0
    for schema in schema_list:
        for spec in schema.inputs:
            triton = expected_type(spec.type)
            if triton is None or (flavor == "torchscript" and triton in TORCH_UNSUPPORTED):
                return True
            if batched and (not spec.shape or spec.shape[0] != -1):
                return True
            if not batched and not spec.shape:  # Triton: no scalar tensors without batching
                return True
            if any(d == 0 or d < -1 for d in spec.shape):
                return True
    return False


@settings(max_examples=300, deadline=None)
@given(
    inputs=schemas(), outputs=schemas(), flavor=st.sampled_from(["onnx", "torchscript"]),
    config=deployments(), version=st.integers(1, 10**6),
)  # fmt: skip
@example(  # a scalar without batching: Triton refuses "scalar tensors are not supported"
    inputs=Schema([TensorSpec(np.dtype(np.float32), (), "x")]),
    outputs=Schema([TensorSpec(np.dtype(np.float32), (3,), "y")]),
    flavor="onnx", config=DeploymentConfig(max_batch_size=0), version=1,
)  # fmt: skip
@example(  # a zero-sized dimension: Triton refuses "dimension must be integer >= 1, or -1"
    inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 0), "x")]),
    outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3), "y")]),
    flavor="onnx", config=DeploymentConfig(max_batch_size=8), version=1,
)  # fmt: skip
def test_signature_gives_a_config_that_round_trips_or_a_clear_error(inputs, outputs, flavor, config, version):
    signature = ModelSignature(inputs=inputs, outputs=outputs)
    try:
        io = signature_io(signature, flavor)
        message = generated_config("model", flavor, io, config, version)
    except MlflowException as err:
        assert err.error_code == "INVALID_PARAMETER_VALUE" and err.message
        assert refusal_is_justified([inputs, outputs], flavor, config), err.message
        return
    assert not refusal_is_justified([inputs, outputs], flavor, config), to_pbtxt(message)

    parsed = text_format.Parse(to_pbtxt(message), mc.ModelConfig())
    assert parsed == message and parse_pbtxt(to_pbtxt(message).encode()) == message
    batched = config.max_batch_size > 0
    assert parsed.max_batch_size == config.max_batch_size
    assert parsed.HasField("dynamic_batching") == (batched and config.dynamic_batching)
    assert serving_versions(parsed) == [version]
    for kind, schema, tensors in (("INPUT", inputs, parsed.input), ("OUTPUT", outputs, parsed.output)):
        assert len(tensors) == len(schema.inputs)
        for index, (spec, tensor) in enumerate(zip(schema.inputs, tensors, strict=True)):
            assert tensor.name == (f"{kind}__{index}" if flavor == "torchscript" else spec.name)
            assert mc.DataType.Name(tensor.data_type) == expected_type(spec.type)
            shape = list(spec.shape[1:] if batched else spec.shape)
            assert list(tensor.dims) == (shape or [1])
            assert tensor.HasField("reshape") == (not shape) and not tensor.reshape.shape
            assert all(d == -1 or d >= 1 for d in tensor.dims), list(tensor.dims)


def test_batched_rank_one_tensor_gets_an_empty_reshape():
    """A (batch,) tensor with max_batch_size > 0 needs ``dims: [1]`` plus ``reshape {}``;
    without the reshape the real onnxruntime/pytorch backends refuse the config (the model
    has rank 1, the config implies [-1, 1])."""
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.int64), (-1,), "ids")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1,), "score")]),
    )
    message = generated_config("m", "onnx", signature_io(signature, "onnx"), DeploymentConfig(), 1)
    assert [list(t.dims) for t in (*message.input, *message.output)] == [[1], [1]]
    assert all(t.HasField("reshape") and not t.reshape.shape for t in (*message.input, *message.output))
    assert "reshape {" in to_pbtxt(message)


# -- the real tritonserver accepts what the builder generates ---------------------------------
ONNX_TYPES = [np.bool_, np.uint8, np.uint16, np.int8, np.int32, np.int64, np.float16, np.float32, np.float64]


def identity_model(dtype: np.dtype, shape: tuple[int, ...], folder: Path) -> str:
    """An MLflow ONNX model ``y = Identity(x)``: the builder reads names/types from the graph."""
    element = helper.np_dtype_to_tensor_dtype(dtype)
    dims = [None if d == -1 else d for d in shape]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", element, dims)],
        [helper.make_tensor_value_info("y", element, dims)],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    mlflow.onnx.save_model(model, str(folder), pip_requirements=["onnx"])
    return str(folder)


@st.composite
def identity_cases(draw):
    batched = draw(st.booleans())
    # Batched, an empty rest is a scalar per sample: shape (batch,), declared dims [1] with an
    # empty reshape. Without batching a scalar is refused by the builder (Triton cannot serve it).
    rest = draw(st.lists(st.sampled_from([-1, 1, 2, 3]), min_size=0 if batched else 1, max_size=3))
    shape = tuple([-1, *rest] if batched else rest)
    return np.dtype(draw(st.sampled_from(ONNX_TYPES))), shape, 4 if batched else 0


@pytest.mark.integration
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=identity_cases())
def test_tritonserver_loads_generated_configs(stack, tmp_path, case):
    from mlflow.deployments import get_deploy_client

    dtype, shape, max_batch_size = case
    name = f"identity-{uuid.uuid4().hex[:8]}"
    uri = identity_model(dtype, shape, tmp_path / name)
    url = stack.triton_urls[0]
    client = get_deploy_client(f"triton:/{url}")
    client.create_deployment(
        name, uri, config={"instance_kind": "cpu", "max_batch_size": max_batch_size}
    )
    try:
        # What a client sends: [batch] + config dims, where a scalar per sample is dims [1].
        rest = list(shape[1:] if max_batch_size else shape)
        request = [2 if d == -1 else d for d in ([-1] if max_batch_size else []) + (rest or [1])]
        x = (np.arange(int(np.prod(request))) % 3).astype(dtype).reshape(request)
        datatype = TRITON_TYPES[dtype.type].removeprefix("TYPE_")
        with TritonServer(url) as triton:
            assert triton.is_model_ready(name, 1)
            out = triton.infer(name, {"x": x}, {"x": datatype}, ["y"])
        np.testing.assert_array_equal(out["y"], x)
    finally:
        client.delete_deployment(name)


# -- names, keys and URIs ---------------------------------------------------------------------
path_like = st.lists(
    st.sampled_from(["..", ".", "", "a", "b.c", "~", "%2e%2e", " ", "\\", "a\\..", "\n", "\x00", "é"]),
    max_size=6,
).map("/".join)
tricky_text = st.text(alphabet=list("./\\ab-_~%\x00\n\t é"), max_size=16)
any_text = st.text(max_size=40) | tricky_text | path_like


@settings(max_examples=500, deadline=None)
@given(name=any_text | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,130}", fullmatch=True))
def test_accepted_deployment_names_stay_inside_their_prefix(name):
    try:
        assert validate_model_name(name) == name
    except MlflowException as err:
        assert err.error_code == "INVALID_PARAMETER_VALUE"
        return
    assert 1 <= len(name) <= 128 and name.isascii() and name.isprintable()
    assert not set(name) & set("/\\ \t\n\r\x00") and ".." not in name and name[0] not in ".-_"
    for key in (f"{name}/config.pbtxt", f"{name}/1/model.onnx", f"{name}/"):
        assert check_key(key) == key
        assert posixpath.normpath(posixpath.join("repo", key)).startswith(f"repo/{name}")


@settings(max_examples=500, deadline=None)
@given(key=any_text)
def test_accepted_repository_keys_cannot_escape(key, tmp_path_factory):
    try:
        assert check_key(key) == key
    except MlflowException as err:
        assert err.error_code == "INVALID_PARAMETER_VALUE" and "Refusing repository key" in err.message
        return
    clean = key.rstrip("/")
    assert key and not key.startswith("/") and "\\" not in key
    assert posixpath.normpath(posixpath.join("root", clean)) == posixpath.join("root", clean)
    assert S3Store("s3://bucket/prefix", client=object())._key(key).startswith("prefix/")
    root = tmp_path_factory.getbasetemp() / "keys-root"
    store = LocalStore(root)
    try:
        path = store._path(key).resolve()
    except ValueError:  # an embedded NUL: the OS refuses the path, nothing escapes
        return
    assert path.is_relative_to(store.root) and path != store.root


@settings(max_examples=300, deadline=None)
@given(spec=any_text | st.from_regex(r"(https?|grpc|ftp)://[\[\]a-z0-9:.%@-]{0,20}", fullmatch=True))
def test_target_uris_parse_or_raise_mlflow_exception(spec):
    try:
        urls = parse_target_uri(f"triton:/{spec}")
    except MlflowException as err:
        assert err.error_code == "INVALID_PARAMETER_VALUE"
        return
    assert urls
    for url in urls:
        assert url.split("://")[0] in ("http", "https", "grpc")


@settings(max_examples=300, deadline=None)
@given(uri=any_text | st.from_regex(r"(s3|gs|file)://[\[\]a-z0-9./-]{0,20}", fullmatch=True))
def test_repository_and_endpoint_uris_parse_or_raise_mlflow_exception(uri):
    for parse in (
        lambda: open_store(uri, endpoint_url="http://127.0.0.1:1"),
        lambda: DeploymentConfig.from_dict({"s3_endpoint_url": uri}),
    ):
        try:
            parse()
        except MlflowException as err:
            assert err.error_code == "INVALID_PARAMETER_VALUE"
