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
folds when the session loads: the file holds no second copy of them; the mask is stored as
uint8 and cast the same way); that thin MatMul of ``|O|`` (at most ``MAX_OUTLIERS``) rows only
has the weight's rounding. The two parts are summed by one Add. One Mul, one Gather (and one DynamicQuantizeLinear) per activation
tensor serve every MatMul that reads it (Q, K and V read one LayerNorm output).

Which channels: measured on the calibration data (:func:`graphc.calib.channel_max.channel_absmax`,
max ``|x|`` per channel over every sample): channel ``c`` is an outlier when its maximum exceeds
``OUTLIER_RATIO`` times the median channel's maximum, the largest ``MAX_OUTLIERS`` at most. A
tensor with no such channel is left to plain dynamic quantization. Without data nothing is split.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from graphc.calib.channel_max import channel_absmax
from graphc.ir import NameFactory, node_label
from graphc.passmanager import Context, PassResult

log = logging.getLogger(__name__)

#: a channel whose calibrated max |x| exceeds this many times the median channel's is an outlier
OUTLIER_RATIO = 6.0
#: at most this many outlier channels per tensor (the float side path stays a thin MatMul)
MAX_OUTLIERS = 8
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


class OutlierSplit:
    """Rewrites targets (:class:`graphc.passes.quant.dynamic.DynamicTarget`) so that the dynamic
    writer quantizes ``x * m`` and a float MatMul adds ``x_O W_O`` (module doc)."""

    def __init__(self, graph: gs.Graph, channels: dict[str, np.ndarray]):
        self.graph = graph
        self.channels = channels  # activation name -> outlier channel indices
        self.names = NameFactory(graph)
        self._split: dict[str, tuple[gs.Variable, gs.Variable]] = {}  # x name -> (x * m, x_O)

    def _node(self, op: str, name: str, inputs: list, out: gs.Variable, **attrs) -> gs.Variable:
        self.graph.nodes.append(gs.Node(op, self.names(name), attrs=attrs, inputs=inputs, outputs=[out]))
        return out

    def _parts(self, x: gs.Tensor, k: int) -> tuple[gs.Variable, gs.Variable]:
        if x.name not in self._split:
            idx = self.channels[x.name]
            mask = np.ones(k, np.uint8)
            mask[idx] = 0
            # stored as uint8 (a Cast of a constant: folded when the session loads)
            m = self._node("Cast", f"{x.name}_inlier_mask_Cast", [gs.Constant(self.names(f"{x.name}_inlier_mask"), mask)],
                           gs.Variable(self.names(f"{x.name}_inlier_mask_f"), dtype=FLOAT), to=CAST_TO_FLOAT)
            rest = self._node("Mul", f"{x.name}_inlier_Mul", [x, m],
                              gs.Variable(self.names(f"{x.name}_inliers"), dtype=FLOAT))
            out = self._node("Gather", f"{x.name}_outlier_Gather",
                             [x, gs.Constant(self.names(f"{x.name}_outlier_index"), idx)],
                             gs.Variable(self.names(f"{x.name}_outliers"), dtype=FLOAT), axis=-1)
            self._split[x.name] = (rest, out)
        return self._split[x.name]

    def apply(self, target, write) -> None:
        """Write ``target`` with ``write`` (the dynamic writer's ``rewrite``, which returns the int8
        weight and its scale); when its input has outliers, the writer reads ``x * m`` and a float
        MatMul adds ``x_O W_O``, ``W_O`` dequantized from those int8 rows by constant ops (folded
        when the session loads, so the file stores no second copy)."""
        node = target.node
        x = node.inputs[0]
        idx = self.channels.get(x.name)
        if idx is None or idx.size == 0:
            write(target)
            return
        rest, out = self._parts(x, target.w_kn.shape[0])
        base = node.name or node.outputs[0].name
        y = node.outputs[0]
        main = gs.Variable(self.names(f"{base}_inlier_out"), dtype=FLOAT)
        node.outputs = [main]
        node.inputs[0] = rest
        wq, scale = write(target)
        rows = self._node("Gather", f"{base}_outlier_rows", [wq, gs.Constant(self.names(f"{base}_outlier_index"), idx)],
                          gs.Variable(self.names(f"{base}_outlier_rows_q"), dtype=np.int8), axis=0)
        rows = self._node("Cast", f"{base}_outlier_rows_Cast", [rows],
                          gs.Variable(self.names(f"{base}_outlier_rows_f"), dtype=FLOAT), to=CAST_TO_FLOAT)
        w_o = self._node("Mul", f"{base}_outlier_rows_Mul", [rows, scale],
                         gs.Variable(self.names(f"{base}_outlier_weight"), dtype=FLOAT))
        side = self._node("MatMul", f"{base}_outlier_MatMul", [out, w_o],
                          gs.Variable(self.names(f"{base}_outlier_out"), dtype=FLOAT))
        self._node("Add", f"{base}_outlier_Add", [main, side], y)


def measure_outliers(ctx: Context, targets, samples: int | None, limit: int,
                     result: PassResult) -> dict[str, np.ndarray]:
    """``{activation name: outlier channels}`` of the targets' inputs, measured on ``ctx.data``
    (empty without data)."""
    if ctx.data is None or not targets or limit <= 0:
        return {}
    names = {t.node.inputs[0].name: -1 for t in targets}
    absmax = channel_absmax(ctx.model, ctx.data, names, max_samples=samples)
    found = {}
    for name, values in absmax.items():
        idx = outlier_channels(values, limit=limit)
        if idx.size:
            found[name] = idx
            log.info("quant: %d outlier channel(s) of %s kept float (max |x| %.3g, median channel %.3g)",
                     idx.size, name, float(values.max()), float(np.median(values)))
    for t in targets:
        idx = found.get(t.node.inputs[0].name)
        if idx is not None:
            result.details.append({"node": t.node.name or node_label(t.node), "outlier_channels": idx.tolist()})
    if found:
        result.count("outlier_channels_float", int(sum(i.size for i in found.values())))
    return found
