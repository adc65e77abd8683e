"""Which ops run on integers: a speed model, solved exactly as a minimum cut.

Each candidate op has two estimated costs, ``float_ns`` and ``int_ns`` (single-threaded, one
sample at the calibration data's shapes); each edge whose two ends land in different domains
costs a conversion (a QuantizeLinear or DequantizeLinear, plus the layout change between
onnxruntime's NCHWc float kernels and its NHWC integer kernels). Assigning every op to a domain
to minimise the total is a binary labelling problem with pairwise costs that only charge
disagreement, so it is solved exactly by one s-t minimum cut (networkx):

- source side = float, sink side = integer; an edge ``source -> op`` of capacity ``int_ns``
  (paid when the op ends up integer), ``op -> sink`` of capacity ``float_ns``;
- each tensor costs one ``conversion_ns`` when its producer and any of its readers are in
  different domains (one DQ serves every float reader, one Q every integer reader): a hyperedge,
  cut exactly through an auxiliary node (:func:`_conversions`);
- ops that cannot run on integers, graph inputs (and a body's outer-scope tensors) and graph
  outputs are tied to the source.

So a model where integers do not pay (PP-OCR cls at 48x192: tiny channel counts, many depthwise
convolutions) stays float instead of getting slower, and a region that pays only as a whole
(a HardSwish between two Convs) is quantized as a whole.

The cost table below was measured with onnxruntime 1.32 on an AVX512-VNNI Xeon (per-node
profiles of PP-OCRv4 det/rec/cls, float vs QDQ, plus single-layer chains). Its shape, not its
digits, is what matters: integer pointwise Conv/MatMul are ~2.5x cheaper per MAC; integer
depthwise Conv costs the same per MAC but ~35 us more per call; QLinearMul, Resize and MaxPool on
uint8 are slower than their float versions; a float HardSwish/Relu after a Conv is fused for free;
an affine map folded into a DQ costs nothing. MACs are ``M``, output elements ``E``.

Measured tables. That table is right on PP-OCR's shapes; it was never fitted on Conv1d
(``(N, C, T)``, e.g. a voice-activity detector's), grouped convolutions, transformer MatMuls or
attention. By default (``quant{speed-model=auto}``, or ``measured``) those classes
(:data:`MEASURED_CLASSES`: ``conv1d``, ``grouped``, ``matmul``, ``matmul_act``) are measured on
the running machine (:mod:`graphc.bench.cost_probe`: one-op float and QDQ models at
representative shapes, one intra-op thread like this table, least squares over 3-4 sizes) and
cached per CPU and onnxruntime version (:mod:`graphc.bench.cost_table`). The measured costs are
put in this table's units by the ratio of the probe's float Conv/depthwise/MatMul/Add costs to
this table's (:func:`machine_scale`); the other classes and the conversion keep this table's
costs (see :data:`MEASURED_CLASSES` for why). A class the builtin table does not name takes its
nearest (``conv1d`` -> ``conv``, ``grouped`` -> ``depthwise``, ``matmul_act`` -> ``matmul``), so
``speed-model=builtin`` (or ``GRAPHC_SPEED_MODEL=builtin``, read when the option is ``auto``;
deterministic, the tests use it) behaves as before. The table used is in the pass's stats
(``speed_model``).

Recurrent layers. A measured table also holds ``lstm``: a float LSTM against onnxruntime's
``DynamicQuantizeLSTM`` per step and direction (:meth:`SpeedModel.lstm_costs`). An LSTM is not
a node of the minimum cut (its integer form takes and gives float: no conversion to share), so
:mod:`graphc.passes.quant.recurrent` compares its two costs alone; with the builtin table, which
has no ``lstm``, it keeps its fixed hidden-size threshold.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from math import prod

import networkx as nx
import numpy as np
import onnx_graphsurgeon as gs

from graphc.bench.cost_table import measured_table
from graphc.errors import GraphcError
from graphc.ir import consumers, is_graph_output, is_standard_op, producer

log = logging.getLogger(__name__)

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


#: a Relu/Clip after a Conv costs nothing either way, so the cut is indifferent to where the Q
#: goes when the next op is float; a nanosecond breaks the tie towards integers, where the Q
#: after the Relu absorbs it and its range starts at 0 (twice the resolution of a Q before it)
FUSED_TIE_NS = 1.0
#: a class the builtin table does not name costs what its nearest class costs there
NEAREST = {"conv1d": "conv", "grouped": "depthwise", "matmul_act": "matmul"}
#: where the cost table comes from when the option is ``auto``
ENV = "GRAPHC_SPEED_MODEL"


@dataclass(frozen=True)
class CostTable:
    """The (float, integer) cost of each op class, the cost of one conversion, and where they
    come from (``source``: "builtin ..." or "measured on <cpu>, onnxruntime <version>")."""

    entries: dict
    convert: tuple[float, float]
    source: str

    def costs(self, cls: str) -> tuple[Linear, Linear]:
        if cls in self.entries:
            return self.entries[cls]
        return self.entries[NEAREST[cls]]

    @classmethod
    def from_measured(cls, table: dict, source: str) -> "CostTable":
        """The builtin table with the classes of :data:`MEASURED_CLASSES` replaced by their
        measured costs, converted to the builtin table's units by :func:`machine_scale`."""
        measured = {name: (Linear(*sides["float"]), Linear(*sides["int"]))
                    for name, sides in table.items() if name != "convert"}
        scale = machine_scale(measured)
        entries = dict(TABLE)
        for name in MEASURED_CLASSES:
            if name in measured:
                fl, it = measured[name]
                entries[name] = (_scaled(fl, 1 / scale), _scaled(it, 1 / scale))
        return cls(entries, CONVERT_NS, source)


