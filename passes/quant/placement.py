"""Where the quant pass puts QuantizeLinear/DequantizeLinear: a plan, computed without touching
the graph, that onnxruntime's QDQ fusion turns into integer kernels.

What onnxruntime fuses (``core/optimizer/qdq_transformer/selectors_actions``), and so what the
plan aims for:

- ``DQ(x), DQ(W), DQ(b) -> Conv -> Q`` becomes QLinearConv. The Q on the output is required; a
  Relu or Clip between the Conv and the Q is dropped when the Q's range already clips like it
  (Relu: zero point at the bottom of the integer range; Clip: the Q's range inside the Clip's).
  So the Q goes *after* a Conv's Relu/Clip, whose range becomes the Q's.
- ``DQ(A), DQ(B) [, DQ(C)] -> Gemm [-> Q]`` becomes QGemm; ``DQ(A), DQ(B) -> MatMul [-> Q]``
  becomes QLinearMatMul, or MatMulIntegerToFloat without the Q (float output: no requantization,
  and a following bias Add is fused into it).
- Add and Mul with both inputs dequantized and a Q on the output become QLinearAdd/QLinearMul;
  Concat becomes QLinearConcat; GlobalAveragePool, AveragePool, Sigmoid, Softmax, LeakyRelu become
  their QLinear forms.
- MaxPool, Resize and data movement (Reshape, Transpose, Squeeze, Unsqueeze, Flatten, Slice,
  Gather, Expand, Tile, Split) run on the integers when the Q/DQ around them have *equal* scale
  and zero point: their input and output share one scale (a union-find group of tensors).

Two rewrites keep chains of element-wise ops on integers (both lossless up to quantization):

- **HardSigmoid as a saturating add.** ``HardSigmoid(x) = clip(a x + b, 0, 1) = a clip(x + b/a,
  0, 1/a)``: an ``Add(x, b/a)`` whose Q has range [0, 1/a] (zero point at the bottom) clips like
  the HardSigmoid, and the DQ that reads it uses the Q's scale times ``a``. onnxruntime runs the
  Add as QLinearAdd. HardSwish is ``x * HardSigmoid(x, 1/6, 1/2)``, so it becomes QLinearAdd then
  QLinearMul instead of DQ, HardSigmoid, Mul, Q in float.
- **Affine maps folded into a DQ.** ``y = a h + b`` (a chain of constant scalar ``Mul`` by
  positive constants and ``Add``, each the only reader of the one before, composed into one
  ``a > 0`` and ``b``; canonicalize leaves unfoldable affine maps as one Mul then one Add) on a
  quantized ``h`` with scale ``s`` and zero point ``z`` is
  ``a s (q - (z - b / (a s)))``: the Mul and Add disappear and readers of ``y`` read a DQ of
  ``h``'s integers with scale ``a s`` and zero point ``z - b / (a s)``. That zero point must be an
  integer, so ``h``'s scale is widened to ``b / (a k)`` with ``k = trunc(b / (a s))`` (by less
  than a factor ``1 + 1/k``; for ``|b / (a s)| < 1``, ``b`` is dropped: an error below one step of
  ``y``). If the zero point leaves the integer range the Mul/Add stay, in float. ``h`` must have
  integers of its own: a fold never starts from another fold's output (that is a DQ of *its*
  source's integers), so a chain broken by a second reader leaves the later part unfolded.

Policy. With ``placement=auto`` (the default) the speed model (:mod:`graphc.passes.quant.speed_model`)
first picks which ops run on integers, by a minimum cut over estimated costs, and the planner
quantizes exactly those (quantizing inputs the cut decided to convert). With ``placement=all``,
"quantize where it removes conversions": anchors (Conv, Gemm, MatMul with a constant weight, and
MatMul of two activations) are quantized unless excluded; an element-wise op with an integer
kernel only when every activation input is already quantized (or is the output of a Gemm/MatMul
anchor, which can emit integers for free), so that running it on integers replaces
dequantizations instead of adding quantizations. Either way graph outputs stay float unless an
anchor that needs an output Q produces them.

The plan names tensors by object; nothing here mutates the graph.

Size: the op tables, the plan's records and one walk that places them are one algorithm; the
speed model and the rewrite are modules of their own.
"""
from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir import consumers, is_graph_output, is_standard_op, node_label, producer
from graphc.ir.op_kinds import LINEAR_OPS

