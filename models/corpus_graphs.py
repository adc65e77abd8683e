"""Exporter-corpus graphs written with onnx.helper, in the shapes other exporters write them.

Each function returns an ``onnx.ModelProto`` built from a seeded numpy generator, so a rebuild
is byte-identical. Nothing here needs torch; ``build_corpus.py`` writes the files.

* ``tf2onnx_classifier``: what tf2onnx writes for a small Keras/JAX classifier: NHWC input with
  Transposes around the Conv, LayerNorm decomposed into ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div,
  GELU in its Tanh form (Pow 3), Softmax as ReduceMax/Sub/Exp/ReduceSum/Div, a one-hot through
  Equal/Cast of an int64 input, every tensor named ``scope/op:0``.
* ``spox_vad_if``: a voice-activity-detector shape as spox writes it (opset 16): the whole conv
  network sits in both branches of ``If(sr == 16000)``; branch weights are Constant nodes of the
  branch, the branch reads the outer input and one outer initializer by name (outer scope).
* ``spox_loop``: a Conv+BN front end, then a Loop whose body runs a tanh RNN cell over time
  steps, reading its weights from the outer scope.
* the malformed declarations real files carry: a graph output with no shape after Conv+BN,
  ConvTranspose+BN and Gemm+BN; an input declared with a literal 0 dim; an output declared with
  the wrong rank.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 0
FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64


class Weights:
    """Seeded weights: He-scaled kernels and BN statistics like a trained net's."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def kernel(self, *shape: int) -> np.ndarray:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        return (self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    def matrix(self, rows: int, cols: int) -> np.ndarray:
        return (self.rng.standard_normal((rows, cols)) / np.sqrt(rows)).astype(np.float32)

    def vector(self, n: int, scale: float = 0.1) -> np.ndarray:
        return (self.rng.standard_normal(n) * scale).astype(np.float32)

    def dense(self, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
        """A dense layer's kernel [rows, cols] and bias [cols]."""
        return self.matrix(rows, cols), self.vector(cols)

    def bn(self, c: int) -> list[np.ndarray]:
        """gamma, beta, mean, var (mean~N(0,.5), var~U(.5,2), gamma~U(.5,1.5), beta~N(0,.2))."""
        return [(self.rng.random(c) + 0.5).astype(np.float32), self.vector(c, 0.2),
                self.vector(c, 0.5), (self.rng.random(c) * 1.5 + 0.5).astype(np.float32)]


def tensor(name: str, value: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def const_node(name: str, value: np.ndarray) -> onnx.NodeProto:
    """A Constant node, as spox and onnxscript write weights inside subgraphs."""
    return helper.make_node("Constant", [], [name], name=f"{name}.const", value=tensor(name, value))


def model(graph: onnx.GraphProto, opset: int, producer: str) -> onnx.ModelProto:
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                          producer_name=producer)
    m.ir_version = 8
    return m


# --------------------------------------------------------------------------
# tf2onnx / Keras style
# --------------------------------------------------------------------------


class TfGraph:
    """Collects nodes and initializers under tf2onnx's ``scope/op:0`` naming, and spells the ops
    tf2onnx decomposes (LayerNorm, tanh GELU, Softmax) as it does; build_seqmodels.py writes its
    trained classifier with it too. ``w``: the seeded weights of a hand-written graph, if any."""

    def __init__(self, w: Weights | None = None):
        self.w, self.nodes, self.inits = w, [], []

    def init(self, name: str, value) -> str:
        self.inits.append(tensor(name, np.asarray(value)))
        return name

    def op(self, op: str, scope: str, inputs: list[str], **attrs) -> str:
        out = f"{scope}:0"
        self.nodes.append(helper.make_node(op, inputs, [out], name=scope, **attrs))
        return out

    def const(self, scope: str, value: float) -> str:
        return self.init(f"{scope}:0", np.float32(value))

    def shape(self, scope: str, dims) -> str:
        return self.init(f"{scope}/shape:0", np.array(dims, np.int64))

    def dense(self, scope: str, x: str, kernel: np.ndarray, bias: np.ndarray) -> str:
        y = self.op("MatMul", f"{scope}/MatMul", [x, self.init(f"{scope}/kernel:0", kernel)])
        return self.op("Add", f"{scope}/BiasAdd", [y, self.init(f"{scope}/bias:0", bias)])

    def layer_norm(self, scope: str, x: str, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-6) -> str:
        mean = self.op("ReduceMean", f"{scope}/moments/mean", [x], axes=[-1], keepdims=1)
        centred = self.op("Sub", f"{scope}/sub", [x, mean])
        square = self.op("Pow", f"{scope}/pow", [centred, self.const(f"{scope}/two", 2)])
        var = self.op("ReduceMean", f"{scope}/moments/variance", [square], axes=[-1], keepdims=1)
        var = self.op("Add", f"{scope}/add_eps", [var, self.const(f"{scope}/eps", eps)])
        std = self.op("Sqrt", f"{scope}/Sqrt", [var])
        y = self.op("Div", f"{scope}/truediv", [centred, std])
        y = self.op("Mul", f"{scope}/mul", [y, self.init(f"{scope}/gamma:0", gamma)])
        return self.op("Add", f"{scope}/add", [y, self.init(f"{scope}/beta:0", beta)])

    def gelu_tanh(self, scope: str, x: str) -> str:
        """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
        cube = self.op("Pow", f"{scope}/Pow", [x, self.const(f"{scope}/three", 3)])
        cube = self.op("Mul", f"{scope}/mul", [cube, self.const(f"{scope}/c", 0.044715)])
        inner = self.op("Add", f"{scope}/add", [x, cube])
        inner = self.op("Mul", f"{scope}/mul_1", [inner, self.const(f"{scope}/k", np.sqrt(2 / np.pi))])
        t = self.op("Tanh", f"{scope}/Tanh", [inner])
        t = self.op("Add", f"{scope}/add_1", [t, self.const(f"{scope}/one", 1)])
        half = self.op("Mul", f"{scope}/mul_2", [x, self.const(f"{scope}/half", 0.5)])
        return self.op("Mul", f"{scope}/mul_3", [half, t])

    def softmax(self, scope: str, x: str) -> str:
        peak = self.op("ReduceMax", f"{scope}/Max", [x], axes=[-1], keepdims=1)
        e = self.op("Exp", f"{scope}/Exp", [self.op("Sub", f"{scope}/sub", [x, peak])])
        total = self.op("ReduceSum", f"{scope}/Sum", [e, self.init(f"{scope}/axis:0", np.array([-1], np.int64))],
                        keepdims=1)
        return self.op("Div", f"{scope}/truediv", [e, total])


DIM = 96  # wide enough that quant's speed model puts the MatMuls and their chains on integers


def tf2onnx_classifier() -> onnx.ModelProto:
    """NHWC 16x16x1 image + int64 class hint -> 10 class probabilities (opset 13)."""
    g = TfGraph(Weights(SEED + 10))
    x = g.op("Transpose", "model/conv/Conv2D__6", ["input_image:0"], perm=[0, 3, 1, 2])
    x = g.op("Conv", "model/conv/Conv2D", [x, g.init("model/conv/kernel:0", g.w.kernel(8, 1, 3, 3)),
                                           g.init("model/conv/bias:0", g.w.vector(8))],
             pads=[1, 1, 1, 1], strides=[1, 1], kernel_shape=[3, 3])
    x = g.op("Relu", "model/conv/Relu", [x])
    x = g.op("Transpose", "model/conv/Relu__10", [x], perm=[0, 2, 3, 1])
    x = g.op("Reshape", "model/flatten/Reshape", [x, g.init("model/flatten/shape:0", np.array([-1, 256, 8], np.int64))])
    x = g.dense("model/embed", x, *g.w.dense(8, DIM))
    h = g.layer_norm("model/ln", x, *g.w.bn(DIM)[:2])
    h = g.dense("model/mlp/fc1", h, *g.w.dense(DIM, 2 * DIM))
    # an affine map spelled Add then Mul, (h + 1) * 0.5, as jax.nn activations come out of tf2onnx
    h = g.op("Add", "model/ApplyActivation_1/AddV2_1", [h, g.init("model/ApplyActivation_1/one:0", np.float32(1))])
    h = g.op("Mul", "model/ApplyActivation_1/mul", [h, g.init("model/ApplyActivation_1/half:0", np.float32(0.5))])
    h = g.gelu_tanh("model/ApplyActivation", h)
    x = g.op("Add", "model/residual/AddV2", [x, g.dense("model/mlp/fc2", h, *g.w.dense(2 * DIM, DIM))])
    pooled = g.op("ReduceMean", "model/pool/Mean", [x], axes=[1], keepdims=0)
    hint = g.op("Equal", "model/one_hot/Equal", ["class_hint:0", g.init("model/one_hot/range:0", np.arange(10, dtype=np.int64)[None])])
    hint = g.op("Cast", "model/one_hot/Cast", [hint], to=FLOAT)
    pooled = g.op("Add", "model/hint/AddV2", [pooled, g.dense("model/hint", hint, *g.w.dense(10, DIM))])
    logits = g.dense("model/head", pooled, *g.w.dense(DIM, 10))
    g.nodes.append(helper.make_node("Identity", [g.softmax("model/softmax", logits)], ["probs:0"], name="Identity"))
    graph = helper.make_graph(
        g.nodes, "tf2onnx", [helper.make_tensor_value_info("input_image:0", FLOAT, ["unk__0", 16, 16, 1]),
                             helper.make_tensor_value_info("class_hint:0", INT64, ["unk__0", 1])],
        [helper.make_tensor_value_info("probs:0", FLOAT, ["unk__0", 10])], g.inits)
    return model(graph, 13, "tf2onnx")


# --------------------------------------------------------------------------
# spox / onnxscript style: If and Loop
# --------------------------------------------------------------------------

VAD_SAMPLES = 512
VAD_CHANNELS = (16, 32, 32)


def vad_branch(name: str, w: Weights, first_stride: int) -> onnx.GraphProto:
    """Conv1d+BN+ReLU x3, 1x1 Conv head, Sigmoid: per-frame speech probability.

    Reads the outer-scope input ``audio`` and the outer initializer ``head_bias``."""
    nodes, x, cin = [const_node(f"{name}.axes", np.array([1], np.int64))], f"{name}.frames", 1
    nodes.append(helper.make_node("Unsqueeze", ["audio", f"{name}.axes"], [x], name=f"{name}.unsqueeze"))
    for i, cout in enumerate(VAD_CHANNELS):
        k, stride = (8, first_stride) if i == 0 else (3, 2)
        p = f"{name}.conv{i}"
        nodes.append(const_node(f"{p}.weight", w.kernel(cout, cin, k)))
        nodes.append(helper.make_node("Conv", [x, f"{p}.weight"], [f"{p}.out"], name=p,
                                      kernel_shape=[k], strides=[stride], pads=[k // 2 - (k % 2 == 0), k // 2]))
        stats = w.bn(cout)
        names = [f"{p}.bn.{s}" for s in ("scale", "bias", "mean", "var")]
        nodes += [const_node(n, v) for n, v in zip(names, stats)]
        nodes.append(helper.make_node("BatchNormalization", [f"{p}.out", *names], [f"{p}.bn.out"],
                                      name=f"{p}.bn", epsilon=1e-5))
        nodes.append(helper.make_node("Relu", [f"{p}.bn.out"], [f"{p}.relu"], name=f"{p}.relu"))
        x, cin = f"{p}.relu", cout
    nodes.append(const_node(f"{name}.head.weight", w.kernel(1, cin, 1)))
    nodes.append(helper.make_node("Conv", [x, f"{name}.head.weight", "head_bias"], [f"{name}.head.out"],
                                  name=f"{name}.head", kernel_shape=[1]))
    nodes.append(helper.make_node("Sigmoid", [f"{name}.head.out"], [f"{name}.prob"], name=f"{name}.sigmoid"))
    nodes.append(helper.make_node("Squeeze", [f"{name}.prob", f"{name}.axes"], [f"{name}.speech"], name=f"{name}.squeeze"))
    frames = VAD_SAMPLES // (first_stride * 4)
    out = helper.make_tensor_value_info(f"{name}.speech", FLOAT, ["N", frames])
    return helper.make_graph(nodes, name, [], [out])


def spox_vad_if() -> onnx.ModelProto:
    """audio [N, 512], sr int64 scalar -> speech probability per frame; If(sr == 16000)."""
    w = Weights(SEED + 20)
    then_g = vad_branch("then_16k", w, first_stride=4)
    else_g = vad_branch("else_8k", w, first_stride=2)
    nodes = [
        helper.make_node("Equal", ["sr", "sr_16k"], ["is_16k"], name="Equal_0"),
        helper.make_node("If", ["is_16k"], ["speech"], name="If_0", then_branch=then_g, else_branch=else_g),
    ]
    graph = helper.make_graph(
        nodes, "spox_vad", [helper.make_tensor_value_info("audio", FLOAT, ["N", VAD_SAMPLES]),
                            helper.make_tensor_value_info("sr", INT64, [])],
        [helper.make_tensor_value_info("speech", FLOAT, ["N", "frames"])],
        [tensor("sr_16k", np.array(16000, np.int64)), tensor("head_bias", np.array([-0.5], np.float32))])
    return model(graph, 16, "spox")


def rnn_body(hidden: int) -> onnx.GraphProto:
    """Loop body: h' = tanh(x_t W + h U + b); reads feats, W, U, b from the outer scope."""
    nodes = [
        helper.make_node("Gather", ["feats", "i"], ["x_t"], name="body.gather", axis=0),
        helper.make_node("MatMul", ["x_t", "rnn.W"], ["xw"], name="body.xw"),
        helper.make_node("MatMul", ["h", "rnn.U"], ["hu"], name="body.hu"),
        helper.make_node("Add", ["xw", "hu"], ["pre0"], name="body.add0"),
        helper.make_node("Add", ["pre0", "rnn.b"], ["pre"], name="body.add1"),
        helper.make_node("Tanh", ["pre"], ["h_next"], name="body.tanh"),
        helper.make_node("Identity", ["cond"], ["cond_out"], name="body.cond"),
        helper.make_node("Identity", ["h_next"], ["h_scan"], name="body.scan"),
    ]
    inputs = [helper.make_tensor_value_info("i", INT64, []), helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
              helper.make_tensor_value_info("h", FLOAT, ["N", hidden])]
    outputs = [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
               helper.make_tensor_value_info("h_next", FLOAT, ["N", hidden]),
               helper.make_tensor_value_info("h_scan", FLOAT, ["N", hidden])]
    return helper.make_graph(nodes, "rnn_body", inputs, outputs)


def spox_loop() -> onnx.ModelProto:
    """x [N, 4, 16] -> Conv1d+BN+ReLU -> time-major feats -> Loop (tanh RNN) -> final state, all states."""
    w, hidden, steps = Weights(SEED + 30), 24, 16
    stats = w.bn(16)
    nodes = [
        helper.make_node("Conv", ["x", "conv.weight"], ["conv.out"], name="conv", kernel_shape=[3], pads=[1, 1]),
        helper.make_node("BatchNormalization", ["conv.out", "bn.scale", "bn.bias", "bn.mean", "bn.var"],
                         ["bn.out"], name="bn"),
        helper.make_node("Relu", ["bn.out"], ["relu.out"], name="relu"),
        helper.make_node("Transpose", ["relu.out"], ["feats"], name="to_time_major", perm=[2, 0, 1]),
        helper.make_node("Shape", ["x"], ["x.shape"], name="shape"),
        helper.make_node("Gather", ["x.shape", "zero"], ["batch"], name="batch", axis=0),
        helper.make_node("Concat", ["batch", "hidden"], ["h0.shape"], name="h0.shape", axis=0),
        helper.make_node("ConstantOfShape", ["h0.shape"], ["h0"], name="h0"),
        helper.make_node("Loop", ["steps", "", "h0"], ["h_final", "h_all"], name="rnn", body=rnn_body(hidden)),
    ]
    inits = [tensor("conv.weight", w.kernel(16, 4, 3)), tensor("steps", np.array(steps, np.int64)),
             tensor("zero", np.array([0], np.int64)), tensor("hidden", np.array([hidden], np.int64)),
             tensor("rnn.W", w.matrix(16, hidden)), tensor("rnn.U", w.matrix(hidden, hidden) * 0.5),
             tensor("rnn.b", w.vector(hidden))]
    inits += [tensor(f"bn.{s}", v) for s, v in zip(("scale", "bias", "mean", "var"), stats)]
    graph = helper.make_graph(
        nodes, "spox_loop", [helper.make_tensor_value_info("x", FLOAT, ["N", 4, steps])],
        [helper.make_tensor_value_info("h_final", FLOAT, ["N", hidden]),
         helper.make_tensor_value_info("h_all", FLOAT, [steps, "N", hidden])], inits)
    return model(graph, 16, "spox")


# --------------------------------------------------------------------------
# malformed declarations
# --------------------------------------------------------------------------


def bn_nodes(w: Weights, x: str, c: int, y: str) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    names = [f"bn.{s}" for s in ("scale", "bias", "mean", "var")]
    node = helper.make_node("BatchNormalization", [x, *names], [y], name="bn", epsilon=1e-5)
    return [node], [tensor(n, v) for n, v in zip(names, w.bn(c))]


def linear_bn_no_output_shape(kind: str) -> onnx.ModelProto:
    """Conv / ConvTranspose / Gemm followed by BN; the graph output has no shape (as gs writes it)."""
    w = Weights(SEED + 40 + ("Conv", "ConvTranspose", "Gemm").index(kind))
    if kind == "Gemm":
        x_info = helper.make_tensor_value_info("x", FLOAT, [1, 32])
        weight, attrs, c = w.matrix(16, 32) * 2, {"transB": 1}, 16
    else:
        x_info = helper.make_tensor_value_info("x", FLOAT, [1, 3, 16, 16])
        shape = (8, 3, 3, 3) if kind == "Conv" else (3, 8, 3, 3)
        weight, attrs, c = w.kernel(*shape), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, 8
    linear = helper.make_node(kind, ["x", "weight", "bias"], ["linear.out"], name=kind.lower(), **attrs)
    bn, bn_inits = bn_nodes(w, "linear.out", c, "y")
    graph = helper.make_graph([linear, *bn], f"{kind.lower()}_bn", [x_info],
                              [helper.make_tensor_value_info("y", FLOAT, None)],
                              [tensor("weight", weight), tensor("bias", w.vector(c)), *bn_inits])
    return model(graph, 13, "onnx-graphsurgeon")


def zero_dim_input() -> onnx.ModelProto:
    """An MLP whose input's batch dim is declared with neither value nor name (read as a literal 0)
    but really runs on [1, 576]."""
    w = Weights(SEED + 50)
    nodes = [helper.make_node("MatMul", ["x", "fc1.w"], ["fc1.mm"], name="fc1"),
             helper.make_node("Add", ["fc1.mm", "fc1.b"], ["fc1.out"], name="fc1.bias"),
             helper.make_node("Relu", ["fc1.out"], ["relu"], name="relu"),
             helper.make_node("MatMul", ["relu", "fc2.w"], ["fc2.mm"], name="fc2"),
             helper.make_node("Add", ["fc2.mm", "fc2.b"], ["y"], name="fc2.bias")]
    graph = helper.make_graph(
        nodes, "zero_dim", [helper.make_tensor_value_info("x", FLOAT, [None, 576])],
        [helper.make_tensor_value_info("y", FLOAT, [None, 10])],
        [tensor("fc1.w", w.matrix(576, 64)), tensor("fc1.b", w.vector(64)),
         tensor("fc2.w", w.matrix(64, 10)), tensor("fc2.b", w.vector(10))])
    return model(graph, 13, "converter")


def wrong_rank_output() -> onnx.ModelProto:
    """A CTC-style head whose output is declared [1, seqlen] but is really (T, 1, 40)."""
    w = Weights(SEED + 60)
    nodes = [helper.make_node("MatMul", ["x", "proj.w"], ["proj.mm"], name="proj"),
             helper.make_node("Add", ["proj.mm", "proj.b"], ["proj.out"], name="proj.bias"),
             helper.make_node("LogSoftmax", ["proj.out"], ["log_probs"], name="log_softmax", axis=-1)]
    graph = helper.make_graph(
        nodes, "wrong_rank", [helper.make_tensor_value_info("x", FLOAT, ["T", 1, 32])],
        [helper.make_tensor_value_info("log_probs", FLOAT, [1, "seqlen"])],
        [tensor("proj.w", w.matrix(32, 40)), tensor("proj.b", w.vector(40))])
    return model(graph, 13, "converter")


def runtime_shaped_output() -> onnx.ModelProto:
    """A CTC-style head reshaped to time-major (T, 1, 40) by a target computed at run time (its
    length is a ReduceMax, which shape inference does not evaluate); declares the output
    [1, seqlen] and the target [2]: only a run shows both are wrong."""
    w = Weights(SEED + 70)
    nodes = [helper.make_node("MatMul", ["x", "proj.w"], ["proj.mm"], name="proj"),
             helper.make_node("Add", ["proj.mm", "proj.b"], ["proj.out"], name="proj.bias"),
             helper.make_node("LogSoftmax", ["proj.out"], ["lp"], name="log_softmax", axis=-1),
             helper.make_node("Shape", ["lp"], ["lp.shape"], name="shape"),
             helper.make_node("Gather", ["lp.shape", "time_major"], ["target.full"], name="order", axis=0),
             helper.make_node("Shape", ["target.full"], ["target.rank"], name="rank"),
             helper.make_node("ReduceMax", ["target.rank"], ["target.end"], name="end", keepdims=1),
             helper.make_node("Slice", ["target.full", "zero", "target.end"], ["target"], name="take"),
             helper.make_node("Reshape", ["lp", "target"], ["log_probs"], name="to_time_major")]
    graph = helper.make_graph(
        nodes, "runtime_shaped", [helper.make_tensor_value_info("x", FLOAT, [1, "T", 32])],
        [helper.make_tensor_value_info("log_probs", FLOAT, [1, "seqlen"])],
        [tensor("proj.w", w.matrix(32, 40)), tensor("proj.b", w.vector(40)),
         numpy_helper.from_array(np.array([1, 0, 2], np.int64), "time_major"),
         numpy_helper.from_array(np.array([0], np.int64), "zero")],
        value_info=[helper.make_tensor_value_info("target", TensorProto.INT64, [2])])
    return model(graph, 13, "converter")


def literal_zero_input() -> onnx.ModelProto:
    """An MLP whose input is declared [0, 576] (a literal 0: onnxruntime then refuses anything but
    an empty batch) and hidden/output [0, ...], but is meant for [1, 576]."""
    w = Weights(SEED + 80)
    nodes = [helper.make_node("MatMul", ["x", "fc1.w"], ["fc1.mm"], name="fc1"),
             helper.make_node("Add", ["fc1.mm", "fc1.b"], ["fc1.out"], name="fc1.bias"),
             helper.make_node("Relu", ["fc1.out"], ["relu"], name="relu"),
             helper.make_node("MatMul", ["relu", "fc2.w"], ["y"], name="fc2")]
    graph = helper.make_graph(
        nodes, "literal_zero", [helper.make_tensor_value_info("x", FLOAT, [0, 576])],
        [helper.make_tensor_value_info("y", FLOAT, [0, 10])],
        [tensor("fc1.w", w.matrix(576, 64)), tensor("fc1.b", w.vector(64)), tensor("fc2.w", w.matrix(64, 10))],
        value_info=[helper.make_tensor_value_info("relu", FLOAT, [0, 64])])
    return model(graph, 13, "converter")


GRAPHS = {
    "tf2onnx_classifier": tf2onnx_classifier,
    "spox_vad_if": spox_vad_if,
    "spox_loop": spox_loop,
    "conv_bn_noshape": lambda: linear_bn_no_output_shape("Conv"),
    "convtranspose_bn_noshape": lambda: linear_bn_no_output_shape("ConvTranspose"),
    "gemm_bn_noshape": lambda: linear_bn_no_output_shape("Gemm"),
    "zero_dim_input": zero_dim_input,
    "wrong_rank_output": wrong_rank_output,
    "runtime_shaped_output": runtime_shaped_output,
    "literal_zero_input": literal_zero_input,
}
