"""Large weights straight between model files and numpy arrays, without protobuf copies.

Parsing a 700 MB ONNX file with protobuf holds the file's bytes and the parsed message at once,
and graphsurgeon then copies every weight into numpy: three copies of the weights. Serializing
is the mirror image (numpy -> TensorProto -> one big bytes object -> file), and checking the
saved file parses it once more. This module reads and writes the protobuf wire format of the
*top level* of a model by hand, so that the ``raw_data`` of large top-level initializers moves
between the file and numpy arrays directly (one copy, the array itself); everything else (nodes,
small initializers, attributes, subgraphs, metadata) is still parsed and serialized by protobuf.

Wire format (https://protobuf.dev/programming-guides/encoding/): a message is a sequence of
fields ``key value`` in any order, ``key = field_number << 3 | wire_type``; wire types are 0
varint, 1 fixed64, 2 length-delimited (varint length, then bytes), 5 fixed32; a message field
that occurs twice is merged, repeated fields concatenate. Used here: ``ModelProto.graph = 7``,
``GraphProto.initializer = 5``, ``TensorProto.raw_data = 9``. The files written are ordinary
ONNX files (the graph field comes last and streamed initializers follow the others, which any
protobuf parser accepts); ``onnx.load`` reads them unchanged.
"""
from __future__ import annotations

import io
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

#: initializers whose raw data is at least this large bypass protobuf (the size onnx itself
#: uses as the external-data threshold).
MIN_STREAMED_BYTES = 1024

_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA, _TENSOR_NAME = 7, 5, 9, 8
_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5

#: ONNX data types whose raw data is the little-endian numpy buffer, one element per item.
_STREAMABLE = {
    TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64, TensorProto.FLOAT16: np.float16,
    TensorProto.INT8: np.int8, TensorProto.INT16: np.int16, TensorProto.INT32: np.int32,
    TensorProto.INT64: np.int64, TensorProto.UINT8: np.uint8, TensorProto.UINT16: np.uint16,
    TensorProto.UINT32: np.uint32, TensorProto.UINT64: np.uint64, TensorProto.BOOL: np.bool_,
}
_ONNX_TYPE = {np.dtype(v): k for k, v in _STREAMABLE.items()}


class WireError(ValueError):
    """The file is not protobuf wire format that this module can split (the caller falls back
    to a plain protobuf parse, which reports the problem properly)."""


class CorruptTensorError(WireError):
    """A top-level initializer's framing is sound but its own fields do not parse as a
    TensorProto (``name`` is its name when that field could be read, else its position)."""

    def __init__(self, name: str, reason: str):
        self.name = name
        super().__init__(f"initializer {name} is corrupt: its fields do not parse as a TensorProto ({reason})")


@dataclass(frozen=True)
class RawTensor:
    """A top-level initializer whose raw data sits at ``offset`` in a file, ``length`` bytes."""

    name: str
    data_type: int
    dims: tuple[int, ...]
    offset: int
    length: int

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_STREAMABLE[self.data_type])


def streamable(values: np.ndarray) -> bool:
    """True if ``values`` can be written as raw data straight from its buffer."""
    return values.dtype in _ONNX_TYPE and values.nbytes >= MIN_STREAMED_BYTES and sys.byteorder == "little"


# ---------------------------------------------------------------------------------------------
# reading


def split_model_file(path: str | os.PathLike, min_bytes: int = MIN_STREAMED_BYTES) -> tuple[bytes, list[RawTensor]]:
    """The model file's bytes without its large top-level initializers, and where their raw
    data is in the file. Raises :class:`WireError` if the file is not splittable."""
    if sys.byteorder != "little":
        raise WireError("raw data is little-endian; this machine is not")
    size = os.path.getsize(path)
    with open(path, "rb", buffering=1 << 16) as fh:
        reader = _Reader(fh, size)
        light = bytearray()
        raw: list[RawTensor] = []
        while reader.pos < size:
            key_start = reader.pos
            field, wire = reader.key()
            if field == _MODEL_GRAPH and wire == _LEN:
                length = reader.varint()
                graph = _split_graph(reader, reader.pos + length, min_bytes, raw)
                light += _key(_MODEL_GRAPH, _LEN) + _varint(len(graph)) + graph
            else:
                light += reader.read_from(key_start, reader.skip(wire))
    return bytes(light), raw