log = logging.getLogger(__name__)

#: element-wise and pooling ops that onnxruntime runs as QLinear* kernels (requantizing).
QLINEAR_OPS = ("Add", "Mul", "Concat", "GlobalAveragePool", "AveragePool", "Sigmoid", "Softmax",
               "LeakyRelu")
#: ops that run on integers when input and output share one scale and zero point.
SAME_SCALE_OPS = ("MaxPool", "Resize", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten",
                  "Slice", "Gather", "Expand", "Tile", "Split")
#: activations absorbed into the preceding Q (their clipping is done by the Q's saturation).
ABSORBED_OPS = ("Relu", "Clip")
#: ops rewritten into integer form (see the module doc).
REWRITTEN_OPS = ("HardSigmoid", "HardSwish")
#: what ``ops=`` defaults to. ConvTranspose is off: onnxruntime has no integer ConvTranspose on
#: CPU, so quantizing it only adds conversions.
DEFAULT_OPS = ("Conv", "Gemm", "MatMul", "Add", "Mul", "Concat", "GlobalAveragePool",
               "AveragePool", "MaxPool", "Resize", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
               "Flatten", "Relu", "Clip", "HardSigmoid", "HardSwish")
ALL_OPS = tuple(dict.fromkeys(LINEAR_OPS + QLINEAR_OPS + SAME_SCALE_OPS + ABSORBED_OPS + REWRITTEN_OPS))

FLOAT = np.dtype(np.float32)


@dataclass
class ActivationQuant:
    """An activation tensor to quantize (Q then DQ; every reader reads the DQ)."""

    tensor: gs.Tensor
    group: int                      # tensors of one group share scale and zero point
    lower: float | None = None      # a bound the values are known to respect (Relu: 0)
    upper: float | None = None      # (Clip max)
    absorbed: gs.Node | None = None  # the Relu/Clip whose clipping the Q takes over


@dataclass
class WeightQuant:
    """A constant input of an anchor, quantized (per channel along ``axis`` when not None)."""

    node: gs.Node
    index: int
    axis: int | None


@dataclass
class BiasQuant:
    """A bias quantized to int32 with scale ``scale(x) * scale(W)``."""

    node: gs.Node
    index: int
    activation: gs.Tensor
    weight: WeightQuant


@dataclass
class HardSigmoidRewrite:
    """``HardSigmoid(x)`` (or ``HardSwish(x) = x * HardSigmoid(x, 1/6, 1/2)``) as a saturating Add."""

    node: gs.Node
    alpha: float
    beta: float
    swish: bool


@dataclass
class AffineFold:
    """``y = scale * source + shift`` (the ``nodes``: Mul, Add or Mul then Add) read as a DQ of
    ``source``'s integers."""

    source: gs.Tensor
    nodes: list[gs.Node]
    scale: float
    shift: float
    output: gs.Tensor


