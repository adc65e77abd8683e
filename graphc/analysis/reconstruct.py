"""Repairing a consumer whose input channels were removed: least-squares refit and bias compensation.

A consumer is ``y = W p + b`` with ``p`` its input features: a Gemm/MatMul's input row, or a
Conv's receptive field flattened channel-major ``(Cin, k1, k2, ...)`` (im2col, zero padding
included), so ``W`` is ``W.reshape(Cout, -1)``. Pruning removes the features ``R`` (every tap of
every removed channel) and keeps ``K``. Over the calibration data, with ``mu = E p`` and the
covariance ``C = E[(p - mu)(p - mu)^T]`` (from the augmented moment ``[[E p p^T, mu], [mu^T, 1]]``,
:class:`graphc.calib.moments.Layout` with ``affine=True``), the repaired layer ``y' = W' p_K + b'``
minimizes ``E ||W p + b - W' p_K - b'||^2``:

- for any ``W'`` the best bias is ``b' = b + W mu - W' mu_K``: the mean of the lost part;
- substituting, the error is ``tr(W C W^T) - 2 tr(W C_{:K} W'^T) + tr(W' C_KK W'^T)``, minimal at

      W' = W C_{:K} (C_KK + lambda I)^-1   = W_K + W_R C_RK C_KK^-1   (at lambda = 0),

  the kept weights plus the linear prediction of the removed features from the kept ones
  (He et al. 2017, ThiNet); ``lambda = damping * tr(C_KK) / |K|`` keeps the solve well posed
  when kept features are collinear or dead (a ridge relative to the trace, so it is scale-free);
- hence ``b' - b = W_R mu_R + (W_K - W') mu_K``: the first term is FLAP's bias compensation (the
  only correction when ``refit=False``, ``W' = W_K``), the second is what the refit absorbed.

The reported errors are relative to the layer's output power ``E ||W p + b||^2``: ``before`` drops
``R`` with no repair (``tr(W_R S_RR W_R^T)``, S the uncentred moment), ``after`` is the repaired
residual ``tr(D C D^T)`` with ``D = [W_K - W', W_R]`` (exact for the ridge-free solution, and the
ridge only adds to it). Both are estimates on the calibration data with the original inputs:
upstream layers are pruned too, which the model's measured error includes and these do not.

Memory: one ``(F + 1)^2`` float64 moment per consumer (``F`` features), accumulated over the data
by :func:`graphc.calib.moments.second_moments`; consumers are measured in batches whose moments fit
in ``memory_bytes`` (one onnxruntime session per batch). Activations are never stored.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from graphc.analysis.importance import ConsumerInput
from graphc.calib.moments import Layout, second_moments
from graphc.ir.shapes import TensorInfo

log = logging.getLogger(__name__)

DEFAULT_DAMPING = 1e-3
DEFAULT_MEMORY = 512 * 2**20


@dataclass
class Refit:
    """The repaired consumer: the full-size weight (removed features zero) and bias change."""

    consumer: ConsumerInput
    matrix: np.ndarray          # (outputs, features), float64; columns R are zero
    bias_delta: np.ndarray      # (outputs,)
    error_before: float
    error_after: float

    def weight(self) -> np.ndarray:
        """The new weight in the consumer's own layout and dtype."""
        c = self.consumer
        dtype = c.weight.values.dtype
        m = self.matrix
        if c.kind == "conv":
            return m.reshape(c.weight.values.shape).astype(dtype)
        if c.kind == "gemm":
            alpha = float(c.node.attrs.get("alpha", 1.0))
            m = m / alpha
            return (m if c.node.attrs.get("transB", 0) else m.T).astype(dtype)
        return m.T.astype(dtype)


def solve(w: np.ndarray, moment: np.ndarray, removed: np.ndarray, b: np.ndarray | None = None, *,
          refit: bool = True, damping: float = DEFAULT_DAMPING) -> tuple[np.ndarray, np.ndarray, float, float]:
    """``(W', bias delta, error before, error after)`` for ``W`` (outputs x F) and the augmented
    moment (F+1 x F+1) when features ``removed`` go (see the module docstring). ``W'`` is full
    width with zero columns at ``removed``."""
    f = w.shape[1]
    s, mu = moment[:f, :f], moment[:f, f]
    cov = s - np.outer(mu, mu)
    keep = np.setdiff1d(np.arange(f), removed)
    new = np.zeros_like(w)
    if refit and keep.size:
        ckk = cov[np.ix_(keep, keep)]
        ridge = damping * max(np.trace(ckk) / keep.size, 1e-12)
        rhs = w @ cov[:, keep]
        new[:, keep] = _ridge_solve(ckk, rhs, ridge)
    else:
        new[:, keep] = w[:, keep]
    delta_b = w @ mu - new @ mu
    b = np.zeros(w.shape[0]) if b is None else np.asarray(b, dtype=np.float64)
    power = float(np.sum((w @ s) * w) + 2.0 * b @ (w @ mu) + b @ b)
    if power <= 0:
        return new, delta_b, 0.0, 0.0
    wr = w[:, removed]
    before = float(np.sum((wr @ s[np.ix_(removed, removed)]) * wr))
    d = w - new
    after = float(np.sum((d @ cov) * d))
    return new, delta_b, np.sqrt(max(before, 0.0) / power), np.sqrt(max(after, 0.0) / power)


