"""moments: Layout(affine=True) (augmented moments with E x), channel_moments (per-channel
E|x|, E x, E x^2) and cross_moments (E[x y^T] between two models) against numpy on a tiny model."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.calib.moments import Layout, channel_moments, cross_moments, second_moments
from graphc.errors import DataError
from support import make_model


def _model():
    w = np.random.default_rng(0).standard_normal((4, 3, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["h"], name="c"), helper.make_node("Relu", ["h"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 5, 5])], [numpy_helper.from_array(w, "w")])
    return graphc.load(make_model(graph)), w


def test_affine_layout_appends_a_constant_one():
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 5)).astype(np.float32)
    layout = dataclasses.replace(Layout.conv((3, 3), pads=(1, 1, 1, 1)), affine=True)
    rows = np.concatenate(list(layout.rows(x)))
    plain = np.concatenate(list(Layout.conv((3, 3), pads=(1, 1, 1, 1)).rows(x)))
    assert layout.features(x.shape) == 28 and rows.shape == (50, 28)
    np.testing.assert_array_equal(rows[:, :-1], plain)
    assert np.all(rows[:, -1] == 1)


def test_channel_moments_match_numpy():
    model, w = _model()
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.standard_normal((2, 3, 5, 5)).astype(np.float32)} for _ in range(3)]
    got = channel_moments(model, feeds, {"h": 1, "y": 1, "x": 1})
    h = np.concatenate([np.einsum("oc,nchw->nohw", w[:, :, 0, 0], f["x"]) for f in feeds]).astype(np.float64)
    y = np.maximum(h, 0)
    for name, value in (("h", h), ("y", y)):
        m = got[name]
        np.testing.assert_allclose(m.mean, value.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m.mean_abs, np.abs(value).mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m.mean_square, (value ** 2).mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m.variance, value.var(axis=(0, 2, 3)), rtol=1e-4, atol=1e-6)
        assert m.count == 150
    aug = second_moments(model, feeds, {"k": ("y", dataclasses.replace(Layout.channels(), affine=True))})["k"]
    np.testing.assert_allclose(aug[:4, 4], got["y"].mean, rtol=1e-6)
    np.testing.assert_allclose(np.diag(aug)[:4], got["y"].mean_square, rtol=1e-6)
    assert aug[4, 4] == 1.0


def test_cross_moments_pair_a_conv_input_with_its_output():
    model, w = _model()
    rng = np.random.default_rng(3)
    feeds = [{"x": rng.standard_normal((2, 3, 5, 5)).astype(np.float32)} for _ in range(2)]
    layout = dataclasses.replace(Layout.conv((1, 1)), affine=True)
    xx, xy, yy, n = cross_moments(model, model, feeds, {"k": ("x", layout, "h", Layout.channels())})["k"]
    assert n == 100
    x = np.concatenate([f["x"] for f in feeds]).transpose(0, 2, 3, 1).reshape(-1, 3).astype(np.float64)
    xa = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    y = x @ w[:, :, 0, 0].T.astype(np.float64)
    np.testing.assert_allclose(xx, xa.T @ xa / len(x), rtol=1e-6)
    np.testing.assert_allclose(xy, xa.T @ y / len(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(yy, (y * y).mean(axis=0), rtol=1e-5)


def test_cross_moments_refuse_layouts_of_different_lengths():
    model, _ = _model()
    feeds = [{"x": np.zeros((2, 3, 5, 5), np.float32)}]
    with pytest.raises(DataError, match="different numbers of samples"):
        cross_moments(model, model, feeds, {"k": ("x", Layout.conv((3, 3)), "h", Layout.channels())})
