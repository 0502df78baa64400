"""The structure of an ONNX graph, read without its weights.

An ONNX file is one serialized ``ModelProto``. Its weights usually sit *inside* the graph
(``GraphProto.initializer[i].raw_data``), so parsing the file with ``onnx.load`` reads, and
holds in memory, every byte of a multi-GB model. The inputs and outputs Triton's config needs
are a few hundred bytes. Protobuf's wire format is a flat sequence of ``(field number, wire
type)`` keys, each followed by a varint, a fixed 4/8 bytes or a length-prefixed payload, so a
reader can hop over any payload it does not need with one ``seek``. Walking only the fields
below costs a handful of small reads wherever the weights are; on S3
(``S3Store.open_uri``: 1 MiB ranged GETs) that is a few requests instead of a download::

    summary = onnx_graph_summary(Path("model.onnx"))        # or any seekable binary reader
    summary.inputs, summary.outputs, summary.external_data
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterator

from mlflow.exceptions import MlflowException

if TYPE_CHECKING:
    import onnx

_VARINT, _FIXED64, _LEN, _GROUP_START, _GROUP_END, _FIXED32 = range(6)
_MODEL_GRAPH = 7  # ModelProto.graph
_GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT = 5, 11, 12  # GraphProto
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14  # TensorProto
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_MAX_VARINT_BYTES = 10


class _CorruptModel(Exception):
    """The bytes are not a well-formed protobuf message (turned into INVALID_PARAMETER_VALUE)."""


class _WireReader:
    """Protobuf wire-format primitives over a seekable binary stream.

    Every method takes ``end``, the offset where the enclosing message stops, and refuses to
    read or skip past it: a truncated file or a corrupt length fails here instead of being
    read as garbage.
    """

    def __init__(self, stream: BinaryIO, start: int) -> None:
        self.stream, self.pos = stream, start

    def read(self, size: int, end: int) -> bytes:
        if self.pos + size > end:
            raise _CorruptModel(f"a field of {size} bytes at offset {self.pos} runs past its end")
        data = self.stream.read(size)
        if len(data) != size:
            raise _CorruptModel(f"file ends inside a field at offset {self.pos}")
        self.pos += size
        return data

    def skip(self, size: int, end: int) -> None:
        if self.pos + size > end:
            raise _CorruptModel(f"a field of {size} bytes at offset {self.pos} runs past its end")
        self.pos += size
        self.stream.seek(self.pos)

    def varint(self, end: int) -> int:
        value = 0
        for shift in range(0, 7 * _MAX_VARINT_BYTES, 7):
            byte = self.read(1, end)[0]
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
        raise _CorruptModel(f"varint longer than {_MAX_VARINT_BYTES} bytes at offset {self.pos}")

    def length(self, end: int) -> int:
        """A length prefix, checked to fit in the enclosing message."""
        size = self.varint(end)
        if self.pos + size > end:
            raise _CorruptModel(f"a field of {size} bytes at offset {self.pos} runs past its end")
        return size

    def fields(self, end: int) -> Iterator[tuple[int, int]]:
        """``(field number, wire type)`` of each field up to ``end``; the caller consumes the
        value (``read``/``varint``/``skip_value``...) before asking for the next one."""
        while self.pos < end:
            key = self.varint(end)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise _CorruptModel(f"field number 0 at offset {self.pos}")
            yield number, wire

    def skip_value(self, wire: int, end: int) -> None:
        if wire == _VARINT:
            self.varint(end)
        elif wire == _FIXED64:
            self.skip(8, end)
        elif wire == _LEN:
            self.skip(self.length(end), end)
        elif wire == _FIXED32:
            self.skip(4, end)
        else:  # 3/4 are groups, deprecated and never used by onnx.proto; 6/7 do not exist
            raise _CorruptModel(f"unsupported wire type {wire} at offset {self.pos}")


@dataclass(frozen=True)
class OnnxGraphSummary:
    """What the config builder needs from an ONNX model, read without its weights.

    ``inputs``/``outputs`` are the graph's ``ValueInfoProto`` as listed (initializers included:
    see :func:`io_from_onnx`); ``initializers`` the names of the main graph's initializers;
    ``external_data`` the ``location`` of each initializer stored outside the file, sorted.
    """

    inputs: tuple["onnx.ValueInfoProto", ...]
    outputs: tuple["onnx.ValueInfoProto", ...]
    initializers: frozenset[str]
    external_data: tuple[str, ...]


def source_label(source: Path | str | BinaryIO) -> str:
    name = source if isinstance(source, (str, os.PathLike)) else getattr(source, "name", None)
    return Path(name).name if isinstance(name, (str, os.PathLike)) else "the ONNX model"


def onnx_graph_summary(source: Path | str | BinaryIO) -> OnnxGraphSummary:
    """Inputs, outputs, initializer names and external-data files of an ONNX model.

    ``source`` is a path or a seekable binary reader (a local file opened ``"rb"``,
    ``S3Store.open_uri(...)``); a reader is read from offset 0 and left open. Only the graph's
    structure is read: ``ModelProto.graph`` -> ``GraphProto.input``/``output`` (small messages,
    parsed with ``onnx``) and, of each ``GraphProto.initializer``, its ``name`` and
    ``external_data``/``data_location``. Everything else -- nodes, the tensors' data -- is
    skipped with ``seek``, so a model with gigabytes of embedded weights costs a few small
    reads (a few ranged GETs on S3) instead of a download. Fields may come in any order and
    repeat (protobuf merges repeated messages), as ``onnx.load`` would accept them.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE when the bytes are not a readable ONNX model
            (truncated, corrupt, not protobuf, or without a graph).
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as stream:
            return _read_summary(stream, source_label(source))
    return _read_summary(source, source_label(source))


