"""equalize: data-free cross-layer equalization (Nagel et al., "Data-Free Quantization Through
Weight Equalization and Bias Correction", ICCV 2019), so that per-tensor (and per-channel
activation) int8 ranges fit every channel; run it before ``quant``.

Maths. For two Convs in a chain ``y = Conv2(f(Conv1(x)))`` where ``f`` is positively homogeneous
(``f(x / s) = f(x) / s`` for ``s > 0``: identity, Relu, LeakyRelu), scaling output channel ``c``
of Conv1 by ``1/s_c`` and input channel ``c`` of Conv2 by ``s_c`` leaves ``y`` unchanged::

    W1'[c] = W1[c] / s_c      b1'[c] = b1[c] / s_c      W2'[:, c] = W2[:, c] * s_c

With ``r1_c = max |W1[c]|`` and ``r2_c = max |W2[:, c]|``, ``s_c = sqrt(r1_c / r2_c)`` gives both
layers the range ``sqrt(r1_c r2_c)`` on channel ``c``: the channel ranges of each layer even out,
which is what a per-tensor weight scale (and the activation range between them) needs. A layer
in the middle of a chain is in two pairs, so pairs are swept until no scale moves by more than
``tolerance`` (or ``sweeps`` is reached).

Chains handled: Conv1 (any group) -> [Relu | LeakyRelu | nothing] -> Conv2 with any group,
including depthwise Conv2 (the MobileNet expand -> dw -> project block is the pairs
(expand, dw) and (dw, project)): input channel ``c = g * Cin_g + j`` of a grouped Conv2 is column
``j`` of the output channels of group ``g``. Weights are computed in float64 and rounded once,
so the rewrite is exact up to float32 rounding (verified at rtol 1e-5 / atol 1e-6).

Inside If/Loop/Scan bodies too (the same walk; names are made by the top graph's factory): a pair
is two Convs of one body, or an outer Conv whose output only a body's Conv reads. Bias absorption
measures a body's tensors through lifted outputs (:mod:`graphc.ir.lift`); a branch no sample
took is left alone.

Not handled (each skip counted with its reason): Clip/Relu6 and HardSwish between the Convs (a
clip bound would have to scale per channel, which Clip cannot: MobileNetV2 with Relu6 is
equalized only where it has plain Relu or no activation), intermediate tensors with other
readers or that are graph outputs (a residual Add reads the channel too: rescaling it would need
every reader rescaled), shared or non-constant weights and biases, non-float32 weights.

Bias absorption (``absorb-bias``, paper sec. 4.2; maths in :mod:`graphc.passes.equalize.bias_absorption`).
After scaling, part ``c`` of Conv1's bias moves into Conv2's bias (``b1' = b1 - c``,
``b2' = b2 + W2 c``) so that each channel of the tensor between them lies closer to 0, for the
per-tensor activation range of ``quant``. Only into a Conv2 that reads no padding. ``c`` comes
from the measured per-channel range over ``ctx.data`` when given, else from the 3-sigma rule on
the BatchNormalization that followed Conv1 in the original model (``beta - 3 |gamma|``), else the
channel is left alone. Modes:

- ``exact`` (default): only pairs with no activation between them, where absorption is exact for
  every input whatever ``c`` is, so the pass stays exact; through Relu nothing moves.
- ``data``: also through Relu/LeakyRelu, ``c`` = the measured minimum of the pre-activation
  (``Relu(u - c) = Relu(u) - c`` iff ``u >= c``): exact on the calibration data only; needs data.
- ``gaussian``: also through Relu/LeakyRelu with the 3-sigma rule when there is no data: the
  paper's data-free rule, not exact (inputs whose pre-activation falls below ``c`` change).
- ``off``.

With ``data`` or ``gaussian`` the pass declares itself inexact (``--verify-each`` measures instead
of failing) and each absorbed layer's details say how exact it is.
"""
from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphc.errors import DataError
from graphc.ir import NameFactory, consumers, is_standard_op, node_label, producer, walk_graphs
from graphc.passes.equalize import bias_absorption as bias
from graphc.passes.equalize.bias_absorption import conv_input_view
from graphc.passmanager import Context, Pass, PassResult, option, register_pass

