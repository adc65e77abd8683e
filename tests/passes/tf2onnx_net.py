"""A tiny graph spelled the way tf2onnx writes a JAX/Keras classifier: an int one-hot input
through Equal/Cast, a Conv, MatMuls with bias Adds, and LayerNorm, GELU and Softmax decomposed
into ReduceMean/Sub/Pow/Sqrt/Div, Tanh/Pow/Mul and Exp/ReduceSum/Div - chains of scalar Mul/Add
by constants that the quant pass's affine folds meet back to back when nothing canonicalized them.
"""
import numpy as np
from onnx import TensorProto, helper, numpy_helper

import graphc
from support import make_model

D = 128         # features (large enough that the speed model puts the chains on integers)
CLASSES = 4     # one-hot width
SIDE = 16       # image side: SIDE * SIDE tokens
SHAPES = {"image": (1, 3, SIDE, SIDE), "label": (1,)}


def _c(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


def _layer_norm(x: str, out: str, p: str) -> list:
    """(x - mean) / sqrt(var + eps) * gamma + beta, as ReduceMean/Sub/Pow/Sqrt/Div/Mul/Add."""
    n = helper.make_node
    return [n("ReduceMean", [x], [f"{p}/mean"], axes=[-1], keepdims=1, name=f"{p}/ReduceMean"),
            n("Sub", [x, f"{p}/mean"], [f"{p}/centered"], name=f"{p}/Sub"),
            n("Pow", [f"{p}/centered", "two"], [f"{p}/sq"], name=f"{p}/Pow"),
            n("ReduceMean", [f"{p}/sq"], [f"{p}/var"], axes=[-1], keepdims=1, name=f"{p}/ReduceMean_1"),
            n("Add", [f"{p}/var", "eps"], [f"{p}/var_eps"], name=f"{p}/AddV2"),
            n("Sqrt", [f"{p}/var_eps"], [f"{p}/std"], name=f"{p}/Sqrt"),
            n("Div", [f"{p}/centered", f"{p}/std"], [f"{p}/normed"], name=f"{p}/truediv"),
            n("Mul", [f"{p}/normed", "gamma"], [f"{p}/scaled"], name=f"{p}/mul"),
            n("Add", [f"{p}/scaled", "beta"], [out], name=f"{p}/AddV2_1")]


def _gelu(x: str, out: str, p: str) -> list:
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): scalar Mul then Add then Mul by constants."""
    n = helper.make_node
    return [n("Pow", [x, "three"], [f"{p}/cube"], name=f"{p}/Pow"),
            n("Mul", [f"{p}/cube", "k044"], [f"{p}/cube_k"], name=f"{p}/mul"),
            n("Add", [x, f"{p}/cube_k"], [f"{p}/inner"], name=f"{p}/AddV2"),
            n("Mul", [f"{p}/inner", "sqrt2pi"], [f"{p}/arg"], name=f"{p}/mul_1"),
            n("Tanh", [f"{p}/arg"], [f"{p}/tanh"], name=f"{p}/Tanh"),
            n("Add", [f"{p}/tanh", "one"], [f"{p}/one_plus"], name=f"{p}/AddV2_1"),
            n("Mul", [f"{p}/one_plus", "half"], [f"{p}/half"], name=f"{p}/mul_2"),
            n("Mul", [x, f"{p}/half"], [out], name=f"{p}/mul_3")]


def _softmax(x: str, out: str, p: str) -> list:
    n = helper.make_node
    return [n("ReduceMax", [x], [f"{p}/max"], axes=[-1], keepdims=1, name=f"{p}/Max"),
            n("Sub", [x, f"{p}/max"], [f"{p}/shifted"], name=f"{p}/sub"),
            n("Exp", [f"{p}/shifted"], [f"{p}/exp"], name=f"{p}/Exp"),
            n("ReduceSum", [f"{p}/exp", "last_axis"], [f"{p}/sum"], keepdims=1, name=f"{p}/Sum"),
            n("Div", [f"{p}/exp", f"{p}/sum"], [out], name=f"{p}/truediv")]


def tf2onnx_classifier(seed: int = 0) -> graphc.Model:
    """image (1,3,16,16) float, label (1,) int64 -> probs (1, CLASSES)."""
    rng = np.random.default_rng(seed)
    n = helper.make_node
    nodes = [
        n("Conv", ["image", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1], name="model/conv/Conv2D"),
        n("Relu", ["conv"], ["relu"], name="model/conv/Relu"),
        n("Reshape", ["relu", "token_shape"], ["tokens_t"], name="model/reshape"),
        n("Transpose", ["tokens_t"], ["features"], perm=[0, 2, 1], name="model/transpose"),
        # one-hot: Equal(label[:, None], arange) -> (1, 1, CLASSES) -> Cast to float, then a learned embedding
        n("Unsqueeze", ["label", "unsq_axes2"], ["label2"], name="model/onehot/ExpandDims"),
        n("Equal", ["label2", "classes"], ["hot"], name="model/onehot/Equal"),
        n("Cast", ["hot"], ["hot_f"], to=TensorProto.FLOAT, name="model/onehot/Cast"),
        n("MatMul", ["hot_f", "embed"], ["embedded"], name="model/embed/MatMul"),
        n("Add", ["features", "embedded"], ["h0"], name="model/add"),
        n("MatMul", ["h0", "w1"], ["mm1"], name="model/dense/MatMul"),
        # an affine map spelled Add then Mul, ``(h + 1) * 0.5``: two scalar ops back to back
        n("Add", ["mm1", "one"], ["shifted1"], name="model/ApplyActivation_1/AddV2_1"),
        n("Mul", ["shifted1", "half"], ["d1"], name="model/ApplyActivation_1/mul"),
    ]
    nodes += _layer_norm("d1", "ln", "model/ApplyLayerNorm")
    nodes += _gelu("ln", "act", "model/ApplyActivation")
    nodes += [n("MatMul", ["act", "w2"], ["mm2"], name="model/head/MatMul"),
              n("Add", ["mm2", "b2"], ["token_logits"], name="model/head/BiasAdd"),
        n("ReduceMean", ["token_logits"], ["logits"], axes=[1], keepdims=0, name="model/mean")]
    nodes += _softmax("logits", "probs", "model/Softmax")
    inits = {
        "conv_w": rng.standard_normal((D, 3, 3, 3)).astype(np.float32) * 0.3, "conv_b": _c(rng.standard_normal(D) * 0.1),
        "unsq_axes2": np.array([1, 2], np.int64), "token_shape": np.array([1, D, SIDE * SIDE], np.int64), "classes": np.arange(CLASSES, dtype=np.int64),
        "embed": rng.standard_normal((CLASSES, D)).astype(np.float32),
        "w1": rng.standard_normal((D, D)).astype(np.float32) * 0.3,
        "w2": rng.standard_normal((D, CLASSES)).astype(np.float32) * 0.3, "b2": _c(rng.standard_normal(CLASSES) * 0.1),
        "gamma": _c(1.0 + 0.1 * rng.standard_normal(D)), "beta": _c(0.1 * rng.standard_normal(D)),
        "two": _c(2.0), "three": _c(3.0), "eps": _c(1e-3), "k044": _c(0.044715),
        "sqrt2pi": _c(np.sqrt(2.0 / np.pi)), "one": _c(1.0), "half": _c(0.5),
        "last_axis": np.array([-1], np.int64),
    }
    graph = helper.make_graph(
        nodes, "tf2onnx", [helper.make_tensor_value_info("image", TensorProto.FLOAT, SHAPES["image"]),
                           helper.make_tensor_value_info("label", TensorProto.INT64, SHAPES["label"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, CLASSES])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return graphc.load(make_model(graph, opset=13))


def tf2onnx_feeds(n: int = 16, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"image": rng.standard_normal(SHAPES["image"]).astype(np.float32),
             "label": rng.integers(0, CLASSES, SHAPES["label"]).astype(np.int64)} for _ in range(n)]
