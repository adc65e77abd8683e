"""factorize: low-rank (svd, tucker) and depthwise (dw) factorization of Gemm, MatMul and Conv.

- ``svd``: a Gemm (no transA) or MatMul with a constant 2-D weight, ``y = A x`` with A (m x n,
  Gemm's alpha folded in), becomes ``MatMul(x, F^T)`` then ``MatMul(., G^T)`` with
  ``A_r = G F`` the rank-r truncated SVD (sigma split evenly between G and F); a Gemm bias stays on
  the second node (a Gemm keeping beta and C), a MatMul's following Add is untouched.
  Cheaper when ``r (m + n) < m n``.
- ``tucker``: a KxK Conv (groups 1) becomes 1x1 (Cin -> r1), KxK (r1 -> r2, the original
  strides, pads, dilations) and 1x1 (r2 -> Cout, the bias) via HOSVD on the channel modes
  (Kim et al. 2016). Exact through padding because the first 1x1 has no bias.
- ``dw``: a KxK Conv (groups 1) becomes a depthwise KxK Conv with T filters per input channel
  (group = Cin) and a 1x1 Conv (network decoupling): the SVD of each input channel's
  ``W[:, c]`` (Cout x K^2). Exact at T = min(K^2, Cout).

Ranks come from one rule per run:
- ``rank``: a fraction of each layer's full rank, rounded up;
- ``energy``: the kept fraction of the weights' squared singular values (per channel mode for
  tucker, summed over input channels for dw; 0.99 when no rule is given). It reads the weights
  alone, so data changes the decomposition at these ranks, not the ranks;
- ``max-error``: the largest relative output error ``||A x - A_r x|| / ||A x||`` per layer on the
  calibration data (needs data; tucker grows both ranks along a common energy level).
A layer is rewritten only when its MACs drop by at least ``min-saving`` of what they were
(never to as many or more); ``force`` lifts that for tests and inspection, so
``rank=1.0 force=true`` is an exact (and slower) rewrite of every candidate.

With calibration data, the input second moment ``S = E[x x^T]`` of every candidate is measured
once before any rewrite (:mod:`graphc.calib.moments`; im2col receptive fields for Conv), and
(``whiten``) the decomposition is done on the weights whitened by ``S`` (ASVD / SVD-LLM;
the maths is in :mod:`graphc.passes.factorize.decomposition`), which minimizes the output error rather than the weight
error. The error recorded per layer is then ``sqrt(tr(dA S dA^T) / tr(A S A^T))``: the layer's
measured relative output error on the calibration data, with no extra model run; without
data it is the relative weight error. Details per rewritten layer: node, op, method, rule,
ranks, full ranks, MACs and weight params before and after (MACs per batch item: symbolic dims
count as 1), est_error and its basis.

A Conv whose spatial size the declared input shapes leave open (dynamic H/W: PP-OCR det, most
detectors) is costed at the cost shapes (``ctx.cost_shapes``: ``--input-shape``, else the first
data sample's shape, else a nominal one, said in one note). Only the MAC counts (hence the
min-saving decision) and the im2col layout of SAME padding depend on them; the rewrite keeps the
Conv's pads/auto_pad, so the factored model is correct at every input size.

Factored nodes are named ``<node>.svd.v/.svd.u``, ``<node>.tucker.in/.core/.out`` and
``<node>.dw.depthwise/.dw.pointwise``; nodes so named are never factored again.
"""
from __future__ import annotations

import fnmatch
import logging
import re
from dataclasses import dataclass
from math import prod

import numpy as np
import onnx_graphsurgeon as gs

from graphc.calib.moments import Layout, second_moments
from graphc.errors import DataError
from graphc.ir import NameFactory, constant_value, is_standard_op, node_label
from graphc.ir.padding import explicit_pads
from graphc.passes.factorize import decomposition as fm
from graphc.passes.factorize import rewrite as rw
from graphc.passmanager import Context, Pass, PassResult, option, register_pass
from graphc.passmanager.context import MeasuredCostShapeAnalysis

log = logging.getLogger(__name__)

#: names given to factored nodes (NameFactory may append _N); such nodes are not factored again.
FACTORED_NAME = re.compile(r"\.(svd\.[uv]|tucker\.(in|core|out)|dw\.(depthwise|pointwise))(_\d+)?$")
DEFAULT_ENERGY = 0.99
SPATIAL_UNKNOWN = "spatial shape unknown (give --input-shape)"
_FLOATS = (np.float16, np.float32, np.float64)