@dataclass
class Plan:
    activations: dict[str, ActivationQuant] = field(default_factory=dict)
    weights: list[WeightQuant] = field(default_factory=list)
    biases: list[BiasQuant] = field(default_factory=list)
    hardsigmoids: list[HardSigmoidRewrite] = field(default_factory=list)
    folds: list[AffineFold] = field(default_factory=list)
    #: tensors whose integer form a rewrite provides (HardSigmoid outputs)
    provided: set[str] = field(default_factory=set)
    quantized: list[gs.Node] = field(default_factory=list)  # nodes that run on integers
    skipped: dict[str, int] = field(default_factory=dict)
    #: node name -> (op, reason) for weighted and element-wise nodes left in float
    kept_float: dict[str, tuple[str, str]] = field(default_factory=dict)
    _parent: dict[int, int] = field(default_factory=dict)

    # -- scale groups (union-find over group ids) --------------------------------------------

    def group_of(self, name: str) -> int:
        g = self.activations[name].group
        while self._parent.get(g, g) != g:
            g = self._parent[g]
        return g

    def join(self, a: str, b: str) -> None:
        ga, gb = self.group_of(a), self.group_of(b)
        if ga != gb:
            self._parent[max(ga, gb)] = min(ga, gb)

    def groups(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for name in self.activations:
            out.setdefault(self.group_of(name), []).append(name)
        return out

    def skip(self, reason: str, node: gs.Node | None = None) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if node is not None and node.name:
            self.kept_float.setdefault(node.name, (node.op, reason))


@dataclass(frozen=True)
class PlacementConfig:
    ops: frozenset[str]
    exclude: tuple[str, ...] = ()
    per_channel: bool = True
    absorb_activations: bool = True  # False for symmetric activations (zero point not at qmin)
    full_range: bool = True          # bits == 8: the Q saturates exactly at the calibrated range
    allowed: frozenset[int] | None = None  # ids of nodes the speed model puts on integers


def is_float_tensor(tensor: gs.Tensor, shapes: dict) -> bool:
    dtype = tensor.dtype
    if dtype is None:
        info = shapes.get(tensor.name)
        dtype = info.dtype if info is not None else None
    try:
        return dtype is not None and np.dtype(dtype) == FLOAT
    except TypeError:
        return False


def excluded(node: gs.Node, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(node.name or "", p) for p in patterns)


# ---------------------------------------------------------------------------------------------
# planning


class Planner:
    def __init__(self, graph: gs.Graph, config: PlacementConfig, shapes: dict):
        self.graph = graph
        self.config = config
        self.shapes = shapes
        self.plan = Plan()
        self._next_group = 0
        self._anchor_outputs: set[int] = set()  # ids of Gemm/MatMul outputs that may take a Q

    def run(self) -> Plan:
        order = list(self.graph.nodes)  # the pass manager keeps nodes topologically sorted
        for node in order:
            if not is_standard_op(node) or node.op not in self.config.ops:
                continue
            if excluded(node, self.config.exclude):
                self.plan.skip(f"{node.op} excluded by pattern", node)
                continue
            if self.config.allowed is not None and id(node) not in self.config.allowed:
                if node.op in LINEAR_OPS or node.op in REWRITTEN_OPS:
                    self.plan.skip(f"{node.op} kept float: faster by the speed model", node)
                continue
            if node.op in LINEAR_OPS:
                self._anchor(node)
            elif node.op in QLINEAR_OPS:
                self._qlinear(node)
            elif node.op in SAME_SCALE_OPS:
                self._same_scale(node)
            elif node.op in REWRITTEN_OPS:
                self._hardsigmoid(node)
        return self.plan

    # -- helpers ---------------------------------------------------------------------------

    def _activation(self, tensor: gs.Tensor, **bounds) -> ActivationQuant:
        aq = self.plan.activations.get(tensor.name)
        if aq is None:
            aq = ActivationQuant(tensor, self._next_group, **bounds)
            self._next_group += 1
            self.plan.activations[tensor.name] = aq
        return aq

    def _is_quantized(self, tensor: gs.Tensor) -> bool:
        return tensor.name in self.plan.activations or tensor.name in self.plan.provided

    def _chosen(self, node: gs.Node) -> bool:
        """The speed model put ``node`` on integers (it paid for quantizing the inputs)."""
        return self.config.allowed is not None and id(node) in self.config.allowed

    def _available(self, tensor: gs.Tensor) -> bool:
        """Quantized already, or the output of a Gemm/MatMul anchor (which can take a Q)."""
        return self._is_quantized(tensor) or id(tensor) in self._anchor_outputs

    def _float_activation(self, tensor: gs.Tensor) -> bool:
        return isinstance(tensor, gs.Variable) and is_float_tensor(tensor, self.shapes)

    def _absorbable(self, out: gs.Tensor) -> gs.Node | None:
        """The Relu or Clip(constant bounds, lower 0) that alone reads ``out``."""
        if not self.config.absorb_activations:
            return None
        users = consumers(out)
        if len(users) != 1 or is_graph_output(self.graph, out):
            return None
        act = users[0]
        if not is_standard_op(act) or act.op not in ABSORBED_OPS or act.op not in self.config.ops:
            return None
        if excluded(act, self.config.exclude):
            return None
        if self.config.allowed is not None and id(act) not in self.config.allowed:
            return None
        if act.op == "Clip" and (_clip_bounds(act) is None or not self.config.full_range):
            return None
        return act

    # -- anchors ---------------------------------------------------------------------------

    def _anchor(self, node: gs.Node) -> None:
        reason = self._anchor_check(node)
        if reason is not None:
            self.plan.skip(reason, node)
            log.info("quant: %s not quantized: %s", node_label(node), reason)
            return
        if node.op == "MatMul" and not isinstance(node.inputs[1], gs.Constant):
            self._activation(node.inputs[0])
            self._activation(node.inputs[1])
        else:
            weight = WeightQuant(node, 1, self._weight_axis(node))
            self.plan.weights.append(weight)
            self._activation(node.inputs[0])
            bias_index = 2
            if len(node.inputs) > bias_index and isinstance(node.inputs[bias_index], gs.Constant):
                if _per_column_bias(node):
                    self.plan.biases.append(BiasQuant(node, bias_index, node.inputs[0], weight))
                else:
                    self.plan.skip(f"{node.op} bias does not have one value per output channel (kept float)", node)
        self.plan.quantized.append(node)
        out = node.outputs[0]
        if node.op in ("Conv", "ConvTranspose"):
            self._anchor_output(node, out)
        else:
            # Gemm/MatMul may leave their output float (MatMulIntegerToFloat, QGemm with float
            # output); it is quantized only if an integer consumer wants it.
            self._anchor_outputs.add(id(out))

    def _anchor_output(self, node: gs.Node, out: gs.Tensor) -> None:
        act = self._absorbable(out)
        if act is None:
            self._activation(out)
            return
        lower, upper = (0.0, None) if act.op == "Relu" else _clip_bounds(act)
        self._activation(act.outputs[0], lower=lower, upper=upper, absorbed=act)
        self.plan.quantized.append(act)

    def _anchor_check(self, node: gs.Node) -> str | None:
        if not node.inputs or not self._float_activation(node.inputs[0]):
            return f"{node.op} input is not a float32 activation"
        if len(node.outputs) != 1:
            return f"{node.op} has extra outputs"
        if node.op in ("Conv", "ConvTranspose", "Gemm"):
            if len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
                return f"{node.op} weight is not constant"
            if np.dtype(node.inputs[1].dtype) != FLOAT:
                return f"{node.op} weight is not float32"
            if not np.all(np.isfinite(node.inputs[1].values)):
                return f"{node.op} weight has NaN or infinite values"
            if len(node.inputs) > 2 and node.inputs[2].name and not isinstance(node.inputs[2], gs.Constant):
                return f"{node.op} bias is not constant"
        if node.op == "Gemm":
            if float(node.attrs.get("beta", 1.0)) != 1.0 and len(node.inputs) > 2:
                return "Gemm beta is not 1"
            if node.attrs.get("transA", 0):
                return "Gemm has transA"
        if node.op == "MatMul":
            w = node.inputs[1]
            if isinstance(w, gs.Constant):
                if np.dtype(w.dtype) != FLOAT:
                    return "MatMul weight is not float32"
                if not np.all(np.isfinite(w.values)):
                    return "MatMul weight has NaN or infinite values"
                if w.values.ndim != 2:
                    return "MatMul weight is not 2-D"
            elif not self._float_activation(w):
                return "MatMul second input is not a float32 activation"
        return None

    def _weight_axis(self, node: gs.Node) -> int | None:
        if not self.config.per_channel:
            return None
        if node.op == "Conv":
            return 0
        if node.op == "ConvTranspose":
            return 1
        if node.op == "Gemm":
            return 0 if node.attrs.get("transB", 0) else 1
        return 1  # MatMul: X @ W, W of shape (K, N): one scale per output column

    # -- element-wise ops with QLinear kernels ----------------------------------------------

    def _qlinear(self, node: gs.Node) -> None:
        if node.op in ("Mul", "Add") and self._affine(node):
            return
        inputs = [t for t in node.inputs if t.name]
        if not node.outputs or not self._float_activation(node.outputs[0]):
            return
        if any(is_graph_output(self.graph, out) for out in node.outputs):
            self.plan.skip(f"{node.op} produces a graph output (kept float)", node)
            return
        activations = [t for t in inputs if isinstance(t, gs.Variable)]
        if not activations:
            return
        if node.op in ("Add", "Mul") and len(inputs) != 2:
            return
        has_constant = any(isinstance(t, gs.Constant) for t in inputs)
        for t in inputs:
            if isinstance(t, gs.Constant):
                if node.op not in ("Add", "Mul") or np.dtype(t.dtype) != FLOAT:
                    return
            elif has_constant and not self._is_quantized(t) and id(t) in self._anchor_outputs:
                # MatMul/Gemm + constant Add: onnxruntime fuses the Add as the bias of a float-output
                # MatMulIntegerToFloat; requantizing twice would cost more.
                return
            elif not self._available(t) and not self._chosen(node):
                return  # quantizing here would add a conversion instead of removing one
        for t in inputs:
            if t.name not in self.plan.provided:
                self._activation(t)  # constants too: Add/Mul quantize them like activations
        self._activation(node.outputs[0])
        self.plan.quantized.append(node)

    # -- integer rewrites --------------------------------------------------------------------

    def _affine(self, node: gs.Node) -> bool:
        """Plan an affine fold starting at ``node`` (Mul by a > 0, or Add); True if planned."""
        if any(node is n for f in self.plan.folds for n in f.nodes):
            return True
        if not self.config.absorb_activations:
            return False  # symmetric activations: a fold would move the zero point
        operand = _scalar_operand(node)
        if operand is None:
            return False
        source, value = operand
        if (not self._available(source) and not self._chosen(node)) or source.name in self.plan.provided:
            return False
        if any(f.output is source for f in self.plan.folds):
            # a fold's output is a DQ of its source's integers: it has no integers of its own
            # to fold from (the chain through it stopped at a tensor with several readers)
            return False
        if is_graph_output(self.graph, node.outputs[0]) or not self._keeps_shape(node, source):
            return False
        if not self._float_activation(node.outputs[0]):
            return False
        if node.op == "Mul" and not value > 0:
            return False
        nodes = [node]
        scale, shift = (value, 0.0) if node.op == "Mul" else (1.0, value)
        while (step := self._chain_step(nodes[-1])) is not None:
            nodes.append(step[0])
            scale, shift = step[1] * scale, step[1] * shift + step[2]
        out = nodes[-1].outputs[0]
        self._activation(source)
        self._activation(out)  # calibrated too: the fallback quantizes it on its own
        self.plan.folds.append(AffineFold(source, nodes, scale, shift, out))
        self.plan.quantized.extend(nodes)
        return True

    def _chain_step(self, node: gs.Node) -> tuple[gs.Node, float, float] | None:
        """(reader, c, d) when the only reader of ``node``'s output is a scalar Mul (``c > 0``,
        ``d = 0``) or Add (``c = 1``, ``d`` its constant) that may join the fold: ``c y + d``."""
        out = node.outputs[0]
        users = consumers(out)
        if len(users) != 1 or is_graph_output(self.graph, out):
            return None
        user = users[0]
        if (not is_standard_op(user, "Mul", "Add") or user.op not in self.config.ops
                or excluded(user, self.config.exclude)
                or (self.config.allowed is not None and id(user) not in self.config.allowed)):
            return None
        operand = _scalar_operand(user)
        if operand is None or operand[0] is not out or is_graph_output(self.graph, user.outputs[0]):
            return None
        if not self._keeps_shape(user, out) or not self._float_activation(user.outputs[0]):
            return None
        if user.op == "Mul":
            return (user, operand[1], 0.0) if operand[1] > 0 else None
        return user, 1.0, operand[1]

    def _keeps_shape(self, node: gs.Node, source: gs.Tensor) -> bool:
        """The scalar operand broadcasts without adding axes."""
        const = next(t for t in node.inputs if isinstance(t, gs.Constant))
        info = self.shapes.get(source.name)
        rank = len(info.shape) if info is not None and info.shape is not None else None
        return const.values.ndim <= (rank if rank is not None else 1)

    def _hardsigmoid(self, node: gs.Node) -> None:
        if not self.config.full_range or not self.config.absorb_activations:
            # the Q must clip at the bottom code: not with fewer bits (it saturates at the type's
            # limits) nor with symmetric activations (zero point in the middle)
            return
        if not node.inputs or not node.outputs or not self._float_activation(node.outputs[0]):
            return
        x = node.inputs[0]
        if not self._available(x) and not self._chosen(node):
            return
        if is_graph_output(self.graph, node.outputs[0]):
            self.plan.skip(f"{node.op} produces a graph output (kept float)", node)
            return
        swish = node.op == "HardSwish"
        alpha = 1.0 / 6.0 if swish else float(node.attrs.get("alpha", 0.2))
        beta = 0.5 if swish else float(node.attrs.get("beta", 0.5))
        if not alpha > 0:
            self.plan.skip("HardSigmoid alpha is not positive", node)
            return
        self._activation(x)
        if swish:
            self._activation(node.outputs[0])  # the product, quantized (QLinearMul)
        else:
            self.plan.provided.add(node.outputs[0].name)
        self.plan.hardsigmoids.append(HardSigmoidRewrite(node, alpha, beta, swish))
        self.plan.quantized.append(node)

    # -- ops that run on integers with one shared scale -------------------------------------

    def _same_scale(self, node: gs.Node) -> None:
        if not node.inputs or not node.outputs:
            return
        data = node.inputs[0]
        if (not self._available(data) and not self._chosen(node)) or data.name in self.plan.provided:
            return
        outs = [o for o in node.outputs if o.name]
        if not all(self._float_activation(o) for o in outs):
            return
        if any(is_graph_output(self.graph, o) for o in outs):
            self.plan.skip(f"{node.op} produces a graph output (kept float)", node)
            return
        if node.op == "Resize" and node.attrs.get("mode", "nearest") not in ("nearest", "linear"):
            self.plan.skip("Resize mode is not nearest or linear", node)
            return
        self._activation(data)
        for out in outs:
            self._activation(out)
            self.plan.join(data.name, out.name)
        self.plan.quantized.append(node)


def _per_column_bias(node: gs.Node) -> bool:
    """The bias has one value per output channel along its last axis (Conv: (C,); Gemm: (N,),
    (1, N) or (M, N)), so it can take the per-channel scale ``s_x s_W``."""
    bias = np.asarray(node.inputs[2].values)
    w = node.inputs[1].values
    if node.op in ("Conv", "ConvTranspose"):
        channels = w.shape[0] if node.op == "Conv" else w.shape[1] * int(node.attrs.get("group", 1))
        return bias.shape == (channels,)
    columns = w.shape[0] if node.attrs.get("transB", 0) else w.shape[1]
    return bias.ndim >= 1 and bias.shape[-1] == columns and np.all(np.isfinite(bias))


def _scalar_operand(node: gs.Node) -> tuple[gs.Tensor, float] | None:
    """(activation, constant) of a binary node whose other input is a float scalar constant."""
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if isinstance(a, gs.Constant) and isinstance(b, gs.Variable):
        a, b = b, a
    if not (isinstance(a, gs.Variable) and isinstance(b, gs.Constant)):
        return None
    values = np.asarray(b.values)
    if values.size != 1 or values.dtype != FLOAT:
        return None
    value = float(values.reshape(()))
    return (a, value) if np.isfinite(value) else None


def _clip_bounds(node: gs.Node) -> tuple[float, float] | None:
    """(min, max) of a Clip whose bounds are constants with min == 0 (absorbable), else None."""
    lo = hi = None
    if "min" in node.attrs or "max" in node.attrs:  # opset < 11
        lo, hi = node.attrs.get("min"), node.attrs.get("max")
    else:
        if len(node.inputs) > 1 and node.inputs[1].name:
            if not isinstance(node.inputs[1], gs.Constant):
                return None
            lo = float(np.asarray(node.inputs[1].values).reshape(()))
        if len(node.inputs) > 2 and node.inputs[2].name:
            if not isinstance(node.inputs[2], gs.Constant):
                return None
            hi = float(np.asarray(node.inputs[2].values).reshape(()))
    if lo is None or hi is None or lo != 0.0 or not hi > 0:
        return None
    return float(lo), float(hi)


def plan_quantization(graph: gs.Graph, config: PlacementConfig, shapes: dict) -> Plan:
    return Planner(graph, config, shapes).run()


def candidate_nodes(graph: gs.Graph, config: PlacementConfig) -> list[gs.Node]:
    """Nodes the planner may put on integers (before the speed model chooses)."""
    return [n for n in graph.nodes
            if is_standard_op(n) and n.op in config.ops and not excluded(n, config.exclude)]


__all__ = ["ActivationQuant", "WeightQuant", "BiasQuant", "AffineFold", "HardSigmoidRewrite", "Plan",
           "PlacementConfig",
           "plan_quantization", "ALL_OPS", "DEFAULT_OPS", "QLINEAR_OPS",
           "SAME_SCALE_OPS", "ABSORBED_OPS", "producer"]
