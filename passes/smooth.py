"""smooth: SmoothQuant (Xiao et al. 2023) for MatMul/Gemm whose activations have outlier
channels (transformer blocks): a per-channel scale moves from the activation into the weights,
folded into the op that produces the activation, so int8 activation ranges stop being set by a
few channels. Run it before ``quant``.

Maths. For ``Y = X W`` with X's channels (last axis) ``j`` and W of shape (K, N)::

    Y = (X diag(1/s)) (diag(s) W)        s_j = max|X_j|^alpha / max|W_j,:|^(1 - alpha)

``max|X_j|`` is measured on the calibration data (``ctx.data``), ``max|W_j,:|`` over the rows of
every reader's weight. ``X diag(1/s)`` costs nothing when the producer of X is linear per channel
in its output, so the scale folds into it (every parameter below is divided by ``s`` along its
last axis):

- LayerNormalization over the last axis (opset 17): ``gamma' = gamma / s``, ``beta' = beta / s``;
- a LayerNorm decomposed the way tf2onnx and older torch exports write it, which ends in a
  per-channel affine ``X = Z * gamma [+ beta]`` (gamma, beta constants of shape (K,); Z is the
  normalized tensor, whatever computed it): ``gamma' = gamma / s``, ``beta' = beta / s``;
- MatMul ``X = A W0`` with a constant 2-D ``W0``: ``W0'[:, j] = W0[:, j] / s_j``, and a constant
  bias Add after it (``X = A W0 + b``, either operand order): ``b' = b / s``.

All readers of X that take the scale are MatMul ``X @ W`` (constant 2-D W) or Gemm (transA=0,
constant B; B's row ``j`` or, with transB, its column ``j`` is scaled) - Q, K and V projections
reading one LayerNorm are scaled together, with one ``s`` from the largest weight row of all.

Other readers. When a LayerNorm's output (native or decomposed) is also read by something that
cannot take the scale - the residual Add of a post-LN (BERT-style) block, a graph output - those
readers get X back through one explicit ``Mul``: the LayerNorm writes ``X' = X diag(1/s)``, the
MatMul readers read ``X'`` and the others read ``X' diag(s) = X``, under X's own name. The Mul
costs one element-wise kernel; ``compensate=false`` leaves such sites alone instead. Weights
are computed in float64 and rounded once, so the rewrite is exact up to float32 rounding
(rtol 1e-5): ``(X / s) * s`` differs from X by at most two float32 roundings.

Sites inside If/Loop/Scan bodies are smoothed too (the same walk; their ranges are measured
through lifted outputs, :mod:`graphc.ir.lift`, over every iteration of a Loop; a branch no sample
took is left alone).

Not smoothed (skip reasons counted): a MatMul-produced X read by anything else or a graph
output, X produced by an op the scale cannot fold into (a graph input, Softmax, Gelu, a
Reshape: an inserted Mul before the readers would cost a kernel for nothing the MatMul source
could not take), MatMuls of two activations (attention: no weight to take the scale), shared or
non-constant parameters, LayerNormalization over another axis or with its mean/inv-std outputs
read. A second run is a no-op: the measured ranges then give ``s = 1``.
"""
from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from graphc.calib.channel_max import channel_absmax
from graphc.errors import DataError
from graphc.ir import (NameFactory, consumers, is_graph_output, is_standard_op, node_label, producer, toposort,
                       walk_graphs)
from graphc.passmanager import Context, Pass, PassResult, option, register_pass
from graphc.rewrite.linear_weights import LinearWeight, match_linear_weight

log = logging.getLogger(__name__)

MAX_SCALE = 1e4
OTHER_READERS = "activation has readers other than MatMul/Gemm"


@dataclass
class SmoothSite:
    """An activation ``x`` whose readers take ``s`` into their weights, and where ``1/s`` goes."""

    x: gs.Variable
    kind: str                       # LayerNormalization, Mul (a decomposed LayerNorm's affine) or MatMul
    params: list[gs.Constant]       # divided by s along their last axis
    readers: list[LinearWeight] = field(default_factory=list)   # MatMul/Gemm weights, W's columns scaled by s
    others: list[gs.Node] = field(default_factory=list)   # read x back through a Mul by s
    output: bool = False            # x is a graph output (kept through the Mul)
    scope: gs.Graph | None = None   # the graph or body holding x (where a compensating Mul goes)

    @property
    def layernorm(self) -> bool:
        return self.kind in ("LayerNormalization", "Mul")


