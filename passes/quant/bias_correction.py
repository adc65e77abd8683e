"""Empirical bias correction for ``quant{bias-correction=true}`` (as NNCF's FastBiasCorrection).

Quantizing a layer's weights and inputs shifts the mean of its output: with ``y_f = W x + b`` in
float and ``y_q = W_q x_q + b`` quantized, ``E[y_q - y_f] = E[W_q x_q - W x]`` per output channel
is in general not zero (rounding errors of a channel's weights do not cancel over its fan-in, and
clipped activations bias the input). Subtracting the measured mean from the bias,
``b' = b - E[y_q - y_f]``, removes that systematic part of the error exactly on the calibration
data; the zero-mean part is untouched. For an int32 bias with scale ``s = s_x s_W`` the stored
integers become ``round(q_b - shift / s)`` with the same scale, so onnxruntime's integer kernels
see the corrected bias.

Layers: every quantized Conv/Gemm whose bias the plan quantized to int32 (channel axis 1 for
Conv, the last axis for Gemm). The mean is taken over every axis of the layer output but the
channel axis and over the calibration feeds (``samples``, at most 64), by
:class:`graphc.calib.output_shift.OutputShift`.

Order: one sweep in topological order, one measurement per layer, so a layer's shift is measured
with every earlier layer already corrected (later layers see corrected inputs, as in NNCF).

Guard: the same run measures the SQNR of the model outputs on the calibration data; a layer's
correction is kept only if it does not lower it (at 8 bits the shifts are a fraction of a step
and a per-layer mean correction can move the outputs away from float: BENCHMARKS.md, design
notes). So the corrected model is never worse than the
uncorrected one on the calibration data; held-out data is checked in the tests. The
reference is the float model just before Q/DQ insertion, tensors matched by name (the quant
writer keeps them). A layer whose output is a graph output is renamed by the writer and is
matched through its ``<name>_float`` tensor.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphc.calib.output_shift import LayerOutput, OutputShift
from graphc.ir import is_standard_op, node_label, producer
from graphc.passmanager import Context, PassResult

log = logging.getLogger(__name__)

MAX_SAMPLES = 64


@dataclass
class BiasLayer:
    node: gs.Node
    ints: gs.Constant          # int32 bias behind the DequantizeLinear
    scale: np.ndarray          # its scale (scalar or per channel)
    output: LayerOutput


def bias_layers(graph: gs.Graph, plan, reference_names: set[str], result: PassResult) -> list[BiasLayer]:
    """The layers to correct, in topological order of the graph (check only; nothing changes)."""
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    layers = []
    for bq in plan.biases:
        node = bq.node
        dq = producer(node.inputs[bq.index])
        if dq is None or not is_standard_op(dq, "DequantizeLinear") or not isinstance(dq.inputs[0], gs.Constant):
            result.skip("bias correction: bias is not a constant behind a DequantizeLinear")
            continue
        name = node.outputs[0].name
        ref = name if name in reference_names else name.removesuffix("_float")
        if ref not in reference_names:
            result.skip("bias correction: layer output has no float counterpart")
            log.info("%s: no float tensor '%s'; bias not corrected", node_label(node), name)
            continue
        axis = 1 if is_standard_op(node, "Conv") else -1
        layers.append(BiasLayer(node, dq.inputs[0], np.asarray(dq.inputs[1].values, np.float64),
                                LayerOutput(name, ref, axis)))
    layers.sort(key=lambda layer: order[id(layer.node)])
    return layers


def corrected_ints(ints: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``round(q_b - shift / s)`` clipped to int32, in the bias's shape."""
    info = np.iinfo(np.int32)
    delta = np.round(shift.reshape(ints.shape) / scale)
    return np.clip(ints.astype(np.int64) - delta, info.min, info.max).astype(np.int32)


def correct_biases(graph: gs.Graph, ctx: Context, plan, reference, result: PassResult,
                   max_samples: int | None) -> None:
    """Corrects the int32 biases of ``plan`` in place; ``reference`` is the float model."""
    graph.toposort()
    names = {t.name for t in reference.graph.tensors().values() if isinstance(t, gs.Variable)}
    layers = bias_layers(graph, plan, names, result)
    if not layers:
        return
    samples = min(max_samples or MAX_SAMPLES, MAX_SAMPLES)
    shift = OutputShift(reference, [layer.output for layer in layers])
    measured, current = shift.measure(ctx.model, [layers[0].output], ctx.data, samples)
    result.stats["bias_sqnr_before"] = round(current, 2)
    for i, layer in enumerate(layers):
        following = [layers[i + 1].output] if i + 1 < len(layers) else []
        mean = measured[layer.output.candidate]
        before = np.asarray(layer.ints.values)
        if mean.size != before.size:
            result.skip("bias correction: output channels do not match the bias")
            measured, current = shift.measure(ctx.model, following, ctx.data, samples)
            continue
        layer.ints.values = corrected_ints(before, layer.scale, mean)
        measured, value = shift.measure(ctx.model, following, ctx.data, samples)
        if value < current:  # the mean shift did not carry to the outputs: keep the bias as it was
            layer.ints.values = before
            result.skip("bias correction: output SQNR on the calibration data would drop")
            measured, current = shift.measure(ctx.model, following, ctx.data, samples)
            continue
        current = value
        result.count("bias_corrected")
        result.details.append({"node": layer.node.name or node_label(layer.node),
                               "bias_shift_mean_abs": float(np.mean(np.abs(mean))),
                               "bias_shift_max_abs": float(np.max(np.abs(mean)))})
    result.stats["bias_sqnr_after"] = round(current, 2)
    log.info("quant: bias correction of %d layer(s) over %d sample(s)", len(layers), samples)