#: the classes a measured table replaces: the shapes the builtin table was not fitted on (and
#: ``lstm``, which the builtin table has no entry for: see :meth:`SpeedModel.lstm_costs`). The
#: others (2-D Conv, depthwise, element-wise ops, conversions) keep the builtin costs, fitted in
#: context on whole models: one-op probes of them misplace PP-OCRv4 rec (12% slower than the
#: builtin table's placement, measured 2026-12), and the probe's in-context conversion (a
#: float Conv between two integer ones: 19.9 us + 0.77 ns/element on an AVX512-VNNI EPYC)
#: confirms CONVERT_NS.
MEASURED_CLASSES = ("conv1d", "grouped", "matmul", "matmul_act", "lstm")
#: (class, MACs, elements) where :func:`machine_scale` compares measured and builtin float costs
SCALE_POINTS = (("conv", 5e6, 4e4), ("depthwise", 4e5, 5e4), ("matmul", 1e7, 2.5e4), ("add", 0.0, 4e4))


def machine_scale(measured: dict) -> float:
    """How fast this machine is against the builtin table's: the geometric mean over
    :data:`SCALE_POINTS` of measured / builtin float cost (1 when none was measured)."""
    ratios = []
    for name, macs, elems in SCALE_POINTS:
        if name in measured:
            builtin = TABLE[name][0](macs, elems)
            ratios.append(max(measured[name][0](macs, elems), 1.0) / builtin)
    return float(np.exp(np.mean(np.log(ratios)))) if ratios else 1.0


def _scaled(cost: Linear, scale: float) -> Linear:
    return Linear(cost.fixed * scale, cost.per_mac * scale, cost.per_elem * scale)


BUILTIN = CostTable(TABLE, CONVERT_NS, "builtin (fitted on an AVX512-VNNI Xeon, onnxruntime 1.32)")


def cost_table(choice: str = "auto") -> CostTable:
    """The table for ``quant{speed-model=choice}``: ``auto`` reads ``$GRAPHC_SPEED_MODEL``
    (``builtin`` or ``measured``) and is ``measured`` without it; ``measured`` falls back to the
    builtin table, with a warning, when it cannot be measured."""
    if choice == "auto":
        choice = os.environ.get(ENV, "").strip().lower() or "measured"
        if choice not in ("builtin", "measured"):
            log.warning("speed model: %s=%r is neither builtin nor measured; using measured", ENV, choice)
            choice = "measured"
    if choice == "builtin":
        return BUILTIN
    try:
        measured = measured_table()
    except (GraphcError, OSError, RuntimeError, ValueError) as exc:
        log.warning("speed model: cannot measure this CPU (%s); using the builtin table", exc)
        return BUILTIN
    return CostTable.from_measured(measured.table, f"measured on {measured.key.describe()}")


def conv_class(node: gs.Node) -> str:
    """conv (2-D and more), conv1d (``(N, C, T)``), depthwise (one input channel per group) or
    grouped (several)."""
    w = node.inputs[1] if len(node.inputs) > 1 else None
    shape = w.values.shape if isinstance(w, gs.Constant) else None
    if int(node.attrs.get("group", 1)) > 1:
        return "depthwise" if shape is None or shape[1] == 1 else "grouped"
    return "conv1d" if shape is not None and len(shape) == 3 else "conv"


