"""The streaming ONNX graph walk (``onnx_graph_summary`` / ``io_from_onnx``) against onnx itself.

* Parity: for real exported models (dynamic sequence axis, several inputs/outputs, weights
  listed as inputs, external data) and helper-built ones, the walk gives what
  ``onnx.load(path, load_external_data=False)`` gives.
* Bounded reads: a model with a 50 MB embedded initializer is summarized from < 1 MB of reads.
* Corrupt or truncated files raise INVALID_PARAMETER_VALUE (classified by error code).
* Property: random small graphs built with ``onnx.helper`` walk to onnx's own parse.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from configs import generated_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, ErrorCode
from models import Scorer, TwoHeads, export_onnx, sample
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data, uses_external_data

from mlflow_triton.flavors.onnx import io_from_onnx, onnx_external_data
from mlflow_triton.flavors.onnx_graph import onnx_graph_summary
from mlflow_triton.repository.store import RANGE_READ_BYTES
from mlflow_triton.settings.deployment import DeploymentConfig
from mlflow_triton.triton_config.tensors import ModelIO, TensorSpec

INVALID = ErrorCode.Name(INVALID_PARAMETER_VALUE)

#: Independent oracle: ONNX element type -> Triton config type (what io_from_onnx must give).
ONNX_TO_TRITON = {
    TensorProto.BOOL: "TYPE_BOOL", TensorProto.UINT8: "TYPE_UINT8", TensorProto.UINT16: "TYPE_UINT16",
    TensorProto.UINT32: "TYPE_UINT32", TensorProto.UINT64: "TYPE_UINT64", TensorProto.INT8: "TYPE_INT8",
    TensorProto.INT16: "TYPE_INT16", TensorProto.INT32: "TYPE_INT32", TensorProto.INT64: "TYPE_INT64",
    TensorProto.FLOAT16: "TYPE_FP16", TensorProto.FLOAT: "TYPE_FP32", TensorProto.DOUBLE: "TYPE_FP64",
    TensorProto.STRING: "TYPE_STRING",
}  # fmt: skip


def dims_of(value: onnx.ValueInfoProto):
    return value.type.tensor_type.shape.dim


def reference_io(model: onnx.ModelProto) -> ModelIO:
    """io_from_onnx's contract, computed from a fully parsed model."""
    initializers = {t.name for t in model.graph.initializer}

    def specs(values) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(
                v.name,
                ONNX_TO_TRITON[v.type.tensor_type.elem_type],
                tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims_of(v)),
                v.name,
            )
            for v in values
            if v.name not in initializers
        )

    return ModelIO(specs(model.graph.input), specs(model.graph.output))


def reference_external(model: onnx.ModelProto) -> tuple[str, ...]:
    return tuple(sorted({
        e.value for t in model.graph.initializer if uses_external_data(t)
        for e in t.external_data if e.key == "location"
    }))  # fmt: skip


def assert_parity(source: Path | bytes) -> ModelIO:
    """The walk equals onnx's parse, from a path, an open file and an in-memory reader."""
    if isinstance(source, Path):
        model = onnx.load(str(source), load_external_data=False)
        readers = [source, source.open("rb"), io.BytesIO(source.read_bytes())]
    else:
        model = onnx.load_model_from_string(source)
        readers = [io.BytesIO(source)]
    for reader in readers:
        summary = onnx_graph_summary(reader)
        assert summary.inputs == tuple(model.graph.input)
        assert summary.outputs == tuple(model.graph.output)
        assert summary.initializers == {t.name for t in model.graph.initializer}
        assert summary.external_data == reference_external(model)
        assert io_from_onnx(reader) == reference_io(model)
        if hasattr(reader, "close"):
            reader.close()
    return reference_io(model)


# --- parity on real exported models -------------------------------------------------------------


