"""Measured exclusions: with calibration data, nodes that overflow or lose accuracy in half
precision stay float32.

1. Overflow (:func:`overflow_exclusions`): the float32 model runs over the data with every tensor
   a planned node reads or writes at a converted position exposed (streaming min/max,
   :func:`graphc.calib.collect.collect_stats`). A node one of whose tensors reaches
   ``|x| >= max-abs`` (default 16384, a quarter of float16's largest finite value 65504: headroom
   for inputs beyond the calibration samples), or is not finite, stays float32.
2. Error (:func:`error_exclusions`; target ``min-sqnr``, 40 dB unless given): a candidate that rounds like
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


def error_exclusions(reference: Model, build: Build, data, excluded: dict[str, str], min_sqnr: float,
                     samples: int) -> tuple[dict[str, str], float]:
    """Grow ``excluded`` until the candidate's lowest output SQNR reaches ``min_sqnr``; returns the
    exclusions and the SQNR reached."""
    excluded = dict(excluded)
    outputs = [t.name for t in reference.graph.outputs if _computed(t)]  # not inputs passed through
    edges = _edges(reference.graph)
    for _ in range(ROUNDS):
        candidate, per_node = build(excluded)
        available = set(candidate.graph.tensors())
        names = sorted({n for _, ins, outs in edges.values() for n in ins + outs if n in available})
        noise = tensor_noise(reference, candidate, data, outputs + names, max_samples=samples,
                             optimize_candidate=False)
        failing = [o for o in outputs if noise[o].sqnr_db < min_sqnr]
        sqnr = min((noise[o].sqnr_db for o in outputs), default=math.inf)
        log.info("fp16: %d nodes converted, lowest output SQNR %.1f dB", len(per_node), sqnr)
        if not failing or not per_node:
            return excluded, sqnr
        scores = _blame(edges, set(per_node), noise, _ancestors(edges, failing))
        ranked = sorted(((s, label) for label, s in scores.items() if s > 0), reverse=True)
        if not ranked:
            return excluded, sqnr
        for score, label in ranked[:max(1, math.ceil(SHARE_PER_ROUND * len(per_node)))]:
            excluded[label] = (f"adds noise {score:.3g} x signal; output SQNR {sqnr:.1f} dB "
                               f"< min-sqnr {min_sqnr:g}")
    candidate, _ = build(excluded)
    noise = tensor_noise(reference, candidate, data, outputs, max_samples=samples, optimize_candidate=False)
    return excluded, min((noise[o].sqnr_db for o in outputs), default=math.inf)


def _edges(graph: gs.Graph) -> dict[str, tuple[gs.Node, list[str], list[str]]]:
    """node label -> (node, computed inputs, outputs) of every node of the float32 reference."""
    return {node_label(n): (n, [t.name for t in n.inputs if _computed(t)],
                            [t.name for t in n.outputs if t.name]) for n in graph.nodes}


def _ancestors(edges, tensors: list[str]) -> set[str]:
    """Labels of the nodes the tensors depend on."""
    by_output = {out: label for label, (_, _, outs) in edges.items() for out in outs}
    seen: set[str] = set()
    stack = [by_output[t] for t in tensors if t in by_output]
    while stack:
        label = stack.pop()
        if label not in seen:
            seen.add(label)
            stack.extend(by_output[t] for t in edges[label][1] if t in by_output)
    return seen


def _blame(edges, converted: set[str], noise, upstream: set[str]) -> dict[str, float]:
    """Score of each converted node upstream of a failing output: the noise-to-signal ratio it
    adds, ``a(n) = N/S(out) - max N/S(in)``. A float32 node that adds noise only amplifies the
    rounding of its inputs (``(x + 1000) - 1000``): its ``a`` goes to its converted producers."""
    by_output = {out: label for label, (_, _, outs) in edges.items() for out in outs}
    scores = {label: 0.0 for label in converted if label in upstream}
    for label in upstream:
        _, ins, outs = edges[label]
        out = max((noise[n].ratio for n in outs if n in noise), default=0.0)
        inherited = max((noise[n].ratio for n in ins if n in noise), default=0.0)
        added = out - inherited if math.isfinite(out) else math.inf
        if added <= 0:
            continue
        if label in scores:
            scores[label] += added
            continue
        producers = [by_output[n] for n in ins if by_output.get(n) in scores]
        for p in producers:
            scores[p] += added / len(producers)
    return scores