def op_class(node: gs.Node, fused_after_conv: bool) -> str | None:
    op = node.op
    if op == "Conv":
        return conv_class(node)
    if op == "MatMul" and len(node.inputs) > 1 and not isinstance(node.inputs[1], gs.Constant):
        return "matmul_act"
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

    def __init__(self, shapes: dict, table: CostTable = BUILTIN):
        self.shapes = shapes
        self.table = table

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
        fl, it = self.table.costs(cls)
        if cls in ("pool", "maxpool"):
            elems = self.elems(node.inputs[0])
        else:
            elems = self.elems(node.outputs[0]) if node.outputs else 0.0
        macs = self.macs(node)
        if cls == "fused":  # a tie: the Q after an integer Conv absorbs it (see FUSED_TIE_NS)
            return fl(macs, elems) + FUSED_TIE_NS, it(macs, elems)
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
        fixed, per = self.table.convert
        return fixed + per * self.elems(tensor)

    def lstm_costs(self, node: gs.Node) -> tuple[float, float] | None:
        """Float ``LSTM`` and ``DynamicQuantizeLSTM`` cost of one step of one direction, or None
        when the table has no measured ``lstm`` class (the builtin one) or the weights are not
        constant ``[D, 4H, I]``. Per step (``M = B 4H (I + H)``, ``E = B H``; batch ``B`` from
        X's shape in ``shapes``, else as X declares it, else 1): the sequence length scales both
        sides alike, so their order holds at any length."""
        if "lstm" not in self.table.entries or len(node.inputs) < 3:
            return None
        w, r = node.inputs[1], node.inputs[2]
        if not (isinstance(w, gs.Constant) and isinstance(r, gs.Constant)) or w.values.ndim != 3:
            return None
        hidden, inputs = r.values.shape[-1], w.values.shape[-1]
        info = self.shapes.get(node.inputs[0].name)
        shape = info.shape if info is not None else node.inputs[0].shape
        batch = shape[1] if shape is not None and len(shape) == 3 else 1
        batch = batch if isinstance(batch, int) and batch > 0 else 1
        fl, it = self.table.entries["lstm"]
        macs, elems = float(batch * 4 * hidden * (inputs + hidden)), float(batch * hidden)
        return fl(macs, elems), it(macs, elems)


def integer_nodes(graph: gs.Graph, candidates: list[gs.Node], model: SpeedModel) -> tuple[set[int], dict]:
    """Ids of the candidates the minimum cut puts on integers, and a summary of the estimate."""
    cand = {id(n): n for n in candidates}
    g = nx.DiGraph()
    s, t = "float", "integer"
    g.add_node(s)
    g.add_node(t)
    est_float = 0.0
    costs = {}
    for node in candidates:
        c = model.costs(node)
        if c is None:
            continue
        costs[id(node)] = c
        _add(g, s, id(node), c[1])
        _add(g, id(node), t, c[0])
        est_float += c[0]
    for tensor in _data_tensors(graph, [cand[n] for n in costs]):
        _conversions(g, graph, tensor, model.conversion(tensor), costs)
    cut, (float_side, int_side) = nx.minimum_cut(g, s, t)
    chosen = {n for n in int_side if n in cand and n in costs}
    return chosen, {"estimated_float_us": est_float / 1000, "estimated_cut_us": cut / 1000}


def _data_tensors(graph: gs.Graph, nodes: list[gs.Node]) -> list[gs.Tensor]:
    """Every tensor the graph's nodes produce, and every activation a candidate reads (graph
    inputs, outer-scope tensors of a body), once each."""
    seen: dict[int, gs.Tensor] = {}
    for node in graph.nodes:
        for out in node.outputs:
            seen.setdefault(id(out), out)
    for node in nodes:
        for tensor in node.inputs:
            if isinstance(tensor, gs.Variable) and tensor.name:
                seen.setdefault(id(tensor), tensor)
    return list(seen.values())


def _conversions(g: nx.DiGraph, graph: gs.Graph, tensor: gs.Tensor, conversion: float, costs: dict) -> None:
    """A tensor costs one DequantizeLinear when its producer is integer and any reader float
    (graph outputs are read as float), and one QuantizeLinear when its producer is float and any
    reader integer: one conversion however many readers share it. Each is a hyperedge, exact in
    a cut through an auxiliary node: ``reader -> aux`` (infinite) and ``aux -> producer``
    (``conversion``) for the DQ; ``producer -> aux`` (``conversion``) and ``aux -> reader``
    (infinite) for the Q. Non-candidates (and graph inputs) are the float source."""
    src = producer(tensor)
    u = id(src) if src is not None and id(src) in costs else "float"
    readers = ["float" if id(v) not in costs else id(v) for v in consumers(tensor)]
    if is_graph_output(graph, tensor):
        readers.append("float")
    int_readers = [r for r in readers if r != "float"]
    if u != "float" and readers:
        dq = ("dq", id(tensor))
        for r in set(readers):
            g.add_edge(r, dq)  # no capacity: infinite
        _add(g, dq, u, conversion)
    if int_readers:
        q = ("q", id(tensor))
        _add(g, u, q, conversion)
        for r in set(int_readers):
            g.add_edge(q, r)


def _add(g: nx.DiGraph, a, b, capacity: float) -> None:
    prev = g.get_edge_data(a, b, {}).get("capacity", 0.0)
    g.add_edge(a, b, capacity=prev + capacity)