class Tagger(torch.nn.Module):
    """Token ids (batch, seq) -> per-token scores (batch, seq, 3): a dynamic non-batch axis."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.head = torch.nn.Embedding(50, 8), torch.nn.Linear(8, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens))


def export(model: torch.nn.Module, args: tuple, path: Path, inputs, outputs, axes, **kwargs) -> Path:
    model.eval()
    torch.onnx.export(model, args, str(path), input_names=inputs, output_names=outputs,
                      dynamic_axes=axes, dynamo=False, **kwargs)  # fmt: skip
    return path


def test_dynamic_sequence_axis_stays_dynamic(tmp_path):
    tokens = torch.zeros((2, 7), dtype=torch.int64)
    path = export(Tagger(), (tokens,), tmp_path / "model.onnx", ["tokens"], ["scores"],
                  {"tokens": {0: "batch", 1: "seq"}, "scores": {0: "batch", 1: "seq"}})  # fmt: skip
    io_ = assert_parity(path)
    assert [(t.name, t.data_type, t.shape) for t in io_.inputs] == [("tokens", "TYPE_INT64", (-1, -1))]
    assert [(t.name, t.shape) for t in io_.outputs] == [("scores", (-1, -1, 3))]
    message = generated_config("tagger", "onnx", io_from_onnx(path), DeploymentConfig(), 1)
    assert list(message.input[0].dims) == [-1] and list(message.output[0].dims) == [-1, 3]


def test_several_inputs_and_outputs(tmp_path):
    x, z = torch.from_numpy(sample(2)), torch.from_numpy(sample(2, seed=2))
    path = export(TwoHeads(), (x, z), tmp_path / "model.onnx", ["x", "z"], ["sum", "relu"],
                  {n: {0: "batch"} for n in ("x", "z", "sum", "relu")})  # fmt: skip
    io_ = assert_parity(path)
    assert [t.name for t in io_.inputs] == ["x", "z"]
    assert [t.name for t in io_.outputs] == ["sum", "relu"]


def test_initializers_listed_as_inputs_are_not_inputs(tmp_path):
    path = export(Scorer(), (torch.from_numpy(sample(2)),), tmp_path / "model.onnx", ["features"],
                  ["scores"], {"features": {0: "batch"}, "scores": {0: "batch"}},
                  keep_initializers_as_inputs=True)  # fmt: skip
    model = onnx.load(str(path))
    assert len(model.graph.input) > 1  # the weights are graph inputs too
    io_ = assert_parity(path)
    assert [(t.name, t.shape) for t in io_.inputs] == [("features", (-1, 4))]


@pytest.mark.parametrize("one_file", [True, False])
def test_external_data_locations(tmp_path, one_file):
    model = onnx.load(str(export_onnx(Scorer(), tmp_path / "exported.onnx")))
    path = tmp_path / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=one_file,
                    location="weights.data" if one_file else None, size_threshold=0)  # fmt: skip
    assert_parity(path)
    expected = reference_external(onnx.load(str(path), load_external_data=False))
    assert onnx_external_data(path) == list(expected)
    assert (expected == ("weights.data",)) if one_file else len(expected) == 4
    with path.open("rb") as stream:
        assert onnx_external_data(stream) == list(expected)


def test_external_data_outside_the_folder_is_refused(tmp_path):
    weight = numpy_helper.from_array(np.ones(4, np.float32), "w")
    set_external_data(weight, "../elsewhere.bin", offset=0, length=16)
    weight.data_location, weight.raw_data = TensorProto.EXTERNAL, b""
    path = tmp_path / "model.onnx"
    path.write_bytes(helper_model([weight]).SerializeToString())  # save_model would refuse it
    with pytest.raises(MlflowException) as err:
        onnx_external_data(path)
    assert err.value.error_code == INVALID


def helper_model(initializers=(), inputs=None, outputs=None) -> onnx.ModelProto:
    inputs = inputs or [
        helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 224, 224]),
        helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", 5, None]),
    ]
    outputs = outputs or [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, "n"])]
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["out"])], "g", inputs, outputs,
                              initializer=list(initializers))  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_helper_model_fixed_symbolic_and_missing_dims(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save_model(helper_model(), str(path))
    io_ = assert_parity(path)
    assert [(t.name, t.data_type, t.shape) for t in io_.inputs] == [
        ("image", "TYPE_FP32", (1, 3, 224, 224)), ("mask", "TYPE_BOOL", (-1, 5, -1)),
    ]
    assert [(t.name, t.shape) for t in io_.outputs] == [("out", (1, -1))]


def test_fields_in_any_order_and_repeated_messages_merge():
    """Protobuf merges a repeated ``graph``; the walk must not rely on serialization order."""
    model = helper_model([numpy_helper.from_array(np.ones(3, np.float32), "image")])
    first, second = onnx.ModelProto(), onnx.ModelProto()
    first.graph.output.extend(model.graph.output)
    first.graph.initializer.extend(model.graph.initializer)
    second.graph.node.extend(model.graph.node)
    second.graph.input.extend(model.graph.input)
    data = second.SerializeToString() + first.SerializeToString()
    merged = onnx.load_model_from_string(data)
    assert len(merged.graph.input) == 2 and len(merged.graph.initializer) == 1
    io_ = assert_parity(data)
    assert [t.name for t in io_.inputs] == ["mask"]  # "image" is an initializer in the other half


# --- bounded reads ------------------------------------------------------------------------------


class CountingRaw(io.RawIOBase):
    """A raw file that counts what is pulled from storage (each ``readinto``: one ranged GET)."""

    def __init__(self, path: Path) -> None:
        self.file, self.bytes, self.reads = path.open("rb", buffering=0), 0, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.file.seek(offset, whence)

    def tell(self) -> int:
        return self.file.tell()

    def readinto(self, buffer) -> int:
        count = self.file.readinto(buffer)
        self.bytes, self.reads = self.bytes + count, self.reads + 1
        return count

    def close(self) -> None:
        self.file.close()
        super().close()


class CountingReader:
    """Counts the bytes the walk itself asks for (``read``), over any seekable reader."""

    def __init__(self, inner) -> None:
        self.inner, self.bytes = inner, 0

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.bytes += len(data)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.inner.seek(offset, whence)

    def tell(self) -> int:
        return self.inner.tell()


WEIGHT_FLOATS = 50 * 1000 * 1000 // 4  # a 50 MB float32 initializer


@pytest.fixture(scope="module")
def heavy_model(tmp_path_factory) -> Path:
    weight = numpy_helper.from_array(np.arange(WEIGHT_FLOATS, dtype=np.float32), "weight")
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WEIGHT_FLOATS])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WEIGHT_FLOATS])]
    node = helper.make_node("Add", ["x", "weight"], ["y"])
    graph = helper.make_graph([node], "heavy", inputs, outputs, initializer=[weight])
    path = tmp_path_factory.mktemp("heavy") / "model.onnx"
    onnx.save_model(helper.make_model(graph), str(path))
    assert path.stat().st_size > 50_000_000  # embedded, not external
    return path


def test_large_embedded_initializer_is_skipped_not_read(heavy_model):
    with heavy_model.open("rb") as stream:
        counting = CountingReader(stream)
        io_ = io_from_onnx(counting)
    assert [(t.name, t.shape) for t in io_.inputs] == [("x", (-1, WEIGHT_FLOATS))]
    assert counting.bytes < 1_000_000, counting.bytes
    # What the S3 reader (1 MiB ranged GETs behind a BufferedReader) pulls: a few requests.
    raw = CountingRaw(heavy_model)
    with io.BufferedReader(raw, buffer_size=RANGE_READ_BYTES) as stream:
        assert io_from_onnx(stream) == io_
    # One buffer fill at the start (header, nodes, the weight's name) and one after the weight.
    assert raw.reads <= 2 and raw.bytes <= RANGE_READ_BYTES + 4096, (raw.reads, raw.bytes)
    print(f"walk read {counting.bytes} B; 1 MiB buffered reader: {raw.reads} reads, {raw.bytes} B")


def test_large_model_parity(heavy_model):
    model = onnx.load(str(heavy_model), load_external_data=False)
    assert io_from_onnx(heavy_model) == reference_io(model)


# --- corrupt and truncated files ----------------------------------------------------------------


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


CORRUPT = {
    "garbage": b"\x00not an onnx model" * 10,
    "empty": b"",
    "zip (a TorchScript file)": b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + b"\x00" * 40,
    "json": b'{"graph": {"input": []}}',
    "group wire type": bytes([7 << 3 | 3]) + b"\x00" * 8,
    "end-group wire type": bytes([7 << 3 | 4]),
    "wire type 6": bytes([1 << 3 | 6, 0]),
    "overlong varint": b"\x08" + b"\xff" * 11,
    "graph longer than the file": varint(7 << 3 | 2) + varint(1000) + b"\x00" * 10,
    "no graph": varint(1 << 3) + varint(8),
    "graph with a varint wire type": varint(7 << 3) + varint(3),
    "initializer longer than its graph": field(7, varint(5 << 3 | 2) + varint(50) + b"\x00" * 4),
    "input that is not a ValueInfoProto": field(7, field(11, b"\xff\xff\xff")),
    "initializer name not UTF-8": field(7, field(5, field(8, b"\xff\xfe"))),
    "truncated fixed64 in a tensor": field(7, field(5, bytes([10 << 3 | 1]) + b"\x00" * 3)),
}


@pytest.mark.parametrize("data", CORRUPT.values(), ids=CORRUPT.keys())
def test_corrupt_files_are_invalid_parameter_values(tmp_path, data):
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    for call in (io_from_onnx, onnx_external_data, onnx_graph_summary):
        with pytest.raises(MlflowException) as err:
            call(path)
        assert err.value.error_code == INVALID
        with pytest.raises(MlflowException) as err:
            call(io.BytesIO(data))
        assert err.value.error_code == INVALID


def test_every_truncation_fails_like_onnx(tmp_path):
    """Cut a real model at every byte: the walk fails exactly where onnx's parse fails (or
    leaves no graph), and agrees with it everywhere else."""
    data = export_onnx(Scorer(), tmp_path / "m.onnx").read_bytes()
    assert len(data) < 5000
    agreed = failed = 0
    for cut in range(len(data) + 1):
        prefix = data[:cut]
        try:
            model = onnx.load_model_from_string(prefix)
        except Exception:  # noqa: BLE001 - any parse failure of onnx counts
            model = None
        if model is None or not model.HasField("graph"):
            with pytest.raises(MlflowException) as err:
                io_from_onnx(io.BytesIO(prefix))
            assert err.value.error_code == INVALID
            failed += 1
        else:
            assert io_from_onnx(io.BytesIO(prefix)) == reference_io(model)
            agreed += 1
    assert failed > len(data) // 2 and agreed >= 2  # the whole file, and the cut after its graph
    print(f"{len(data)} cuts: {failed} refused, {agreed} parsed")


def test_non_tensor_and_untyped_inputs_name_the_tensor():
    sequence = helper.make_tensor_sequence_value_info("seq_in", TensorProto.FLOAT, [2])
    untyped = onnx.ValueInfoProto(name="untyped")
    untyped.type.tensor_type.shape.SetInParent()  # a tensor without elem_type
    complex_in = helper.make_tensor_value_info("cplx", TensorProto.COMPLEX64, [2])
    for bad in (sequence, untyped, complex_in):
        data = helper_model(inputs=[bad]).SerializeToString()
        with pytest.raises(MlflowException) as err:
            io_from_onnx(io.BytesIO(data))
        assert err.value.error_code == INVALID and repr(bad.name) in err.value.message


# --- property: random graphs --------------------------------------------------------------------

ELEM_TYPES = sorted(ONNX_TO_TRITON)
NUMERIC = [t for t in ELEM_TYPES if t not in (TensorProto.STRING, TensorProto.BOOL)]
names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=6)
symbols = st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True)
dim = st.integers(0, 2**40) | st.integers(-3, -1) | symbols | st.none()  # value, param, missing
shapes = st.none() | st.lists(dim, max_size=5)


@st.composite
def value_infos(draw, name: str) -> onnx.ValueInfoProto:
    value = helper.make_tensor_value_info(name, draw(st.sampled_from(ELEM_TYPES)), draw(shapes))
    if draw(st.booleans()):
        value.doc_string = draw(st.text(max_size=20))
    return value


@st.composite
def initializers(draw, name: str) -> onnx.TensorProto:
    elem = draw(st.sampled_from(NUMERIC))
    dims = draw(st.lists(st.integers(1, 4), max_size=3))
    array = np.arange(int(np.prod(dims)), dtype=helper.tensor_dtype_to_np_dtype(elem)).reshape(dims)
    storage = draw(st.sampled_from(["raw", "typed", "external"]))
    if storage == "typed":  # float_data / int32_data / int64_data...: skipped field by field
        tensor = helper.make_tensor(name, elem, dims, array.flatten().tolist(), raw=False)
    else:
        tensor = numpy_helper.from_array(array, name)
    if storage == "external":
        location = draw(st.from_regex(r"[a-z]{1,4}(/[a-z]{1,4})?\.bin", fullmatch=True))
        set_external_data(tensor, location, offset=draw(st.integers(0, 2**33)), length=array.nbytes)
        tensor.data_location, tensor.raw_data = TensorProto.EXTERNAL, b""
    return tensor


@st.composite
def models(draw) -> bytes:
    tensor_names = draw(st.lists(names, min_size=2, max_size=8, unique=True))
    split = draw(st.integers(1, len(tensor_names) - 1))
    inputs = [draw(value_infos(n)) for n in tensor_names[:split]]
    outputs = [draw(value_infos(n)) for n in tensor_names[split:]]
    # Some initializers share an input's name (weights exported as inputs), some do not.
    init_names = draw(st.lists(st.sampled_from(tensor_names[:split]) | names, max_size=4, unique=True))
    nodes = [
        helper.make_node("Identity", [i.name], [f"tmp{k}"], doc_string=draw(st.text(max_size=10)))
        for k, i in enumerate(inputs)
    ]
    if draw(st.booleans()):
        nodes.append(helper.make_node("Constant", [], ["c"], value=draw(initializers("const"))))
    graph = helper.make_graph(
        nodes, draw(names), inputs, outputs, initializer=[draw(initializers(n)) for n in init_names],
        doc_string=draw(st.text(max_size=30)),
        value_info=[helper.make_tensor_value_info("tmp0", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", draw(st.integers(7, 21)))],
                              producer_name=draw(st.text(max_size=10)))  # fmt: skip
    if draw(st.booleans()):
        helper.set_model_props(model, {draw(names): draw(st.text(max_size=10))})
    return model.SerializeToString()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=models())
def test_random_graphs_walk_like_onnx_parses(data):
    assert_parity(data)
