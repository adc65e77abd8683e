"""Tiny models for the verify, bench and CLI tests, built with onnx.helper (no files needed).

Every node and tensor is named so tests can say which node a localization must find:
``x -> Conv c1 -> Relu r1 -> Conv c2 -> Relu r2 -> GlobalAveragePool gap -> Flatten flat
-> Gemm fc -> Softmax probs``.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from support import make_model


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.5,
        "b1": rng.standard_normal(4).astype(np.float32) * 0.1,
        "w2": rng.standard_normal((6, 4, 3, 3)).astype(np.float32) * 0.5,
        "wfc": rng.standard_normal((6, 5)).astype(np.float32),
        "bfc": rng.standard_normal(5).astype(np.float32) * 0.1,
    }


def conv_net(*, batch: int | str = 1, spatial: int | str = 8, identities: bool = False,
             qdq: bool = False, unused_input: bool = False) -> onnx.ModelProto:
    """The conv net. ``identities`` adds Identity nodes after c1 and c2 (cleanup removes them,
    so their tensors vanish); ``qdq`` quantizes x and w1 with QuantizeLinear/DequantizeLinear
    pairs, keeping every float tensor name; ``unused_input`` adds an input nothing reads."""
    w = _weights()
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()]
    conv1_in, w1 = "x", "w1"
    nodes = []
    if qdq:
        inits += [numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
                  numpy_helper.from_array(np.array(128, np.uint8), "x_zp"),
                  numpy_helper.from_array(np.array(0.01, np.float32), "w1_scale"),
                  numpy_helper.from_array(np.array(0, np.int8), "w1_zp")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"], name="x.quant"),
                  helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"], name="x.dequant"),
                  helper.make_node("QuantizeLinear", ["w1", "w1_scale", "w1_zp"], ["w1_q"], name="w1.quant"),
                  helper.make_node("DequantizeLinear", ["w1_q", "w1_scale", "w1_zp"], ["w1_dq"],
                                   name="w1.dequant")]
        conv1_in, w1 = "x_dq", "w1_dq"
    c1_out = "c1.raw" if identities else "c1"
    nodes.append(helper.make_node("Conv", [conv1_in, w1, "b1"], [c1_out], name="c1", pads=[1, 1, 1, 1]))
    if identities:
        nodes.append(helper.make_node("Identity", ["c1.raw"], ["c1"], name="c1.identity"))
    nodes.append(helper.make_node("Relu", ["c1"], ["r1"], name="r1"))
    c2_out = "c2.raw" if identities else "c2"
    nodes.append(helper.make_node("Conv", ["r1", "w2"], [c2_out], name="c2", pads=[1, 1, 1, 1]))
    if identities:
        nodes.append(helper.make_node("Identity", ["c2.raw"], ["c2"], name="c2.identity"))
    nodes += [
        helper.make_node("Relu", ["c2"], ["r2"], name="r2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
        helper.make_node("Gemm", ["flat", "wfc", "bfc"], ["fc"], name="fc"),
        helper.make_node("Softmax", ["fc"], ["probs"], name="probs", axis=-1),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, spatial, spatial])]
    if unused_input:
        inputs.append(helper.make_tensor_value_info("unused", TensorProto.FLOAT, [batch, 2]))
    graph = helper.make_graph(nodes, "conv_net", inputs,
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, 5])], inits)
    return make_model(graph)


def scaled(proto: onnx.ModelProto, initializer: str, factor: float) -> onnx.ModelProto:
    """A copy of ``proto`` with one initializer multiplied by ``factor`` (a corrupted weight)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for i, init in enumerate(copy.graph.initializer):
        if init.name == initializer:
            value = numpy_helper.to_array(init) * np.float32(factor)
            copy.graph.initializer[i].CopyFrom(numpy_helper.from_array(value.astype(np.float32), initializer))
            return copy
    raise KeyError(initializer)


def custom_domain_net() -> onnx.ModelProto:
    """x -> Relu -> com.example::Mystery -> Identity -> y: a node no runtime knows."""
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("Mystery", ["a"], ["b"], name="mystery", domain="com.example", strength=2),
             helper.make_node("Identity", ["b"], ["y"], name="identity")]
    graph = helper.make_graph(nodes, "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    return model


def cyclic_net() -> onnx.ModelProto:
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["b"], name="relu")]
    graph = helper.make_graph(nodes, "cycle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4])])
    return make_model(graph)


def dangling_net() -> onnx.ModelProto:
    nodes = [helper.make_node("Add", ["x", "ghost"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "dangling", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return make_model(graph)


def empty_net() -> onnx.ModelProto:
    graph = helper.make_graph([], "empty", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])])
    return make_model(graph)