def _split_graph(reader: "_Reader", end: int, min_bytes: int, raw: list[RawTensor]) -> bytes:
    graph = bytearray()
    while reader.pos < end:
        key_start = reader.pos
        field, wire = reader.key()
        if field == _GRAPH_INITIALIZER and wire == _LEN:
            length = reader.varint()
            value_start = reader.pos
            found = _split_tensor(reader, value_start + length, min_bytes, len(raw))
            if found is not None:
                raw.append(found)
                continue
            reader.seek(value_start + length)
        else:
            reader.skip(wire)
        graph += reader.read_from(key_start, reader.pos)
    if reader.pos != end:
        raise WireError("graph field overruns its length")
    return bytes(graph)


def _split_tensor(reader: "_Reader", end: int, min_bytes: int, index: int) -> RawTensor | None:
    """Scan one TensorProto; if its raw data is large and plain, return where it lies."""
    stub = bytearray()
    data = None
    while reader.pos < end:
        key_start = reader.pos
        field, wire = reader.key()
        if field == _TENSOR_RAW_DATA and wire == _LEN:
            length = reader.varint()
            data = (reader.pos, length)
            reader.seek(reader.pos + length)
        else:
            reader.skip(wire)
            stub += reader.read_from(key_start, reader.pos)
    if reader.pos != end:
        raise WireError("initializer overruns its length")
    if data is None or data[1] < min_bytes:
        return None
    try:
        tensor = TensorProto.FromString(bytes(stub))
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise CorruptTensorError(_stub_name(bytes(stub), index), str(exc) or type(exc).__name__) from None
    plain = (tensor.data_type in _STREAMABLE and tensor.data_location != TensorProto.EXTERNAL
             and not tensor.HasField("segment") and not tensor.external_data
             and not any(len(getattr(tensor, f)) for f in ("float_data", "int32_data", "string_data",
                                                           "int64_data", "double_data", "uint64_data")))
    if not plain or any(d < 0 for d in tensor.dims) or math.prod(tensor.dims) * np.dtype(_STREAMABLE[tensor.data_type]).itemsize != data[1]:
        return None  # left to protobuf (and to the load-time validation, which names the problem)
    return RawTensor(tensor.name, tensor.data_type, tuple(int(d) for d in tensor.dims), data[0], data[1])


def _stub_name(stub: bytes, index: int) -> str:
    """The tensor's ``name`` field (8) read at wire level, for errors; else its position."""
    reader = _Reader(io.BytesIO(stub), len(stub))
    try:
        while reader.pos < len(stub):
            field, wire = reader.key()
            if field == _TENSOR_NAME and wire == _LEN:
                length = reader.varint()
                return repr(reader.read_from(reader.pos, reader.pos + length).decode("utf-8", "replace"))
            reader.skip(wire)
    except WireError:
        pass
    return f"#{index + 1} of those over {MIN_STREAMED_BYTES} bytes"


def read_raw(fh: io.BufferedReader, tensor: RawTensor) -> np.ndarray:
    """The tensor's values, read from the file straight into a new array."""
    values = np.empty(tensor.dims, tensor.dtype)
    fh.seek(tensor.offset)
    view = memoryview(values.reshape(-1)).cast("B")
    if fh.readinto(view) != tensor.length:
        raise WireError(f"initializer '{tensor.name}': file ends inside its data")
    return values


def raw_tensor_proto(tensor: RawTensor, values: np.ndarray | None = None) -> TensorProto:
    """A TensorProto for ``tensor``: with ``values`` as raw data, or (None) data-less."""
    proto = TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
    if values is not None:
        proto.raw_data = values.tobytes()
    return proto


class _Reader:
    def __init__(self, fh, size: int):
        self.fh = fh
        self.size = size
        self.pos = 0

    def seek(self, pos: int) -> None:
        if pos > self.size:
            raise WireError("field runs past the end of the file")
        self.fh.seek(pos)
        self.pos = pos

    def byte(self) -> int:
        b = self.fh.read(1)
        if not b:
            raise WireError("file ends inside a field")
        self.pos += 1
        return b[0]

    def varint(self) -> int:
        result, shift = 0, 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result
            shift += 7
            if shift > 63:
                raise WireError("varint longer than 10 bytes")

    def key(self) -> tuple[int, int]:
        key = self.varint()
        if key >> 3 == 0:
            raise WireError("field number 0")
        return key >> 3, key & 7

    def skip(self, wire: int) -> int:
        """Move past the value of a field of this wire type; returns the new position."""
        if wire == _VARINT:
            self.varint()
        elif wire == _FIXED64:
            self.seek(self.pos + 8)
        elif wire == _FIXED32:
            self.seek(self.pos + 4)
        elif wire == _LEN:
            length = self.varint()
            self.seek(self.pos + length)
        else:
            raise WireError(f"wire type {wire} (groups) is not used by ONNX")
        return self.pos

    def read_from(self, start: int, end: int) -> bytes:
        """The bytes in [start, end) of the file; leaves the position at ``end``."""
        self.fh.seek(start)
        data = self.fh.read(end - start)
        if len(data) != end - start:
            raise WireError("file ends inside a field")
        self.pos = end
        return data


