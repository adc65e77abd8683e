"""Outlier input channels of dynamic int8 MatMul/Gemm, kept in float (``quant{activations=dynamic}``
with ``--data``; LLM.int8()'s decomposition, Dettmers et al. 2022).

Why. DynamicQuantizeLinear gives one scale per tensor, ``sx = (max(x,0) - min(x,0)) / 255``. In
a pretrained transformer a few *channels* of a MatMul's input carry values many times larger than
the rest (all-MiniLM-L6-v2: LayerNorm output channel 99 reaches 28.5 where the median channel's
maximum is 1.7; one FFN channel of the GELU output reaches 24.8 against 1.2), so every other
channel is quantized with a step several times too coarse. Measured on that encoder: plain
dynamic int8 holds mean embedding cosine 0.9937; the error is spread over every FFN MatMul
(leaving any single one of 36 in float gains at most 0.0011).

The split. With ``O`` the outlier channels of ``x`` (last axis) and ``R`` the rest::

    x W = x_R W_R + x_O W_O
        ~ DynamicQuantizeMatMul(x * m, Wq sW) + MatMul(Gather(x, O, axis=-1), Wq[O, :] sW)

``m`` is 1 on ``R`` and 0 on ``O``; ``Wq sW`` is the int8 per-column weight the plain dynamic form
uses. The masked channels quantize to the zero point exactly (the dynamic range always holds 0),
so they add exactly nothing to the integer sum, and the range of ``x * m`` is that of ``R``
alone: the activation step shrinks by ``max|x| / max|x_R|``. ``x_O`` stays float and meets the
dequantized int8 rows ``O`` of the same weight (Gather, Cast, Mul of constants, which onnxruntime
folds when the session loads: the file holds no second copy of them; the mask likewise,
below); that thin MatMul of ``|O|`` (at most ``MAX_OUTLIERS``) rows only has the weight's rounding. The two parts are summed by one Add. One Mul, one Gather (and one DynamicQuantizeLinear) per activation
tensor serve every MatMul that reads it (Q, K and V read one LayerNorm output).

The outlier Add comes after the bias: when the MatMul's one reader is an Add of a constant (an
exported Linear's bias), that Add reads the integer part directly, so onnxruntime fuses it into
the integer kernel as its bias, and ``x_O W_O`` is added to the biased result.

Mild outliers are moved into the weight instead (SmoothQuant's identity, Xiao et al. 2022): when
the largest channel of ``x`` exceeds ``MILD_RATIO`` but not ``OUTLIER_RATIO`` times the median
channel's, each channel ``c`` above ``MILD_RATIO`` x the median is divided by
``s_c = max|x_c| / t`` (``t`` the largest maximum among the other channels) and row ``c`` of the
weight is multiplied by it::

    x W = (x / s) (diag(s) W)

exact in float; the range of ``x / s`` is ``t``, the int8 per-column weight takes the scaled rows.
One Mul per activation tensor serves all its readers, with no float MatMul or Add: the split's
cost is not paid for channels only 4-6x the median (all-MiniLM-L6-v2: the LayerNorm outputs
that feed Q/K/V, where the split would add three float MatMuls and three Adds per layer), while
the strong ones (17x) keep the exact split (moving a 17x channel into the weight coarsens its
columns: measured, cosine 0.9983 where the split gives 0.9989).

Constant vectors over the channels (the split's 0/1 mask, the ``1 / s`` vector) are written as
``ScatterND(ConstantOfShape(K, 1), O, values)``: the file stores only the few channels that differ,
and onnxruntime folds them when the session loads.

Split only for narrowing readers. The split's float side path writes the reader's whole
``[M, N]`` output twice (the thin MatMul, then the Add), and its Gather and mask Mul read ``x``:
next to the integer MatMul of ``M K N`` multiply-adds that is cheap where ``K > N`` (an FFN's
second MatMul, 1536 -> 384) and not where ``N >= K`` (Q/K/V, 384 -> 384; an FFN's first MatMul,
384 -> 1536, whose input is a LayerNorm output with 15-18x channels). So strong outliers are split
only when every reader of the tensor narrows (``K > N``); elsewhere they are moved into the
weights like mild ones. Measured on all-MiniLM-L6-v2 (256 held-out sentences; speed against
onnxruntime's per-channel ``quantize_dynamic``, alternated, median of per-round ratios, loaded
2-CPU machine): splitting every strong tensor (10: 6 FFN-up, 4 FFN-down inputs) cosine 0.99881,
NN agreement 0.953, 0.94x (16 sentences) / 0.91-0.94x (1 sentence); only the 4 FFN-down inputs
(this rule) 0.99868, 0.973, 1.01x / 1.005x; only the 6 FFN-up inputs 0.99822, 0.957; none
(everything moved into the weights) 0.99822, 0.934, 1.02x / 1.00x. The FFN-down split buys the
accuracy: there a few GELU outputs reach 10-20x the median channel, and moving them into the
weight amplifies their activation rounding by ``s_c`` (up to 5) where the split has none.

Which channels: measured on the calibration data (:func:`graphc.calib.channel_max.channel_absmax`,
max ``|x|`` per channel over every sample): channel ``c`` is an outlier when its maximum exceeds
``MILD_RATIO`` times the median channel's maximum, the largest ``limit`` (``outlier-channels``)
at most; the tensor's outliers are split when the largest exceeds ``OUTLIER_RATIO`` times the
median, else they are mild (moved into the weights). A tensor with no such channel is left to
plain dynamic quantization. Without data nothing is split.

Measured on all-MiniLM-L6-v2, 256 held-out sentences, mean embedding cosine against float:
only channels above 6x split, at most 8 per tensor 0.99829; every channel above 4x split
0.99897 (19 tensors, 31 float MatMuls); this rule (10 tensors split, at most 16 channels each,
9 moved into the weights) 0.99881, with 10 float MatMuls.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphc.calib.channel_max import channel_absmax
from graphc.ir import NameFactory, is_standard_op, node_label
from graphc.passmanager import Context, PassResult

log = logging.getLogger(__name__)

#: a tensor whose largest calibrated channel max |x| exceeds this many times the median channel's
#: has its outliers split (kept float)
OUTLIER_RATIO = 6.0
#: a channel whose calibrated max |x| exceeds this many times the median channel's is an outlier;
#: when none exceeds OUTLIER_RATIO, they are mild: moved into the weights (module doc)
MILD_RATIO = 4.0
#: at most this many outlier channels per tensor (the float side path stays a thin MatMul)
MAX_OUTLIERS = 16
FLOAT = np.float32
#: Cast's ``to`` for float32 (TensorProto.FLOAT)
CAST_TO_FLOAT = 1


def outlier_channels(absmax: np.ndarray, ratio: float = OUTLIER_RATIO,
                     limit: int = MAX_OUTLIERS) -> np.ndarray:
    """Indices (ascending) of the channels whose max ``|x|`` exceeds ``ratio`` x the median
    channel's, the ``limit`` largest at most; empty when none does (or ``limit`` is 0)."""
    absmax = np.asarray(absmax, dtype=np.float64)
    if absmax.size < 2 or limit <= 0:
        return np.zeros(0, np.int64)
    threshold = ratio * float(np.median(absmax))
    order = np.argsort(-absmax, kind="stable")
    picked = [int(c) for c in order[:limit] if absmax[c] > threshold]
    return np.asarray(sorted(picked), np.int64)


