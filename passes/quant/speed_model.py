"""Which ops run on integers: a speed model, solved exactly as a minimum cut.

Each candidate op has two estimated costs, ``float_ns`` and ``int_ns`` (single-threaded, one
sample at the calibration data's shapes); each edge whose two ends land in different domains
costs a conversion (a QuantizeLinear or DequantizeLinear, plus the layout change between
onnxruntime's NCHWc float kernels and its NHWC integer kernels). Assigning every op to a domain
to minimise the total is a binary labelling problem with pairwise costs that only charge
disagreement, so it is solved exactly by one s-t minimum cut (networkx):

- source side = float, sink side = integer; an edge ``source -> op`` of capacity ``int_ns``
  (paid when the op ends up integer), ``op -> sink`` of capacity ``float_ns``;
- each data edge ``u -> v`` becomes two arcs of capacity ``conversion_ns`` (paid when cut);
- ops that cannot run on integers, graph inputs and graph outputs are tied to the source.

So a model where integers do not pay (PP-OCR cls at 48x192: tiny channel counts, many depthwise
convolutions) stays float instead of getting slower, and a region that pays only as a whole
(a HardSwish between two Convs) is quantized as a whole.

The cost table below was measured with onnxruntime 1.32 on an AVX512-VNNI Xeon (per-node
profiles of PP-OCRv4 det/rec/cls, float vs QDQ, plus single-layer chains). Its shape, not its
digits, is what matters: integer pointwise Conv/MatMul are ~2.5x cheaper per MAC; integer
depthwise Conv costs the same per MAC but ~35 us more per call; QLinearMul, Resize and MaxPool on
uint8 are slower than their float versions; a float HardSwish/Relu after a Conv is fused for free;
an affine map folded into a DQ costs nothing. MACs are ``M``, output elements ``E``.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod

import networkx as nx
import onnx_graphsurgeon as gs

from graphc.ir import consumers, is_graph_output, is_standard_op, producer

#: a conversion: a QuantizeLinear or DequantizeLinear plus the layout change between the float
#: (NCHWc) and integer (NHWC) kernels: fixed ns, ns per element.
CONVERT_NS = (20000.0, 0.9)


@dataclass(frozen=True)
class Linear:
    """``fixed + per_mac * M + per_elem * E`` nanoseconds."""

    fixed: float = 0.0
    per_mac: float = 0.0
    per_elem: float = 0.0

    def __call__(self, macs: float, elems: float) -> float:
        return self.fixed + self.per_mac * macs + self.per_elem * elems


#: (float, integer) cost of each op class, fitted to per-node profiles (see the module doc).
TABLE: dict[str, tuple[Linear, Linear]] = {
    "conv": (Linear(2000, 0.025, 0.95), Linear(15000, 0.0104, 0.48)),
    "depthwise": (Linear(2000, 0, 1.33), Linear(45000, 0, 1.4)),
    "matmul": (Linear(3000, 0.03), Linear(8000, 0.012)),
    "add": (Linear(1000, 0, 0.75), Linear(10000, 0, 0.125)),
    "mul": (Linear(1000, 0, 0.5), Linear(27000, 0, 0.26)),
    "mul_broadcast": (Linear(1000, 0, 0.5), Linear(27000, 0, 0.5)),
    "affine": (Linear(1000, 0, 0.6), Linear()),                       # folded into a DQ
    "hardsigmoid": (Linear(1000, 0, 0.8), Linear(10000, 0, 0.125)),
    "hardswish": (Linear(1000, 0, 0.8), Linear(37000, 0, 0.39)),
    "fused": (Linear(), Linear()),                                    # Relu/Clip after a Conv
    # after a Conv, onnxruntime fuses a float HardSigmoid/HardSwish (and its Mul) into the Conv
    "hardsigmoid_fused": (Linear(), Linear(10000, 0, 0.125)),
    "hardswish_fused": (Linear(), Linear(37000, 0, 0.39)),
    "hardswish_mul_fused": (Linear(), Linear(27000, 0, 0.26)),
    "pool": (Linear(1000, 0, 0.5), Linear(20000, 0, 0.5)),             # per input element
    "maxpool": (Linear(1000, 0, 2.6), Linear(1000, 0, 21.0)),
    # float Resize is fast on NCHW (0.35 ns) but, between integer kernels, runs on NHWC data
    # about as slowly as the uint8 one
    "resize": (Linear(1000, 0, 2.0), Linear(1000, 0, 2.24)),
    "concat": (Linear(11000, 0, 0.43), Linear(1000, 0, 0.37)),
    "movement": (Linear(500, 0, 0.3), Linear(500, 0, 0.2)),
    "unary": (Linear(1000, 0, 2.0), Linear(10000, 0, 2.0)),
}


def op_class(node: gs.Node, fused_after_conv: bool) -> str | None:
    op = node.op
    if op == "Conv":
        return "depthwise" if int(node.attrs.get("group", 1)) > 1 else "conv"
    if op in ("Gemm", "MatMul", "ConvTranspose"):
        return "matmul" if op != "ConvTranspose" else "conv"
    if op in ("Relu", "Clip"):
        return "fused" if fused_after_conv else "unary"
    if op in ("HardSigmoid", "HardSwish"):
        return f"{op.lower()}_fused" if fused_after_conv else op.lower()
    if op in ("GlobalAveragePool", "AveragePool"):
        return "pool"
    if op == "MaxPool":
        return "maxpool"
    if op == "Resize":
        return "resize"
    if op == "Concat":
        return "concat"
    if op in ("Sigmoid", "Softmax", "LeakyRelu"):
        return "unary"
    if op in ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Gather",
              "Expand", "Tile", "Split"):
        return "movement"
    return None


class SpeedModel:
    """Float and integer cost of each candidate, from element counts at concrete shapes."""

    def __init__(self, shapes: dict):
        self.shapes = shapes

    def elems(self, tensor: gs.Tensor) -> float:
        info = self.shapes.get(tensor.name)
        if info is not None and info.shape is not None and all(isinstance(d, int) and d >= 0 for d in info.shape):
            return float(prod(info.shape))
        if isinstance(tensor, gs.Constant):
            return float(tensor.values.size)
        return 0.0

    def macs(self, node: gs.Node) -> float:
        out = self.elems(node.outputs[0]) if node.outputs else 0.0
        if node.op in ("Conv", "ConvTranspose") and len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant):
            w = node.inputs[1].values.shape
            if node.op == "Conv":
                return out * float(prod(w[1:]))
            return self.elems(node.inputs[0]) * float(prod(w[1:]))
        if node.op in ("MatMul", "Gemm") and node.inputs:
            a = self.shapes.get(node.inputs[0].name)
            k = a.shape[-1] if a is not None and a.shape and isinstance(a.shape[-1], int) else 0
            if node.op == "Gemm" and node.attrs.get("transA", 0) and a is not None and a.shape:
                k = a.shape[0] if isinstance(a.shape[0], int) else 0
            return out * float(k)
        return 0.0

    def costs(self, node: gs.Node) -> tuple[float, float] | None:
        cls = self._class(node)
        if cls is None:
            return None
        fl, it = TABLE[cls]
        if cls in ("pool", "maxpool"):
            elems = self.elems(node.inputs[0])
        else:
            elems = self.elems(node.outputs[0]) if node.outputs else 0.0
        macs = self.macs(node)
        return fl(macs, elems), it(macs, elems)

    def _class(self, node: gs.Node) -> str | None:
        if node.op in ("Add", "Mul"):
            return self._binary_class(node)
        src = producer(node.inputs[0]) if node.inputs else None
        after_conv = src is not None and is_standard_op(src, "Conv") and len(consumers(node.inputs[0])) <= 2
        return op_class(node, after_conv)

    def _binary_class(self, node: gs.Node) -> str:
        consts = [t for t in node.inputs if isinstance(t, gs.Constant)]
        if consts and consts[0].values.size == 1:
            return "affine"
        if node.op == "Mul" and self._is_hardswish_product(node):
            x = next(t for t in node.inputs if not self._is_hardsigmoid_of_other(t, node))
            src = producer(x)
            return "hardswish_mul_fused" if src is not None and is_standard_op(src, "Conv") else "mul"
        sizes = [self.elems(t) for t in node.inputs]
        if node.op == "Mul" and len(set(sizes)) > 1:
            return "mul_broadcast"
        return "add" if node.op == "Add" else "mul"

    def _is_hardsigmoid_of_other(self, t: gs.Tensor, node: gs.Node) -> bool:
        src = producer(t)
        if src is None or not is_standard_op(src, "HardSigmoid"):
            return False
        return any(other is src.inputs[0] for other in node.inputs if other is not t)

    def _is_hardswish_product(self, node: gs.Node) -> bool:
        return len(node.inputs) == 2 and any(self._is_hardsigmoid_of_other(t, node) for t in node.inputs)

    def conversion(self, tensor: gs.Tensor) -> float:
        fixed, per = CONVERT_NS
        return fixed + per * self.elems(tensor)


def integer_nodes(graph: gs.Graph, candidates: list[gs.Node], model: SpeedModel) -> tuple[set[int], dict]:
    """Ids of the candidates the minimum cut puts on integers, and a summary of the estimate."""
    cand = {id(n): n for n in candidates}
    g = nx.DiGraph()
    s, t = "float", "integer"
    g.add_node(s)
    g.add_node(t)
    est_float = est_mixed = 0.0
    costs = {}
    for node in candidates:
        c = model.costs(node)
        if c is None:
            continue
        costs[id(node)] = c
        g.add_edge(s, id(node), capacity=c[1])
        g.add_edge(id(node), t, capacity=c[0])
        est_float += c[0]
    for node in graph.nodes:
        for out in node.outputs:
            for user in consumers(out):
                _link(g, node, user, model.conversion(out), costs)
            if is_graph_output(graph, out) and id(node) in costs:  # outputs are read as float
                prev = g.get_edge_data(s, id(node), {}).get("capacity", 0.0)
                g.add_edge(s, id(node), capacity=prev + model.conversion(out))
    for tensor in graph.inputs:
        for user in consumers(tensor):
            if id(user) in costs:
                g.add_edge(s, id(user), capacity=g.get_edge_data(s, id(user), {}).get("capacity", 0)
                           + model.conversion(tensor))
    cut, (float_side, int_side) = nx.minimum_cut(g, s, t)
    chosen = {n for n in int_side if n in cand and n in costs}
    for nid, (fl, it) in costs.items():
        est_mixed += it if nid in chosen else fl
    return chosen, {"estimated_float_us": est_float / 1000, "estimated_cut_us": cut / 1000}


def _link(g: nx.DiGraph, u: gs.Node, v: gs.Node, conversion: float, costs: dict) -> None:
    """A data edge u -> v: conversion cost if their domains differ. Non-candidates are float."""
    a = id(u) if id(u) in costs else "float"
    b = id(v) if id(v) in costs else "float"
    if a == b:
        return
    for x, y in ((a, b), (b, a)):
        prev = g.get_edge_data(x, y, {}).get("capacity", 0.0)
        g.add_edge(x, y, capacity=prev + conversion)