@dataclass
class _Layer:
    """A candidate: its weight as float64 (linear: out x in; conv: Cout x Cin x kf)."""

    node: gs.Node
    weight: np.ndarray
    dtype: np.dtype
    rows: int                   # output positions per batch item (rows of x for linear layers)
    in_rows: int = 0            # conv: input spatial positions (the first tucker 1x1 runs there)
    kernel: tuple[int, ...] = ()
    layout: Layout | None = None  # how the input's samples are read, for data
    moment: np.ndarray | None = None
    label: str = ""

    def __post_init__(self):
        self.label = self.node.name or self.node.outputs[0].name


@dataclass
class _Plan:
    ranks: tuple[int, ...]
    full: tuple[int, ...]
    weights: tuple[np.ndarray, ...]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    error: float


@register_pass
class Factorize(Pass):
    name = "factorize"
    summary = "low-rank (svd, tucker) or depthwise (dw) factorization of Gemm, MatMul and Conv"
    exact = False

    @dataclass(frozen=True)
    class Options:
        method: str = option("svd", "svd: Gemm/MatMul -> 2 MatMuls; tucker: KxK Conv -> 1x1, KxK, 1x1; "
                             "dw: KxK Conv -> depthwise KxK + 1x1", choices=("svd", "tucker", "dw"))
        rank: float | None = option(None, "kept fraction of each layer's full rank (rounded up)",
                                    min=0.0, max=1.0)
        energy: float | None = option(None, "kept fraction of the weights' squared singular values "
                                      f"({DEFAULT_ENERGY} if no rule is given)", min=0.0, max=1.0)
        max_error: float | None = option(None, "largest relative output error per layer on the calibration "
                                         "data (needs --data)", min=0.0)
        min_saving: float = option(0.1, "factor a layer only if its MACs drop by at least this fraction",
                                   min=0.0, max=1.0)
        whiten: bool = option(True, "with data: decompose weights whitened by the input second moment "
                              "(minimizes output error, not weight error)")
        damping: float = option(0.01, "ridge added to the second moment before whitening, as a fraction "
                                "of its mean eigenvalue", min=1e-8)
        force: bool = option(False, "factor even when MACs do not drop (testing and inspection: "
                             "rank=1.0 force=true is exact but slower)")
        ignore: tuple[str, ...] = option((), "node name patterns (fnmatch) left alone")

        def __post_init__(self):
            rules = [k for k in ("rank", "energy", "max_error") if getattr(self, k) is not None]
            if len(rules) > 1:
                given = ", ".join(r.replace("_", "-") for r in rules)
                raise ValueError(f"give one rank rule (rank=, energy= or max-error=), not {given}")

    def run(self, graph: gs.Graph, ctx: Context) -> PassResult:
        opts = self.options
        if opts.max_error is not None and ctx.data is None:
            raise DataError("factorize{max-error=...} measures output error on calibration data; "
                            "give --data (or use rank= or energy=)")
        result = PassResult(modified=False)
        layers = self._candidates(graph, ctx, result)
        if layers and ctx.data is not None:
            _attach_moments(ctx, layers)
        names = NameFactory(graph)
        plan_fn, rewrite_fn = _METHODS[opts.method]
        for layer in layers:
            plan = plan_fn(layer, opts)
            reason = self._refuse(plan)
            if reason:
                result.skip(reason)
                log.info("%s not factored: %s", node_label(layer.node), reason)
                continue
            rewrite_fn(graph, layer, plan, names)
            result.count("factored")
            result.details.append(self._record(layer, plan))
        result.modified = bool(result.details)
        return result

    def _candidates(self, graph: gs.Graph, ctx: Context, result: PassResult) -> list[_Layer]:
        match = _match_linear if self.options.method == "svd" else _match_conv
        ops = ("Gemm", "MatMul") if self.options.method == "svd" else ("Conv",)
        shapes = ctx.shapes()
        layers = []
        for node in list(graph.nodes):
            if not is_standard_op(node, *ops):
                continue
            if FACTORED_NAME.search(node.name or ""):
                reason = "already factored"
            elif any(fnmatch.fnmatchcase(node.name or "", p) for p in self.options.ignore):
                reason = "ignored by pattern"
            else:
                reason = match(node, shapes)
            if reason == SPATIAL_UNKNOWN:  # a dynamic input: count costs at the cost shapes
                reason = match(node, self._cost_shapes(ctx))
            if isinstance(reason, _Layer):
                layers.append(reason)
                continue
            result.skip(reason)
            log.info("%s not factored: %s", node_label(node), reason)
        return layers

    @staticmethod
    def _cost_shapes(ctx: Context):
        """Shapes the MACs of a dynamic-input Conv are counted at (``--input-shape``, the first
        sample, else a nominal shape; said once). Only costs and the im2col layout of the
        moments depend on them: the rewrite keeps the Conv's pads/auto_pad, so it holds at every
        input size."""
        estimate = ctx.analysis(MeasuredCostShapeAnalysis)
        if estimate.chosen:
            ctx.note(f"factorize counts Conv MACs {estimate.where}")
        return estimate.shapes

    def _refuse(self, plan: _Plan) -> str | None:
        if self.options.force:
            return None
        if plan.macs_after >= plan.macs_before:
            return "factoring would not reduce MACs at the chosen rank"
        if plan.macs_after > (1.0 - self.options.min_saving) * plan.macs_before:
            return "MAC saving below min-saving at the chosen rank"
        return None

    def _record(self, layer: _Layer, plan: _Plan) -> dict:
        opts = self.options
        rule = _rule(opts)
        return {
            "node": layer.label, "op": layer.node.op, "method": opts.method,
            "rule": f"{rule[0]}={rule[1]}", "ranks": list(plan.ranks), "full_ranks": list(plan.full),
            "macs_before": plan.macs_before, "macs_after": plan.macs_after,
            "params_before": plan.params_before, "params_after": plan.params_after,
            "est_error": plan.error,
            "error_basis": "calibration data" if layer.moment is not None else "weights",
            "data_aware": layer.moment is not None and opts.whiten,
        }


