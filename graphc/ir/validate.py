"""Load-time checks of the protobuf that graphsurgeon's import and the structure check do not make.

Run on the ``ModelProto`` before it becomes IR, so a broken file is refused with one clear
:class:`ModelError` at load instead of failing later inside a pass, an analysis or the saver:

- opset imports: the default domain's version lies between 1 and the newest opset this ONNX
  knows; no domain is imported twice; the IR version is not newer than this ONNX;
- every node of a standard domain passes ``onnx.checker.check_node`` (the op exists at the
  imported opset, required attributes are present and typed right, input/output counts are in
  range); nodes of other domains are opaque and left alone; subgraphs are checked the same way;
- every name (tensors, nodes, ops, domains) is valid UTF-8 (protobuf hands invalid ones over as
  bytes, which fail much later, on export);
- initializer names are unique within a graph, and no node writes an initializer's name (single
  assignment; graphsurgeon would otherwise silently let one of the two win);
- every tensor (initializers, subgraph initializers, tensor attributes of ``Constant`` nodes) has a
  known data type, non-negative dims, and exactly the amount of data its dims ask for; string
  tensors hold UTF-8 (ONNX strings are UTF-8; numpy and onnxruntime decode them as such);
- a Conv/ConvTranspose ``group`` is at least 1 and divides the channel count its constant weight
  fixes (output channels of a Conv, input channels of a ConvTranspose); whether it divides the
  input's channels needs shapes and is checked by :mod:`graphc.ir.declarations`;
- no tensor still points at external data (``load`` resolves external data from the model's path
  after checking where it lives; a proto handed over with unresolved references is refused, so
  nothing is read from a location graphc did not check).

The checks read the proto only: no full serialization, so they stay cheap on models over 2 GB
(the length of a weight's ``raw_data`` is read one tensor at a time).
"""
from __future__ import annotations

import math
from typing import Mapping

import onnx
from onnx import AttributeProto, TensorProto

from graphc.errors import ModelError, UnsafeModelError

#: standard domains whose operators ONNX defines (others are opaque to graphc).
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training")

#: bits per element of each data type in ``raw_data`` (sub-byte types are packed).
_RAW_BITS = {
    TensorProto.FLOAT: 32, TensorProto.UINT8: 8, TensorProto.INT8: 8, TensorProto.UINT16: 16,
    TensorProto.INT16: 16, TensorProto.INT32: 32, TensorProto.INT64: 64, TensorProto.BOOL: 8,
    TensorProto.FLOAT16: 16, TensorProto.DOUBLE: 64, TensorProto.UINT32: 32, TensorProto.UINT64: 64,
    TensorProto.COMPLEX64: 64, TensorProto.COMPLEX128: 128, TensorProto.BFLOAT16: 16,
    TensorProto.FLOAT8E4M3FN: 8, TensorProto.FLOAT8E4M3FNUZ: 8, TensorProto.FLOAT8E5M2: 8,
    TensorProto.FLOAT8E5M2FNUZ: 8, TensorProto.UINT4: 4, TensorProto.INT4: 4,
}
for _name, _bits in (("FLOAT4E2M1", 4), ("FLOAT8E8M0", 8), ("UINT2", 2), ("INT2", 2)):
    if hasattr(TensorProto, _name):  # newer ONNX releases
        _RAW_BITS[getattr(TensorProto, _name)] = _bits

#: typed data field and values per element (int32_data packs 4-bit types two per value).
_TYPED_FIELD = {
    TensorProto.FLOAT: ("float_data", 1), TensorProto.COMPLEX64: ("float_data", 2),
    TensorProto.DOUBLE: ("double_data", 1), TensorProto.COMPLEX128: ("double_data", 2),
    TensorProto.INT64: ("int64_data", 1), TensorProto.UINT32: ("uint64_data", 1),
    TensorProto.UINT64: ("uint64_data", 1), TensorProto.STRING: ("string_data", 1),
    TensorProto.UINT4: ("int32_data", 0.5), TensorProto.INT4: ("int32_data", 0.5),
}
for _t in (TensorProto.INT32, TensorProto.INT16, TensorProto.INT8, TensorProto.UINT16, TensorProto.UINT8,
           TensorProto.BOOL, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.FLOAT8E4M3FN,
           TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2, TensorProto.FLOAT8E5M2FNUZ):
    _TYPED_FIELD[_t] = ("int32_data", 1)
