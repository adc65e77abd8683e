"""Repairing a consumer whose input channels were removed: least-squares refit and bias compensation.

A consumer is ``y = W p + b`` with ``p`` its input features: a Gemm/MatMul's input row, or a
Conv's receptive field flattened channel-major ``(Cin, k1, k2, ...)`` (im2col, zero padding
included), so ``W`` is ``W.reshape(Cout, -1)``. Pruning removes the features ``R`` (every tap of
every removed channel) and keeps ``K``. Over the calibration data, with ``mu = E p`` and the
covariance ``C = E[(p - mu)(p - mu)^T]`` (from the augmented moment ``[[E p p^T, mu], [mu^T, 1]]``,
:class:`graphc.calib.moments.Layout` with ``affine=True``), the repaired layer ``y' = W' p_K + b'``
minimizes ``E ||W p + b - W' p_K - b'||^2``:

- for any ``W'`` the best bias is ``b' = b + W mu - W' mu_K``: the mean of the lost part;
- substituting, the error is ``tr(W C W^T) - 2 tr(W C_{:K} W'^T) + tr(W' C_KK W'^T)``; with a
  ridge ``lambda ||W' - W_K||^2`` pulling toward the unrepaired kept weights it is minimal at

      W' = (W C_{:K} + lambda W_K) (C_KK + lambda I)^-1   = W_K + W_R C_RK C_KK^-1   (lambda = 0),

  the kept weights plus the linear prediction of the removed features from the kept ones
  (He et al. 2017, ThiNet). ``lambda = tr(C_KK)/|K| * (damping + |K| / N)``, N the samples
  (rows) averaged: scale-free, well posed when kept features are collinear or dead, and strong
  when a layer has few samples per feature (a classifier after pooling sees one row per image),
  where exact least squares would fit the calibration set and not generalize; as ``lambda``
  grows the refit falls back to bias compensation alone;
- hence ``b' - b = W_R mu_R + (W_K - W') mu_K``: the first term is FLAP's bias compensation (the
  only correction when ``refit=False``, ``W' = W_K``), the second is what the refit absorbed.

The reported errors are relative to the layer's output power ``E ||W p + b||^2``: ``before`` drops
``R`` with no repair (``tr(W_R S_RR W_R^T)``, S the uncentred moment), ``after`` is the repaired
residual ``tr(D C D^T)`` with ``D = [W_K - W', W_R]``. Both are estimates on the calibration data with the original inputs:
upstream layers are pruned too, which the model's measured error includes and these do not.

Refinement (:func:`refit_to_original`). The fit above sees the original model's inputs, but in
the pruned model the kept inputs ``x'`` come from pruned, refitted layers too, and errors add up
with depth. A refinement fits a repaired layer again, from the pruned model's own input ``x'`` to
the original layer's output ``y`` (He et al. 2017: pruned inputs, original outputs):
``[W'; b'] = argmin E ||y - W' x' - b'||^2``, the same centred solve on ``C_{x'x'}`` with
``C_{x'y}`` from the cross moments of both models on the same data, shrunk toward the layer's
current weights
(:func:`graphc.calib.moments.cross_moments`). The pass refits layers level by level (a layer after
every repaired layer upstream of it), one run of both models per level: refitting all layers at
once from one run (a Jacobi sweep) over-corrects - each layer compensates upstream errors that the
upstream layers remove in the same sweep - and was measured worse than no refinement.

Memory: one ``(F + 1)^2`` float64 moment per consumer (``F`` features), accumulated over the data
by :func:`graphc.calib.moments.second_moments`; consumers are measured in batches whose moments fit
in ``memory_bytes`` (one onnxruntime session per batch). Activations are never stored.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from graphc.passes.prune.importance import ConsumerInput
from graphc.calib.moments import Layout, cross_moments, second_moments
from graphc.ir.padding import explicit_pads
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
        return layer_weight(self.consumer, self.matrix)


def layer_weight(consumer: ConsumerInput, matrix: np.ndarray) -> np.ndarray:
    """A (outputs x features) matrix as ``consumer``'s weight, in its layout, shape and dtype."""
    c = consumer
    dtype = c.weight.values.dtype
    if c.kind == "conv":
        return matrix.reshape(c.weight.values.shape).astype(dtype)
    if c.kind == "gemm":
        matrix = matrix / float(c.node.attrs.get("alpha", 1.0))
        return (matrix if c.node.attrs.get("transB", 0) else matrix.T).astype(dtype)
    return matrix.T.astype(dtype)


def current_intercept(consumer: ConsumerInput) -> np.ndarray:
    """The consumer's own output offset: Conv bias, Gemm ``beta * C``, 0 for MatMul."""
    b = _bias(consumer)
    return b if b is not None else np.zeros(consumer.weight_matrix().shape[0])


def solve(w: np.ndarray, moment: np.ndarray, removed: np.ndarray, b: np.ndarray | None = None, *,
          refit: bool = True, damping: float = DEFAULT_DAMPING,
          samples: int | None = None) -> tuple[np.ndarray, np.ndarray, float, float]:
    """``(W', bias delta, error before, error after)`` for ``W`` (outputs x F) and the augmented
    moment (F+1 x F+1) over ``samples`` rows when features ``removed`` go (module docstring).
    ``W'`` is full width with zero columns at ``removed``."""
    f = w.shape[1]
    s, mu = moment[:f, :f], moment[:f, f]
    cov = s - np.outer(mu, mu)
    keep = np.setdiff1d(np.arange(f), removed)
    new = np.zeros_like(w)
    new[:, keep] = w[:, keep]
    if refit and keep.size:
        ckk = cov[np.ix_(keep, keep)]
        new[:, keep] = shrunk_solve(ckk, w @ cov[:, keep], w[:, keep], damping, samples)
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