def _rule(opts) -> tuple[str, float]:
    if opts.rank is not None:
        return "rank", opts.rank
    if opts.max_error is not None:
        return "max-error", opts.max_error
    return "energy", opts.energy if opts.energy is not None else DEFAULT_ENERGY


# -- matching (check) ----------------------------------------------------------------------


def _static_rows(shape, drop_last: int = 1) -> int:
    """Product of the leading dims; symbolic or unknown dims count as 1 (per batch item)."""
    if shape is None:
        return 1
    dims = shape[:len(shape) - drop_last] if drop_last else shape
    return int(prod(d if isinstance(d, int) and d > 0 else 1 for d in dims))


def _float_weight(tensor: gs.Tensor) -> np.ndarray | str:
    value = constant_value(tensor)
    if value is None:
        return "weight is not constant"
    if value.dtype not in _FLOATS:
        return f"weight dtype {value.dtype} is not floating point"
    return value


def _match_linear(node: gs.Node, shapes) -> _Layer | str:
    if len(node.inputs) < 2 or not node.outputs:
        return "malformed node"
    if constant_value(node.inputs[0]) is not None:
        return "input is constant (fold-constants applies)"
    weight = _float_weight(node.inputs[1])
    if isinstance(weight, str):
        return weight
    if weight.ndim != 2:
        return "weight is not 2-D"
    info = shapes.get(node.inputs[0].name)
    in_shape = info.shape if info is not None else None
    if node.op == "Gemm":
        if node.attrs.get("transA", 0):
            return "Gemm with transA"
        a = weight if node.attrs.get("transB", 0) else weight.T
        a = float(node.attrs.get("alpha", 1.0)) * a.astype(np.float64)
    else:
        if in_shape is not None and len(in_shape) < 2:
            return "input is 1-D"
        a = weight.T.astype(np.float64)
    return _Layer(node, a, weight.dtype, _static_rows(in_shape), layout=Layout())


def _match_conv(node: gs.Node, shapes) -> _Layer | str:
    if len(node.inputs) < 2 or not node.outputs:
        return "malformed node"
    weight = _float_weight(node.inputs[1])
    if isinstance(weight, str):
        return weight
    if int(node.attrs.get("group", 1)) != 1:
        return "grouped Conv (groups=1 only)"
    if weight.ndim < 3:
        return "weight is not a Conv kernel"
    kernel = tuple(int(k) for k in weight.shape[2:])
    if prod(kernel) == 1:
        return "1x1 kernel: no spatial mode to factor"
    x_info, y_info = shapes.get(node.inputs[0].name), shapes.get(node.outputs[0].name)
    spatial = [i.shape[2:] if i is not None and i.shape is not None else None for i in (x_info, y_info)]
    if any(s is None or not all(isinstance(d, int) and d > 0 for d in s) for s in spatial):
        return SPATIAL_UNKNOWN
    pads = explicit_pads(node, kernel, spatial[0])
    if isinstance(pads, str):
        return pads
    layout = Layout.conv(kernel, node.attrs.get("strides"), pads, node.attrs.get("dilations"))
    w = weight.astype(np.float64).reshape(weight.shape[0], weight.shape[1], -1)
    return _Layer(node, w, weight.dtype, prod(spatial[1]), prod(spatial[0]), kernel, layout)