_DATA_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
_KNOWN_TYPES = set(TensorProto.DataType.values()) - {TensorProto.UNDEFINED}


def validate_proto(proto: onnx.ModelProto, outside: Mapping[str, tuple[int, ...]] | None = None) -> None:
    """Raise :class:`ModelError` (or :class:`UnsafeModelError`) naming the first problem found.
    ``outside`` maps top-level initializers that ``load`` kept out of the proto (their values were
    read straight into arrays) to their dims, so name clashes with them are caught too."""
    _check_utf8([proto.producer_name, proto.producer_version, proto.domain, proto.doc_string,
                 *(p.key for p in proto.metadata_props), *(p.value for p in proto.metadata_props),
                 *(i.domain for i in proto.opset_import)], "model field")
    opsets = _check_opsets(proto)
    ctx = onnx.checker.C.CheckerContext()
    ctx.ir_version = min(max(int(proto.ir_version), 3), onnx.IR_VERSION)
    ctx.opset_imports = opsets
    _check_graph(proto.graph, ctx, opsets, "", dict(outside or {}))


def _check_opsets(proto: onnx.ModelProto) -> dict[str, int]:
    if proto.ir_version > onnx.IR_VERSION:
        raise ModelError(f"IR version {proto.ir_version} is newer than this ONNX supports "
                         f"({onnx.IR_VERSION}); upgrade onnx")
    opsets: dict[str, int] = {}
    for imp in proto.opset_import:
        domain = "" if imp.domain == "ai.onnx" else imp.domain
        if domain in opsets:
            raise ModelError(f"opset_import lists domain '{imp.domain or 'ai.onnx'}' twice")
        opsets[domain] = int(imp.version)
    newest = onnx.defs.onnx_opset_version()
    default = opsets.get("")
    if default is not None and not 1 <= default <= newest:
        raise ModelError(f"default-domain opset {default} is outside 1..{newest} (the newest this "
                         "ONNX knows); refusing to guess operator semantics")
    return opsets


def _check_utf8(names, what: str) -> None:
    for name in names:
        if isinstance(name, bytes):  # what protobuf returns for a string that is not UTF-8
            raise ModelError(f"{what} {name[:40]!r} is not valid UTF-8")


def _check_graph(graph: onnx.GraphProto, ctx, opsets: dict[str, int], where: str,
                 outside: dict[str, tuple[int, ...]] | None = None) -> None:
    outside = outside or {}
    _check_utf8([v.name for v in list(graph.input) + list(graph.output) + list(graph.value_info)],
                f"{where}graph input/output")
    _check_utf8([t.name for t in graph.initializer], f"{where}initializer")
    _check_utf8([graph.name, graph.doc_string], f"{where}graph")
    for node in graph.node:
        _check_utf8([node.name, node.op_type, node.domain, *node.input, *node.output,
                     *(a.name for a in node.attribute)], f"{where}node")
    seen: set[str] = set()
    for name in outside:
        if name in seen:
            raise ModelError(f"{where}initializer '{name}' is defined twice")
        seen.add(name)
    weight_dims = dict(outside)
    for tensor in graph.initializer:
        if tensor.name in seen:
            raise ModelError(f"{where}initializer '{tensor.name}' is defined twice")
        seen.add(tensor.name)
        check_tensor(tensor, f"{where}initializer '{tensor.name}'")
        weight_dims[tensor.name] = tuple(tensor.dims)
    for node in graph.node:
        clash = next((o for o in node.output if o in seen), None)
        if clash is not None:
            label = f"{node.op_type} '{node.name}'" if node.name else f"a {node.op_type} node"
            raise ModelError(f"{where}tensor '{clash}' is both an initializer and the output of {label}")
        _check_node(node, ctx, opsets, where, weight_dims)


