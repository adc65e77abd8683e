"""Channel importance: which channels of a channel group matter least, comparable across groups.

A group's channel ``j`` is one set of positions in every slot of the group (see
:mod:`graphc.analysis.channels`); removing it deletes a row of every producer's weight, a column
of every consumer's weight, and its norm parameters. Criteria score each channel:

- ``l1`` / ``l2``: the L1 / L2 norm of everything that disappears with it, per weight member
  (producers' output rows, consumers' input columns; Li et al. 2017, "Pruning filters");
- ``fpgm``: per producer, the summed distance of the channel's filter to all other filters
  (He et al. 2019): a filter near the geometric median is replaceable by the others;
- ``bn-scale``: ``|gamma|`` of the BatchNorm after each producer (Network Slimming, Liu et al. 2017).
  Gammas come from the current graph or, once fold-bn ran, from the model before the pipeline
  (:func:`bn_gammas` matches a BatchNorm to the Conv/Gemm it follows by that layer's name);
- ``activation``: mean ``|x|`` of the channel at every consumer's input on calibration data
  (APoZ-style: channels that are mostly zero carry little);
- ``wanda``: ``sum_p ||W[:, p]||_1 * sqrt(E x_p^2)`` per consumer (Wanda, Sun et al. 2023,
  summed over the structured column);
- ``flap``: ``sum_p ||W[:, p]||_2^2 * Var x_p`` per consumer (FLAP, An et al. 2024): the part of
  the consumer's output that a constant cannot replace; bias compensation (``reconstruct``)
  restores the mean ``W[:, p] E x_p``, so the variance is what is lost.

Aggregation and normalization: each member's scores are divided by their mean over the group
(so a member with large weights does not outvote the others), the group's raw score is the mean
over its members, and :func:`shares` divides by the group's total. A channel's share is the
fraction of its group's importance it carries: ``1/size`` when all channels are alike, whatever
the group's size or weight scale. Global ranking compares shares (per unit of cost), see
:mod:`graphc.passes.prune.allocation`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphc.analysis.channels import ChannelGroup
from graphc.ir import is_standard_op

log = logging.getLogger(__name__)

CRITERIA = ("l1", "l2", "fpgm", "bn-scale", "activation", "wanda", "flap")
#: criteria that read calibration data (per-channel moments of the consumers' inputs).
DATA_CRITERIA = frozenset({"activation", "wanda", "flap"})


@dataclass(frozen=True)
class ConsumerInput:
    """A layer that reads group channels as input features: ``y = W x (+ b)``.

    ``weight_axis`` is the weight's input-feature axis, ``x``/``x_axis`` its data input and
    feature axis. Only Conv, Gemm (no transA) and MatMul with a constant 2-D right operand."""

    node: gs.Node
    weight: gs.Constant
    weight_axis: int
    x: gs.Tensor
    x_axis: int

    @property
    def kind(self) -> str:
        return {"Conv": "conv", "Gemm": "gemm"}.get(self.node.op, "matmul")

    def weight_matrix(self) -> np.ndarray:
        """``W`` as (outputs, input features) in float64; Conv features are (Cin, k...) row-major."""
        w = np.asarray(self.weight.values, dtype=np.float64)
        if self.kind == "conv":
            return w.reshape(w.shape[0], -1)
        if self.kind == "gemm":
            a = w if self.node.attrs.get("transB", 0) else w.T
            return float(self.node.attrs.get("alpha", 1.0)) * a
        return w.T

    def taps(self) -> int:
        """Input features per input channel (a Conv's kernel size; 1 for Gemm/MatMul)."""
        shape = self.weight.values.shape
        return int(np.prod(shape[2:])) if self.kind == "conv" else 1


def consumer_input(node: gs.Node, rank: int | None = None) -> ConsumerInput | None:
    """The :class:`ConsumerInput` view of ``node``, or None for layers it does not describe.
    ``rank``: of the data input (a MatMul's feature axis is its last), when known better than
    ``node.inputs[0].shape``."""
    if not is_standard_op(node, "Conv", "Gemm", "MatMul") or len(node.inputs) < 2:
        return None
    x, w = node.inputs[0], node.inputs[1]
    if not isinstance(w, gs.Constant) or isinstance(x, gs.Constant):
        return None
    if node.op == "Conv":
        if int(node.attrs.get("group", 1)) != 1 or w.values.ndim < 3:
            return None
        return ConsumerInput(node, w, 1, x, 1)
    if w.values.ndim != 2:
        return None
    if node.op == "Gemm":
        if node.attrs.get("transA", 0):
            return None
        return ConsumerInput(node, w, 1 if node.attrs.get("transB", 0) else 0, x, 1)
    if rank is None:
        rank = len(x.shape) if x.shape is not None else None
    if rank is None or rank < 2:
        return None
    return ConsumerInput(node, w, 0, x, rank - 1)


def consumer_inputs(group: ChannelGroup) -> list[ConsumerInput]:
    """Consumers of ``group`` that read its channels through a weight's input axis (not depthwise
    or grouped convolutions, whose channels disappear with the group)."""
    out, seen = [], set()
    for m in group.consumers:
        rank = group.analysis.rank(m.node.inputs[0]) if group.analysis is not None else None
        view = consumer_input(m.node, rank)
        if view is None or id(m.node) in seen or m.slot != (view.weight.name, view.weight_axis):
            continue
        if (view.x.name, view.x_axis) not in group.positions:
            continue
        seen.add(id(m.node))
        out.append(view)
    return out


def activation_requests(groups: list[ChannelGroup]) -> dict[str, int]:
    """``{tensor: channel axis}`` whose per-channel moments the data criteria read."""
    requests: dict[str, int] = {}
    for g in groups:
        for c in consumer_inputs(g):
            requests[c.x.name] = c.x_axis
    return requests


def bn_gammas(graph: gs.Graph) -> dict[str, np.ndarray]:
    """``{layer name: |gamma|}`` for each BatchNormalization that directly follows a named Conv,
    ConvTranspose, Gemm or MatMul with a constant scale."""
    out = {}
    for node in graph.nodes:
        if not is_standard_op(node, "BatchNormalization") or len(node.inputs) < 2:
            continue
        src = node.inputs[0].inputs[0] if node.inputs[0].inputs else None
        scale = node.inputs[1]
        if src is None or not src.name or not isinstance(scale, gs.Constant):
            continue
        if is_standard_op(src, "Conv", "ConvTranspose", "Gemm", "MatMul"):
            out[src.name] = np.abs(np.asarray(scale.values, dtype=np.float64))
    return out


def group_importance(group: ChannelGroup, criterion: str, *, moments: dict | None = None,
                     gammas: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, str]:
    """Raw per-channel scores of ``group`` and the criterion actually used (a group without what
    the criterion reads - no BatchNorm, no consumer with data - falls back to ``l2``)."""
    if criterion in ("l1", "l2"):
        parts = _magnitude(group, 1 if criterion == "l1" else 2)
    elif criterion == "fpgm":
        parts = _fpgm(group)
    elif criterion == "bn-scale":
        parts = _bn_scale(group, gammas or {})
    else:
        parts = _data_scores(group, criterion, moments or {})
    if not parts:
        if criterion == "l2":
            return np.ones(group.size), "uniform"
        scores, _ = group_importance(group, "l2")
        return scores, "l2"
    return np.mean([_by_mean(p) for p in parts], axis=0), criterion


def shares(scores: np.ndarray) -> np.ndarray:
    """Scores as fractions of the group's total (uniform when the total is zero)."""
    scores = np.clip(np.nan_to_num(np.asarray(scores, dtype=np.float64)), 0.0, None)
    total = scores.sum()
    return scores / total if total > 0 else np.full(scores.shape, 1.0 / max(scores.size, 1))


def removal_order(scores: np.ndarray) -> np.ndarray:
    """Channel indices from least to most important (stable: ties keep index order)."""
    return np.argsort(np.asarray(scores, dtype=np.float64), kind="stable")


def _by_mean(v: np.ndarray) -> np.ndarray:
    v = np.nan_to_num(np.asarray(v, dtype=np.float64))
    mean = v.mean() if v.size else 0.0
    return v / mean if mean > 0 else np.ones_like(v)


def _magnitude(group: ChannelGroup, p: int) -> list[np.ndarray]:
    parts = []
    for _, rows in group.weights(("producer", "consumer")):
        rows = np.abs(rows.astype(np.float64, copy=False))
        parts.append(rows.sum(axis=1) if p == 1 else np.sqrt(np.square(rows).sum(axis=1)))
    return parts


def _fpgm(group: ChannelGroup) -> list[np.ndarray]:
    parts = []
    for _, rows in group.weights(("producer",)):
        rows = rows.astype(np.float64)
        norms = np.square(rows).sum(axis=1)
        d2 = norms[:, None] + norms[None, :] - 2.0 * (rows @ rows.T)
        parts.append(np.sqrt(np.clip(d2, 0.0, None)).sum(axis=1))
    return parts


def _bn_scale(group: ChannelGroup, gammas: dict[str, np.ndarray]) -> list[np.ndarray]:
    parts = []
    for m in group.role("norm"):
        node = m.node
        if is_standard_op(node, "BatchNormalization") and m.slot[0] == node.inputs[1].name:
            gamma = np.abs(np.asarray(node.inputs[1].values, dtype=np.float64))
            parts.append(gamma[group.positions[m.slot]].mean(axis=1))
    if parts:
        return parts
    for m in group.producers:
        gamma = gammas.get(m.node.name)
        pos = group.positions[m.slot]
        size = group.analysis.slot_size.get(m.slot) if group.analysis else None
        if gamma is not None and gamma.shape[0] == size:
            parts.append(gamma[pos].mean(axis=1))
    return parts


def _data_scores(group: ChannelGroup, criterion: str, moments: dict) -> list[np.ndarray]:
    parts = []
    for c in consumer_inputs(group):
        stats = moments.get(c.x.name)
        if stats is None:
            continue
        xpos = group.positions[(c.x.name, c.x_axis)]
        if criterion == "activation":
            parts.append(stats.mean_abs[xpos].mean(axis=1))
            continue
        wpos = group.positions[(c.weight.name, c.weight_axis)]
        if wpos.shape != xpos.shape:
            continue
        w = c.weight_matrix().reshape(-1, c.weight.values.shape[c.weight_axis], c.taps())
        if criterion == "wanda":
            col = np.abs(w).sum(axis=(0, 2))
            parts.append((col[wpos] * np.sqrt(stats.mean_square[xpos])).sum(axis=1))
        else:
            col = np.square(w).sum(axis=(0, 2))
            parts.append((col[wpos] * stats.variance[xpos]).sum(axis=1))
    return parts
