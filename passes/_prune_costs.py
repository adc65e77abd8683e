"""Where the prune pass counts MACs: concrete input shapes and shapes measured where inference
lost them.

MACs need static shapes: the user's ``--input-shape``, else the first calibration sample's shapes,
else a nominal shape (batch 1, 224 for dynamic image sides; :mod:`graphc.calib.shapes`), said in
one line (``ctx.note``) that the report shows. Shapes static inference cannot see (a Reshape
target computed at run time) are measured by one run on zeros, as ``graphc stats`` does
(:func:`graphc.ir.stats.measure_missing_shapes`). None of this reaches the rewrite, which relies
on ``ctx.shapes()`` only.
"""
from __future__ import annotations

from graphc.analysis.budget import CostModel
from graphc.calib.shapes import concrete_input_shapes
from graphc.ir.shapes import infer_shapes
from graphc.ir.stats import MAC_OPS, measure_missing_shapes, node_macs
from graphc.passmanager import Context


def cost_shapes(ctx: Context, data):
    """Shapes to count MACs at, and where they came from (see the module docstring)."""
    from graphc.calib.data import input_specs

    concrete = concrete_input_shapes(input_specs(ctx.model), ctx.input_shapes, data)
    origin = concrete.origin
    if origin is not None and origin != "--input-shape":
        ctx.note(f"prune counts MACs at {origin}")
    where = {None: "at the declared shapes", "--input-shape": "at --input-shape"}.get(origin, f"at {origin}")
    shapes = ctx.cost_shapes() if ctx.input_shapes else infer_shapes(ctx.model, concrete.shapes)
    return measured(ctx, shapes, concrete.shapes), where


def measured(ctx: Context, shapes: dict, concrete: dict) -> dict:
    """``shapes`` completed by one run on zeros where static inference lost a MAC layer's shapes
    (Reshape targets computed at run time)."""
    unknown = [n for n in ctx.graph.nodes if n.op in MAC_OPS and node_macs(n, shapes) is None]
    return measure_missing_shapes(ctx.model, shapes, unknown, concrete)


def params_only(cost: CostModel) -> CostModel:
    """The cost model without MACs (some layers' MACs are unknown): parameters only."""
    cost.items["macs"], cost.fixed["macs"], cost.by_group["macs"] = [], 0.0, {}
    return cost
