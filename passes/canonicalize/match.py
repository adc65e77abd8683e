"""Rule infrastructure for canonicalize: outcomes, the rule table, and the matching helpers rules
share (constant operands, single readers, ranks, rewiring a matched chain).

A rule is a function ``rule(rw, node) -> Outcome``: ``None`` when the pattern does not match at
``node``; :class:`Fired` after rewriting; :class:`Skip` when the pattern matched but the rewrite
would not be exact (the reason is shown to the user); :class:`NeedsOpset` when the rewrite needs a
newer opset than the model has.

Rewrites keep the *last* tensor of a matched chain as the output of the new nodes, so graph
output names and every reader of the result stay as they were; intermediate tensors of a chain
must have exactly one reader and not be graph outputs (:meth:`Rewriter.sole_reader`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir import NameFactory, bypass, constant_value, consumers, is_graph_output, is_standard_op, producer
from graphc.ir.op_kinds import FLOAT_DTYPES


@dataclass(frozen=True)
class Fired:
    """The rule rewrote the graph; ``key`` is the counter it increments."""
    key: str


@dataclass(frozen=True)
class Skip:
    """The pattern matched but is left alone, for ``reason``."""
    reason: str


@dataclass(frozen=True)
class NeedsOpset:
    """The pattern matched; the native op exists only from ``version``."""
    version: int
    reason: str


Outcome = Union[Fired, Skip, NeedsOpset, None]


@dataclass(frozen=True)
class Rule:
    name: str
    ops: tuple[str, ...]          # ops the pattern is anchored at
    apply: Callable[["Rewriter", gs.Node], Outcome]
    doc: str


class Rewriter:
    """What a rule sees: the graph, its opset, shape facts, and small rewiring operations."""

    def __init__(self, graph: gs.Graph, opset: int, shapes: dict, *, max_opset: int | None = None,
                 ctx=None):
        self.graph = graph
        self.opset = opset
        self.shapes = shapes
        self.max_opset = opset if max_opset is None else max(opset, max_opset)
        self.ctx = ctx
        self.names = NameFactory(graph)
        self._ranks: dict[int, int] | None = None
        self.protected: set[int] = set()
        self.memo: dict[str, object] = {}  # per-round helpers rules share

    def protect(self, nodes) -> None:
        """Keep the other rules off ``nodes`` for this round."""
        self.protected.update(id(n) for n in nodes)

    def can_upgrade_to(self, version: int) -> bool:
        """True if the pass may raise the model's opset to ``version`` (upgrade-opset)."""
        return self.opset < version <= self.max_opset

    # -- facts --------------------------------------------------------------------------------

    def shape(self, tensor: gs.Tensor) -> tuple | None:
        """Shape of ``tensor`` (dims int, str or None), or None if its rank is unknown."""
        if isinstance(tensor, gs.Constant):
            return tuple(tensor.values.shape)
        info = self.shapes.get(tensor.name)
        if info is not None and info.shape is not None:
            return tuple(info.shape)
        return tuple(tensor.shape) if tensor.shape is not None else None

    def rank(self, tensor: gs.Tensor) -> int | None:
        shape = self.shape(tensor)
        if shape is not None:
            return len(shape)
        if self._ranks is None:
            self._ranks = propagate_ranks(self.graph, self.shape)
        return self._ranks.get(id(tensor))

    def static_shape(self, tensor: gs.Tensor) -> tuple[int, ...] | None:
        shape = self.shape(tensor)
        if shape is None or not all(isinstance(d, int) and d >= 0 for d in shape):
            return None
        return tuple(int(d) for d in shape)

    def dtype(self, tensor: gs.Tensor) -> np.dtype | None:
        if isinstance(tensor, gs.Constant):
            return tensor.values.dtype
        info = self.shapes.get(tensor.name)
        if info is not None and info.dtype is not None:
            return np.dtype(info.dtype)
        try:
            return np.dtype(tensor.dtype) if tensor.dtype is not None else None
        except TypeError:
            return None

    def is_float(self, tensor: gs.Tensor) -> bool:
        return self.dtype(tensor) in FLOAT_DTYPES

    def sole_reader(self, tensor: gs.Tensor, *ops: str) -> gs.Node | None:
        """The only node reading ``tensor`` (which is not a graph output), if it is one of ``ops``."""
        users = consumers(tensor)
        if len(users) != 1 or is_graph_output(self.graph, tensor):
            return None
        user = users[0]
        return user if is_standard_op(user) and (not ops or user.op in ops) else None

    def readers(self, tensor: gs.Tensor) -> list[gs.Node]:
        return consumers(tensor)

    def is_output(self, tensor: gs.Tensor) -> bool:
        return is_graph_output(self.graph, tensor)

    def produced_by(self, tensor: gs.Tensor, *ops: str) -> gs.Node | None:
        node = producer(tensor)
        if node is None or not is_standard_op(node) or (ops and node.op not in ops):
            return None
        return node

    def broadcast_keeps_shape(self, x: gs.Tensor, const: np.ndarray) -> bool:
        """True if ``x op const`` has exactly ``x``'s shape (the constant does not broadcast x up)."""
        if const.ndim == 0:
            return True
        shape = self.shape(x)
        if shape is None:
            rank = self.rank(x)
            return rank is not None and const.ndim <= rank and all(d == 1 for d in const.shape)
        if const.ndim > len(shape):
            return False
        for dim, c in zip(shape[len(shape) - const.ndim:], const.shape):
            if c != 1 and dim != c:
                return False
        return True

    # -- editing --------------------------------------------------------------------------------

    def variable(self, like: gs.Tensor, base: str, dtype=None) -> gs.Variable:
        dtype = dtype if dtype is not None else (self.dtype(like) or np.float32)
        return gs.Variable(self.names(base), dtype=dtype)

    def constant(self, base: str, value: np.ndarray) -> gs.Constant:
        return gs.Constant(self.names(base), np.array(value, order="C"))  # keeps 0-d arrays 0-d

    def add_node(self, op: str, inputs: list, outputs: list, attrs: dict | None = None,
                 base: str = "") -> gs.Node:
        node = gs.Node(op=op, name=self.names(base or op.lower()), attrs=dict(attrs or {}),
                       inputs=list(inputs), outputs=list(outputs))
        self.graph.nodes.append(node)
        return node

    def remove(self, *nodes: gs.Node) -> None:
        """Disconnect ``nodes``; :meth:`flush` drops them from the node list (one pass for
        all removals of a sweep instead of one list rebuild per node)."""
        for node in nodes:
            node.inputs.clear()
            node.outputs.clear()

    def flush(self) -> None:
        """Drop disconnected nodes from the graph's node list."""
        self.graph.nodes = [n for n in self.graph.nodes if n.outputs]

    def bypass(self, node: gs.Node, keep: gs.Tensor) -> bool:
        """Readers of ``node``'s output read ``keep`` instead; False if a graph output forbids it."""
        return bypass(self.graph, node, keep, drop=False)  # flush() drops it with the others