def _ridge_solve(a: np.ndarray, rhs: np.ndarray, ridge: float) -> np.ndarray:
    """``rhs (a + ridge I)^-1`` for symmetric PSD ``a`` (eigen-decomposition if the solve fails)."""
    a = 0.5 * (a + a.T) + ridge * np.eye(a.shape[0])
    try:
        return np.linalg.solve(a, rhs.T).T
    except np.linalg.LinAlgError:
        vals, vecs = np.linalg.eigh(a)
        vals = np.clip(vals, max(ridge, 1e-300), None)
        return ((rhs @ vecs) / vals) @ vecs.T


def removed_features(consumer: ConsumerInput, channels: np.ndarray) -> np.ndarray:
    """Feature indices of the removed input ``channels`` (every tap of each)."""
    taps = consumer.taps()
    channels = np.asarray(channels, dtype=np.int64)
    return (channels[:, None] * taps + np.arange(taps)[None, :]).reshape(-1)


def consumer_layout(consumer: ConsumerInput, shapes: dict[str, TensorInfo]) -> Layout | str:
    """How the consumer's input features are sampled, or why they cannot be."""
    node = consumer.node
    if consumer.kind != "conv":
        return Layout(axis=-1, affine=True)
    kernel = tuple(int(k) for k in consumer.weight.values.shape[2:])
    pads = _explicit_pads(node, shapes.get(consumer.x.name), kernel)
    if isinstance(pads, str):
        return pads
    layout = Layout.conv(kernel, node.attrs.get("strides"), pads, node.attrs.get("dilations"))
    return dataclasses.replace(layout, affine=True)


def _explicit_pads(node, info: TensorInfo | None, kernel) -> list[int] | str:
    nd = len(kernel)
    auto = node.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto == "VALID":
        return [0] * (2 * nd)
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        return list(node.attrs.get("pads") or [0] * (2 * nd))
    spatial = info.shape[2:] if info is not None and info.shape is not None else None
    if spatial is None or not all(isinstance(d, int) and d > 0 for d in spatial):
        return "auto_pad SAME with an unknown spatial size"
    strides = node.attrs.get("strides") or [1] * nd
    dilations = node.attrs.get("dilations") or [1] * nd
    begins, ends = [], []
    for size, k, st, d in zip(spatial, kernel, strides, dilations):
        total = max(0, (-(-size // st) - 1) * st + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else large)
        ends.append(large if auto == "SAME_UPPER" else small)
    return begins + ends


def refit_consumers(model, data, jobs: list[tuple[ConsumerInput, Layout, np.ndarray]], *,
                    refit: bool = True, damping: float = DEFAULT_DAMPING,
                    memory_bytes: int = DEFAULT_MEMORY) -> list[Refit]:
    """Measure the input moments of every consumer in ``jobs`` (``(consumer, layout, removed input
    channels)``) on ``data`` with ``model`` (the model before removal) and solve each refit."""
    out = []
    for batch in _batches(jobs, memory_bytes):
        requests = {i: (c.x.name, layout) for i, (c, layout, _) in batch}
        moments = second_moments(model, data, requests)
        for i, (c, _, channels) in batch:
            w = c.weight_matrix()
            b = _bias(c)
            new, delta, before, after = solve(w, moments[i], removed_features(c, channels), b,
                                              refit=refit, damping=damping)
            out.append(Refit(c, new, delta, before, after))
            del moments[i]
    return out


def _bias(c: ConsumerInput) -> np.ndarray | None:
    node = c.node
    if c.kind == "matmul" or len(node.inputs) < 3 or not node.inputs[2].name:
        return None
    values = getattr(node.inputs[2], "values", None)
    if values is None:
        return None
    out = c.weight_matrix().shape[0]
    scale = float(node.attrs.get("beta", 1.0)) if c.kind == "gemm" else 1.0
    values = np.asarray(values, dtype=np.float64)
    if values.size not in (1, out):
        return None
    return scale * np.broadcast_to(values.reshape(-1), (out,))


def _batches(jobs, memory_bytes: int):
    batch, used = [], 0
    for i, job in enumerate(jobs):
        c = job[0]
        features = c.weight_matrix().shape[1] + 1
        need = features * features * 8
        if batch and used + need > memory_bytes:
            yield batch
            batch, used = [], 0
        batch.append((i, job))
        used += need
    if batch:
        yield batch