@dataclass(frozen=True)
class Outliers:
    """The outlier channels of one activation tensor and how they are handled."""

    channels: np.ndarray  #: indices, ascending
    absmax: np.ndarray    #: max |x| per channel on the calibration data
    mild: bool            #: moved into the weights (else: kept float by the split)

    def scales(self) -> np.ndarray:
        """``s`` (float64 ``[K]``): ``max|x_c| / t`` on the channels, 1 elsewhere (module doc)."""
        t = float(np.delete(self.absmax, self.channels).max())
        s = np.ones(self.absmax.size)
        s[self.channels] = np.maximum(self.absmax[self.channels] / t, 1.0)
        return s


def classify(absmax: np.ndarray, limit: int, narrowing: bool = True) -> Outliers | None:
    """The tensor's outliers, the channels above ``MILD_RATIO`` x the median (``limit`` at most):
    split when one exceeds ``OUTLIER_RATIO`` x the median and the readers are ``narrowing``
    (every weight ``[K, N]`` has ``K > N``: module doc), else mild; None when none."""
    idx = outlier_channels(absmax, ratio=MILD_RATIO, limit=limit)
    if not idx.size:
        return None
    strong = bool(outlier_channels(absmax, limit=1).size)
    return Outliers(idx, np.asarray(absmax, np.float64), mild=not (strong and narrowing))