# ---------------------------------------------------------------------------------------------
# writing


def write_model_file(proto: onnx.ModelProto, weights: list[tuple[str, np.ndarray]], path: Path) -> list[RawTensor]:
    """Write ``proto`` with ``weights`` added as top-level initializers of its graph, their
    ``raw_data`` written straight from the arrays. ``proto``'s graph field is cleared on the way.
    Returns where each weight's data lies in the file."""
    weights = [(name, _little_endian(values)) for name, values in weights]
    graph = proto.graph.SerializeToString()
    proto.ClearField("graph")
    head = proto.SerializeToString()
    prefixes = [TensorProto(name=name, data_type=_ONNX_TYPE[v.dtype], dims=v.shape).SerializeToString()
                + _key(_TENSOR_RAW_DATA, _LEN) + _varint(v.nbytes) for name, v in weights]
    graph_length = len(graph) + sum(_entry_length(len(p) + v.nbytes) for p, (_, v) in zip(prefixes, weights))
    written: list[RawTensor] = []
    with open(path, "wb") as fh:
        fh.write(head)
        fh.write(_key(_MODEL_GRAPH, _LEN) + _varint(graph_length))
        fh.write(graph)
        for prefix, (name, values) in zip(prefixes, weights):
            fh.write(_key(_GRAPH_INITIALIZER, _LEN) + _varint(len(prefix) + values.nbytes))
            fh.write(prefix)
            written.append(RawTensor(name, _ONNX_TYPE[values.dtype], values.shape, fh.tell(), values.nbytes))
            fh.write(_buffer(values))
        fh.flush()
        os.fsync(fh.fileno())
    return written


def model_file_size(proto: onnx.ModelProto, weights: list[tuple[str, np.ndarray]]) -> int:
    """Bytes :func:`write_model_file` would write for ``proto`` and ``weights``, counted without
    writing or copying the weights (``proto`` is left as it was)."""
    graph = proto.graph.ByteSize()
    head = proto.ByteSize() - graph - len(_key(_MODEL_GRAPH, _LEN)) - len(_varint(graph)) \
        if proto.HasField("graph") else proto.ByteSize()
    prefixes = [TensorProto(name=name, data_type=_ONNX_TYPE[np.dtype(v.dtype).newbyteorder("=")],
                            dims=v.shape).ByteSize()
                + len(_key(_TENSOR_RAW_DATA, _LEN)) + len(_varint(v.nbytes)) for name, v in weights]
    graph_length = graph + sum(_entry_length(p + v.nbytes) for p, (_, v) in zip(prefixes, weights))
    return head + len(_key(_MODEL_GRAPH, _LEN)) + len(_varint(graph_length)) + graph_length


def write_external_data(proto: onnx.ModelProto, weights: list[tuple[str, np.ndarray]],
                        data_path: Path) -> list[RawTensor]:
    """Write ``weights`` one after another to ``data_path`` and add to ``proto``'s graph an
    initializer referencing each (ONNX external data, location relative to the model's folder)."""
    written: list[RawTensor] = []
    with open(data_path, "wb") as fh:
        for name, values in weights:
            values = _little_endian(values)
            tensor = RawTensor(name, _ONNX_TYPE[values.dtype], values.shape, fh.tell(), values.nbytes)
            fh.write(_buffer(values))
            proto.graph.initializer.append(external_stub(tensor, data_path.name))
            written.append(tensor)
        fh.flush()
        os.fsync(fh.fileno())
    return written


def external_stub(tensor: RawTensor, location: str) -> TensorProto:
    """A TensorProto that says: my data is ``tensor.length`` bytes at ``tensor.offset`` of ``location``."""
    stub = raw_tensor_proto(tensor)
    stub.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(tensor.offset)), ("length", str(tensor.length))):
        entry = stub.external_data.add()
        entry.key, entry.value = key, value
    return stub


def _little_endian(values: np.ndarray) -> np.ndarray:
    values = np.ascontiguousarray(values)
    if values.dtype.byteorder == ">":
        values = values.astype(values.dtype.newbyteorder("<"))
    return values


def _buffer(values: np.ndarray) -> memoryview:
    return memoryview(values.reshape(-1)).cast("B")


def _entry_length(value_length: int) -> int:
    return len(_key(_GRAPH_INITIALIZER, _LEN)) + len(_varint(value_length)) + value_length


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)