def _read_summary(stream: BinaryIO, label: str) -> OnnxGraphSummary:
    from google.protobuf.message import DecodeError

    try:
        return _GraphWalk(stream).summary()
    except (_CorruptModel, DecodeError, UnicodeDecodeError) as err:
        raise MlflowException.invalid_parameter_value(
            f"{label} is not a readable ONNX model: {err}"
        ) from err


class _GraphWalk:
    """One pass over a ``ModelProto``: the graph's inputs, outputs and initializers (their
    names and external-data locations only), every other payload skipped with a seek."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.inputs: list = []
        self.outputs: list = []
        self.initializers: set[str] = set()
        self.external: set[str] = set()

    def summary(self) -> OnnxGraphSummary:
        size = self.stream.seek(0, io.SEEK_END)
        self.stream.seek(0)
        reader, has_graph = _WireReader(self.stream, 0), False
        for number, wire in reader.fields(size):
            if number == _MODEL_GRAPH and wire == _LEN:
                length = reader.length(size)
                self.graph(reader, reader.pos + length)
                has_graph = True
            else:  # ir_version, opset_import, functions, metadata...
                reader.skip_value(wire, size)
        if not has_graph:
            raise _CorruptModel("it has no graph")
        return OnnxGraphSummary(
            tuple(self.inputs), tuple(self.outputs), frozenset(self.initializers), tuple(sorted(self.external))
        )

    def graph(self, reader: _WireReader, end: int) -> None:
        from onnx import ValueInfoProto

        for number, wire in reader.fields(end):
            if number in (_GRAPH_INPUT, _GRAPH_OUTPUT) and wire == _LEN:
                value = ValueInfoProto.FromString(reader.read(reader.length(end), end))
                (self.inputs if number == _GRAPH_INPUT else self.outputs).append(value)
            elif number == _GRAPH_INITIALIZER and wire == _LEN:
                size = reader.length(end)
                self.initializer(reader, reader.pos + size)
            else:  # nodes, value_info, doc_string...
                reader.skip_value(wire, end)

    def initializer(self, reader: _WireReader, end: int) -> None:
        from onnx import StringStringEntryProto

        name, location, locations = "", 0, []
        for number, wire in reader.fields(end):
            if number == _TENSOR_NAME and wire == _LEN:
                name = reader.read(reader.length(end), end).decode("utf-8")
            elif number == _TENSOR_EXTERNAL_DATA and wire == _LEN:
                entry = StringStringEntryProto.FromString(reader.read(reader.length(end), end))
                if entry.key == "location":
                    locations.append(entry.value)
            elif number == _TENSOR_DATA_LOCATION and wire == _VARINT:
                location = reader.varint(end)
            else:  # dims, data_type, raw_data, float_data...: seek past the weights
                reader.skip_value(wire, end)
        self.initializers.add(name)
        if location == _EXTERNAL:
            self.external.update(locations)
