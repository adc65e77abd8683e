"""Tiny CNNs for the prune tests, built with onnx.helper: conv/BN/ReLU chains with a residual add,
a Flatten->Gemm head or a MatMul+Add head. Weights are seeded and scaled like trained ones."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.ir import Model


class Net:
    """Append layers; ``model(y)`` returns a loaded graphc Model with declared output shapes."""

    def __init__(self, seed: int = 0, shape=(2, 3, 8, 8), dynamic: bool = False):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.count = [], [], 0
        dims = ["N", shape[1], "H", "W"] if dynamic else list(shape)
        self.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)]

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def const(self, value, base: str = "c") -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def node(self, op, inputs, name=None, **attrs) -> str:
        name = name or self.name(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [name], name=name, **attrs))
        return name

    def conv(self, x, cin, cout, k=3, bias=True, stride=1, group=1, name=None) -> str:
        w = self.rng.standard_normal((cout, cin // group, k, k)) / np.sqrt(cin // group * k * k)
        ins = [x, self.const(w, "w")] + ([self.const(self.rng.normal(0, 0.2, cout), "b")] if bias else [])
        return self.node("Conv", ins, name=name, kernel_shape=[k, k], pads=[k // 2] * 4,
                         strides=[stride, stride], group=group)

    def bn(self, x, c, name=None) -> str:
        params = [self.const(self.rng.uniform(0.2, 1.5, c), "gamma"), self.const(self.rng.normal(0.2, 0.3, c), "beta"),
                  self.const(self.rng.normal(0, 0.2, c), "mean"), self.const(self.rng.uniform(0.5, 1.5, c), "var")]
        return self.node("BatchNormalization", [x] + params, name=name)

    def relu(self, x) -> str:
        return self.node("Relu", [x])

    def cbr(self, x, cin, cout, name, **kw) -> str:
        return self.relu(self.bn(self.conv(x, cin, cout, name=name, **kw), cout, name=f"{name}.bn"))

    def gap_gemm(self, x, c, classes=10, name="fc") -> str:
        flat = self.node("Flatten", [self.node("GlobalAveragePool", [x])], axis=1)
        w = self.rng.standard_normal((classes, c)) / np.sqrt(c)
        return self.node("Gemm", [flat, self.const(w, "fc_w"), self.const(self.rng.normal(0, 0.1, classes), "fc_b")],
                         name=name, transB=1)

    def model(self, y: str, opset: int = 13) -> Model:
        graph = helper.make_graph(self.nodes, "net", self.inputs, [helper.make_empty_tensor_value_info(y)],
                                  self.inits)
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        proto.ir_version = 8
        inferred = onnx.shape_inference.infer_shapes(proto).graph
        out = next((vi for vi in list(inferred.value_info) + list(inferred.output) if vi.name == y), None)
        proto.graph.output[0].CopyFrom(out if out is not None and out.type.tensor_type.HasField("shape")
                                       else helper.make_tensor_value_info(y, TensorProto.FLOAT, None))
        return graphc.load(proto)


def resnetish(seed: int = 0, width: int = 16, dynamic: bool = False, bn: bool = True) -> Model:
    """stem (3->w) -> residual block (w->w->w, add) -> conv (w->2w, stride 2) -> GAP -> Gemm."""
    n = Net(seed, dynamic=dynamic)
    layer = n.cbr if bn else (lambda x, cin, cout, name, **kw: n.relu(n.conv(x, cin, cout, name=name, **kw)))
    h = layer("x", 3, width, "stem")
    r = layer(h, width, width, "b1")
    r = n.conv(r, width, width, name="b2")
    h = n.relu(n.node("Add", [h, r]))
    h = layer(h, width, 2 * width, "down", stride=2)
    return n.model(n.gap_gemm(h, 2 * width))


def conv_matmul(seed: int = 0, width: int = 16) -> Model:
    """conv -> relu -> GAP -> Flatten -> MatMul (+ Add bias) -> relu -> MatMul: a MatMul consumer."""
    n = Net(seed)
    h = n.relu(n.conv("x", 3, width, name="c1"))
    flat = n.node("Flatten", [n.node("GlobalAveragePool", [h])], axis=1)
    w1 = n.rng.standard_normal((width, 24)) / np.sqrt(width)
    h = n.node("Add", [n.node("MatMul", [flat, n.const(w1, "m1")], name="mm1"),
                       n.const(n.rng.normal(0, 0.1, 24), "m1b")])
    h = n.relu(h)
    w2 = n.rng.standard_normal((24, 10)) / np.sqrt(24)
    return n.model(n.node("MatMul", [h, n.const(w2, "m2")], name="mm2"))


def feeds(model: Model, n: int = 8, seed: int = 0, batch: int = 2) -> list[dict[str, np.ndarray]]:
    """``n`` feeds of ``batch`` images for a Net model (dynamic dims: 8x8)."""
    rng = np.random.default_rng(seed)
    shape = (batch, 3, 8, 8)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]