log = logging.getLogger(__name__)

#: activations with f(x / s) = f(x) / s for s > 0.
HOMOGENEOUS_OPS = ("Relu", "LeakyRelu")
#: scales are kept in this range so that no weight overflows or becomes denormal.
MAX_SCALE = 1e4


@dataclass
class ConvPair:
    first: gs.Node
    second: gs.Node
    activation: gs.Node | None


@register_pass
class Equalize(Pass):
    name = "equalize"
    summary = ("cross-layer equalization of Conv -> Relu -> Conv channel ranges, and bias absorption "
               "(exact in float by default)")
    exact = True

    @dataclass(frozen=True)
    class Options:
        sweeps: int = option(50, "at most this many sweeps over all Conv pairs", min=1, max=1000)
        tolerance: float = option(0.01, "stop when no channel scale differs from 1 by more; a bias "
                                  "amount below this fraction of its channel's range is not moved",
                                  min=1e-6, max=1.0)
        absorb_bias: str = option("exact", "move bias into the next Conv: off; exact (no activation "
                                  "between, exact for every input); data (also through Relu, from the "
                                  "calibration minimum; exact on that data); gaussian (also through Relu, "
                                  "3-sigma BatchNorm rule without data; inexact)", choices=bias.ABSORB_MODES)
        ignore: tuple[str, ...] = option((), "node name patterns left alone (fnmatch)")

    def __init__(self, options=None):
        super().__init__(options)
        # through an activation, absorption is exact at most on the calibration data
        self.exact = self.options.absorb_bias in ("off", "exact")

    def requires_data(self) -> bool:
        return self.options.absorb_bias == "data"

    def wants_original(self) -> bool:
        return self.options.absorb_bias != "off"  # BatchNorm statistics, when there is no data

    def run(self, graph: gs.Graph, ctx: Context) -> PassResult:
        mode = self.options.absorb_bias
        if mode == "data" and ctx.data is None:
            raise DataError("equalize{absorb-bias=data} reads calibration data; give --data")
        result = PassResult(modified=False)
        # the graph and its If/Loop/Scan bodies: a pair's tensors may cross scopes (an outer Conv
        # read by a Conv in a branch); "private" then also means "no output of any scope"
        outputs = {id(t) for _, scope in walk_graphs(graph) for t in scope.outputs}
        nodes = [n for _, scope in walk_graphs(graph) for n in scope.nodes]
        pairs = [p for p in (self._pair(outputs, n, result) for n in nodes) if p]
        absorbing = [p for p in pairs if self._absorbable(p, result)] if mode != "off" else []
        from_bn = {} if ctx.data is not None else self._batchnorm_bounds(absorbing, ctx)
        scales = self._equalize(pairs, result)
        if absorbing:
            self._absorb_biases(graph, ctx, absorbing, from_bn, scales, result)
        result.modified = bool(scales) or "bias_layers_absorbed" in result.stats
        return result

    def _equalize(self, pairs: list[ConvPair], result: PassResult) -> dict[int, np.ndarray]:
        """Sweeps of scaling; returns the cumulative output scale of each rescaled Conv1."""
        applied: dict[int, np.ndarray] = {}
        for sweep in range(self.options.sweeps):
            changed = False
            for pair in pairs:
                scales = _equalizing_scales(pair)
                if np.max(np.abs(scales - 1.0)) <= self.options.tolerance:
                    continue
                _rescale(pair, scales)
                applied[id(pair.first)] = applied.get(id(pair.first), 1.0) * scales
                changed = True
            if not changed:
                break
            result.stats["sweeps"] = sweep + 1
        for pair in pairs:
            if id(pair.first) in applied:
                total = applied[id(pair.first)]
                result.count("pairs_equalized")
                result.details.append({"node": pair.first.name, "rule": "equalize",
                                       "with": pair.second.name,
                                       "max_scale": round(float(np.max(np.maximum(total, 1 / total))), 4)})
        return applied

    # -- bias absorption --------------------------------------------------------------------------

    def _absorbable(self, pair: ConvPair, result: PassResult) -> bool:
        reason = bias.absorb_reason(pair.second, pair.activation, self.options.absorb_bias)
        if reason:
            result.skip(reason)
            log.info("equalize: %s -> %s %s", node_label(pair.first), node_label(pair.second), reason)
        return reason is None

    def _batchnorm_bounds(self, pairs: list[ConvPair], ctx: Context) -> dict[int, bias.ChannelBounds]:
        """3-sigma bounds of each Conv1 still equal to its original Conv + BatchNorm (before scaling)."""
        if not pairs or ctx.original is None:
            return {}
        original = {n.name: n for _, scope in walk_graphs(ctx.original.graph) for n in scope.nodes if n.name}
        found = {id(p.first): bias.batchnorm_bounds(original, p.first) for p in pairs}
        return {k: v for k, v in found.items() if v is not None}

    def _absorb_biases(self, graph: gs.Graph, ctx: Context, pairs: list[ConvPair],
                       from_bn: dict[int, bias.ChannelBounds], scales: dict[int, np.ndarray],
                       result: PassResult) -> None:
        bounds = self._bounds(ctx, pairs, from_bn, scales)
        planned = []
        for pair in pairs:
            found = bounds.get(id(pair.first))
            if found is None:
                result.skip("bias not absorbed: no calibration data, and no BatchNormalization "
                            "statistics that still describe the layer")
                continue
            c = bias.absorbed_amounts(found, pair.activation, self.options.tolerance)
            if np.any(c):
                planned.append((pair, found, c))
        names = NameFactory(graph)
        for pair, found, c in planned:  # amounts were all taken before any bias moved
            bias.absorb(pair.first, pair.second, c, names)
            self._record_absorption(pair, found, c, result)

    def _bounds(self, ctx: Context, pairs: list[ConvPair], from_bn: dict[int, bias.ChannelBounds],
                scales: dict[int, np.ndarray]) -> dict[int, bias.ChannelBounds]:
        if ctx.data is not None:
            tensors = {p.first.outputs[0].name: p.first.inputs[1].values.ndim for p in pairs}
            measured = bias.measured_bounds(ctx.model, ctx.data, tensors)
            # a tensor of a branch no sample took has no measurement: left alone
            return {id(p.first): measured[p.first.outputs[0].name] for p in pairs
                    if p.first.outputs[0].name in measured}
        return {k: b.scaled(1.0 / scales.get(k, 1.0)) for k, b in from_bn.items()}

    def _record_absorption(self, pair: ConvPair, found: bias.ChannelBounds, c: np.ndarray,
                           result: PassResult) -> None:
        exact = bias.exactness(pair.activation, found)
        moved = int(np.count_nonzero(c))
        result.count("bias_layers_absorbed")
        result.count("bias_channels_absorbed", moved)
        if exact != "yes":
            result.count("bias_layers_absorbed_inexact")
        zero = np.zeros_like(c)
        result.details.append({
            "node": pair.first.name, "rule": "absorb-bias", "into": pair.second.name,
            "through": bias.through(pair.activation), "source": found.source, "exact": exact,
            "channels": moved, "of": int(c.size),
            "range_before": round(bias.activation_range(found, pair.activation, zero), 6),
            "range_after": round(bias.activation_range(found, pair.activation, c), 6)})
        log.info("equalize: %d channel(s) of %s absorbed into %s (%s, exact: %s)", moved,
                 node_label(pair.first), node_label(pair.second), found.source, exact)

    # -- check ----------------------------------------------------------------------------------

    def _pair(self, outputs: set[int], second: gs.Node, result: PassResult) -> ConvPair | None:
        if not is_standard_op(second, "Conv") or self._ignored(second):
            return None
        x = second.inputs[0]
        act = producer(x)
        if act is not None and is_standard_op(act, *HOMOGENEOUS_OPS):
            if not _private(outputs, x, second):
                result.skip("activation output has other readers or is a graph output")
                return None
            x = act.inputs[0]
            first = producer(x)
            reader = act
        else:
            first, act, reader = act, None, second
        if first is None or not is_standard_op(first, "Conv"):
            if first is not None and is_standard_op(first, "Clip", "HardSwish", "Sigmoid", "HardSigmoid"):
                result.skip(f"{first.op} between Convs is not positively homogeneous")
            return None
        if self._ignored(first):
            return None
        if not _private(outputs, x, reader):
            result.skip("Conv output has other readers or is a graph output")
            return None
        reason = _weights_check(first) or _weights_check(second) or _channels_check(first, second)
        if reason:
            result.skip(reason)
            log.info("equalize: %s -> %s not equalized: %s", node_label(first), node_label(second), reason)
            return None
        return ConvPair(first, second, act)

    def _ignored(self, node: gs.Node) -> bool:
        return any(fnmatch.fnmatchcase(node.name or "", p) for p in self.options.ignore)


