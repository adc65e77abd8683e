"""The quant pass's arithmetic and graph edits: scales and zero points, weight and bias
quantization, and the QuantizeLinear/DequantizeLinear nodes a plan asks for.

Maths (``b`` = bits, 8 by default):

- Activations, asymmetric: ``[lo, hi]`` is widened to contain 0, ``s = (hi - lo) / (2^b - 1)``,
  ``zp = round(qmin - lo / s)`` clamped to the integer range (u8: qmin 0; s8: qmin -128). A
  tensor after an absorbed Relu or Clip(0, c) has ``lo = 0`` exactly, so ``zp = qmin`` and the Q
  clips like the Relu did (onnxruntime then drops the Relu/Clip); after Clip(0, c), ``hi <= c``
  and ``s`` is rounded down if needed so that ``s (qmax - zp) <= c`` in float32, which
  onnxruntime's Clip+Q fusion checks.
- Activations, symmetric: ``T = max(|lo|, |hi|)``, ``s = T / (2^(b-1) - 1)``, zp 0 (s8) or
  ``2^(b-1)`` (u8).
- Weights: symmetric, per output channel along ``axis`` (or per tensor):
  ``s_c = max|W_c| / (2^(b-1) - 1)``, ``q = clip(round(W / s_c), -(2^(b-1) - 1), 2^(b-1) - 1)``
  (the restricted range keeps ``-q`` representable and avoids u8 x s8 overflow), zp 0; unsigned
  weights store ``q + 2^(b-1)`` with zp ``2^(b-1)``. An all-zero channel gets scale 1.
- Bias: int32 ``round(b / (s_x s_W))`` with scale ``s_x s_W`` computed in float32, which is the
  scale onnxruntime's QLinearConv/QGemm assume for the int32 bias.

Tensors keep their names: the value a node computes keeps its tensor; the quantized integers are
``<name>_quantized`` and what readers now see is ``<name>_dequantized``. So tensors of the float
and the quantized model match by name (``graphc verify --localize``). A graph output keeps its
name on the dequantized value (its producer's tensor becomes ``<name>_float``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir import NameFactory, consumers, is_graph_output

from graphc.passes.quant.placement import (
    SAME_SCALE_OPS,
    ActivationQuant,
    AffineFold,
    BiasQuant,
    HardSigmoidRewrite,
    Plan,
    WeightQuant,
)

FLOAT = np.float32


@dataclass(frozen=True)
class QuantFormat:
    activations: str = "u8"         # u8 | s8
    weights: str = "s8"             # s8 | u8
    bits: int = 8
    symmetric_activations: bool = False

    def act_dtype(self) -> type:
        return np.uint8 if self.activations == "u8" else np.int8


    def act_qrange(self) -> tuple[int, int]:
        if self.activations == "u8":
            return 0, 2 ** self.bits - 1
        return -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1


@dataclass(frozen=True)
class QParams:
    scale: np.ndarray   # float32, 0-d (activations) or 1-d (per-channel weights)
    zero_point: np.ndarray


# ---------------------------------------------------------------------------------------------
# arithmetic


def activation_params(lo: float, hi: float, fmt: QuantFormat, *, upper: float | None = None,
                      nonnegative: bool = False) -> QParams:
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if nonnegative:
        lo = 0.0
    if upper is not None:
        hi = min(hi, upper)
    qmin, qmax = fmt.act_qrange()
    dtype = fmt.act_dtype()
    if fmt.symmetric_activations and not nonnegative:
        t = max(-lo, hi)
        half = 2 ** (fmt.bits - 1) - 1
        scale = np.float32(t / half) if t > 0 else np.float32(1.0)
        zp = 0 if fmt.activations == "s8" else 2 ** (fmt.bits - 1)
        return QParams(_positive(scale), np.array(zp, dtype=dtype))
    steps = 2 ** fmt.bits - 1
    if hi - lo <= 0:
        return QParams(np.array(1.0, dtype=FLOAT), np.array(qmin, dtype=dtype))
    scale = _positive(np.float32((hi - lo) / steps))
    zp = int(np.clip(np.round(qmin - lo / float(scale)), qmin, qmax)) if not nonnegative else qmin
    if upper is not None:
        # onnxruntime drops Clip(0, c) before Q only if s * (qmax - zp) <= c + FLT_EPSILON (float32)
        top = np.float32(qmax - zp)
        while np.float32(scale * top) > np.float32(upper):
            scale = np.nextafter(scale, np.float32(0))
    return QParams(np.asarray(scale, dtype=FLOAT), np.array(zp, dtype=dtype))


def _positive(scale) -> np.ndarray:
    tiny = np.float32(1e-12)
    return np.asarray(max(np.float32(scale), tiny), dtype=FLOAT)


def quantize_activation_values(values: np.ndarray, params: QParams, fmt: QuantFormat) -> np.ndarray:
    """Integers of a constant operand (an Add/Mul constant) quantized like an activation."""
    qmin, qmax = fmt.act_qrange()
    q = np.round(values.astype(np.float64) / float(params.scale)) + int(params.zero_point)
    return np.asarray(np.clip(q, qmin, qmax)).astype(fmt.act_dtype())


def weight_params(w: np.ndarray, axis: int | None, fmt: QuantFormat) -> tuple[np.ndarray, QParams]:
    """(integers, params) of a symmetric per-channel (``axis``) or per-tensor weight."""
    half = 2 ** (fmt.bits - 1) - 1
    w64 = w.astype(np.float64)
    if axis is None:
        amax = np.array(np.max(np.abs(w64)) if w64.size else 0.0)
        shape = ()
    else:
        other = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.max(np.abs(w64), axis=other) if w64.size else np.zeros(w.shape[axis])
        shape = [1] * w.ndim
        shape[axis] = w.shape[axis]
    scale = np.where(amax > 0, amax / half, 1.0).astype(FLOAT)
    scale = np.asarray(np.maximum(scale, np.float32(1e-12)), dtype=FLOAT)
    q = np.clip(np.round(w64 / scale.astype(np.float64).reshape(shape)), -half, half)
    if fmt.weights == "u8":
        offset = 2 ** (fmt.bits - 1)
        ints = (q + offset).astype(np.uint8)
        zp = np.full(scale.shape, offset, dtype=np.uint8)
    else:
        ints = q.astype(np.int8)
        zp = np.zeros(scale.shape, dtype=np.int8)
    return ints, QParams(scale, zp)


def bias_params(b: np.ndarray, act_scale: np.ndarray, w_scale: np.ndarray) -> tuple[np.ndarray, QParams]:
    """int32 bias and its scale ``s_x s_W``: one per output channel (the bias's last axis) when the
    weight is per channel, else one."""
    scale = np.asarray(np.float32(act_scale) * w_scale.astype(FLOAT), dtype=FLOAT)
    info = np.iinfo(np.int32)
    q = np.clip(np.round(b.astype(np.float64) / scale.astype(np.float64)), info.min, info.max)
    return np.asarray(q).astype(np.int32), QParams(scale, np.zeros(scale.shape, dtype=np.int32))


# ---------------------------------------------------------------------------------------------
# graph edits


class QdqWriter:
    """Inserts the nodes of a plan, given the calibrated range of every planned activation."""

    def __init__(self, graph: gs.Graph, fmt: QuantFormat, names: NameFactory | None = None):
        self.graph = graph
        self.fmt = fmt
        # a body's writer shares the top graph's factory: names are unique across scopes
        self.names = names if names is not None else NameFactory(graph)
        self.params: dict[str, QParams] = {}
        self._constants: dict[tuple, tuple[gs.Constant, gs.Constant]] = {}
        self._weights: dict[tuple[int, int | None], tuple[gs.Constant, QParams]] = {}
        self._integers: dict[str, gs.Variable] = {}   # tensor name -> its Q output
        self.folded: set[str] = set()                 # outputs of affine folds done as a DQ
        self.folded_sources: set[str] = set()
        self._bounds: dict[str, tuple[float, bool, float | None]] = {}  # lo, nonnegative, upper
        self._group_members: dict[str, list[str]] = {}
        self.inserted = 0
        # new nodes are placed next to the nodes they serve, so the graph stays sorted: a
        # toposort that cannot see a subgraph's outer reads keeps the order it is given
        self._order = list(graph.nodes)
        self._top = {id(n) for n in graph.nodes}
        self._before: dict[int, list[gs.Node]] = {}
        self._after: dict[int | None, list[gs.Node]] = {}
        self._removed: set[int] = set()

    def _top_level(self) -> set[int]:
        return self._top

    def _place_after(self, tensor: gs.Tensor, nodes: list[gs.Node]) -> None:
        src = tensor.inputs[0] if tensor.inputs else None
        self._after.setdefault(id(src) if src is not None and id(src) in self._top else None, []).extend(nodes)

    def _place_before(self, node: gs.Node, nodes: list[gs.Node]) -> None:
        self._before.setdefault(id(node), []).extend(nodes)

    def _remove(self, node: gs.Node) -> None:
        node.inputs.clear()
        node.outputs.clear()
        self._removed.add(id(node))

    def finish(self) -> None:
        """Write the node list: each new node next to the node it serves, removed ones dropped."""
        nodes = list(self._after.get(None, []))
        for node in self._order:
            nodes.extend(self._before.get(id(node), []))
            if id(node) not in self._removed:
                nodes.append(node)
            nodes.extend(self._after.get(id(node), []))
        self.graph.nodes = nodes

    # -- parameters ----------------------------------------------------------------------------

    def solve_groups(self, plan: Plan, ranges: dict) -> None:
        for members in plan.groups().values():
            for m in members:
                self._group_members[m] = members
            acts = [plan.activations[m] for m in members]
            lo = min(_range_of(a, ranges)[0] for a in acts)
            hi = max(_range_of(a, ranges)[1] for a in acts)
            nonneg = all(a.lower is not None and a.lower >= 0 for a in acts)
            uppers = [a.upper for a in acts if a.upper is not None]
            upper = min(uppers) if uppers and len(uppers) == len(acts) else None
            params = activation_params(lo, hi, self.fmt, upper=upper, nonnegative=nonneg)
            for m in members:
                self.params[m] = params
                self._bounds[m] = (min(lo, 0.0), nonneg, upper)

    # -- affine folds ------------------------------------------------------------------------

    def solve_fold(self, fold: AffineFold) -> bool:
        """Give ``fold.output`` the DQ parameters that compute ``scale * source + shift`` from
        ``source``'s integers, widening ``source``'s scale so the zero point is an integer.
        False (nothing changed) when impossible."""
        name = fold.source.name
        if name in self.folded or not isinstance(fold.source, gs.Variable):
            return False  # no integers of its own to read: its Q is never written
        params = self.params[name]
        s = float(params.scale)
        lo, nonneg, upper = self._bounds[name]
        x = fold.shift / (fold.scale * s)
        k = int(np.trunc(x))
        qmin, qmax = self.fmt.act_qrange()
        if k != 0 and abs(x - k) > 1e-9:
            if any(m in self.folded_sources for m in self._group_members[name]):
                return False  # another fold already fixed this group's scale
            s = fold.shift / (fold.scale * k)
        scale = np.asarray(np.float32(s), dtype=FLOAT)
        zp = qmin if nonneg else int(np.clip(np.round(qmin - lo / float(scale)), qmin, qmax))
        if upper is not None and np.float32(scale * np.float32(qmax - zp)) > np.float32(upper):
            return False
        zp_out = zp - k
        if not qmin <= zp_out <= qmax:
            return False
        dtype = self.fmt.act_dtype()
        source_params = QParams(scale, np.array(zp, dtype=dtype))
        for m in self._group_members[name]:
            self.params[m] = source_params
        self.folded_sources.add(name)
        out_scale = np.asarray(np.float32(fold.scale * float(scale)), dtype=FLOAT)
        self.params[fold.output.name] = QParams(out_scale, np.array(zp_out, dtype=dtype))
        self.folded.add(fold.output.name)
        return True

    def write_fold(self, fold: AffineFold) -> None:
        """Replace the fold's Mul/Add by a DQ of the source's integers (after activations)."""
        ints = self._integers[fold.source.name]
        params = self.params[fold.output.name]
        scale, zp = self._param_constants(params, fold.output.name)
        out = fold.output
        for node in fold.nodes:
            self._remove(node)
        self._place_before(fold.nodes[0], [gs.Node("DequantizeLinear", self.names(f"{out.name}_DequantizeLinear"),
                                                   inputs=[ints, scale, zp], outputs=[out])])

    def _param_constants(self, params: QParams, base: str) -> tuple[gs.Constant, gs.Constant]:
        """Scale and zero-point constants, shared between equal parameters."""
        key = (params.scale.tobytes(), params.scale.shape, params.zero_point.tobytes(),
               params.zero_point.dtype.str)
        if key not in self._constants:
            self._constants[key] = (gs.Constant(self.names(f"{base}_scale"), params.scale),
                                    gs.Constant(self.names(f"{base}_zero_point"), params.zero_point))
        return self._constants[key]

    # -- activations ---------------------------------------------------------------------------

    def quantize_activation(self, aq: ActivationQuant) -> None:
        tensor = aq.tensor
        params = self.params[tensor.name]
        scale, zp = self._param_constants(params, tensor.name)
        if isinstance(tensor, gs.Constant):
            self._quantize_constant_operand(tensor, params, scale, zp)
            return
        # readers inside If/Loop/Scan bodies keep the float tensor: the outer graph's order
        # cannot see them, so a DQ they read could land after the node holding them
        top = self._top_level()
        readers = [n for n in consumers(tensor) if id(n) in top]
        as_output = is_graph_output(self.graph, tensor)
        if not readers and not as_output and self._moved_here(tensor):
            # onnxruntime aborts the process (an assertion) when it optimizes DQ -> Transpose
            # (or another data-movement op) whose output only bodies read: they read this pair,
            # placed right after the producer, so before every node holding them
            readers = consumers(tensor)
        name = tensor.name
        q = gs.Variable(self.names(f"{name}_quantized"), dtype=self.fmt.act_dtype(), shape=tensor.shape)
        if as_output:
            dq = gs.Variable(name, dtype=FLOAT, shape=tensor.shape)
            tensor.name = self.names(f"{name}_float")
        else:
            dq = gs.Variable(self.names(f"{name}_dequantized"), dtype=FLOAT, shape=tensor.shape)
        qnode = gs.Node("QuantizeLinear", self.names(f"{name}_QuantizeLinear"), inputs=[tensor, scale, zp],
                        outputs=[q])
        dqnode = gs.Node("DequantizeLinear", self.names(f"{name}_DequantizeLinear"), inputs=[q, scale, zp],
                         outputs=[dq])
        for node in readers:
            for i, inp in enumerate(node.inputs):
                if inp is tensor:
                    node.inputs[i] = dq
        if as_output:
            self.graph.outputs = [dq if t is tensor else t for t in self.graph.outputs]
        self._place_after(tensor, [qnode, dqnode])
        self._integers[name] = q
        self.inserted += 1

    def _moved_here(self, tensor: gs.Tensor) -> bool:
        """``tensor`` is the output of a data-movement op of this graph (same scale in and out)."""
        src = tensor.inputs[0] if tensor.inputs else None
        return src is not None and id(src) in self._top and src.op in SAME_SCALE_OPS

    def _quantize_constant_operand(self, const: gs.Constant, params: QParams, scale, zp) -> None:
        ints = gs.Constant(self.names(f"{const.name}_quantized"),
                           quantize_activation_values(np.asarray(const.values), params, self.fmt))
        dq = gs.Variable(self.names(f"{const.name}_dequantized"), dtype=FLOAT, shape=list(const.shape))
        node = gs.Node("DequantizeLinear", self.names(f"{const.name}_DequantizeLinear"),
                       inputs=[ints, scale, zp], outputs=[dq])
        top = self._top_level()
        readers = [r for r in const.outputs if r is not node and id(r) in top]
        for reader in readers:
            for i, inp in enumerate(reader.inputs):
                if inp is const:
                    reader.inputs[i] = dq
        self._after.setdefault(None, []).append(node)

    # -- HardSigmoid / HardSwish -------------------------------------------------------------

    def write_hardsigmoid(self, rw: HardSigmoidRewrite) -> None:
        """``HardSigmoid(x) -> DQ(Q(x + beta/alpha; [0, 1/alpha]); scale * alpha)`` (after the
        activations, so ``x`` already reads its DQ)."""
        node = rw.node
        x = node.inputs[0]
        out = node.outputs[0]
        base = out.name
        qmin, qmax = self.fmt.act_qrange()
        dtype = self.fmt.act_dtype()
        shift = rw.beta / rw.alpha
        c_ints, c_params = exact_scalar(shift, self.fmt)
        c_scale, c_zp = self._param_constants(c_params, f"{base}_shift")
        c_const = gs.Constant(self.names(f"{base}_shift_quantized"), c_ints)
        c_dq = gs.Variable(self.names(f"{base}_shift_dequantized"), dtype=FLOAT, shape=[])
        shifted = gs.Variable(self.names(f"{base}_shifted"), dtype=FLOAT, shape=x.shape)
        t_scale = np.asarray(np.float32((1.0 / rw.alpha) / (qmax - qmin)), dtype=FLOAT)
        t_params = QParams(t_scale, np.array(qmin, dtype=dtype))
        g_params = QParams(np.asarray(np.float32(t_scale * rw.alpha), dtype=FLOAT), np.array(qmin, dtype=dtype))
        ts, tz = self._param_constants(t_params, f"{base}_shifted")
        gs_, gz = self._param_constants(g_params, f"{base}_gate")
        t_q = gs.Variable(self.names(f"{base}_shifted_quantized"), dtype=dtype, shape=x.shape)
        gate = out if not rw.swish else gs.Variable(self.names(f"{base}_gate"), dtype=FLOAT, shape=x.shape)
        self._remove(node)
        new = [
            gs.Node("DequantizeLinear", self.names(f"{base}_shift_DequantizeLinear"),
                    inputs=[c_const, c_scale, c_zp], outputs=[c_dq]),
            gs.Node("Add", self.names(f"{base}_shift"), inputs=[x, c_dq], outputs=[shifted]),
            gs.Node("QuantizeLinear", self.names(f"{base}_shifted_QuantizeLinear"),
                    inputs=[shifted, ts, tz], outputs=[t_q]),
            gs.Node("DequantizeLinear", self.names(f"{base}_gate_DequantizeLinear"),
                    inputs=[t_q, gs_, gz], outputs=[gate]),
        ]
        if rw.swish:
            new.append(gs.Node("Mul", self.names(f"{base}_mul"), inputs=[x, gate], outputs=[out]))
        self._place_before(node, new)

    # -- weights and biases --------------------------------------------------------------------

    def quantize_weight(self, wq: WeightQuant) -> QParams:
        const = wq.node.inputs[wq.index]
        key = (id(const), wq.axis)
        if key not in self._weights:
            ints, params = weight_params(np.asarray(const.values), wq.axis, self.fmt)
            self._weights[key] = (gs.Constant(self.names(f"{const.name}_quantized"), ints), params)
        ints, params = self._weights[key]
        scale = gs.Constant(self.names(f"{const.name}_scale"), params.scale)
        zp = gs.Constant(self.names(f"{const.name}_zero_point"), params.zero_point)
        attrs = {"axis": wq.axis} if wq.axis is not None else {}
        self._dequantize_input(wq.node, wq.index, ints, scale, zp, attrs, const.name)
        return params

    def quantize_bias(self, bq: BiasQuant, weight_params_: QParams) -> None:
        const = bq.node.inputs[bq.index]
        act = self.params[bq.activation.name]
        ints, params = bias_params(np.asarray(const.values), act.scale, weight_params_.scale)
        stored = gs.Constant(self.names(f"{const.name}_quantized"), ints)
        scale = gs.Constant(self.names(f"{const.name}_scale"), params.scale)
        zp = gs.Constant(self.names(f"{const.name}_zero_point"), params.zero_point)
        attrs = {"axis": ints.ndim - 1} if params.scale.ndim else {}
        self._dequantize_input(bq.node, bq.index, stored, scale, zp, attrs, const.name)

    def _dequantize_input(self, node: gs.Node, index: int, ints, scale, zp, attrs: dict, base: str) -> None:
        out = gs.Variable(self.names(f"{base}_dequantized"), dtype=FLOAT, shape=list(ints.shape))
        dq = gs.Node("DequantizeLinear", self.names(f"{base}_DequantizeLinear"), attrs=dict(attrs),
                     inputs=[ints, scale, zp], outputs=[out])
        node.inputs[index] = out
        self._place_before(node, [dq])


def exact_scalar(value: float, fmt: QuantFormat) -> tuple[np.ndarray, QParams]:
    """A scalar constant as integers that dequantize to it (the top or bottom code)."""
    qmin, qmax = fmt.act_qrange()
    dtype = fmt.act_dtype()
    steps = 2 ** fmt.bits - 1
    if value > 0:
        return (np.array(qmin + steps, dtype=dtype),
                QParams(np.asarray(np.float32(value / steps), dtype=FLOAT), np.array(qmin, dtype=dtype)))
    if value < 0:
        return (np.array(qmin, dtype=dtype),
                QParams(np.asarray(np.float32(-value / steps), dtype=FLOAT), np.array(qmin + steps, dtype=dtype)))
    return np.array(qmin, dtype=dtype), QParams(np.asarray(1.0, dtype=FLOAT), np.array(qmin, dtype=dtype))


def _range_of(aq: ActivationQuant, ranges: dict) -> tuple[float, float]:
    if isinstance(aq.tensor, gs.Constant):
        values = np.asarray(aq.tensor.values, dtype=np.float64)
        return (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    lo, hi = ranges[aq.tensor.name]
    return float(lo), float(hi)


def write_plan(graph: gs.Graph, plan: Plan, ranges: dict, fmt: QuantFormat,
               names: NameFactory | None = None) -> QdqWriter:
    """Insert every Q/DQ of ``plan`` into ``graph`` (the top graph or one If/Loop/Scan body, with
    the top graph's ``names``); returns the writer (its ``params`` are the chosen scales)."""
    writer = QdqWriter(graph, fmt, names)
    writer.solve_groups(plan, ranges)
    folds = [f for f in plan.folds if writer.solve_fold(f)]
    weight_params_by_node: dict[tuple[int, int], QParams] = {}
    for wq in plan.weights:
        weight_params_by_node[(id(wq.node), wq.index)] = writer.quantize_weight(wq)
    for bq in plan.biases:
        writer.quantize_bias(bq, weight_params_by_node[(id(bq.node), bq.weight.index)])
    for name, aq in plan.activations.items():
        if name not in writer.folded:
            writer.quantize_activation(aq)
    for rw in plan.hardsigmoids:
        writer.write_hardsigmoid(rw)
    for fold in folds:
        writer.write_fold(fold)
    writer.finish()
    graph.cleanup()
    return writer