@register_pass
class Smooth(Pass):
    name = "smooth"
    summary = "SmoothQuant: move activation outliers into MatMul/Gemm weights (exact in float)"
    exact = True
    needs_data = True

    @dataclass(frozen=True)
    class Options:
        alpha: float = option(0.5, "migration strength: 0 keeps ranges in the activations, 1 moves "
                              "them all into the weights", min=0.0, max=1.0)
        tolerance: float = option(0.01, "leave a site alone when no scale differs from 1 by more",
                                  min=0.0, max=1.0)
        samples: int | None = option(None, "at most this many calibration samples", min=1)
        ignore: tuple[str, ...] = option((), "reader node name patterns left alone (fnmatch)")
        compensate: bool = option(True, "smooth a LayerNorm whose output is also read by other ops (the "
                                  "residual) or is a graph output; those readers get it back through a Mul")

    def run(self, graph: gs.Graph, ctx: Context) -> PassResult:
        result = PassResult(modified=False)
        if ctx.data is None:
            raise DataError("pass 'smooth' needs calibration data (--data)")
        toposort(graph)  # sites in graph order, upstream first (the rewrite walks them backwards)
        sites = self._sites(graph, result)  # in the graph and its If/Loop/Scan bodies
        if not sites:
            return result
        ranges = channel_absmax(ctx.model, ctx.data, {s.x.name: -1 for s in sites},
                                max_samples=self.options.samples)
        names = NameFactory(graph)
        # Downstream sites first: a MatMul that reads one site and produces the next has its
        # columns divided by the later site's scale, and the earlier site's scale must be computed
        # from those divided rows, or a second run finds it unbalanced again. The measured ranges
        # stay valid: a site's activation depends only on upstream scales, which are undone at it.
        for site in reversed(sites):
            if site.x.name not in ranges:
                result.skip("activation never ran on the calibration data (an If branch no sample took)")
                continue
            s = _smoothing_scales(ranges[site.x.name], site.readers, self.options.alpha)
            if np.max(np.abs(s - 1.0)) <= self.options.tolerance:
                continue
            _rescale(site, s)
            if site.others or site.output:
                _compensate(graph, site, s, names)
                result.count("compensating_muls")
            result.count(f"smoothed_after_{site.kind}")
            for reader in site.readers:
                result.details.append({"node": reader.node.name, "rule": "smooth", "into": site.params[0].name,
                                       "max_scale": round(float(np.max(s)), 4),
                                       "min_scale": round(float(np.min(s)), 4)})
        result.modified = bool(result.stats)
        return result

    # -- check ----------------------------------------------------------------------------------

    def _sites(self, graph: gs.Graph, result: PassResult) -> list[SmoothSite]:
        sites, seen = [], set()
        scopes = [scope for _, scope in walk_graphs(graph)]
        outputs = {id(t) for scope in scopes for t in scope.outputs}
        for scope in scopes:
            for node in list(scope.nodes):
                if not is_standard_op(node, "MatMul", "Gemm") or id(node.inputs[0]) in seen:
                    continue
                x = node.inputs[0]
                seen.add(id(x))
                site, reason = self._site(scope, x, outputs)
                if reason:
                    result.skip(reason)
                    log.info("smooth: %s not smoothed: %s", node_label(node), reason)
                elif site is not None:
                    sites.append(site)
        return sites

    def _site(self, graph: gs.Graph, x: gs.Tensor, outputs: set[int]) -> tuple[SmoothSite | None, str | None]:
        if not isinstance(x, gs.Variable):
            return None, "activation is a constant"
        readers, others, reasons = [], [], []
        for r in consumers(x):
            if any(fnmatch.fnmatchcase(r.name or "", p) for p in self.options.ignore):
                return None, None
            weight = _reader_weight(r, x)
            if isinstance(weight, str):
                others.append(r)
                reasons.append(weight)
            else:
                readers.append(weight)
        if not readers:
            return None, reasons[0]
        width = readers[0].columns
        if any(r.columns != width for r in readers):
            return None, "readers disagree on the channel count"
        source = producer(x)
        if source is None:
            return None, "activation is a graph input: no op to fold the scale into"
        site, reason = _source_site(graph, source, x, width)
        if site is None:
            return None, reason
        output = id(x) in outputs  # an output of the graph or of a body
        if (others or output) and not (site.layernorm and self.options.compensate):
            return None, OTHER_READERS if others else "activation is a graph output"
        site.readers, site.others, site.output, site.scope = readers, others, output, graph
        return site, None


def _reader_weight(node: gs.Node, x: gs.Tensor) -> LinearWeight | str:
    """The weight of a MatMul/Gemm reading ``x`` as its input, as :mod:`graphc.rewrite.linear_weights`
    reads it (``W``'s columns are x's channels), or why the reader cannot take the scale."""
    if not is_standard_op(node, "MatMul", "Gemm") or node.inputs[0] is not x or x in node.inputs[1:]:
        return OTHER_READERS
    w = node.inputs[1]
    if isinstance(w, gs.Variable):
        return f"{node.op} of two activations (attention): no weight takes the scale"
    if w.values.ndim != 2 or np.dtype(w.dtype) != np.float32:
        return f"{node.op} weight is not a constant 2-D float32 matrix"
    return match_linear_weight(node, None)  # or its reason: a shared weight, transA, non-finite values


def _private(t: gs.Tensor, ndim: int, width: int) -> bool:
    """A float32 constant of ``ndim`` dims, ``width`` on its last axis, read by one node only."""
    return (isinstance(t, gs.Constant) and t.values.ndim == ndim and t.values.shape[-1] == width
            and np.dtype(t.dtype) == np.float32 and len(t.outputs) == 1)


