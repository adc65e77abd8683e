"""quant inside If/Loop/Scan bodies: each body is planned and written as a graph of its own, with
one calibration run for the top graph and every body together.

- **Plan.** Every body (``walk_graphs``: If branches, Loop and Scan bodies, nested ones too) is
  planned by the same :class:`graphc.passes.quant.quantizer.Quantizer` as the top graph, with the
  same options (``exclude`` patterns, ``ops``, ``placement``: the speed model's minimum cut runs
  on the body's nodes). A body reads outer tensors by the same objects, so an outer activation
  that a body's Conv reads gets its own Q/DQ pair inside the body (the top graph's pair, if any,
  serves only the top graph's readers: a DQ node of the outer graph would not be ordered before
  the node that holds the body). One exception: the output of an outer data-movement op
  (Transpose, Reshape...) that only bodies read is read through the outer pair, placed right after
  its producer, because onnxruntime aborts on a DQ -> Transpose whose output has no reader in its
  own graph. Outer constants (a bias shared by two branches) are quantized
  per body, by new constants; the shared float constant is left to its other readers.
- **Calibrate.** A body's tensors are calibrated with the top graph's in one streaming pass:
  :func:`graphc.ir.outputs.with_outputs` lifts them out of their bodies (:mod:`graphc.ir.lift`).
  A tensor of a Loop body comes out stacked over the iterations, so its range covers every
  iteration of every sample; a tensor of an If branch is seen on the samples that take that
  branch (a branch no sample takes has no range: its activations are left float, with a reason).
- **Write.** Q/DQ nodes go inside the body, next to the nodes they serve, with names from the top
  graph's :class:`graphc.ir.NameFactory` (names are unique across scopes). onnxruntime's QDQ
  fusion runs inside subgraphs too, so a branch's ``DQ -> Conv -> Q`` becomes QLinearConv there.

Not done in bodies: bias correction and the error budget's per-layer search (both measure
top-graph layers only; a budget still keeps body layers float by its ``exclude`` patterns).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from graphc.ir import walk_graphs
from graphc.passes.quant.placement import Plan
from graphc.passmanager import PassResult

log = logging.getLogger(__name__)

#: the speed model's estimates the planner records (summed over the graph and its bodies)
SPEED_ESTIMATES = ("speed_model_float_us", "speed_model_chosen_us")


@dataclass
class BodyPlan:
    """The placement plan of one body, named by its path (``If_0/then_branch``)."""

    path: str
    graph: gs.Graph
    plan: Plan


def bodies(graph: gs.Graph) -> list[tuple[str, gs.Graph]]:
    """(path, body) of every If/Loop/Scan body nested in ``graph`` (not the top graph)."""
    return [(path, scope) for path, scope in walk_graphs(graph) if path]


def plan_bodies(quantizer, graph: gs.Graph, ctx, result: PassResult) -> list[BodyPlan]:
    """Plan every body with ``quantizer``'s options (call it after planning the top graph); skip
    reasons are added to ``result``, and the speed model's estimates for the bodies to the top
    graph's."""
    plans = []
    for path, body in bodies(graph):
        scratch = PassResult(modified=False)
        plan = quantizer.plan(body, ctx, scratch)
        for reason, n in scratch.skipped.items():
            result.skipped[reason] = result.skipped.get(reason, 0) + n
        for key in SPEED_ESTIMATES:
            if key in scratch.stats:
                result.stats[key] = round(result.stats.get(key, 0.0) + scratch.stats[key], 1)
        if plan.quantized:
            plans.append(BodyPlan(path, body, plan))
            log.info("quant: %d node(s) to quantize inside %s", len(plan.quantized), path)
    return plans


def unseen(plan: Plan, ranges: dict) -> list[str]:
    """Planned activations of ``plan`` that calibration never saw run (a branch no sample took,
    a Loop that ran no iteration): their ranges say nothing."""
    return [name for name, aq in plan.activations.items()
            if isinstance(aq.tensor, gs.Variable) and ranges.get(name) is not None and ranges[name].count == 0]
