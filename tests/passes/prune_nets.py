"""Tiny CNNs for the prune tests, built with the test-net builder (:class:`nets.Net`): conv/BN/ReLU
chains with a residual add, a Flatten->Gemm head or a MatMul+Add head. Weights are seeded and
scaled like trained ones; the draws and names below are the prune tests' own (their numbers depend
on them), so these layers are written out here rather than taken from ``Net``'s."""
from __future__ import annotations

import numpy as np

from graphc.ir import Model
from nets import Net


def _net(seed: int, shape=(2, 3, 8, 8), dynamic: bool = False) -> Net:
    n = Net(seed)
    n.input("x", ["N", shape[1], "H", "W"] if dynamic else list(shape))
    return n


def _conv(n: Net, x, cin, cout, k=3, bias=True, stride=1, group=1, name=None) -> str:
    w = n.rng.standard_normal((cout, cin // group, k, k)) / np.sqrt(cin // group * k * k)
    ins = [x, n.const(w, "w_")] + ([n.const(n.rng.normal(0, 0.2, cout), "b_")] if bias else [])
    return n.node("Conv", ins, name=name, kernel_shape=[k, k], pads=[k // 2] * 4,
                  strides=[stride, stride], group=group)


def _bn(n: Net, x, c, name=None) -> str:
    params = [n.const(n.rng.uniform(0.2, 1.5, c), "gamma_"), n.const(n.rng.normal(0.2, 0.3, c), "beta_"),
              n.const(n.rng.normal(0, 0.2, c), "mean_"), n.const(n.rng.uniform(0.5, 1.5, c), "var_")]
    return n.node("BatchNormalization", [x] + params, name=name)


def _cbr(n: Net, x, cin, cout, name, **kw) -> str:
    return n.relu(_bn(n, _conv(n, x, cin, cout, name=name, **kw), cout, name=f"{name}.bn"))


def _head(n: Net, x, c, classes=10, name="fc") -> str:
    """GlobalAveragePool -> Flatten -> Gemm (transB) to ``classes`` outputs."""
    flat = n.node("Flatten", [n.node("GlobalAveragePool", [x])], axis=1)
    w = n.rng.standard_normal((classes, c)) / np.sqrt(c)
    return n.node("Gemm", [flat, n.const(w, "fc_w_"), n.const(n.rng.normal(0, 0.1, classes), "fc_b_")],
                  name=name, transB=1)


def resnetish(seed: int = 0, width: int = 16, dynamic: bool = False, bn: bool = True) -> Model:
    """stem (3->w) -> residual block (w->w->w, add) -> conv (w->2w, stride 2) -> GAP -> Gemm."""
    n = _net(seed, dynamic=dynamic)
    if bn:
        def layer(x, cin, cout, name, **kw):
            return _cbr(n, x, cin, cout, name, **kw)
    else:
        def layer(x, cin, cout, name, **kw):
            return n.relu(_conv(n, x, cin, cout, name=name, **kw))
    h = layer("x", 3, width, "stem")
    r = layer(h, width, width, "b1")
    r = _conv(n, r, width, width, name="b2")
    h = n.relu(n.node("Add", [h, r]))
    h = layer(h, width, 2 * width, "down", stride=2)
    return n.model(_head(n, h, 2 * width))


def conv_matmul(seed: int = 0, width: int = 16) -> Model:
    """conv -> relu -> GAP -> Flatten -> MatMul (+ Add bias) -> relu -> MatMul: a MatMul consumer."""
    n = _net(seed)
    h = n.relu(_conv(n, "x", 3, width, name="c1"))
    flat = n.node("Flatten", [n.node("GlobalAveragePool", [h])], axis=1)
    w1 = n.rng.standard_normal((width, 24)) / np.sqrt(width)
    h = n.node("Add", [n.node("MatMul", [flat, n.const(w1, "m1_")], name="mm1"),
                       n.const(n.rng.normal(0, 0.1, 24), "m1b_")])
    h = n.relu(h)
    w2 = n.rng.standard_normal((24, 10)) / np.sqrt(24)
    return n.model(n.node("MatMul", [h, n.const(w2, "m2_")], name="mm2"))


def feeds(model: Model, n: int = 8, seed: int = 0, batch: int = 2) -> list[dict[str, np.ndarray]]:
    """``n`` feeds of ``batch`` images for a Net model (dynamic dims: 8x8)."""
    rng = np.random.default_rng(seed)
    shape = (batch, 3, 8, 8)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]
