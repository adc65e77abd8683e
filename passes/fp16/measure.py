"""Measured exclusions: with calibration data, nodes that overflow or lose accuracy in half
precision stay float32.

1. Overflow (:func:`overflow_exclusions`): the float32 model runs over the data with every tensor
   a planned node reads or writes at a converted position exposed (streaming min/max,
   :func:`graphc.calib.collect.collect_stats`). A node one of whose tensors reaches
   ``|x| >= max-abs`` (default 16384, a quarter of float16's largest finite value 65504: headroom
   for inputs beyond the calibration samples), or is not finite, stays float32.
2. Error (:func:`error_exclusions`, when ``min-sqnr`` is given): a candidate that rounds like
   the conversion would on half-precision hardware
   (:func:`graphc.passes.fp16.convert.emulate_rounding`; onnxruntime's CPU provider runs most
   float16 nodes in float32 and would hide the rounding) and the float32 model run over the data with the planned nodes' tensors exposed
   (:func:`graphc.verify.tensor_noise.tensor_noise`). A node's *added noise* is the noise-to-signal
   ratio of its output minus the largest one of its inputs, ``a(n) = N/S(out) - max N/S(in)``: what
   rounding inside the node adds, not what it inherits. While the lowest output SQNR
   ``10 log10(S / N)`` is below ``min-sqnr``, the tenth of the converted nodes with the largest
   added noise (at least one) stays float32 and the candidate is rebuilt (at most ``ROUNDS`` times).
"""
from __future__ import annotations

import logging
import math
from typing import Callable

import onnx_graphsurgeon as gs

from graphc.calib.collect import collect_stats
from graphc.ir import Model, node_label
from graphc.passes.fp16.convert import signature_positions
from graphc.passes.fp16.plan import Plan
from graphc.verify.tensor_noise import tensor_noise

log = logging.getLogger(__name__)

ROUNDS = 8
SHARE_PER_ROUND = 0.1


def _computed(tensor: gs.Tensor) -> bool:
    return isinstance(tensor, gs.Variable) and bool(tensor.name) and bool(tensor.inputs)


def region_tensors(plan: Plan) -> dict[str, tuple[list[str], list[str]]]:
    """node label -> (names of the computed tensors it reads, names of those it writes) at its
    converted positions; taken before the rewrite (which renames converted graph outputs)."""
    tensors = {}
    for node, sig in plan.nodes():
        ins, outs = signature_positions(node, sig)
        tensors[node_label(node)] = ([node.inputs[i].name for i in ins if _computed(node.inputs[i])],
                                     [node.outputs[i].name for i in outs if _computed(node.outputs[i])])
    return tensors


def overflow_exclusions(model: Model, plan: Plan, data, max_abs: float, samples: int) -> dict[str, str]:
    """node label -> reason, for planned nodes whose tensors reach ``max_abs`` on the data."""
    per_node = {label: ins + outs for label, (ins, outs) in region_tensors(plan).items()}
    names = sorted({n for names in per_node.values() for n in names})
    if not names:
        return {}
    graph_inputs = {t.name for t in model.graph.inputs}
    stats = collect_stats(model, data, [n for n in names if n not in graph_inputs], histograms=False,
                          max_samples=samples, progress=False)
    excluded = {}
    for label, tensors in per_node.items():
        peak = max((stats[n].amax for n in tensors if n in stats), default=0.0)
        if not math.isfinite(peak) or peak >= max_abs:
            excluded[label] = f"|x| reaches {peak:.4g} on the data (max-abs {max_abs:g})"
    return excluded


Build = Callable[[dict[str, str]], tuple[Model, dict[str, tuple[list[str], list[str]]]]]


def error_exclusions(reference: Model, build: Build, data,
                     excluded: dict[str, str], min_sqnr: float, samples: int) -> tuple[dict[str, str], float]:
    """Grow ``excluded`` until the candidate's lowest output SQNR reaches ``min_sqnr``; returns the
    exclusions and the SQNR reached."""
    excluded = dict(excluded)
    outputs = [t.name for t in reference.graph.outputs]
    sqnr = -math.inf
    for _ in range(ROUNDS):
        candidate, per_node = build(excluded)
        available = set(candidate.graph.tensors()) & set(reference.graph.tensors())
        names = [n for ins, outs in per_node.values() for n in ins + outs if n in available]
        noise = tensor_noise(reference, candidate, data, outputs + names, max_samples=samples,
                             optimize_candidate=False)
        sqnr = min((noise[o].sqnr_db for o in outputs), default=math.inf)
        log.info("fp16: %d nodes converted, lowest output SQNR %.1f dB", len(per_node), sqnr)
        if sqnr >= min_sqnr or not per_node:
            return excluded, sqnr
        ranked = sorted(_added_noise(per_node, noise).items(), key=lambda kv: -kv[1])
        for label, added in ranked[:max(1, math.ceil(SHARE_PER_ROUND * len(ranked)))]:
            excluded[label] = (f"adds noise {added:.3g} x signal; output SQNR {sqnr:.1f} dB "
                               f"< min-sqnr {min_sqnr:g}")
    candidate, _ = build(excluded)
    noise = tensor_noise(reference, candidate, data, outputs, max_samples=samples, optimize_candidate=False)
    return excluded, min((noise[o].sqnr_db for o in outputs), default=math.inf)


def _added_noise(per_node, noise) -> dict[str, float]:
    added = {}
    for label, (ins, outs) in per_node.items():
        out = max((noise[n].ratio for n in outs if n in noise), default=0.0)
        inherited = max((noise[n].ratio for n in ins if n in noise), default=0.0)
        added[label] = out - inherited if math.isfinite(out) else math.inf
    return added