def _attach_moments(ctx: Context, layers: list[_Layer]) -> None:
    requests = {i: (layer.node.inputs[0].name, layer.layout) for i, layer in enumerate(layers)}
    moments = second_moments(ctx.model, ctx.data, requests)
    for i, layer in enumerate(layers):
        layer.moment = moments[i]


# -- planning: ranks, costs, errors ----------------------------------------------------------


def _choose(opts, layer: _Layer, full: int, error_at) -> int:
    kind, value = _rule(opts)
    if kind == "rank":
        return fm.rank_for_fraction(value, full)
    if kind == "energy":
        (energy,) = fm.weight_spectra(layer.weight, opts.method)
        return min(full, fm.rank_for_energy(energy, value))
    return fm.smallest_within(full, lambda i: error_at(i + 1), value) + 1


def _plan_svd(layer: _Layer, opts) -> _Plan:
    dec = fm.decompose_linear(layer.weight, layer.moment, whiten=opts.whiten, damping=opts.damping)
    r = _choose(opts, layer, dec.full_rank, dec.error)
    g, f = dec.factors(r)
    m, n = layer.weight.shape
    return _Plan((r,), (dec.full_rank,), (g, f), layer.rows * m * n, layer.rows * r * (m + n),
                 m * n, r * (m + n), dec.error(r))


def _plan_tucker(layer: _Layer, opts) -> _Plan:
    w, moment = layer.weight, layer.moment
    bases = fm.tucker_bases(w, moment, whiten=opts.whiten, damping=opts.damping)
    full = bases.full_ranks
    kind, value = _rule(opts)
    if kind == "rank":
        r1, r2 = fm.rank_for_fraction(value, full[0]), fm.rank_for_fraction(value, full[1])
    elif kind == "energy":
        spectra = fm.weight_spectra(w, "tucker")
        r1, r2 = (min(f, fm.rank_for_energy(e, value)) for f, e in zip(full, spectra))
    else:
        path = fm.tucker_path(bases)
        best = fm.smallest_within(len(path), lambda i: _tucker_error(w, bases, *path[i], moment), value)
        r1, r2 = path[best]
    factors = fm.tucker_factors(w, bases, r1, r2)
    cout, cin, kf = w.shape
    macs_after = layer.in_rows * cin * r1 + layer.rows * (r2 * r1 * kf + cout * r2)
    return _Plan((r1, r2), full, factors, layer.rows * cout * cin * kf, macs_after, cout * cin * kf,
                 cin * r1 + r2 * r1 * kf + cout * r2, _tucker_error(w, bases, r1, r2, moment))


def _tucker_error(w, bases, r1, r2, moment) -> float:
    approx = fm.tucker_reconstruct(*fm.tucker_factors(w, bases, r1, r2))
    return fm.relative_error((w - approx).reshape(w.shape[0], -1), w.reshape(w.shape[0], -1), moment)


def _plan_dw(layer: _Layer, opts) -> _Plan:
    w, moment = layer.weight, layer.moment
    dec = fm.decouple(w, moment, whiten=opts.whiten, damping=opts.damping)
    cout, cin, kf = w.shape
    flat = w.reshape(cout, -1)

    def error(t: int) -> float:
        return fm.relative_error(flat - dec.reconstruct(t).reshape(cout, -1), flat, moment)

    t = _choose(opts, layer, dec.full_rank, error)
    return _Plan((t,), (dec.full_rank,), dec.factors(t), layer.rows * cout * cin * kf,
                 layer.rows * cin * t * (kf + cout), cout * cin * kf, cin * t * (kf + cout), error(t))


_METHODS = {
    "svd": (_plan_svd, lambda graph, layer, plan, names:
            rw.rewrite_linear(graph, layer.node, *plan.weights, layer.dtype, names)),
    "tucker": (_plan_tucker, lambda graph, layer, plan, names:
               rw.rewrite_tucker(graph, layer.node, *plan.weights, layer.dtype, layer.kernel, names)),
    "dw": (_plan_dw, lambda graph, layer, plan, names:
           rw.rewrite_dw(graph, layer.node, *plan.weights, layer.dtype, layer.kernel, names)),
}