def _check_node(node: onnx.NodeProto, ctx, opsets: dict[str, int], where: str,
                weight_dims: dict[str, tuple[int, ...]]) -> None:
    label = f"{where}{node.op_type} '{node.name}'" if node.name else f"{where}{node.op_type} node"
    subgraphs = []
    for attr in node.attribute:
        if attr.type == AttributeProto.TENSOR:
            check_tensor(attr.t, f"{label} attribute '{attr.name}'")
        elif attr.type == AttributeProto.TENSORS:
            for t in attr.tensors:
                check_tensor(t, f"{label} attribute '{attr.name}'")
        elif attr.type == AttributeProto.GRAPH:
            subgraphs.append(attr.g)
        elif attr.type == AttributeProto.GRAPHS:
            subgraphs.extend(attr.graphs)
    if node.domain in STANDARD_DOMAINS:
        _check_node_schema(node, ctx, label)
        if node.op_type in ("Conv", "ConvTranspose"):
            _check_group(node, label, weight_dims)
    for sub in subgraphs:
        _check_graph(sub, ctx, opsets, f"{label} > ")


def _check_node_schema(node: onnx.NodeProto, ctx, label: str) -> None:
    if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute):
        # check_node would check the subgraphs without the outer scope; they are checked apart.
        stub = onnx.NodeProto()
        stub.CopyFrom(node)
        for attr in stub.attribute:
            for g in [attr.g] if attr.type == AttributeProto.GRAPH else attr.graphs:
                g.Clear()
                g.name = "checked-apart"
        node = stub
    try:
        onnx.checker.check_node(node, ctx)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{label}: {first}") from None
    except UnicodeDecodeError:  # the checker's message quotes bytes that are not UTF-8
        raise ModelError(f"{label}: fails the ONNX checker (its message is not valid UTF-8)") from None


def _check_group(node: onnx.NodeProto, label: str, weight_dims: dict[str, tuple[int, ...]]) -> None:
    """``group`` >= 1 and dividing the channels the weight fixes: W is [M, C/group, k...] for a
    Conv (M % group == 0) and [C, M/group, k...] for a ConvTranspose (C % group == 0)."""
    attr = next((a for a in node.attribute if a.name == "group"), None)
    group = attr.i if attr is not None else 1
    if group < 1:
        raise ModelError(f"{label}: group {group} is not a positive number")
    dims = weight_dims.get(node.input[1]) if len(node.input) > 1 else None
    if dims and dims[0] % group:
        kind = "output" if node.op_type == "Conv" else "input"
        raise ModelError(f"{label}: group {group} does not divide the {dims[0]} {kind} channels of "
                         f"its weight '{node.input[1]}'")


def check_tensor(tensor: TensorProto, what: str) -> None:
    """Data type known, dims non-negative, and exactly as much data as the dims ask for."""
    if tensor.data_location == TensorProto.EXTERNAL:
        raise UnsafeModelError(f"{what} points at external data that was not resolved; load the "
                               "model from its path so graphc can check where the data lives")
    if tensor.data_type not in _KNOWN_TYPES:
        raise ModelError(f"{what} has data type {tensor.data_type}, which ONNX does not define")
    if any(d < 0 for d in tensor.dims):
        raise ModelError(f"{what} has a negative dimension {list(tensor.dims)}")
    count = math.prod(tensor.dims)
    if tensor.HasField("raw_data"):
        bits = _RAW_BITS.get(tensor.data_type)
        if bits is None:  # STRING (never raw) or a packing graphc cannot decode
            raise ModelError(f"{what}: raw data of type {TensorProto.DataType.Name(tensor.data_type)} "
                             "is not supported")
        expected = (count * bits + 7) // 8
        actual = len(tensor.raw_data)
        if actual != expected:
            raise ModelError(f"{what} has {actual} bytes of data, but dims {list(tensor.dims)} of "
                             f"{TensorProto.DataType.Name(tensor.data_type)} need {expected}")
        return
    if tensor.data_type == TensorProto.STRING:
        _check_strings(tensor, what)
    present = [f for f in _DATA_FIELDS if len(getattr(tensor, f))]
    field, per_element = _TYPED_FIELD.get(tensor.data_type, (None, 1))
    if field is None:
        return
    expected = math.ceil(count * per_element)
    actual = len(getattr(tensor, field))
    if present and present != [field]:
        raise ModelError(f"{what} stores {TensorProto.DataType.Name(tensor.data_type)} data in "
                         f"{', '.join(present)}")
    if actual != expected:
        raise ModelError(f"{what} has {actual} values, but dims {list(tensor.dims)} need {expected}")


def _check_strings(tensor: TensorProto, what: str) -> None:
    for i, value in enumerate(tensor.string_data):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelError(f"{what}: string element {i} is not valid UTF-8 (byte {value[exc.start]:#04x} "
                             f"at position {exc.start})") from None
