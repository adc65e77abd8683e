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

Not handled (each skip counted with its reason): Clip/Relu6 and HardSwish between the Convs (a
clip bound would have to scale per channel, which Clip cannot: MobileNetV2 with Relu6 is
equalized only where it has plain Relu or no activation), intermediate tensors with other
readers or that are graph outputs (a residual Add reads the channel too: rescaling it would need
every reader rescaled), shared or non-constant weights and biases, non-float32 weights. Bias
absorption (moving part of ``b1`` through the activation into ``b2``) is not done: it is exact
only when the pre-activation is provably above the absorbed amount, which a data-free pass
cannot know once BatchNormalization is folded.
"""
from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir import consumers, is_graph_output, is_standard_op, node_label, producer
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
    summary = "cross-layer equalization of Conv -> Relu -> Conv channel ranges (exact in float)"
    exact = True

    @dataclass(frozen=True)
    class Options:
        sweeps: int = option(50, "at most this many sweeps over all Conv pairs", min=1, max=1000)
        tolerance: float = option(0.01, "stop when no channel scale differs from 1 by more",
                                  min=1e-6, max=1.0)
        ignore: tuple[str, ...] = option((), "node name patterns left alone (fnmatch)")

    def run(self, graph: gs.Graph, ctx: Context) -> PassResult:
        result = PassResult(modified=False)
        pairs = [p for p in (self._pair(graph, n, result) for n in list(graph.nodes)) if p]
        moved: dict[int, float] = {}
        for sweep in range(self.options.sweeps):
            changed = False
            for pair in pairs:
                scales = _equalizing_scales(pair)
                if np.max(np.abs(scales - 1.0)) <= self.options.tolerance:
                    continue
                _rescale(pair, scales)
                moved[id(pair.first)] = max(moved.get(id(pair.first), 1.0), float(np.max(scales)),
                                            float(1 / np.min(scales)))
                changed = True
            if not changed:
                break
            result.stats["sweeps"] = sweep + 1
        for pair in pairs:
            if id(pair.first) in moved:
                result.count("pairs_equalized")
                result.details.append({"node": pair.first.name, "rule": "equalize",
                                       "with": pair.second.name,
                                       "max_scale": round(moved[id(pair.first)], 4)})
        result.modified = bool(moved)
        return result

    # -- check ----------------------------------------------------------------------------------

    def _pair(self, graph: gs.Graph, second: gs.Node, result: PassResult) -> ConvPair | None:
        if not is_standard_op(second, "Conv") or self._ignored(second):
            return None
        x = second.inputs[0]
        act = producer(x)
        if act is not None and is_standard_op(act, *HOMOGENEOUS_OPS):
            if not _private(graph, x, second):
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
        if not _private(graph, x, reader):
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


def _private(graph: gs.Graph, tensor: gs.Tensor, reader: gs.Node) -> bool:
    """``reader`` is the only reader of ``tensor`` and ``tensor`` is not a graph output."""
    users = consumers(tensor)
    return len(users) == 1 and users[0] is reader and not is_graph_output(graph, tensor)


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


def _input_view(conv: gs.Node) -> np.ndarray:
    """Conv2's weight as (group, Cout_g, Cin_g, k...), in float64."""
    w = conv.inputs[1].values.astype(np.float64)
    group = int(conv.attrs.get("group", 1))
    return w.reshape((group, w.shape[0] // group) + w.shape[1:])


def _equalizing_scales(pair: ConvPair) -> np.ndarray:
    w1 = np.abs(pair.first.inputs[1].values.astype(np.float64))
    r1 = w1.reshape(w1.shape[0], -1).max(axis=1)
    v2 = np.abs(_input_view(pair.second))
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
    view = _input_view(pair.second)
    group, cin_g = view.shape[0], view.shape[2]
    factor = s.reshape((group, 1, cin_g) + (1,) * (view.ndim - 3))
    w2.values = (view * factor).reshape(w2.values.shape).astype(np.float32)