# -- ranks ---------------------------------------------------------------------------------------

#: ops whose output has the rank of their first input
_SAME_RANK = frozenset({
    "Abs", "BatchNormalization", "Cast", "Ceil", "Clip", "Conv", "ConvTranspose", "Dropout", "Elu",
    "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish", "Identity", "InstanceNormalization",
    "LayerNormalization", "LeakyRelu", "Log", "LogSoftmax", "MaxPool", "AveragePool", "Mish", "Neg",
    "Not", "PRelu", "Reciprocal", "Relu", "Resize", "Round", "Selu", "Sigmoid", "Sign", "Slice",
    "Softmax", "Softplus", "Softsign", "Sqrt", "Swish", "Tanh", "Tile", "Transpose", "Pad",
    "GlobalAveragePool", "GlobalMaxPool", "Concat", "Split", "CumSum", "Upsample", "DepthToSpace",
    "SpaceToDepth", "LpNormalization", "Trilu",
})
#: element-wise ops with broadcasting: the largest input rank
_BROADCAST = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where",
                        "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or",
                        "Xor", "Mod", "BitShift"})


def propagate_ranks(graph: gs.Graph, shape_of: Callable[[gs.Tensor], tuple | None]) -> dict[int, int]:
    """Ranks (by tensor identity) where shape inference gave up: ONNX inference stops at a
    Reshape whose target is computed (PP-OCR rec), although the target's length fixes the rank.
    Lengths of 1-D shape tensors are tracked alongside (Shape -> Slice -> Cast -> Concat).
    ``graph`` must be topologically sorted."""
    ranks: dict[int, int] = {}
    lengths: dict[int, int] = {}

    def rank(t: gs.Tensor) -> int | None:
        shape = shape_of(t)
        return len(shape) if shape is not None else ranks.get(id(t))

    def length(t: gs.Tensor) -> int | None:
        shape = shape_of(t)
        if shape is not None and len(shape) == 1 and isinstance(shape[0], int):
            return shape[0]
        return lengths.get(id(t))

    for node in graph.nodes:
        if not node.outputs or not is_standard_op(node):
            continue
        ins = [rank(t) if t.name else None for t in node.inputs]
        r = _output_rank(node, ins, length)
        if r is not None:
            for out in node.outputs:
                if shape_of(out) is None:
                    ranks[id(out)] = r
        n = _output_length(node, ins, length)
        if n is not None:
            lengths[id(node.outputs[0])] = n
            ranks.setdefault(id(node.outputs[0]), 1)
    return ranks


