"""Which nodes of a float32 graph compute in half precision: the static part of the plan.

A node is a *candidate* when it is a standard-domain op without subgraphs whose output-0 type
parameter admits the half type at the model's opset (:mod:`graphc.passes.fp16.signature`) and
every tensor bound to that parameter is float32. Candidates stay float32, with a reason, when:

- the op is in the keep-list (``keep-ops``: range-sensitive ops whose fp16 result overflows or
  loses accuracy: Exp and Pow grow past 65504, long reductions and Softmax/normalization
  statistics accumulate rounding; Range and Cast are never converted);
- a constant it reads at a converted position exceeds the half range (``|w| > max finite``);
- it computes a *shape value*: every float input it reads is derived from integers (``Shape`` ->
  ``Cast`` -> arithmetic -> ``Cast`` to int64 for Resize's sizes) or constants. Such values must
  stay exact: float16 holds integers exactly only up to 2048;
- one of its outputs is read inside an If/Loop/Scan body (bodies stay float32 as a whole).

Data-driven exclusions (overflow, error) are :mod:`graphc.passes.fp16.measure`. Last, a converted
node with no converted neighbour and no constant worth halving is returned to float32: it would
cost two Casts and save nothing (:func:`drop_isolated`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir import is_standard_op, node_label, producer
from graphc.ir.structure import find_cycle_free_order
from graphc.ir.subgraphs import subgraphs, walk_graphs
from graphc.passes.fp16.signature import FloatSignature, float_signature

#: ops kept float32 by default (``keep-ops``).
DEFAULT_KEEP_OPS = (
    "Exp", "Pow", "Log", "Softmax", "LogSoftmax", "ReduceSum", "ReduceMean", "ReduceSumSquare",
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceProd", "CumSum",
    "LayerNormalization", "GroupNormalization", "InstanceNormalization", "MeanVarianceNormalization",
    "LpNormalization", "Range", "Cast", "CastLike", "RandomNormal", "RandomUniform",
    "RandomNormalLike", "RandomUniformLike", "Multinomial", "NonMaxSuppression", "RoiAlign",
)
#: ops whose output is float but whose value follows an integer (their float input is not data).
INTEGER_ELEMENT_TYPES = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                         np.uint64, np.bool_)
#: a constant this small converts only along with a node that is converted anyway (no gain alone).
MIN_WORTHWHILE_ELEMENTS = 16


@dataclass(frozen=True)
class HalfType:
    """The half type: numpy dtype, ONNX type string, largest finite value."""

    name: str
    dtype: np.dtype
    type_str: str
    max_finite: float


@dataclass
class Plan:
    """The nodes converted (with their signatures) and why others were not."""

    half: dict[int, tuple[gs.Node, FloatSignature]] = field(default_factory=dict)  # by id(node)
    kept: dict[str, str] = field(default_factory=dict)   # node label -> reason

    def __contains__(self, node: gs.Node) -> bool:
        return id(node) in self.half

    def add(self, node: gs.Node, sig: FloatSignature) -> None:
        self.half[id(node)] = (node, sig)

    def keep(self, node: gs.Node, reason: str) -> None:
        self.half.pop(id(node), None)
        self.kept[node_label(node)] = reason

    def nodes(self) -> list[tuple[gs.Node, FloatSignature]]:
        return list(self.half.values())


def float_dtype(tensor: gs.Tensor, dtypes: dict[str, np.dtype | None]) -> np.dtype | None:
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values).dtype
    dtype = dtypes.get(tensor.name) or getattr(tensor, "dtype", None)
    try:
        return np.dtype(dtype) if dtype is not None else None
    except TypeError:
        return None


def plan_candidates(graph: gs.Graph, dtypes: dict[str, np.dtype | None], opset: int,
                    half: HalfType, keep_ops: tuple[str, ...]) -> Plan:
    """Every candidate node of the top graph, minus the keep-list and out-of-range constants."""
    plan = Plan()
    in_bodies = _read_in_bodies(graph)
    for node in graph.nodes:
        sig = _signature(node, dtypes, opset, half)
        if sig is None:
            continue
        if node.op in keep_ops:
            plan.kept[node_label(node)] = f"{node.op} is in keep-ops (range-sensitive)"
        elif any(id(t) in in_bodies for t in node.outputs):
            plan.kept[node_label(node)] = "an output is read inside a subgraph body"
        elif _constant_out_of_range(node, sig, half):
            plan.kept[node_label(node)] = f"a constant input exceeds the {half.name} range"
        else:
            plan.add(node, sig)
    return plan


def _signature(node: gs.Node, dtypes, opset: int, half: HalfType) -> FloatSignature | None:
    """The node's float signature if it is a float32 candidate, else None."""
    if not is_standard_op(node) or any(True for _ in subgraphs(node)):
        return None
    sig = float_signature(node.op, opset, half.type_str)
    if sig is None:
        return None
    typed = [node.inputs[i] for i in sig.input_positions(len(node.inputs))]
    typed += [node.outputs[i] for i in sig.output_positions(len(node.outputs))]
    typed = [t for t in typed if t.name or isinstance(t, gs.Constant)]  # "" = omitted optional input
    if not typed or any(float_dtype(t, dtypes) != np.float32 for t in typed):
        return None
    return sig


