"""The test-net builder: tiny ONNX graphs built layer by layer with onnx.helper and seeded random
weights (the channel-analysis tests, and the prune models of ``passes/prune_nets.py``)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.ir import Model


class Net:
    """Append nodes; ``model(outputs)`` returns a loaded graphc Model.

    Weights are random (seeded); BatchNorm statistics and biases are non-zero on purpose so that
    masked channels carry non-zero constants downstream (what removal must fold).
    """

    def __init__(self, seed: int = 0, opset: int = 13):
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.count = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.count}"

    def input(self, name: str, shape, dtype=TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, list(shape)))
        return name

    def const(self, value, base: str = "c") -> str:
        name = self.name(base)
        value = np.asarray(value)
        if value.dtype == np.float64:
            value = value.astype(np.float32)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def weight(self, *shape, scale: float = 0.5) -> str:
        return self.const(self.rng.standard_normal(shape).astype(np.float32) * scale, "w")

    def node(self, op: str, inputs, n_out: int = 1, domain: str = "", name: str | None = None, **attrs):
        name = name or self.name(op.lower())
        outs = [f"{name}_out{i}" if n_out > 1 else name for i in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, domain=domain, **attrs))
        return outs if n_out > 1 else outs[0]

    # common layers ------------------------------------------------------------------------------

    def conv(self, x, cin, cout, k=3, pads=None, group=1, bias=True, stride=1, name=None, **attrs):
        w = self.weight(cout, cin // group, k, k, scale=1.0 / np.sqrt(cin // group * k * k))
        ins = [x, w] + ([self.const(self.rng.normal(0, 0.3, cout), "b")] if bias else [])
        p = k // 2 if pads is None else pads
        return self.node("Conv", ins, name=name, kernel_shape=[k, k], pads=[p] * 4, group=group,
                         strides=[stride, stride], **attrs)

    def bn(self, x, c, name=None):
        params = [self.const(self.rng.uniform(0.5, 1.5, c), "gamma"),
                  self.const(self.rng.normal(0.3, 0.5, c), "beta"),
                  self.const(self.rng.normal(0, 0.2, c), "mean"),
                  self.const(self.rng.uniform(0.5, 1.5, c), "var")]
        return self.node("BatchNormalization", [x] + params, name=name)

    def relu(self, x):
        return self.node("Relu", [x])

    def cbr(self, x, cin, cout, **kw):
        return self.relu(self.bn(self.conv(x, cin, cout, **kw), cout))

    def matmul(self, x, k, n, bias=True, name=None):
        y = self.node("MatMul", [x, self.weight(k, n, scale=1.0 / np.sqrt(k))], name=name)
        if bias:
            y = self.node("Add", [y, self.const(self.rng.normal(0, 0.3, n), "bias")])
        return y

    def model(self, outputs, opset: int | None = None, shapes: dict | None = None) -> Model:
        """The model; graph outputs get the dtype and shape ONNX inference gives them, or
        ``shapes[name]`` when inference cannot (computed reshapes)."""
        names = [outputs] if isinstance(outputs, str) else list(outputs)
        imports = [helper.make_opsetid("", opset or self.opset)]
        if any(n.domain for n in self.nodes):
            imports += [helper.make_opsetid(d, 1) for d in sorted({n.domain for n in self.nodes if n.domain})]
        graph = helper.make_graph(self.nodes, "tiny", self.inputs, [], self.inits)
        graph.value_info.extend(helper.make_empty_tensor_value_info(o) for o in names)
        proto = helper.make_model(graph, opset_imports=imports)
        proto.ir_version = 8
        inferred = {vi.name: vi for vi in onnx.shape_inference.infer_shapes(proto).graph.value_info}
        del proto.graph.value_info[:]
        for o in names:
            vi = inferred.get(o)
            if shapes and o in shapes:
                vi = helper.make_tensor_value_info(o, TensorProto.FLOAT, list(shapes[o]))
            proto.graph.output.append(vi if vi is not None and vi.type.tensor_type.HasField("shape")
                                      else helper.make_tensor_value_info(o, TensorProto.FLOAT, None))
        return graphc.load(proto)


def image(net: Net, c: int = 3, hw: int = 8, n: int = 1) -> str:
    return net.input("x", (n, c, hw, hw))