def _single_use(graph: gs.Graph, t: gs.Tensor) -> bool:
    return len(consumers(t)) == 1 and not is_graph_output(graph, t)


def _source_site(graph: gs.Graph, source: gs.Node, x, width: int) -> tuple[SmoothSite | None, str | None]:
    """Where ``1/s`` folds: the LayerNorm, the decomposed LayerNorm's affine, the MatMul (+ bias)."""
    if is_standard_op(source, "LayerNormalization"):
        return _layernorm_site(source, x, width)
    bias = None
    if is_standard_op(source, "Add"):
        bias, source = _operand_under_bias(graph, source, width)
        if source is None:
            return None, "Add before the MatMul is not a constant bias after a MatMul or a LayerNorm's gamma"
    if is_standard_op(source, "Mul") and len(source.inputs) == 2:
        gamma = next((t for t in source.inputs if _private(t, 1, width)), None)
        if gamma is not None and not isinstance(source.inputs[0 if gamma is source.inputs[1] else 1], gs.Constant):
            return SmoothSite(x, "Mul", [gamma] + ([bias] if bias is not None else [])), None
    if is_standard_op(source, "MatMul") and len(source.inputs) == 2 and _private(source.inputs[1], 2, width):
        return SmoothSite(x, "MatMul", [source.inputs[1]] + ([bias] if bias is not None else [])), None
    return None, f"{source.op} before the MatMul cannot take the scale"


def _layernorm_site(ln: gs.Node, x, width) -> tuple[SmoothSite | None, str | None]:
    if ln.outputs[0] is not x or any(consumers(o) for o in ln.outputs[1:]):
        return None, "LayerNormalization mean/inv-std outputs are read"
    if int(ln.attrs.get("axis", -1)) not in (-1, len(ln.inputs[0].shape or [0, 0]) - 1):
        return None, "LayerNormalization does not normalize the last axis only"
    if not _private(ln.inputs[1], 1, width):
        return None, "LayerNormalization scale is not a private constant of the channel count"
    params = [ln.inputs[1]]
    if len(ln.inputs) > 2 and ln.inputs[2].name:
        if not _private(ln.inputs[2], 1, width):
            return None, "LayerNormalization bias is not a private constant of the channel count"
        params.append(ln.inputs[2])
    return SmoothSite(x, "LayerNormalization", params), None


def _operand_under_bias(graph: gs.Graph, add: gs.Node, width: int) -> tuple[gs.Constant | None, gs.Node | None]:
    """``(b, op)`` of ``X = op(...) + b``: b a private constant of shape (K,), op's output read by
    the Add only; ``(None, None)`` when the Add is not such a bias."""
    if len(add.inputs) != 2:
        return None, None
    for i in (0, 1):
        op, b = producer(add.inputs[i]), add.inputs[1 - i]
        if op is not None and is_standard_op(op, "MatMul", "Mul") and _single_use(graph, add.inputs[i]) \
                and _private(b, 1, width):
            return b, op
    return None, None


# -- rewrite -------------------------------------------------------------------------------------


def _smoothing_scales(act_max: np.ndarray, readers: list[LinearWeight], alpha: float) -> np.ndarray:
    w_max = np.max([np.abs(r.matrix()).max(axis=0) for r in readers], axis=0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s = act_max ** alpha / w_max ** (1.0 - alpha)
    s = np.where((act_max > 0) & (w_max > 0) & np.isfinite(s), s, 1.0)
    return np.clip(s, 1 / MAX_SCALE, MAX_SCALE)


def _divide(t: gs.Constant, s: np.ndarray) -> None:
    t.values = (t.values.astype(np.float64) / s).astype(np.float32)  # along the last axis


def _rescale(site: SmoothSite, s: np.ndarray) -> None:
    for t in site.params:  # LayerNorm gamma/beta, affine gamma/beta, W0 columns and bias
        _divide(t, s)
    for r in site.readers:  # diag(s) W in the docstring's (K, N) layout: W's columns here
        r.write(r.matrix() * s[None, :])


def _compensate(graph: gs.Graph, site: SmoothSite, s: np.ndarray, names: NameFactory) -> None:
    """The source writes ``x' = x / s`` under a new name, the MatMul readers read it, and
    ``Mul(x', s)`` writes ``x`` under its own name for the other readers and graph outputs."""
    x = site.x
    scaled = gs.Variable(names(f"{x.name}_smoothed"), dtype=np.float32, shape=x.shape)
    node = producer(x)
    node.outputs[next(i for i, t in enumerate(node.outputs) if t is x)] = scaled
    for r in site.readers:
        r.node.inputs[0] = scaled
    factor = gs.Constant(names(f"{x.name}_smooth_scale"), s.astype(np.float32))
    (site.scope or graph).nodes.append(gs.Node("Mul", names(f"{x.name}_unsmooth"), inputs=[scaled, factor], outputs=[x]))