def _constant_out_of_range(node: gs.Node, sig: FloatSignature, half: HalfType) -> bool:
    for i in sig.input_positions(len(node.inputs)):
        t = node.inputs[i]
        if isinstance(t, gs.Constant):
            values = np.asarray(t.values)
            finite = values[np.isfinite(values)]
            if finite.size and float(np.abs(finite).max()) > half.max_finite:
                return True
    return False


def _read_in_bodies(graph: gs.Graph) -> set[int]:
    """ids of tensors read by nodes of an If/Loop/Scan body."""
    read: set[int] = set()
    for path, scope in walk_graphs(graph):
        if path:
            read.update(id(t) for n in scope.nodes for t in n.inputs)
    return read


def drop_shape_values(graph: gs.Graph, plan: Plan, dtypes) -> None:
    """Keep float32 the candidates whose float inputs are all derived from integers (through a
    Cast) or constant, at least one derived: shape arithmetic. Constant-only nodes convert (their
    result is a constant expression of half constants)."""
    derived: set[int] = set()   # ids of float tensors whose value follows integers (and constants)
    for node in find_cycle_free_order(graph):  # producers first (a loaded file keeps its own order)
        named = [t for t in node.inputs if t.name or isinstance(t, gs.Constant)]
        floats = [t for t in named if float_dtype(t, dtypes) in (np.float32, np.float64)]
        if is_standard_op(node, "Cast"):
            shape_like = any(float_dtype(t, dtypes) in INTEGER_ELEMENT_TYPES for t in named) or \
                any(id(t) in derived for t in floats)
        else:
            shape_like = (bool(floats) and any(id(t) in derived for t in floats)
                          and all(isinstance(t, gs.Constant) or id(t) in derived for t in floats))
        if shape_like:
            derived.update(id(t) for t in node.outputs)
            if node in plan:
                plan.keep(node, "computes a shape value from integers")


def drop_isolated(graph: gs.Graph, plan: Plan) -> None:
    """Return to float32 the converted nodes with no converted neighbour and no constant worth
    halving (two Casts for nothing), until none is left."""
    changed = True
    while changed:
        changed = False
        for node, sig in plan.nodes():
            if _worth_alone(node, sig) or _has_half_neighbour(node, sig, plan):
                continue
            plan.keep(node, "isolated: no half-precision neighbour and no weight to halve")
            changed = True


def _worth_alone(node: gs.Node, sig: FloatSignature) -> bool:
    return any(isinstance(node.inputs[i], gs.Constant)
               and np.asarray(node.inputs[i].values).size >= MIN_WORTHWHILE_ELEMENTS
               for i in sig.input_positions(len(node.inputs)))


def _has_half_neighbour(node: gs.Node, sig: FloatSignature, plan: Plan) -> bool:
    for i in sig.input_positions(len(node.inputs)):
        src = producer(node.inputs[i])
        if src is not None and src in plan:
            return True
    for i in sig.output_positions(len(node.outputs)):
        for reader in node.outputs[i].outputs:
            if reader in plan and reader is not node:
                return True
    return False
