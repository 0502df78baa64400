"""Unit tests: config.pbtxt generation from ONNX graphs and MLflow signatures."""

from __future__ import annotations

import numpy as np
import pytest
from configs import generated_config, signature_io
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.models.signature import ModelSignature
from mlflow.types import ColSpec, Schema
from models import Scorer, export_onnx
from tritonclient.grpc import model_config_pb2 as mc

from mlflow_triton.flavors.onnx import io_from_onnx
from mlflow_triton.settings.deployment import DeploymentConfig
from mlflow_triton.triton_config.model_config import parse_pbtxt, serving_versions, to_pbtxt


def test_onnx_graph_gives_names_types_and_batch_axis(tmp_path):
    io = io_from_onnx(export_onnx(Scorer(), tmp_path / "m.onnx"))
    assert [(t.name, t.data_type, t.shape) for t in io.inputs] == [("features", "TYPE_FP32", (-1, 4))]
    assert [(t.name, t.shape) for t in io.outputs] == [("scores", (-1, 3))]

    message = generated_config("scorer", "onnx", io, DeploymentConfig.from_dict({"instance_kind": "cpu"}), 7)
    parsed = parse_pbtxt(to_pbtxt(message))
    assert parsed == message
    assert parsed.backend == "onnxruntime" and parsed.max_batch_size == 32
    assert list(parsed.input[0].dims) == [4] and list(parsed.output[0].dims) == [3]
    assert parsed.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 200
    assert serving_versions(parsed) == [7]


def test_torchscript_names_follow_libtorch_convention():
    signature = infer_signature(
        {"x": np.zeros((2, 4), np.float32), "ids": np.zeros((2, 3), np.int64)},
        {"y": np.zeros((2, 1), np.float64)},
    )
    io = signature_io(signature, "torchscript")
    assert [(t.name, t.source_name, t.data_type) for t in io.inputs] == [
        ("INPUT__0", "x", "TYPE_FP32"), ("INPUT__1", "ids", "TYPE_INT64"),
    ]
    assert [(t.name, t.source_name, t.data_type) for t in io.outputs] == [("OUTPUT__0", "y", "TYPE_FP64")]
    message = generated_config("m", "torchscript", io, DeploymentConfig(), 1)
    assert message.backend == "pytorch" and message.default_model_filename == "model.pt"
    assert message.instance_group[0].kind == mc.ModelInstanceGroup.KIND_AUTO  # the default: GPUs where present


def test_no_batching_keeps_full_shapes_and_no_batcher():
    signature = infer_signature(np.zeros((2, 4), np.float32), np.zeros((2, 3), np.float32))
    io = signature_io(signature, "onnx")
    message = generated_config("m", "onnx", io, DeploymentConfig(max_batch_size=0), 1)
    assert list(message.input[0].dims) == [-1, 4] and not message.HasField("dynamic_batching")


def test_preferred_batch_sizes_and_instances():
    signature = infer_signature(np.zeros((2, 4), np.float32), np.zeros((2, 3), np.float32))
    config = DeploymentConfig.from_dict({"preferred_batch_size": "8,16", "instance_count": 3, "instance_kind": "auto"})
    message = generated_config("m", "onnx", signature_io(signature, "onnx"), config, 1)
    assert list(message.dynamic_batching.preferred_batch_size) == [8, 16]
    assert message.instance_group[0].count == 3
    assert message.instance_group[0].kind == mc.ModelInstanceGroup.KIND_AUTO


def test_fixed_batch_dimension_is_a_clear_error():
    from mlflow.types import TensorSpec
    from mlflow.types.schema import Schema as S

    signature = ModelSignature(
        inputs=S([TensorSpec(np.dtype(np.float32), (1, 4), "x")]),
        outputs=S([TensorSpec(np.dtype(np.float32), (1, 3), "y")]),
    )
    with pytest.raises(MlflowException, match="max_batch_size=0"):
        generated_config("m", "onnx", signature_io(signature, "onnx"), DeploymentConfig(), 1)


def test_missing_signature_and_mixed_columns():
    with pytest.raises(MlflowException, match="no MLflow signature"):
        signature_io(None, "torchscript")
    mixed = ModelSignature(inputs=Schema([ColSpec("double", "a"), ColSpec("string", "b")]),
                           outputs=Schema([ColSpec("double", "y")]))
    with pytest.raises(MlflowException, match="mixed types"):
        signature_io(mixed, "torchscript")


def test_column_signature_becomes_one_matrix_input():
    columns = ModelSignature(inputs=Schema([ColSpec("float", "a"), ColSpec("float", "b")]),
                             outputs=Schema([ColSpec("float", "y")]))
    io = signature_io(columns, "torchscript")
    assert [(t.name, t.shape) for t in io.inputs] == [("INPUT__0", (-1, 2))]


def test_corrupt_onnx_is_rejected(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x00not an onnx model" * 10)
    with pytest.raises(MlflowException, match="not a readable ONNX model"):
        io_from_onnx(bad)


def test_dtype_tables_come_from_tritonclient():
    from mlflow_triton.triton_config.tensors import (
        NUMPY_DTYPES,
        config_dtype,
        protocol_dtype,
        triton_type,
    )

    assert set(NUMPY_DTYPES) == {
        "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
        "FP16", "FP32", "FP64", "BYTES",
    }  # fmt: skip
    for protocol, numpy_type in NUMPY_DTYPES.items():
        assert triton_type(numpy_type, "x") == config_dtype(protocol)
        assert protocol_dtype(config_dtype(protocol)) == protocol
    assert config_dtype("BYTES") == "TYPE_STRING" and protocol_dtype("TYPE_STRING") == "BYTES"
    for text in (np.str_, np.bytes_, np.dtype("U3"), np.dtype("S2"), object):
        assert triton_type(text, "x") == "TYPE_STRING"
    import ml_dtypes  # what numpy/onnx use for bfloat16: Triton's BF16 is not generated

    for unsupported in (np.complex64, np.dtype("datetime64[s]"), ml_dtypes.bfloat16):
        with pytest.raises(MlflowException) as err:
            triton_type(unsupported, "signature input 'weird'")
        assert err.value.error_code == "INVALID_PARAMETER_VALUE"
        assert "'weird'" in err.value.message