def narrowing(targets) -> dict[str, bool]:
    """``{activation name: every reader's weight [K, N] has K > N}``: where the split's float side
    path (a thin MatMul and an Add over the reader's ``[M, N]`` output) is cheap next to the
    integer MatMul (module doc)."""
    found: dict[str, bool] = {}
    for t in targets:
        name = t.node.inputs[0].name
        k, n = t.w_kn.shape
        found[name] = found.get(name, True) and k > n
    return found


class OutlierSplit:
    """Rewrites targets (:class:`graphc.passes.quant.dynamic.DynamicTarget`) so that the dynamic
    writer quantizes ``x * m`` and a float MatMul adds ``x_O W_O``, or, for mild outliers,
    ``x / s`` against ``diag(s) W`` (module doc)."""

    def __init__(self, graph: gs.Graph, outliers: dict[str, Outliers]):
        self.graph = graph
        self.outliers = outliers  # activation name -> its outliers
        self.names = NameFactory(graph)
        self._split: dict[str, tuple[gs.Variable, gs.Variable | None, str]] = {}  # x name -> (x*m or x/s, x_O, prefix)

    def _node(self, op: str, name: str, inputs: list, out: gs.Variable, **attrs) -> gs.Variable:
        self.graph.nodes.append(gs.Node(op, self.names(name), attrs=attrs, inputs=inputs, outputs=[out]))
        return out

    def _vector(self, prefix: str, k: int, idx: np.ndarray, values: np.ndarray) -> gs.Variable:
        """A float ``[k]`` vector of ones with ``values`` at ``idx``, as constant ops (folded when
        the session loads; the file stores only ``idx`` and ``values``)."""
        ones = self._node("ConstantOfShape", f"{prefix}_ones", [gs.Constant(self.names(f"{prefix}_k"), np.asarray([k], np.int64))],
                          gs.Variable(self.names(f"{prefix}_ones"), dtype=FLOAT),
                          value=gs.Constant(self.names(f"{prefix}_one"), np.ones(1, FLOAT)))
        return self._node("ScatterND", f"{prefix}_vector",
                          [ones, gs.Constant(self.names(f"{prefix}_at"), idx.astype(np.int64)[:, None]),
                           gs.Constant(self.names(f"{prefix}_values"), values.astype(FLOAT))],
                          gs.Variable(self.names(f"{prefix}_vector"), dtype=FLOAT))

    def _parts(self, x: gs.Tensor, k: int) -> tuple[gs.Variable, gs.Variable | None, str]:
        if x.name not in self._split:
            found = self.outliers[x.name]
            idx = found.channels
            prefix = self.names("outliers")  # short: these names are stored with every node
            if found.mild:
                r = self._vector(prefix, k, idx, 1.0 / found.scales()[idx])
                self._split[x.name] = (self._node("Mul", f"{prefix}_Mul", [x, r], gs.Variable(self.names(f"{prefix}_scaled"), dtype=FLOAT)),
                                       None, prefix)
                return self._split[x.name]
            m = self._vector(prefix, k, idx, np.zeros(idx.size))
            rest = self._node("Mul", f"{prefix}_Mul", [x, m], gs.Variable(self.names(f"{prefix}_inliers"), dtype=FLOAT))
            out = self._node("Gather", f"{prefix}_Gather", [x, gs.Constant(self.names(f"{prefix}_index"), idx)],
                             gs.Variable(self.names(f"{prefix}_outliers"), dtype=FLOAT), axis=-1)
            self._split[x.name] = (rest, out, prefix)
        return self._split[x.name]

    def apply(self, target, write) -> None:
        """Write ``target`` with ``write`` (the dynamic writer's ``rewrite``, which returns the int8
        weight and its scale); when its input has outliers, the writer reads ``x * m`` and a float
        MatMul adds ``x_O W_O``, ``W_O`` dequantized from those int8 rows by constant ops (folded
        when the session loads, so the file stores no second copy); mild ones: the writer reads
        ``x / s`` and quantizes ``diag(s) W``."""
        node = target.node
        x = node.inputs[0]
        found = self.outliers.get(x.name)
        if found is None:
            write(target)
            return
        rest, out, prefix = self._parts(x, target.w_kn.shape[0])
        node.inputs[0] = rest
        if found.mild:
            write(dataclasses.replace(target, w_kn=(target.w_kn * found.scales()[:, None]).astype(target.w_kn.dtype)))
            return
        idx = found.channels
        y = node.outputs[0]
        base = self.names(f"{prefix}_w")
        main = gs.Variable(self.names(f"{base}_main"), dtype=FLOAT)
        node.outputs = [main]
        wq, scale = write(target)
        rows = self._node("Gather", f"{base}_rows", [wq, gs.Constant(self.names(f"{base}_index"), idx)],
                          gs.Variable(self.names(f"{base}_rows_q"), dtype=np.int8), axis=0)
        rows = self._node("Cast", f"{base}_Cast", [rows], gs.Variable(self.names(f"{base}_rows_f"), dtype=FLOAT),
                          to=CAST_TO_FLOAT)
        w_o = self._node("Mul", f"{base}_Mul", [rows, scale], gs.Variable(self.names(f"{base}_weight"), dtype=FLOAT))
        side = self._node("MatMul", f"{base}_MatMul", [out, w_o], gs.Variable(self.names(f"{base}_side"), dtype=FLOAT))
        main, y = self._after_bias(main, y)
        self._node("Add", f"{base}_Add", [main, side], y)

    def _after_bias(self, main: gs.Variable, y: gs.Variable) -> tuple[gs.Tensor, gs.Tensor]:
        """When ``y``'s one reader is an Add of a constant (the bias of an exported Linear), that
        Add reads ``main`` directly, so onnxruntime fuses it into the integer kernel (its bias
        input), and the outlier part is added after it: ``(main + b) + side`` for ``(main + side)
        + b``. Returns (what the outlier Add reads, what it writes)."""
        readers = list(y.outputs)
        if len(readers) != 1 or y in self.graph.outputs or not is_standard_op(readers[0], "Add"):
            return main, y
        add = readers[0]
        if len(add.inputs) != 2 or not any(isinstance(t, gs.Constant) for t in add.inputs):
            return main, y
        z = add.outputs[0]
        biased = gs.Variable(self.names(f"{main.name}_biased"), dtype=FLOAT)
        add.inputs = [main if t is y else t for t in add.inputs]
        add.outputs = [biased]
        return biased, z