def _private(outputs: set[int], tensor: gs.Tensor, reader: gs.Node) -> bool:
    """``reader`` is the only reader of ``tensor`` (in any scope) and ``tensor`` is no output of
    the graph or of a body (``outputs``: their ids)."""
    users = consumers(tensor)
    return len(users) == 1 and users[0] is reader and id(tensor) not in outputs


def _weights_check(conv: gs.Node) -> str | None:
    if len(conv.inputs) < 2 or not isinstance(conv.inputs[1], gs.Constant):
        return "Conv weight is not constant"
    for t in conv.inputs[1:3]:
        if not t.name:
            continue
        if not isinstance(t, gs.Constant):
            return "Conv bias is not constant"
        if np.dtype(t.dtype) != np.float32:
            return "Conv weight is not float32"
        if len(t.outputs) != 1:
            return "Conv weight is shared with other nodes"
        if not np.all(np.isfinite(t.values)):
            return "Conv weight has NaN or infinite values"
    return None


def _channels_check(first: gs.Node, second: gs.Node) -> str | None:
    channels = first.inputs[1].values.shape[0]
    w2 = second.inputs[1].values
    group = int(second.attrs.get("group", 1))
    if w2.ndim < 3 or w2.shape[0] % group or group * w2.shape[1] != channels:
        return "channel counts of the Conv pair do not match"
    return None


