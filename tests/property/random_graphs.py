"""Random valid ONNX graphs for property tests: Conv/BN/Gemm/MatMul/Add/Mul/Concat/Reshape chains.

A graph is described by a *recipe* (opset, input shape, a list of layer choices, a seed for the
weights, the menu), drawn by :func:`random_recipe` from a seeded numpy generator, and printed with
a failure so it replays exactly; :func:`build_model` turns it into a ``ModelProto`` that passes the
full ONNX checker and runs in onnxruntime.

The layers cover what the passes rewrite and what must stop them: BatchNormalization after
Conv/Gemm/MatMul (fold-bn), per-channel Mul/Add, Identity / no-op Reshape / identity Transpose
(cleanup), constant subexpressions and Shape->Gather->Concat->Reshape chains (fold-constants),
skip connections and intermediate graph outputs (a Conv output read twice must not be folded),
grouped and depthwise Conv, strides, padding, Gemm alpha/beta/transB, rank-2 BatchNormalization.

Weights are scaled like trained ones (std 1/sqrt(fan-in), BN variance in [0.5, 2]), so the
outputs stay O(1) and rtol 1e-5 / atol 1e-6 measures rewrites, not float overflow.

Menus (``MENUS``): a recipe drawn for one pass (``random_recipe(rng, menu="fold-bn")``) picks its
layers from that pass's menu, so the graphs are ones the pass applies to (Conv+BN for fold-bn,
MatMul chains for smooth, low-rank weights for factorize, Conv -> Relu -> Conv for equalize);
``menu="any"`` is the whole distribution above.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: layer kinds by the rank of the current tensor; repeats weight the draw towards what passes fold.
RANK4_LAYERS = ("conv", "conv", "conv_bn", "conv_bn", "conv_bn", "bn", "act", "act", "identity",
                "add_skip", "add_const", "mul_const", "concat", "reshape4", "noop_reshape",
                "transpose", "const_expr", "flatten", "shape_chain", "output")
RANK2_LAYERS = ("gemm", "gemm_bn", "gemm_bn", "matmul", "matmul_bn", "bn", "act", "identity",
                "add_skip", "add_const", "mul_const", "concat", "to_rank4", "output")
OPSETS = (11, 13, 17, 21)


@dataclass(frozen=True)
class Menu:
    """The layers a pass's graphs are drawn from (by the rank of the current tensor)."""

    rank4: tuple[str, ...]
    rank2: tuple[str, ...]
    rank2_share: float = 0.2        # chance that the input is rank 2 (rank 4 when rank4 is empty: never)
    min_layers: int = 1
    min_features: int = 1           # smallest rank-2 input width


#: per pass: layers that pass rewrites, mixed with layers it must step around.
MENUS: dict[str, Menu] = {
    "any": Menu(RANK4_LAYERS, RANK2_LAYERS),
    "cleanup": Menu(("identity", "identity", "noop_reshape", "noop_reshape", "transpose", "conv", "act", "output"),
                    ("identity", "identity", "gemm", "act", "output"), min_layers=3),
    "fold-constants": Menu(("const_expr", "const_expr", "shape_chain", "conv", "act"),
                           ("const_expr", "const_expr", "gemm", "act"), min_layers=2),
    "fold-bn": Menu(("conv_bn", "conv_bn", "conv_bn", "act"), ("gemm_bn", "matmul_bn", "act"), min_layers=2),
    "canonicalize": Menu(("conv", "mul_const", "add_const", "mul_const", "act"),
                         ("gemm", "matmul", "mul_const", "add_const"), min_layers=3),
    "equalize": Menu(("conv", "conv_relu"), (), min_layers=2),
    "smooth": Menu((), ("matmul", "matmul", "gemm"), rank2_share=1.0, min_layers=2),
    "quant": Menu(("conv", "conv_relu"), ("gemm", "matmul", "act"), min_layers=2),
    "factorize": Menu((), ("lowrank_matmul", "lowrank_gemm"), rank2_share=1.0, min_features=8),
    "prune": Menu(("conv", "conv_relu", "conv_bn"), ("gemm", "matmul"), min_layers=3),
    "sparsify": Menu(("conv", "conv_relu", "conv_bn", "act"), ("gemm", "matmul", "act"), min_layers=2),
    "cluster": Menu(("conv", "conv_relu", "conv_bn", "act"), ("gemm", "matmul", "act"), min_layers=2),
    "fp16": Menu(("conv", "conv_relu", "conv_bn", "act", "add_skip", "concat", "transpose", "shape_chain"),
                 ("gemm", "matmul", "act", "add_skip"), min_layers=2),
    "merge-matmuls": Menu((), ("sibling_matmuls", "sibling_matmuls", "sibling_matmuls", "matmul", "act"),
                          rank2_share=1.0, min_layers=2),
}