def _output_length(node: gs.Node, ins: list[int | None], length) -> int | None:
    """Length of a 1-D integer tensor computed from shapes, where it follows from the inputs."""
    op = node.op
    if op == "Shape" and ins and ins[0] is not None:
        return len(range(ins[0])[slice(node.attrs.get("start", 0), node.attrs.get("end"))])
    if op in ("Cast", "Identity", "Neg", "Abs"):
        return length(node.inputs[0])
    if op == "Concat" and int(node.attrs.get("axis", 0)) in (0, -1):
        parts = [length(t) for t in node.inputs]
        return None if any(p is None for p in parts) else sum(parts)
    if op == "Unsqueeze" and ins and ins[0] == 0:
        return 1
    if op == "Slice" and len(node.inputs) >= 3 and length(node.inputs[0]) is not None:
        bounds = [constant_value(t) for t in node.inputs[1:]]
        if any(b is None or b.size != 1 for b in bounds):
            return None
        starts, ends = int(bounds[0].reshape(())), int(bounds[1].reshape(()))
        step = int(bounds[3].reshape(())) if len(bounds) > 3 else 1
        return len(range(length(node.inputs[0]))[slice(starts, ends, step)])
    return None


def _output_rank(node: gs.Node, ins: list[int | None], length) -> int | None:
    op = node.op
    if not ins:
        return None
    if op in _SAME_RANK:
        return ins[0]
    if op in _BROADCAST:
        return None if any(r is None for r in ins) else max(ins)
    if op == "Reshape":
        return length(node.inputs[1]) if len(node.inputs) > 1 else None
    if op == "MatMul":
        a, b = ins[:2]
        if a is None or b is None:
            return None
        return max(a, b) - (a == 1) - (b == 1)
    if op == "Flatten":
        return 2
    if op.startswith("Reduce"):
        if int(node.attrs.get("keepdims", 1)):
            return ins[0]
        axes = node.attrs.get("axes")
        return None if ins[0] is None or axes is None else ins[0] - len(axes)
    if op in ("Squeeze", "Unsqueeze"):
        axes = node.attrs.get("axes")
        if axes is None and len(node.inputs) > 1:
            value = constant_value(node.inputs[1])
            axes = None if value is None else value.reshape(-1)
        if axes is None or ins[0] is None:
            return None
        return ins[0] - len(axes) if op == "Squeeze" else ins[0] + len(axes)
    if op == "Gather":
        return None if None in ins[:2] else ins[0] + ins[1] - 1
    return None