# -- rewrite -------------------------------------------------------------------------------------


def _equalizing_scales(pair: ConvPair) -> np.ndarray:
    w1 = np.abs(pair.first.inputs[1].values.astype(np.float64))
    r1 = w1.reshape(w1.shape[0], -1).max(axis=1)
    v2 = np.abs(conv_input_view(pair.second))
    r2 = v2.max(axis=tuple(i for i in range(v2.ndim) if i not in (0, 2))).reshape(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.sqrt(r1 / r2)
    s = np.where((r1 > 0) & (r2 > 0) & np.isfinite(s), s, 1.0)
    return np.clip(s, 1 / MAX_SCALE, MAX_SCALE)


def _rescale(pair: ConvPair, s: np.ndarray) -> None:
    w1 = pair.first.inputs[1]
    shape1 = (-1,) + (1,) * (w1.values.ndim - 1)
    w1.values = (w1.values.astype(np.float64) / s.reshape(shape1)).astype(np.float32)
    if len(pair.first.inputs) > 2 and pair.first.inputs[2].name:
        b1 = pair.first.inputs[2]
        b1.values = (b1.values.astype(np.float64) / s).astype(np.float32)
    w2 = pair.second.inputs[1]
    view = conv_input_view(pair.second)
    group, cin_g = view.shape[0], view.shape[2]
    factor = s.reshape((group, 1, cin_g) + (1,) * (view.ndim - 3))
    w2.values = (view * factor).reshape(w2.values.shape).astype(np.float32)