def ridge_strength(cov: np.ndarray, damping: float, samples: int | None) -> float:
    """``lambda = tr(C) / F * (damping + F / samples)``: relative to the mean feature variance, and
    stronger when there are few samples per feature (``F / samples``; 0 when unknown)."""
    f = cov.shape[0]
    scale = max(float(np.trace(cov)) / max(f, 1), 1e-12)
    return scale * (damping + (f / samples if samples else 0.0))


def shrunk_solve(cov: np.ndarray, cross: np.ndarray, prior: np.ndarray, damping: float,
                 samples: int | None) -> np.ndarray:
    """``argmin_W  tr(W C W^T) - 2 tr(W cross^T) + lambda ||W - prior||^2``
    ``= (cross + lambda prior)(C + lambda I)^-1``: least squares shrunk toward ``prior``."""
    ridge = ridge_strength(cov, damping, samples)
    return _ridge_solve(cov, cross + ridge * prior, ridge)


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
    info = shapes.get(consumer.x.name)
    spatial = info.shape[2:] if info is not None and info.shape is not None else None
    pads = explicit_pads(node, kernel, spatial)
    if isinstance(pads, str):
        return pads
    layout = Layout.conv(kernel, node.attrs.get("strides"), pads, node.attrs.get("dilations"))
    return dataclasses.replace(layout, affine=True)


def refit_consumers(model, data, jobs: list[tuple[ConsumerInput, Layout, np.ndarray]], *,
                    refit: bool = True, damping: float = DEFAULT_DAMPING,
                    memory_bytes: int = DEFAULT_MEMORY) -> list[Refit]:
    """Measure the input moments of every consumer in ``jobs`` (``(consumer, layout, removed input
    channels)``) on ``data`` with ``model`` (the model before removal) and solve each refit."""
    out = []
    for batch in _batches(jobs, memory_bytes):
        requests = {i: (c.x.name, layout) for i, (c, layout, _) in batch}
        counts: dict = {}
        moments = second_moments(model, data, requests, counts)
        for i, (c, _, channels) in batch:
            w = c.weight_matrix()
            b = _bias(c)
            new, delta, before, after = solve(w, moments[i], removed_features(c, channels), b,
                                              refit=refit, damping=damping, samples=counts[i])
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


def _batches(items, memory_bytes: int, size=lambda job: (job[0].weight_matrix().shape[1] + 1, 0)):
    """``(index, item)`` lists whose moments (``f x (f + extra)`` float64 each) fit in memory."""
    batch, used = [], 0
    for i, item in enumerate(items):
        f, extra = size(item)
        need = 8 * f * (f + extra)
        if batch and used + need > memory_bytes:
            yield batch
            batch, used = [], 0
        batch.append((i, item))
        used += need
    if batch:
        yield batch


@dataclass
class RefineJob:
    """A repaired layer of the pruned model, fitted again to the original layer's output."""

    consumer: ConsumerInput     # in the pruned graph (its current, pruned weights)
    layout: Layout              # its input's samples (affine)
    target: str                 # the layer's output tensor in the original model
    rows: np.ndarray            # original output channels the layer kept
    intercept: np.ndarray       # its current output offset on those rows (bias, beta * C, or the Add)


def refit_to_original(pruned, original, data, jobs: list[RefineJob], *, damping: float = DEFAULT_DAMPING,
                      memory_bytes: int = DEFAULT_MEMORY) -> list[tuple[RefineJob, np.ndarray, np.ndarray, float]]:
    """One refinement round (module docstring): ``(job, W' (outputs x features), new intercept,
    relative residual)`` per job, from one run of ``pruned`` and ``original`` over ``data``."""
    out = []
    for batch in _batches(jobs, memory_bytes, lambda job: (job.consumer.weight_matrix().shape[1] + 1,
                                                            len(job.rows))):
        out.extend(_refine_batch(pruned, original, data, [job for _, job in batch], damping))
    return out


def _refine_batch(pruned, original, data, jobs: list[RefineJob], damping: float) -> list:
    if not jobs:
        return []
    requests = {}
    for i, job in enumerate(jobs):
        y_layout = Layout.channels() if job.consumer.kind == "conv" else Layout(axis=-1)
        requests[i] = (job.consumer.x.name, job.layout, job.target, y_layout)
    moments = cross_moments(pruned, original, data, requests)
    out = []
    for i, job in enumerate(jobs):
        sxx, sxy, yy, samples = moments.pop(i)
        sxy, yy = sxy[:, job.rows], yy[job.rows]
        f = sxx.shape[0] - 1
        mu_x, mu_y = sxx[:f, f], sxy[f]
        cxx = sxx[:f, :f] - np.outer(mu_x, mu_x)
        cxy = sxy[:f] - np.outer(mu_x, mu_y)
        w = shrunk_solve(cxx, cxy.T, job.consumer.weight_matrix(), damping, samples)
        b = mu_y - w @ mu_x
        theta = np.concatenate([w.T, b[None, :]])
        power = float(yy.sum())
        residual = power - 2.0 * float(np.sum(theta * sxy)) + float(np.sum((sxx @ theta) * theta))
        out.append((job, w, b, float(np.sqrt(max(residual, 0.0) / power)) if power > 0 else 0.0))
    return out
