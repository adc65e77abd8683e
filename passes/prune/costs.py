"""Where the prune pass counts MACs: concrete input shapes and shapes measured where inference
lost them.

MACs need static shapes. In order: the user's ``--input-shape``; batch 1 when only the batch dim is
dynamic; the first calibration sample's shapes. Shapes static inference cannot see (a Reshape
target computed at run time) are measured by one run on zeros, as ``graphc stats`` does
(:func:`graphc.ir.stats.measure_missing_shapes`). None of this reaches the rewrite, which relies
on ``ctx.shapes()`` only.
"""
from __future__ import annotations

import numpy as np

from graphc.passes.prune.allocation import CostModel
from graphc.ir.shapes import infer_shapes
from graphc.ir.op_kinds import LINEAR_OPS
from graphc.ir.stats import measure_missing_shapes, node_macs
from graphc.passmanager import Context


def cost_shapes(ctx: Context, data):
    """Shapes to count MACs at, and where they came from (see the module docstring)."""
    concrete = dict(ctx.input_shapes) if ctx.input_shapes else batch_one(ctx)
    where = "at --input-shape" if ctx.input_shapes else "at batch 1"
    if concrete is None and data is not None:
        first = next(iter(data), None)
        if first is not None:
            concrete = {k: tuple(np.shape(v)) for k, v in first.items()}
            where = "at the first calibration sample's shape"
    if concrete is None:
        return ctx.shapes(), "(the input has dynamic dims)"
    shapes = ctx.cost_shapes() if ctx.input_shapes else infer_shapes(ctx.model, concrete)
    return measured(ctx, shapes, concrete), where


def batch_one(ctx: Context) -> dict | None:
    """Every input's declared shape with a dynamic batch dim set to 1, or None if others are dynamic."""
    from graphc.calib.data import input_specs

    concrete = {}
    for spec in input_specs(ctx.model):
        rest = spec.shape[1:]
        if not spec.shape or any(d is None for d in rest):
            return None
        concrete[spec.name] = (1 if spec.shape[0] is None else spec.shape[0], *rest)
    return concrete


def measured(ctx: Context, shapes: dict, concrete: dict) -> dict:
    """``shapes`` completed by one run on zeros where static inference lost a MAC layer's shapes
    (Reshape targets computed at run time)."""
    unknown = [n for n in ctx.graph.nodes if n.op in LINEAR_OPS and node_macs(n, shapes) is None]
    return measure_missing_shapes(ctx.model, shapes, unknown, concrete)


def params_only(cost: CostModel) -> CostModel:
    """The cost model without MACs (some layers' MACs are unknown): parameters only."""
    cost.items["macs"], cost.fixed["macs"], cost.by_group["macs"] = [], 0.0, {}
    return cost
