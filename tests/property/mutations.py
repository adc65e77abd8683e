"""Mutations of valid ONNX models for fuzzing, at the protobuf level and at the graph level.

A mutation is ``(kind, a, b, c)`` with small non-negative integers: ``kind`` picks the mutator,
``a``, ``b``, ``c`` pick positions and values inside it. Every mutator is a pure function of its
input and those integers, so hypothesis can draw and shrink them and a failing case replays
exactly (``apply(seed_bytes, steps)``).

Protobuf level: flip, overwrite, insert, delete or duplicate bytes; truncate; append a field.
Graph level (on the parsed ``ModelProto``): change an op type, rewire or drop a node input,
delete or duplicate a node, drop or retype an attribute, set an attribute to an extreme value,
change an initializer's dims, dtype or data, point it at external data (safe and hostile
locations), change opset and IR versions, rename and add graph outputs, change input dims,
collide tensor names, and replace a subgraph body. A graph-level mutator on bytes that no longer
parse does nothing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

Step = tuple[int, int, int, int]

OPS = ("Relu", "Conv", "Gemm", "MatMul", "BatchNormalization", "Reshape", "Concat", "Add", "Mul",
       "Identity", "Shape", "Gather", "ConstantOfShape", "Range", "Transpose", "Flatten", "Cast",
       "If", "Loop", "Constant", "Dropout", "Expand", "Tile", "Split", "Slice", "", "NoSuchOp")
DOMAINS = ("", "ai.onnx", "com.example", "ai.onnx.ml", "com.microsoft")
LOCATIONS = ("w.bin", "/etc/passwd", "../up.bin", "a/../../b.bin", "", ".", "sub/x.bin", "w\0.bin",
             "C:\\\\windows\\\\x.bin", "~/x.bin")
EXTREMES = (0, 1, -1, 2, 3, 7, -2**31, 2**31 - 1, 2**40, -(2**63), 2**63 - 1)
DTYPES = tuple(TensorProto.DataType.values()) + (0, 99, -1)


# -- protobuf level (bytes) ---------------------------------------------------------------------

def flip_byte(data: bytes, a: int, b: int, c: int) -> bytes:
    if not data:
        return data
    i = a % len(data)
    return data[:i] + bytes([data[i] ^ (1 << (b % 8))]) + data[i + 1:]


def overwrite_byte(data: bytes, a: int, b: int, c: int) -> bytes:
    if not data:
        return data
    i = a % len(data)
    return data[:i] + bytes([b % 256]) + data[i + 1:]


def insert_bytes(data: bytes, a: int, b: int, c: int) -> bytes:
    i = a % (len(data) + 1)
    return data[:i] + bytes((b + k * c) % 256 for k in range(1 + c % 8)) + data[i:]


def delete_span(data: bytes, a: int, b: int, c: int) -> bytes:
    if not data:
        return data
    i = a % len(data)
    return data[:i] + data[i + 1 + b % 16:]


def duplicate_span(data: bytes, a: int, b: int, c: int) -> bytes:
    if not data:
        return data
    i = a % len(data)
    j = min(len(data), i + 1 + b % 64)
    return data[:j] + data[i:j] + data[j:]


def truncate(data: bytes, a: int, b: int, c: int) -> bytes:
    return data[: a % (len(data) + 1)]


def append_field(data: bytes, a: int, b: int, c: int) -> bytes:
    """A length-delimited field with a random number: unknown fields, or a repeated message merged."""
    number = 1 + a % 20
    payload = bytes((b + k) % 256 for k in range(c % 12))
    return data + bytes([(number << 3) | 2, len(payload)]) + payload


BYTE_MUTATORS: tuple[Callable[[bytes, int, int, int], bytes], ...] = (
    flip_byte, overwrite_byte, insert_bytes, delete_span, duplicate_span, truncate, append_field)


# -- graph level (ModelProto) ---------------------------------------------------------------------

def _pick(seq, i):
    return seq[i % len(seq)] if len(seq) else None


def _tensor_names(model: onnx.ModelProto) -> list[str]:
    g = model.graph
    names = [v.name for v in g.input] + [t.name for t in g.initializer]
    for n in g.node:
        names.extend(n.output)
    return names or ["x"]


def set_op_type(m: onnx.ModelProto, a: int, b: int, c: int) -> None:
    node = _pick(m.graph.node, a)
    if node is not None:
        node.op_type = OPS[b % len(OPS)]


def set_domain(m: onnx.ModelProto, a: int, b: int, c: int) -> None:
    node = _pick(m.graph.node, a)
    if node is not None:
        node.domain = DOMAINS[b % len(DOMAINS)]


def rewire_input(m: onnx.ModelProto, a: int, b: int, c: int) -> None:
    """Point a node input at another tensor (may create cycles or shape clashes)."""
    node = _pick(m.graph.node, a)
    if node is not None and node.input:
        node.input[b % len(node.input)] = _pick(_tensor_names(m), c)


def drop_input(m: onnx.ModelProto, a: int, b: int, c: int) -> None:
    node = _pick(m.graph.node, a)
    if node is not None and node.input:
        del node.input[b % len(node.input)]


def add_input(m: onnx.ModelProto, a: int, b: int, c: int) -> None:
    node = _pick(m.graph.node, a)
    if node is not None:
        node.input.append(_pick(_tensor_names(m) + ["", "ghost"], b))


def delete_node(m: onnx.ModelProto, a: int, b: int, c: int) -> None:
    if len(m.graph.node):
        del m.graph.node[a % len(m.graph.node)]


def duplicate_node(m: onnx.ModelProto, a: int, b: int, c: int) -> None:
    node = _pick(m.graph.node, a)
    if node is not None:
        copy = m.graph.node.add()
        copy.CopyFrom(node)
        if b % 2:  # with fresh outputs (valid duplicate) or the same ones (produced twice)
            for i in range(len(copy.output)):
                copy.output[i] = f"{copy.output[i]}.dup{c}"


def swap_nodes(m: onnx.ModelProto, a: int, b: int, c: int) -> None:
    nodes = m.graph.node
    if len(nodes) >= 2:
        i, j = a % len(nodes), b % len(nodes)
        first, second = onnx.NodeProto(), onnx.NodeProto()
        first.CopyFrom(nodes[i])
        second.CopyFrom(nodes[j])
        nodes[i].CopyFrom(second)
        nodes[j].CopyFrom(first)


def drop_attribute(m: onnx.ModelProto, a: int, b: int, c: int) -> None:
    node = _pick(m.graph.node, a)
    if node is not None and node.attribute:
        del node.attribute[b % len(node.attribute)]


def retype_attribute(m: onnx.ModelProto, a: int, b: int, c: int) -> None:
    node = _pick(m.graph.node, a)
    if node is None or not node.attribute:
        return
    attr = node.attribute[b % len(node.attribute)]
    value = (3.5, 2, [1, -1, 0], "same", [0.5, 2.0], b"\xff\xfe")[c % 6]
    attr.CopyFrom(helper.make_attribute(attr.name, value))


def extreme_attribute(m: onnx.ModelProto, a: int, b: int, c: int) -> None:
    node = _pick(m.graph.node, a)
    if node is None or not node.attribute:
        return
    attr = node.attribute[b % len(node.attribute)]
    value = EXTREMES[c % len(EXTREMES)]
    if attr.type == AttributeProto.INT:
        attr.i = max(min(value, 2**63 - 1), -(2**63))
    elif attr.type == AttributeProto.INTS and len(attr.ints):
        attr.ints[c % len(attr.ints)] = max(min(value, 2**63 - 1), -(2**63))
    elif attr.type == AttributeProto.FLOAT:
        attr.f = (float("nan"), float("inf"), -0.0, 1e30, -1e-30)[c % 5]


def add_attribute(m: onnx.ModelProto, a: int, b: int, c: int) -> None:
    node = _pick(m.graph.node, a)
    if node is not None:
        name = ("axis", "perm", "group", "pads", "to", "training_mode", "body", "allowzero", "zzz")[b % 9]
        node.attribute.append(helper.make_attribute(name, EXTREMES[c % len(EXTREMES)] % 2**31))


def set_init_dims(m: onnx.ModelProto, a: int, b: int, c: int) -> None:
    t = _pick(m.graph.initializer, a)
    if t is not None:
        dims = [list(t.dims)[::-1], [], [0], [EXTREMES[c % len(EXTREMES)] % 2**40],
                list(t.dims) + [1], [-1] + list(t.dims[1:])][b % 6]
        del t.dims[:]
        t.dims.extend(dims)


def set_init_dtype(m: onnx.ModelProto, a: int, b: int, c: int) -> None:
    t = _pick(m.graph.initializer, a)
    if t is not None:
        t.data_type = DTYPES[b % len(DTYPES)] & 0x7FFFFFFF if DTYPES[b % len(DTYPES)] >= 0 else 0


def replace_init_values(m: onnx.ModelProto, a: int, b: int, c: int) -> None:
    """A new, valid tensor of another shape or dtype under the same name."""
    t = _pick(m.graph.initializer, a)
    if t is None:
        return
    rng = np.random.default_rng(c)
    shape = [(), (1,), (2, 3), (c % 5,), tuple(t.dims)[::-1], (1, 1, 1, 1)][b % 6]
    dtype = (np.float32, np.int64, np.float16, np.int8, np.bool_, np.float64)[c % 6]
    values = (rng.standard_normal(shape) * 3).astype(dtype)
    if c % 7 == 0 and values.size and np.issubdtype(dtype, np.floating):
        values.reshape(-1)[0] = np.nan
    t.CopyFrom(numpy_helper.from_array(values, t.name))


def truncate_init_data(m: onnx.ModelProto, a: int, b: int, c: int) -> None:
    t = _pick(m.graph.initializer, a)
    if t is not None and t.raw_data:
        t.raw_data = t.raw_data[: b % (len(t.raw_data) + 1)]


def make_external(m: onnx.ModelProto, a: int, b: int, c: int) -> None:
    t = _pick(m.graph.initializer, a)
    if t is None:
        return
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    t.external_data.add(key="location", value=LOCATIONS[b % len(LOCATIONS)])
    t.external_data.add(key="offset", value=("0", "4", "-1", "abc", "99999999999")[c % 5])
    t.external_data.add(key="length", value=("16", "0", "-5", "1e9", "x")[(c // 5) % 5])


def set_opset(m: onnx.ModelProto, a: int, b: int, c: int) -> None:
    if m.opset_import:
        m.opset_import[a % len(m.opset_import)].version = (1, 6, 7, 9, 11, 13, 17, 21, 23, 28, 29, 1000, 0)[b % 13]
    if c % 3 == 0:
        m.opset_import.add(domain=DOMAINS[c % len(DOMAINS)], version=1 + b % 3)


def set_ir_version(m: onnx.ModelProto, a: int, b: int, c: int) -> None:
    m.ir_version = (0, 1, 3, 4, 7, 8, 10, 11, 12, 99)[a % 10]


def rename_output(m: onnx.ModelProto, a: int, b: int, c: int) -> None:
    out = _pick(m.graph.output, a)
    if out is not None:
        out.name = _pick(_tensor_names(m) + ["nowhere", ""], b)


def add_output(m: onnx.ModelProto, a: int, b: int, c: int) -> None:
    name = _pick(_tensor_names(m), a)
    vi = helper.make_tensor_value_info(name, (TensorProto.FLOAT, TensorProto.INT64, 0)[b % 3], None)
    m.graph.output.append(vi)


def remove_outputs(m: onnx.ModelProto, a: int, b: int, c: int) -> None:
    if len(m.graph.output) > (a % 2):
        del m.graph.output[a % len(m.graph.output)]


def set_input_dims(m: onnx.ModelProto, a: int, b: int, c: int) -> None:
    inp = _pick(m.graph.input, a)
    if inp is None:
        return
    shape = inp.type.tensor_type.shape
    if len(shape.dim):
        dim = shape.dim[b % len(shape.dim)]
        if c % 4 == 3:
            dim.dim_param = "N"
        else:
            dim.dim_value = (0, -1, 2**40, 1)[c % 4]
    else:
        inp.type.tensor_type.elem_type = (0, TensorProto.INT64, TensorProto.STRING)[c % 3]


def collide_names(m: onnx.ModelProto, a: int, b: int, c: int) -> None:
    node = _pick(m.graph.node, a)
    if node is not None and node.output:
        node.output[b % len(node.output)] = _pick(_tensor_names(m), c)


def replace_subgraph(m: onnx.ModelProto, a: int, b: int, c: int) -> None:
    """Replace a node's subgraph attribute with an empty, a copied-outer or a foreign body."""
    for node in m.graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                if a % 3 == 0:
                    attr.g.Clear()
                    attr.g.name = "empty"
                elif a % 3 == 1:  # through a detached copy: upb crashes copying a message into its own child
                    outer = onnx.GraphProto()
                    outer.ParseFromString(m.graph.SerializeToString())
                    attr.g.CopyFrom(outer)
                else:
                    del attr.g.output[:]
                return
    node = _pick(m.graph.node, a)
    if node is not None:  # give a subgraph to a node that has none
        node.attribute.append(helper.make_attribute("body", helper.make_graph([], "g", [], [])))


