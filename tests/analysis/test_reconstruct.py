"""Least-squares consumer refit and bias compensation (graphc.passes.prune.reconstruct) against direct
numpy least squares: on explicit data, and end to end through prune on a tiny Conv graph."""
from __future__ import annotations

import numpy as np
import pytest

from graphc.passes.prune.reconstruct import removed_features, solve
from graphc.calib.data import IterableSource
from graphc.passmanager import PassManager
from support import node_named, run
from nets import Net, image


def _augmented(p: np.ndarray) -> np.ndarray:
    pa = np.concatenate([p, np.ones((p.shape[0], 1))], axis=1)
    return pa.T @ pa / p.shape[0]


def _lstsq(p_kept: np.ndarray, y: np.ndarray, prior: np.ndarray | None = None, ridge: float = 0.0):
    """argmin_W,b mean ||y - W p - b||^2 + ridge ||W - prior||^2 (b free), by augmented lstsq."""
    n, f = p_kept.shape
    design = np.concatenate([p_kept, np.ones((n, 1))], axis=1) / np.sqrt(n)
    target = y / np.sqrt(n)
    if ridge:
        design = np.concatenate([design, np.sqrt(ridge) * np.eye(f, f + 1)])
        target = np.concatenate([target, np.sqrt(ridge) * prior.T])
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    return coef[:-1].T, coef[-1]


def _shrink(p_kept: np.ndarray) -> float:
    """The ridge graphc uses with damping=0: mean kept-feature variance * F / N."""
    n, f = p_kept.shape
    return float(np.trace(np.cov(p_kept.T, bias=True))) / f * (f / n)


def _correlated(rng, n: int, f: int) -> np.ndarray:
    mix = rng.standard_normal((f, f)) * 0.5 + np.eye(f)
    return rng.standard_normal((n, f)) @ mix + rng.normal(0.5, 1.0, f)


def test_refit_equals_numpy_least_squares():
    rng = np.random.default_rng(0)
    p = _correlated(rng, 4000, 12)
    w, b = rng.standard_normal((5, 12)), rng.standard_normal(5)
    removed = np.array([1, 4, 5, 9])
    keep = np.setdiff1d(np.arange(12), removed)
    new, delta, before, after = solve(w, _augmented(p), removed, b, damping=0.0)
    want_w, want_b = _lstsq(p[:, keep], p @ w.T + b)
    np.testing.assert_allclose(new[:, keep], want_w, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(b + delta, want_b, rtol=1e-8, atol=1e-8)
    assert not new[:, removed].any()
    # the estimated error is the measured one
    y, got = p @ w.T + b, p[:, keep] @ want_w.T + want_b
    power = np.mean(np.sum(y * y, axis=1))
    assert after == pytest.approx(np.sqrt(np.mean(np.sum((y - got) ** 2, axis=1)) / power), rel=1e-6)
    dropped = p[:, removed] @ w[:, removed].T
    assert before == pytest.approx(np.sqrt(np.mean(np.sum(dropped ** 2, axis=1)) / power), rel=1e-6)
    assert after < before


def test_few_samples_shrink_the_refit_toward_the_kept_weights():
    rng = np.random.default_rng(5)
    p = _correlated(rng, 40, 30)                       # 40 samples for 26 kept features
    w, b = rng.standard_normal((4, 30)), rng.standard_normal(4)
    removed = np.array([2, 7, 11, 19])
    keep = np.setdiff1d(np.arange(30), removed)
    new, delta, _, _ = solve(w, _augmented(p), removed, b, damping=0.0, samples=40)
    want_w, want_b = _lstsq(p[:, keep], p @ w.T + b, w[:, keep], _shrink(p[:, keep]))
    np.testing.assert_allclose(new[:, keep], want_w, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(b + delta, want_b, rtol=1e-7, atol=1e-8)
    exact, _, _, _ = solve(w, _augmented(p), removed, b, damping=0.0)
    assert np.linalg.norm(new[:, keep] - w[:, keep]) < np.linalg.norm(exact[:, keep] - w[:, keep])


def test_bias_compensation_alone_adds_the_mean_of_what_was_removed():
    rng = np.random.default_rng(1)
    p = _correlated(rng, 2000, 6)
    w = rng.standard_normal((3, 6))
    removed = np.array([0, 3])
    new, delta, _, _ = solve(w, _augmented(p), removed, refit=False)
    np.testing.assert_allclose(new[:, [1, 2, 4, 5]], w[:, [1, 2, 4, 5]])
    np.testing.assert_allclose(delta, w[:, removed] @ p[:, removed].mean(axis=0), rtol=1e-10)


def test_ridge_keeps_collinear_and_dead_features_finite():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((500, 3))
    p = np.concatenate([base, base[:, :1], np.zeros((500, 1)), base[:, 1:2] * 2], axis=1)   # 6 features
    w = rng.standard_normal((4, 6))
    new, delta, _, after = solve(w, _augmented(p), np.array([1]), damping=1e-6, samples=500)
    assert np.isfinite(new).all() and np.isfinite(delta).all()
    assert after < 0.05                       # feature 1 is predicted by feature 5
    new0, _, _, _ = solve(w, _augmented(p), np.array([1]), damping=0.0)   # singular: still solved
    assert np.isfinite(new0).all()


def test_removed_features_are_every_tap_of_a_channel():
    class Conv:
        def taps(self):
            return 9
    assert removed_features(Conv(), np.array([0, 2])).tolist() == list(range(9)) + list(range(18, 27))


def _im2col(x: np.ndarray, k: int = 3, pad: int = 1) -> np.ndarray:
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    rows = []
    for i in range(h):
        for j in range(w):
            rows.append(xp[:, :, i:i + k, j:j + k].reshape(n, -1))
    return np.stack(rows, axis=1).reshape(-1, c * k * k)


def test_prune_refits_a_padded_conv_like_numpy_least_squares_on_im2col():
    net = Net(4)
    x = image(net, c=3, hw=6, n=2)
    h = net.node("Relu", [net.conv(x, 3, 8, name="c1")], name="act")
    model = net.model(net.conv(h, 8, 5, name="c2"))
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((2, 3, 6, 6)).astype(np.float32)} for _ in range(40)]
    original = model.copy()
    record = PassManager("prune{ratio=0.5 round-to=1 damping=0 rounds=0}",
                         data=IterableSource(feeds)).run(model).records[0]
    (group,) = [d for d in record.details if "removed" in d]
    keep = np.setdiff1d(np.arange(8), group["removed"])
    probe = original.copy()
    probe.graph.outputs.append(next(t for t in probe.graph.tensors().values() if t.name == "act"))
    acts = np.concatenate([run(probe, f)[1] for f in feeds]).astype(np.float64)
    c2 = node_named(original, "c2")
    w, b = c2.inputs[1].values.reshape(5, -1).astype(np.float64), c2.inputs[2].values.astype(np.float64)
    patches, kept = _im2col(acts), _im2col(acts[:, keep])
    prior = w.reshape(5, 8, 9)[:, keep].reshape(5, -1)
    want_w, want_b = _lstsq(kept, patches @ w.T + b, prior, _shrink(kept))
    new = node_named(model, "c2")
    np.testing.assert_allclose(new.inputs[1].values.reshape(5, -1), want_w, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(new.inputs[2].values, want_b, rtol=2e-4, atol=2e-5)
    assert record.stats["refit"] == 1
