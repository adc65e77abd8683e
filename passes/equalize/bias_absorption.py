"""Bias absorption for ``equalize`` (Nagel et al. 2019, sec. 4.2): where each pre-activation
channel lies, how much of layer 1's bias moves into layer 2, and the rewrite.

Maths. For ``y = Conv2(f(u))`` with ``u = Conv1(x)`` and a per-channel constant ``c``::

    b1'[ch] = b1[ch] - c[ch]        b2'[o] = b2[o] + sum_{j, k} W2[o, j, k] c[g(o) Cin_g + j]

(``g(o)`` the group of output channel ``o``: input channel ``g Cin_g + j`` of a grouped Conv2 is
column ``j`` of group ``g``). Conv2 then computes ``W2 * (f(u) - c) + b2 + W2 c`` on every tap that
reads a real value: the output is unchanged if ``f(u - c) = f(u) - c`` and no tap reads padding
(a padded tap reads 0, not ``-c``, so a padded Conv2 is never absorbed into).

- ``f`` identity: ``u - c = u - c`` for every input, any sign of ``c``. The pass moves each channel's
  interval ``[lo, hi]`` to touch 0 (``c = lo`` if ``lo > 0``, ``c = hi`` if ``hi < 0``): the
  per-tensor range ``[min(lo, 0), max(hi, 0)]`` a quantizer sees can only shrink.
- ``f`` Relu / LeakyRelu, ``c >= 0``: ``f(u - c) = u - c = f(u) - c`` iff ``u >= c``; below ``c``
  the result differs. So ``c = max(0, lo)`` needs ``lo`` to be a lower bound of ``u``, which no
  data-free rule can prove once BatchNormalization is folded.

Where ``[lo, hi]`` comes from (:class:`ChannelBounds`):

- ``data``: the measured per-channel minimum and maximum of ``u`` over the calibration data, taken
  on the model after scaling (``c`` for Relu is lowered by ``1e-6 max|u|`` to cover the float32
  rounding of the measurement). Exact on that data, not on inputs outside its range.
- ``batchnorm``: the paper's data-free rule. If Conv1 was followed by a BatchNormalization in the
  original model (``ctx.original``) and its weights and bias still equal that Conv with the BN
  folded in, ``u`` is the BN output, assumed Gaussian with mean ``beta`` and standard deviation
  ``|gamma| sqrt(var / (var + eps))`` (``|gamma|`` up to ``eps``): ``[lo, hi] = beta -/+ 3 sd``,
  divided by the scale equalization applied to that channel in the same run. A second run finds
  the layer changed (bias moved or weights rescaled) and leaves it alone, so the rule applies once.

Amounts smaller than ``tolerance`` times the channel's ``max(|lo|, |hi|)`` are not moved, which
makes a second run with data a no-op (the measured minimum is then ~0).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import onnx_graphsurgeon as gs

from graphc.calib.channel_max import channel_absmax
from graphc.ir import NameFactory, consumers, constant_value, is_standard_op, toposort, walk_graphs
from graphc.ir.model import Model
from graphc.ir.padding import conv_pads

#: off: never; exact: only where exact for every input (no activation between the layers);
#: data: also through Relu/LeakyRelu from the calibration minimum (exact on that data);
#: gaussian: also through Relu/LeakyRelu, data-free by the 3-sigma BatchNorm rule when no data.
ABSORB_MODES = ("off", "exact", "data", "gaussian")
SIGMAS = 3.0
#: a Relu channel's measured minimum is lowered by this fraction of its max |u| (float32 rounding).
MARGIN = 1e-6


@dataclass
class ChannelBounds:
    """Per-channel interval of a pre-activation (float64) and where it comes from."""

    lo: np.ndarray
    hi: np.ndarray
    source: str  # "data" or "batchnorm"

    def scaled(self, factor: np.ndarray) -> "ChannelBounds":
        return ChannelBounds(self.lo * factor, self.hi * factor, self.source)

    @property
    def amax(self) -> np.ndarray:
        return np.maximum(np.abs(self.lo), np.abs(self.hi))


# -- check ---------------------------------------------------------------------------------------


def absorb_reason(second: gs.Node, activation: gs.Node | None, mode: str) -> str | None:
    """Why the pair (``activation`` between, ``second`` reading) is not absorbed in ``mode``."""
    if conv_pads(second, second.inputs[1].values):
        return "bias not absorbed: the second Conv reads zero padding"
    if activation is not None and mode == "exact":
        return (f"bias not absorbed: through {activation.op} it is exact only on data "
                "(absorb-bias=data or gaussian)")
    return None


def through(activation: gs.Node | None) -> str:
    return activation.op if activation is not None else "none"


def exactness(activation: gs.Node | None, bounds: ChannelBounds) -> str:
    if activation is None:
        return "yes"
    return "on calibration data" if bounds.source == "data" else "no (3-sigma rule)"


def absorbed_amounts(bounds: ChannelBounds, activation: gs.Node | None, tolerance: float) -> np.ndarray:
    """``c`` per channel (float64); 0 where nothing is moved."""
    lo, hi, amax = bounds.lo, bounds.hi, bounds.amax
    if activation is None:
        c = np.where(lo > 0, lo, np.where(hi < 0, hi, 0.0))
    else:
        margin = MARGIN * amax if bounds.source == "data" else 0.0
        c = np.maximum(lo - margin, 0.0)
    return np.where(np.abs(c) > tolerance * amax, c, 0.0)


def activation_range(bounds: ChannelBounds, activation: gs.Node | None, c: np.ndarray) -> float:
    """Width of the per-tensor range of ``f(u - c)`` (including 0), as a quantizer sees it."""
    lo, hi = bounds.lo - c, bounds.hi - c
    if activation is not None:
        lo, hi = np.maximum(lo, 0.0), np.maximum(hi, 0.0)
    return float(max(hi.max(), 0.0) - min(lo.min(), 0.0))


# -- where the channels lie ------------------------------------------------------------------------


def batchnorm_bounds(original: dict[str, gs.Node], conv: gs.Node) -> ChannelBounds | None:
    """Bounds of ``conv``'s output by the 3-sigma rule, if ``conv`` is still exactly the original
    Conv of that name with its following BatchNormalization folded in; else None."""
    source = original.get(conv.name) if conv.name else None
    if source is None or not is_standard_op(source, "Conv") or len(source.inputs) < 2:
        return None
    readers = consumers(source.outputs[0])
    if len(readers) != 1 or not is_standard_op(readers[0], "BatchNormalization"):
        return None
    stats = _bn_statistics(readers[0])
    w = constant_value(source.inputs[1])
    if stats is None or w is None or w.shape != conv.inputs[1].values.shape:
        return None
    gamma, beta, mean, var, eps = stats
    scale = gamma / np.sqrt(var + eps)
    b = constant_value(source.inputs[2]) if len(source.inputs) > 2 and source.inputs[2].name else None
    b = np.zeros_like(mean) if b is None else b.astype(np.float64)
    folded_w = w.astype(np.float64) * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    folded_b = scale * (b - mean) + beta
    if not (_same(conv.inputs[1].values, folded_w) and _same(_bias(conv), folded_b)):
        return None
    sd = np.abs(scale) * np.sqrt(var)
    return ChannelBounds(beta - SIGMAS * sd, beta + SIGMAS * sd, "batchnorm")


def _bn_statistics(bn: gs.Node) -> tuple[np.ndarray, ...] | None:
    if int(bn.attrs.get("training_mode", 0)) == 1 or len(bn.inputs) < 5:
        return None
    params = [constant_value(t) for t in bn.inputs[1:5]]
    if any(p is None or p.ndim != 1 or p.shape != params[0].shape for p in params):
        return None
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    eps = float(bn.attrs.get("epsilon", 1e-5))
    if np.any(var + eps <= 0) or np.any(var < 0):
        return None
    return gamma, beta, mean, var, eps


def _same(stored: np.ndarray, expected: np.ndarray) -> bool:
    """``stored`` (float32) is ``expected`` rounded once, up to a few ulps."""
    tol = 1e-6 * float(np.max(np.abs(expected), initial=0.0))
    return stored.shape == expected.shape and bool(np.allclose(stored, expected, rtol=1e-5, atol=tol))


def measured_bounds(model: Model, data: Iterable[dict[str, np.ndarray]],
                    tensors: dict[str, int]) -> dict[str, ChannelBounds]:
    """Measured per-channel ``[min, max]`` on axis 1 of ``tensors = {name: rank}`` over ``data``.

    graphc.calib offers ``max |u|`` per channel (:func:`channel_absmax`); the signed bounds follow
    from a second run over a copy that also computes ``A - u`` and ``u + A`` with ``A = max |u|``
    (both in ``[0, 2A]``): ``min u = A - max |A - u|``, ``max u = max |u + A| - A``."""
    if not tensors:
        return {}
    # channel axis counted from the end: a tensor of a Loop body comes out stacked over iterations
    axis = {name: 1 - rank for name, rank in tensors.items()}
    amax = channel_absmax(model, data, axis)
    probe = model.copy()
    graph = probe.graph
    names = NameFactory(graph)
    # the probe nodes go into the scope that computes the tensor (the graph or an If/Loop/Scan body)
    where = {out.name: (out, scope) for _, scope in walk_graphs(graph) for n in scope.nodes for out in n.outputs}
    shifts: dict[str, tuple[np.ndarray, str, str]] = {}
    for name, rank in tensors.items():
        if name not in amax:  # never ran (a branch no sample took)
            continue
        a = amax[name].astype(np.float32)
        tensor, scope = where[name]
        shift = gs.Constant(names(f"{name}.absmax"), a.reshape((1, -1) + (1,) * (rank - 2)))
        below = gs.Variable(names(f"{name}.below"), dtype=np.float32)
        above = gs.Variable(names(f"{name}.above"), dtype=np.float32)
        scope.nodes.append(gs.Node("Sub", names(f"{name}.below"), inputs=[shift, tensor], outputs=[below]))
        scope.nodes.append(gs.Node("Add", names(f"{name}.above"), inputs=[tensor, shift], outputs=[above]))
        shifts[name] = (a.astype(np.float64), below.name, above.name)
    toposort(graph)  # and every body
    spread = channel_absmax(probe, data, {t: axis[name] for name, (_, b, u) in shifts.items() for t in (b, u)})
    return {name: ChannelBounds(a - spread[b], spread[u] - a, "data") for name, (a, b, u) in shifts.items()}


# -- rewrite ---------------------------------------------------------------------------------------


def conv_input_view(conv: gs.Node) -> np.ndarray:
    """A Conv's weight as (group, Cout_g, Cin_g, k...), in float64."""
    w = conv.inputs[1].values.astype(np.float64)
    group = int(conv.attrs.get("group", 1))
    return w.reshape((group, w.shape[0] // group) + w.shape[1:])


def absorb(first: gs.Node, second: gs.Node, c: np.ndarray, names: NameFactory) -> None:
    """``b1 -= c`` and ``b2 += W2 c`` (biases created where missing), float64 then rounded once."""
    view = conv_input_view(second)
    group, cin_g = view.shape[0], view.shape[2]
    taps = view.reshape(view.shape[:3] + (-1,)).sum(axis=3)
    delta = np.einsum("goi,gi->go", taps, c.reshape(group, cin_g)).reshape(-1)
    _set_bias(first, _bias(first) - c, names)
    _set_bias(second, _bias(second) + delta, names)


def _bias(conv: gs.Node) -> np.ndarray:
    if len(conv.inputs) > 2 and conv.inputs[2].name:
        return conv.inputs[2].values.astype(np.float64)
    return np.zeros(conv.inputs[1].values.shape[0])


def _set_bias(conv: gs.Node, values: np.ndarray, names: NameFactory) -> None:
    values = values.astype(np.float32)
    if len(conv.inputs) > 2 and conv.inputs[2].name:
        conv.inputs[2].values = values  # private to this Conv (checked by equalize)
        return
    bias = gs.Constant(names(f"{conv.name or conv.outputs[0].name}.bias"), values)
    if len(conv.inputs) > 2:
        conv.inputs[2] = bias
    else:
        conv.inputs.append(bias)