def measure_outliers(ctx: Context, targets, samples: int | None, limit: int,
                     result: PassResult) -> dict[str, Outliers]:
    """``{activation name: its outliers}`` of the targets' inputs, measured on ``ctx.data``
    (empty without data)."""
    if ctx.data is None or not targets or limit <= 0:
        return {}
    names = {t.node.inputs[0].name: -1 for t in targets}
    absmax = channel_absmax(ctx.model, ctx.data, names, max_samples=samples)
    narrow = narrowing(targets)
    found = {}
    for name, values in absmax.items():
        outliers = classify(values, limit, narrow[name])
        if outliers is not None:
            found[name] = outliers
            log.info("quant: %d outlier channel(s) of %s %s (max |x| %.3g, median channel %.3g)",
                     outliers.channels.size, name, "moved into the weights" if outliers.mild else "kept float",
                     float(values.max()), float(np.median(values)))
    for t in targets:
        outliers = found.get(t.node.inputs[0].name)
        if outliers is not None:
            key = "outlier_channels_scaled" if outliers.mild else "outlier_channels"
            result.details.append({"node": t.node.name or node_label(t.node), key: outliers.channels.tolist()})
    split = [o.channels.size for o in found.values() if not o.mild]
    scaled = [o.channels.size for o in found.values() if o.mild]
    if split:
        result.count("outlier_channels_float", int(sum(split)))
    if scaled:
        result.count("outlier_channels_scaled", int(sum(scaled)))
    return found