# -- constants -----------------------------------------------------------------------------------


def const_operand(node: gs.Node) -> tuple[gs.Tensor, np.ndarray, int] | None:
    """For a binary node with one constant and one computed operand: (operand, constant value,
    index of the constant)."""
    if len(node.inputs) != 2 or len(node.outputs) != 1:
        return None
    a, b = (constant_value(t) for t in node.inputs)
    if b is not None and a is None:
        return node.inputs[0], b, 1
    if a is not None and b is None:
        return node.inputs[1], a, 0
    return None


def scalar(value: np.ndarray | None) -> float | None:
    if value is None or value.size != 1 or value.dtype.kind not in "fiu":
        return None
    return float(value.reshape(()))


def close(value: float | None, target: float, rtol: float = 1e-5) -> bool:
    return value is not None and bool(np.isclose(value, target, rtol=rtol, atol=0.0))


def scalar_operand(rw: Rewriter, node: gs.Node, op: str, x: gs.Tensor | None = None) -> float | None:
    """If ``node`` is ``op(x, c)`` (or ``op(c, x)`` for commutative ops) with a scalar constant ``c``
    that does not broadcast ``x`` up, return ``c``; ``x`` (if given) must be the computed operand."""
    if not is_standard_op(node, op):
        return None
    found = const_operand(node)
    if found is None:
        return None
    operand, value, index = found
    if (x is not None and operand is not x) or (op in ("Sub", "Div", "Pow") and index != 1):
        return None
    if not rw.broadcast_keeps_shape(operand, value):
        return None
    return scalar(value)


def multiplier(rw: Rewriter, node: gs.Node, x: gs.Tensor | None = None) -> float | None:
    """``node`` as ``x * c``: a Mul by a scalar, or a Div by one (c = 1 / divisor)."""
    if is_standard_op(node, "Mul"):
        return scalar_operand(rw, node, "Mul", x)
    divisor = scalar_operand(rw, node, "Div", x)
    return None if not divisor else 1.0 / divisor


def other_input(node: gs.Node, tensor: gs.Tensor) -> gs.Tensor | None:
    """The other operand of a binary ``node`` one of whose operands is ``tensor``."""
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if a is tensor:
        return b
    if b is tensor:
        return a
    return None


def clip_bounds(node: gs.Node) -> tuple[float | None, float | None] | None:
    """(min, max) of a Clip whose bounds are constant (None for an absent bound); None otherwise.
    Before opset 11 the bounds are attributes, from 11 on optional inputs."""
    if not is_standard_op(node, "Clip"):
        return None
    if len(node.inputs) == 1:
        lo, hi = node.attrs.get("min"), node.attrs.get("max")
        return (None if lo is None else float(lo), None if hi is None else float(hi))
    bounds = []
    for i in (1, 2):
        if len(node.inputs) <= i or not node.inputs[i].name:
            bounds.append(None)
            continue
        value = scalar(constant_value(node.inputs[i]))
        if value is None:
            return None
        bounds.append(value)
    return bounds[0], bounds[1]


def clip_node(rw: Rewriter, x: gs.Tensor, out: gs.Tensor, lo: float | None, hi: float | None,
              base: str) -> gs.Node:
    """A Clip in the model's opset spelling (attributes before opset 11, inputs after)."""
    if rw.opset < 11:
        attrs = {k: float(v) for k, v in (("min", lo), ("max", hi)) if v is not None}
        return rw.add_node("Clip", [x], [out], attrs, base=base)
    dtype = rw.dtype(x) or np.float32
    inputs = [x]
    for name, v in (("min", lo), ("max", hi)):
        inputs.append(rw.constant(f"{base}.{name}", np.array(v, dtype=dtype)) if v is not None
                      else gs.Variable.empty())
    while inputs and isinstance(inputs[-1], gs.Variable) and not inputs[-1].name:
        inputs.pop()
    return rw.add_node("Clip", inputs, [out], base=base)