GRAPH_MUTATORS: tuple[Callable[[onnx.ModelProto, int, int, int], None], ...] = (
    set_op_type, set_domain, rewire_input, drop_input, add_input, delete_node, duplicate_node,
    swap_nodes, drop_attribute, retype_attribute, extreme_attribute, add_attribute, set_init_dims,
    set_init_dtype, replace_init_values, truncate_init_data, make_external, set_opset,
    set_ir_version, rename_output, add_output, remove_outputs, set_input_dims, collide_names,
    replace_subgraph)

KINDS = len(BYTE_MUTATORS) + len(GRAPH_MUTATORS)


def mutator_name(kind: int) -> str:
    kind %= KINDS
    if kind < len(GRAPH_MUTATORS):
        return GRAPH_MUTATORS[kind].__name__
    return BYTE_MUTATORS[kind - len(GRAPH_MUTATORS)].__name__


def apply(data: bytes, steps: list[Step]) -> bytes:
    """Apply mutation steps in order. Graph mutators come first in the numbering (most steps
    should keep the file parseable, so the passes are reached)."""
    for kind, a, b, c in steps:
        kind %= KINDS
        if kind >= len(GRAPH_MUTATORS):
            data = BYTE_MUTATORS[kind - len(GRAPH_MUTATORS)](data, a, b, c)
            continue
        model = onnx.ModelProto()
        try:
            model.ParseFromString(data)
        except Exception:  # noqa: BLE001 - the bytes are already broken; graph edits do nothing
            continue
        try:
            GRAPH_MUTATORS[kind](model, a, b, c)
            data = model.SerializeToString()
        except Exception:  # noqa: BLE001 - e.g. names that are not UTF-8 after a byte mutation
            continue
    return data