@dataclass(frozen=True)
class Recipe:
    opset: int
    shape: tuple[int, ...]          # input shape, rank 4 (NCHW) or rank 2 (NF)
    layers: tuple[tuple[int, int], ...]  # (layer kind, an integer choosing its variant)
    seed: int
    menu: str = "any"               # the key in MENUS the layer kinds index into

    def __str__(self) -> str:
        body = " ".join(f"{k}:{v}" for k, v in self.layers)
        menu = "" if self.menu == "any" else f" menu {self.menu}"
        return f"opset {self.opset} x{list(self.shape)} seed {self.seed}{menu}: {body}"


def random_recipe(rng: np.random.Generator, max_layers: int = 8, menu: str = "any") -> Recipe:
    """A recipe from ``menu`` (property tests, benchmarks, fuzz seeds): a pure function of the
    generator's state, whatever else ran in the process. With ``menu="any"`` the draws are those of
    earlier versions (same generator calls, same order)."""
    m = MENUS[menu]
    opset = int(rng.choice(OPSETS))
    if menu == "any":
        rank2 = rng.integers(0, 5) == 0
    else:
        rank2 = not m.rank4 or (bool(m.rank2) and rng.random() < m.rank2_share)
    if rank2:
        shape = (int(rng.integers(1, 3)), int(rng.integers(m.min_features, 25)))
    else:
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 7)), int(rng.integers(1, 8)), int(rng.integers(1, 8)))
    layers = tuple((int(rng.integers(0, 1001)), int(rng.integers(0, 1001)))
                   for _ in range(int(rng.integers(m.min_layers, max(m.min_layers, max_layers) + 1))))
    return Recipe(opset, shape, layers, int(rng.integers(0, 2**16)), menu)


@dataclass
class _Value:
    name: str
    shape: tuple[int, ...]


class GraphBuilder:
    """Appends layers to a chain, tracking the current tensor's static shape."""

    MAX_CHANNELS = 16
    MAX_FEATURES = 256

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.rng = np.random.default_rng(recipe.seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.count = 0
        self.cur = _Value("x", tuple(recipe.shape))
        self.pool: list[_Value] = [self.cur]
        self.extra_outputs: list[_Value] = []

    # -- naming and emitting ---------------------------------------------------------------

    def _name(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.count}"

    def _const(self, base: str, values: np.ndarray) -> str:
        name = self._name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(values), name))
        return name

    def _node(self, op: str, inputs: list[str], shape: tuple[int, ...], **attrs) -> _Value:
        out = self._name(op.lower() + ".out")
        self.nodes.append(helper.make_node(op, inputs, [out], name=self._name(op.lower()), **attrs))
        value = _Value(out, tuple(int(d) for d in shape))
        self.cur = value
        self.pool.append(value)
        return value

    def _f32(self, *shape, scale=1.0, low=None, high=None) -> np.ndarray:
        if low is not None:
            return self.rng.uniform(low, high, shape).astype(np.float32)
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    # -- building --------------------------------------------------------------------------

    def build(self) -> onnx.ModelProto:
        menu = MENUS[self.recipe.menu]
        for kind, variant in self.recipe.layers:
            names = menu.rank4 if len(self.cur.shape) == 4 else menu.rank2
            names = names or (RANK4_LAYERS if len(self.cur.shape) == 4 else RANK2_LAYERS)
            getattr(self, f"_layer_{names[kind % len(names)]}")(variant)
        outputs = [self.cur] + [v for v in self.extra_outputs if v.name != self.cur.name]
        graph = helper.make_graph(
            self.nodes or [helper.make_node("Identity", ["x"], ["y"], name="only")], "random",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(self.recipe.shape))],
            [helper.make_tensor_value_info(v.name, TensorProto.FLOAT, list(v.shape)) for v in outputs]
            if self.nodes else [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(self.recipe.shape))],
            self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.recipe.opset)],
                                  producer_name="random_graphs")
        model.ir_version = 7 if self.recipe.opset <= 13 else 8 if self.recipe.opset <= 17 else 10
        return model

    # -- rank-4 layers ---------------------------------------------------------------------

    def _layer_conv(self, v: int) -> None:
        n, c, h, w = self.cur.shape
        pad = (v // 2) % 2
        k = 3 if v % 2 and min(h, w) + 2 * pad >= 3 else 1
        pad = pad if k == 3 else 0
        stride = 2 if (v // 4) % 4 == 0 and min(h, w) >= 3 else 1
        if (v // 16) % 3 == 0 and c > 1:  # depthwise, channel multiplier 1 or 2
            group = c
            co = c * 2 if (v // 48) % 2 and 2 * c <= self.MAX_CHANNELS else c
        else:
            group, co = 1, 1 + (v // 48) % 8
        weight = self._f32(co, c // group, k, k, scale=1 / np.sqrt(c // group * k * k))
        inputs = [self.cur.name, self._const("w", weight)]
        if (v // 384) % 2 == 0:
            inputs.append(self._const("b", self._f32(co, scale=0.5)))
        ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        self._node("Conv", inputs, (n, co, ho, wo), kernel_shape=[k, k], pads=[pad] * 4,
                   strides=[stride, stride], group=group)

    def _layer_conv_relu(self, v: int) -> None:
        self._layer_conv(v)
        self._node("Relu", [self.cur.name], self.cur.shape)

    def _layer_conv_bn(self, v: int) -> None:
        self._layer_conv(v)
        self._layer_bn(v // 7)

    def _layer_gemm_bn(self, v: int) -> None:
        self._layer_gemm(v)
        self._layer_bn(v // 7)

    def _layer_matmul_bn(self, v: int) -> None:
        self._layer_matmul(v)
        self._layer_bn(v // 7)

    def _layer_bn(self, v: int) -> None:
        c = self.cur.shape[1]
        params = [self._const("gamma", self._f32(c, low=0.5, high=1.5)),
                  self._const("beta", self._f32(c, scale=0.5)),
                  self._const("mean", self._f32(c, scale=0.5)),
                  self._const("var", self._f32(c, low=0.5, high=2.0))]
        eps = (1e-5, 1e-3, 1e-2)[v % 3]
        self._node("BatchNormalization", [self.cur.name] + params, self.cur.shape, epsilon=eps)

    def _layer_act(self, v: int) -> None:
        op = ("Relu", "Sigmoid", "Tanh", "LeakyRelu")[v % 4]
        attrs = {"alpha": 0.1} if op == "LeakyRelu" else {}
        self._node(op, [self.cur.name], self.cur.shape, **attrs)

    def _layer_identity(self, v: int) -> None:
        self._node("Identity", [self.cur.name], self.cur.shape)

    def _layer_add_skip(self, v: int) -> None:
        partners = [p for p in self.pool[:-1] if p.shape == self.cur.shape]
        if not partners:
            self._layer_add_const(v)
            return
        other = partners[v % len(partners)]
        self._node("Add", [self.cur.name, other.name] if v % 2 else [other.name, self.cur.name], self.cur.shape)

    def _channel_shape(self, v: int) -> tuple[int, ...]:
        c = self.cur.shape[1]
        if v % 3 == 0:
            return ()  # scalar
        return (1, c, 1, 1) if len(self.cur.shape) == 4 else (c,) if v % 3 == 1 else (1, c)

    def _layer_add_const(self, v: int) -> None:
        const = self._const("a", self._f32(*self._channel_shape(v), scale=0.5))
        inputs = [self.cur.name, const] if v % 2 else [const, self.cur.name]
        self._node("Add", inputs, self.cur.shape)

    def _layer_mul_const(self, v: int) -> None:
        const = self._const("m", self._f32(*self._channel_shape(v), low=0.5, high=1.5))
        inputs = [self.cur.name, const] if v % 2 else [const, self.cur.name]
        self._node("Mul", inputs, self.cur.shape)

    def _layer_concat(self, v: int) -> None:
        shape = self.cur.shape
        partners = [p for p in self.pool if len(p.shape) == len(shape) and p.shape[0] == shape[0]
                    and p.shape[2:] == shape[2:]]
        other = partners[v % len(partners)]  # may be the current tensor itself
        limit = self.MAX_CHANNELS if len(shape) == 4 else self.MAX_FEATURES
        if shape[1] + other.shape[1] > limit:
            self._layer_identity(v)
            return
        out = (shape[0], shape[1] + other.shape[1]) + shape[2:]
        self._node("Concat", [self.cur.name, other.name], out, axis=1)

    def _layer_reshape4(self, v: int) -> None:
        n, c, h, w = self.cur.shape
        target = [(n, c * h, w, 1), (n, c, h * w, 1), (n, 1, c * h, w)][v % 3]
        if target[1] > self.MAX_CHANNELS:
            target = (n, c, h, w)
        code = list(target)
        if (v // 3) % 2:
            code[0] = 0  # 0 copies the input dim
        if (v // 6) % 2:
            code[-1] = -1
        self._node("Reshape", [self.cur.name, self._const("shape", np.array(code, np.int64))], target)

    def _layer_noop_reshape(self, v: int) -> None:
        code = list(self.cur.shape)
        if v % 2:
            code[1] = -1
        self._node("Reshape", [self.cur.name, self._const("shape", np.array(code, np.int64))], self.cur.shape)

    def _layer_transpose(self, v: int) -> None:
        n, c, h, w = self.cur.shape
        if v % 2:
            self._node("Transpose", [self.cur.name], (n, c, h, w), perm=[0, 1, 2, 3])
        else:
            self._node("Transpose", [self.cur.name], (n, c, w, h), perm=[0, 1, 3, 2])

    def _layer_const_expr(self, v: int) -> None:
        """Mul by (a + b): a constant subexpression fold-constants evaluates."""
        shape = self._channel_shape(v)
        a = self._const("ca", self._f32(*shape, low=0.25, high=0.75))
        b = self._const("cb", self._f32(*shape, low=0.25, high=0.75))
        keep = self.cur
        s = self._node("Add", [a, b], shape)
        self.pool.remove(s)
        self._node("Mul", [keep.name, s.name], keep.shape)

    def _layer_flatten(self, v: int) -> None:
        n, c, h, w = self.cur.shape
        if c * h * w > self.MAX_FEATURES:
            self._layer_act(v)
            return
        if v % 2:
            self._node("Flatten", [self.cur.name], (n, c * h * w), axis=1)
        else:
            shape = self._const("shape", np.array([n, -1], np.int64))
            self._node("Reshape", [self.cur.name, shape], (n, c * h * w))

    def _layer_shape_chain(self, v: int) -> None:
        """Shape -> Gather(0) -> Unsqueeze -> Concat([-1]) -> Reshape: how exporters flatten."""
        n, c, h, w = self.cur.shape
        if c * h * w > self.MAX_FEATURES:
            self._layer_identity(v)
            return
        src = self.cur
        shape = self._node("Shape", [src.name], (4,))
        batch = self._node("Gather", [shape.name, self._const("idx", np.array(0, np.int64))], (), axis=0)
        if self.recipe.opset >= 13:
            one = self._node("Unsqueeze", [batch.name, self._const("axes", np.array([0], np.int64))], (1,))
        else:
            one = self._node("Unsqueeze", [batch.name], (1,), axes=[0])
        target = self._node("Concat", [one.name, self._const("minus1", np.array([-1], np.int64))], (2,), axis=0)
        for helper_value in (shape, batch, one, target):
            self.pool.remove(helper_value)
        self._node("Reshape", [src.name, target.name], (n, c * h * w))

    def _layer_output(self, v: int) -> None:
        if len(self.extra_outputs) < 2 and self.cur.name != "x":
            self.extra_outputs.append(self.cur)

    # -- rank-2 layers ---------------------------------------------------------------------

    def _layer_gemm(self, v: int) -> None:
        n, f = self.cur.shape
        fo = 1 + v % 32
        trans_b = (v // 32) % 2
        weight = self._f32(*((fo, f) if trans_b else (f, fo)), scale=1 / np.sqrt(f))
        inputs = [self.cur.name, self._const("w", weight)]
        if (v // 64) % 3:
            bias_shape = (fo,) if (v // 64) % 3 == 1 else (1, fo)
            inputs.append(self._const("c", self._f32(*bias_shape, scale=0.5)))
        alpha, beta = ((1.0, 1.0), (0.5, 1.0), (1.0, 2.0))[(v // 192) % 3]
        self._node("Gemm", inputs, (n, fo), transB=trans_b, alpha=alpha, beta=beta)

    def _layer_matmul(self, v: int) -> None:
        n, f = self.cur.shape
        fo = 1 + v % 32
        weight = self._const("w", self._f32(f, fo, scale=1 / np.sqrt(f)))
        self._node("MatMul", [self.cur.name, weight], (n, fo))

    def _layer_sibling_matmuls(self, v: int) -> None:
        """2 or 3 MatMuls reading the current tensor (each with a bias Add or not, by ``v``'s bits),
        concatenated on the feature axis: what merge-matmuls rewrites (attention's Q/K/V)."""
        n, f = self.cur.shape
        x, outs = self.cur, []
        for i in range(2 + v % 2):
            fo = 1 + (v // (2 + i)) % 12
            y = self._node("MatMul", [x.name, self._const("w", self._f32(f, fo, scale=1 / np.sqrt(f)))], (n, fo))
            if (v >> (4 + i)) % 2:
                y = self._node("Add", [y.name, self._const("b", self._f32(fo, scale=0.5))], (n, fo))
            outs.append(y)
        width = sum(o.shape[1] for o in outs)
        self._node("Concat", [o.name for o in outs], (n, width), axis=1)

    def _low_rank(self, rows: int, cols: int, v: int) -> np.ndarray:
        """A rank-r weight (r = 1..3, singular values within a factor 2 of each other) plus noise
        1e-5 of its norm: energy=0.99 keeps exactly the r components, so a factorized layer's
        relative output error is about 1e-5 (100 dB); a chain of them loses part of that (a layer's
        input lies in the previous layer's r-dimensional range, not aligned with its own)."""
        r = min(1 + v % 3, rows, cols)
        left = np.linalg.qr(self.rng.standard_normal((rows, r)))[0]
        right = np.linalg.qr(self.rng.standard_normal((cols, r)))[0]
        sigma = self.rng.uniform(0.5, 1.0, r)
        w = (left * sigma) @ right.T * np.sqrt(cols / np.sum(sigma ** 2))  # outputs of unit variance
        noise = self.rng.standard_normal((rows, cols))
        return (w + noise * 1e-5 * np.linalg.norm(w) / np.linalg.norm(noise)).astype(np.float32)

    def _layer_lowrank_matmul(self, v: int) -> None:
        n, f = self.cur.shape
        fo = 8 + v % 17
        weight = self._const("w", self._low_rank(f, fo, v // 17))
        self._node("MatMul", [self.cur.name, weight], (n, fo))

    def _layer_lowrank_gemm(self, v: int) -> None:
        n, f = self.cur.shape
        fo, trans_b = 8 + v % 17, (v // 17) % 2
        w = self._low_rank(f, fo, v // 34)
        inputs = [self.cur.name, self._const("w", w.T.copy() if trans_b else w)]
        if (v // 102) % 2:
            inputs.append(self._const("c", self._f32(fo, scale=0.5)))
        self._node("Gemm", inputs, (n, fo), transB=trans_b)

    def _layer_to_rank4(self, v: int) -> None:
        n, f = self.cur.shape
        if f > self.MAX_CHANNELS:
            self._layer_act(v)
            return
        self._node("Reshape", [self.cur.name, self._const("shape", np.array([n, f, 1, 1], np.int64))], (n, f, 1, 1))


def build_model(recipe: Recipe) -> onnx.ModelProto:
    return GraphBuilder(recipe).build()


def input_feeds(recipe: Recipe, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal(recipe.shape).astype(np.float32)}