def describe(steps: list[Step]) -> str:
    return "; ".join(f"{mutator_name(k)}({a}, {b}, {c})" for k, a, b, c in steps)


# -- seeds ----------------------------------------------------------------------------------------

def seed_models(root: Path, max_bytes: int = 2_000_000) -> list[tuple[str, bytes]]:
    """Valid models to mutate: the zoo (models/*.onnx, small ones), random graphs, and the valid
    corpus files with subgraphs and unknown domains."""
    import random_graphs

    seeds: list[tuple[str, bytes]] = []
    for path in sorted((root / "models").glob("*.onnx")):
        if path.stat().st_size <= max_bytes:
            seeds.append((f"models/{path.name}", path.read_bytes()))
    rng = np.random.default_rng(2024)
    for i in range(6):
        recipe = random_graphs.random_recipe(rng)
        seeds.append((f"random[{recipe}]", random_graphs.build_model(recipe).SerializeToString()))
    bad = root / "tests" / "data" / "bad"
    for name in ("if_subgraph.onnx", "loop_subgraph.onnx", "scan_subgraph.onnx", "unknown_domain.onnx",
                 "zero_size.onnx", "hostile_names.onnx"):
        if (bad / name).is_file():
            seeds.append((f"tests/data/bad/{name}", (bad / name).read_bytes()))
    return seeds
