"""fold-bn: every folding rule on tiny graphs (must / must not), idempotence, exactness in
onnxruntime against the unfolded model, and the three real PP-OCR models."""
import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import graphc
from graphc.passmanager import PassManager
from graphc.rewrite.affine import LinearOperands, OperandProblem, linear_operands
from support import (PPOCR_SHAPES, assert_same_outputs, assert_valid, make_model, op_count,
                     random_feeds, run)

RTOL, ATOL = 1e-5, 1e-6


# -- building tiny graphs ----------------------------------------------------------------------------


class G:
    """A tiny graph under construction: nodes, initializers, one float input and one output."""

    def __init__(self, seed=0):
        self.nodes, self.inits = [], []
        self.rng = np.random.default_rng(seed)

    def const(self, name, value, dtype=np.float32):
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def rand(self, name, shape, scale=1.0, dtype=np.float32):
        return self.const(name, self.rng.standard_normal(shape) * scale, dtype)

    def weight(self, name, shape, fan_in=None, dtype=np.float32):
        """Random weights scaled by 1/sqrt(fan-in), as trained networks have: outputs stay O(1)."""
        fan_in = fan_in or int(np.prod(shape[1:]))
        return self.rand(name, shape, 1 / np.sqrt(fan_in), dtype)

    def node(self, op, inputs, output, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [output], name=f"{op}_{output}", **attrs))
        return output

    def bn(self, x, out, channels, *, small_var=False, shift=True, **attrs):
        rng = self.rng
        var = 10.0 ** rng.uniform(-6, -2, channels) if small_var else rng.uniform(0.5, 2.0, channels)
        params = [self.const(f"{out}_gamma", rng.uniform(0.5, 1.5, channels)),
                  self.const(f"{out}_beta", rng.standard_normal(channels) if shift else np.zeros(channels)),
                  self.const(f"{out}_mean", rng.standard_normal(channels) * 0.1 if shift else np.zeros(channels)),
                  self.const(f"{out}_var", var)]
        return self.node("BatchNormalization", [x] + params, out, epsilon=1e-5, **attrs)

    def model(self, inputs, outputs, opset=13, elem=TensorProto.FLOAT):
        vis = [helper.make_tensor_value_info(n, elem, s) for n, s in inputs.items()]
        outs = [helper.make_empty_tensor_value_info(n) for n in outputs]
        model = make_model(helper.make_graph(self.nodes, "g", vis, outs, self.inits), opset=opset)
        inferred = {vi.name: vi for vi in onnx.shape_inference.infer_shapes(model).graph.value_info}
        for i, name in enumerate(outputs):  # declare outputs with their inferred type and shape
            if name in inferred:
                model.graph.output[i].CopyFrom(inferred[name])
        return model


def fold(proto, pipeline="fold-bn"):
    model = graphc.load(proto)
    record = PassManager(pipeline).run(model).records[0]
    return model, record


def check_exact(proto, model, tmp_path, shapes=None, rtol=RTOL, atol=ATOL):
    """Valid for the full checker, same outputs in onnxruntime, and a second run changes nothing."""
    path = assert_valid(model, tmp_path)
    for seed in (0, 1):
        assert_same_outputs(proto, path, random_feeds(proto, shapes, seed=seed), rtol=rtol, atol=atol)
    again = PassManager("fold-bn").run(model).records[0]
    assert not again.modified and again.stats == {}


def ops(model):
    return [n.op for n in model.graph.nodes]


# -- Conv -> BN ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("group, bias, spatial", [
    (1, False, 2), (1, True, 2), (2, True, 2), (4, False, 2),  # 4 == channels: depthwise
    (1, True, 1), (2, False, 3),
])
def test_conv_bn_folds(tmp_path, group, bias, spatial):
    g = G()
    k = (3,) * spatial
    inputs = ["x", g.weight("w", (4, 4 // group) + k)] + ([g.rand("b", (4,))] if bias else [])
    g.node("Conv", inputs, "c", group=group, pads=[1] * 2 * spatial)
    g.bn("c", "y", 4)
    proto = g.model({"x": [2, 4] + [6] * spatial}, ["y"])
    model, record = fold(proto)
    assert ops(model) == ["Conv"]
    assert record.stats == {"conv_bn": 1} and record.skipped == {}
    assert model.graph.outputs[0].name == "y"
    check_exact(proto, model, tmp_path)


def _small_variance_conv_bn(seed, mean_offset):
    """Conv -> BN whose statistics match the Conv's output (as after training), with variances
    from 1e-6 to 1e-2, so scales reach ~300. Channel c's output is ~N(b[c], var[c]); ``mean``
    is within a fraction of a standard deviation of b[c]. ``mean_offset`` is the size of b: large
    offsets make BN subtract two nearly equal numbers (x - mean) after rounding x to float32."""
    g = G(seed)
    rng = g.rng
    channels, cin = 16, 8
    var = 10.0 ** rng.uniform(-6, -2, channels)
    weight = rng.standard_normal((channels, cin, 3, 3)) / np.sqrt(cin * 9) * np.sqrt(var)[:, None, None, None]
    bias = rng.standard_normal(channels) * mean_offset
    mean = bias + rng.standard_normal(channels) * np.sqrt(var) * 0.3
    params = [g.const(n, v) for n, v in [("gamma", rng.uniform(0.5, 1.5, channels)),
                                         ("beta", rng.standard_normal(channels)), ("mean", mean), ("var", var)]]
    g.node("Conv", ["x", g.const("w", weight), g.const("b", bias)], "c", pads=[1, 1, 1, 1])
    g.node("BatchNormalization", ["c"] + params, "y", epsilon=1e-5)
    # opset 15: onnx's reference evaluator runs opset-9 BN in training mode (momentum set)
    return g.model({"x": [1, cin, 10, 10]}, ["y"], opset=15)


def _float64_outputs(proto, feeds):
    """The model evaluated in float64 by onnx's reference implementation: the exact answer."""
    p = onnx.ModelProto()
    p.CopyFrom(proto)
    for init in p.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name))
    for vi in list(p.graph.input) + list(p.graph.output):
        vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    feeds = {k: v.astype(np.float64) for k, v in feeds.items()}
    return ReferenceEvaluator(p).run(None, feeds)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conv_bn_small_variances_are_exact(tmp_path, seed):
    """Random statistics with variances down to 1e-6 (scales up to ~300)."""
    proto = _small_variance_conv_bn(seed, mean_offset=0.01)
    model, record = fold(proto)
    assert ops(model) == ["Conv"] and record.stats == {"conv_bn": 1}
    check_exact(proto, model, tmp_path)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conv_bn_small_variances_with_cancellation_match_the_exact_result(tmp_path, seed):
    """With offsets ~1 and scales ~300 the unfolded float32 model itself is off by ~1e-5: it rounds
    the Conv output to float32 and then cancels it against ``mean``. The folded model (parameters
    computed in float64) stays within rtol 1e-5 / atol 1e-6 of the exact float64 result and is
    never further from it than the unfolded model."""
    proto = _small_variance_conv_bn(seed, mean_offset=1.0)
    model, _ = fold(proto)
    path = assert_valid(model, tmp_path)
    feeds = random_feeds(proto, seed=seed)
    exact = _float64_outputs(proto, feeds)[0]
    folded, unfolded = run(path, feeds)[0], run(proto, feeds)[0]
    np.testing.assert_allclose(folded, exact, rtol=RTOL, atol=ATOL)
    assert np.abs(folded - exact).max() <= np.abs(unfolded - exact).max()


def test_folded_weights_are_computed_in_float64():
    """The folded weight equals the float64 product rounded once to float32."""
    g = G(seed=4)
    w = g.weight("w", (8, 3, 1, 1))
    g.node("Conv", ["x", w], "c")
    g.bn("c", "y", 8, small_var=True)
    proto = g.model({"x": [1, 3, 4, 4]}, ["y"])
    model, _ = fold(proto)
    init = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in proto.graph.initializer}
    scale = init["y_gamma"] / np.sqrt(init["y_var"] + np.float64(np.float32(1e-5)))
    shift = init["y_beta"] - init["y_mean"] * scale
    conv = model.graph.nodes[0]
    np.testing.assert_array_equal(conv.inputs[1].values, (init["w"] * scale[:, None, None, None]).astype(np.float32))
    np.testing.assert_array_equal(conv.inputs[2].values, shift.astype(np.float32))


def test_conv_bn_on_graph_output_keeps_the_name(tmp_path):
    g = G()
    g.node("Conv", ["x", g.weight("w", (3, 3, 1, 1))], "c")
    g.bn("c", "y", 3)
    g.node("Relu", ["y"], "z")
    proto = g.model({"x": [1, 3, 4, 4]}, ["y", "z"])
    model, record = fold(proto)
    assert ops(model) == ["Conv", "Relu"] and record.stats == {"conv_bn": 1}
    assert [t.name for t in model.graph.outputs] == ["y", "z"]
    check_exact(proto, model, tmp_path)


def test_shared_conv_weight_is_not_changed_for_the_other_conv(tmp_path):
    g = G()
    w = g.weight("w", (3, 3, 1, 1))
    g.node("Conv", ["x", w], "c1")
    g.bn("c1", "y1", 3)
    g.node("Conv", ["x", w], "y2")
    proto = g.model({"x": [1, 3, 4, 4]}, ["y1", "y2"])
    model, record = fold(proto)
    assert ops(model) == ["Conv", "Conv"] and record.stats == {"conv_bn": 1}
    check_exact(proto, model, tmp_path)


def test_conv_output_with_other_consumers_is_not_folded(tmp_path):
    g = G()
    g.node("Conv", ["x", g.weight("w", (3, 3, 1, 1))], "c")
    g.bn("c", "b", 3)
    g.node("Add", ["b", "c"], "y")
    proto = g.model({"x": [1, 3, 4, 4]}, ["y"])
    model, record = fold(proto, "fold-bn{keep-standalone=true}")
    assert ops(model) == ["Conv", "BatchNormalization", "Add"]
    assert not record.modified
    assert record.skipped == {"Conv+BatchNormalization: Conv output has other consumers": 1}


def test_conv_output_that_is_a_graph_output_is_not_folded(tmp_path):
    g = G()
    g.node("Conv", ["x", g.weight("w", (3, 3, 1, 1))], "c")
    g.bn("c", "y", 3)
    proto = g.model({"x": [1, 3, 4, 4]}, ["c", "y"])
    model, record = fold(proto, "fold-bn{keep-standalone=true}")
    assert op_count(model, "BatchNormalization") == 1 and not record.modified
    assert record.skipped == {"Conv+BatchNormalization: Conv output is a graph output": 1}


@pytest.mark.parametrize("bn_first, which, reason", [
    (False, "w", "Conv+BatchNormalization: Conv weight is not constant"),
    (False, "b", "Conv+BatchNormalization: Conv bias is not constant"),
    (True, "w", "BatchNormalization+Conv: Conv weight after BatchNormalization is not constant"),
    (True, "b", "BatchNormalization+Conv: Conv bias after BatchNormalization is not constant"),
])
def test_a_non_constant_conv_operand_is_named_on_either_side(bn_first, which, reason):
    """Both sides read the Conv's operands through graphc.rewrite.affine.linear_operands."""
    g = G()
    w = "w" if which == "w" else g.weight("w", (3, 3, 1, 1))
    b = "b" if which == "b" else g.const("b", np.zeros(3))
    if bn_first:
        g.node("Conv", [g.bn("x", "n", 3), w, b], "y")
    else:
        g.bn(g.node("Conv", ["x", w, b], "c"), "y", 3)
    proto = g.model({"x": [1, 3, 4, 4], which: [3, 3, 1, 1] if which == "w" else [3]}, ["y"])
    model, record = fold(proto, "fold-bn{keep-standalone=true}")
    assert record.skipped == {reason: 1} and not record.modified
    assert sorted(ops(model)) == ["BatchNormalization", "Conv"]


def test_linear_operands_of_an_integer_gemm_say_the_dtype():
    """The dtype problem cannot be built as a valid Conv+BN model (both must be float): checked on
    the IR node directly, with the float case beside it."""
    x, y = gs.Variable("x", dtype=np.float32), gs.Variable("y", dtype=np.float32)
    w, c = gs.Constant("w", np.ones((2, 3), np.int32)), gs.Constant("c", np.zeros(3, np.float32))
    problem = linear_operands(gs.Node("Gemm", inputs=[x, w, c], outputs=[y]))
    assert problem == OperandProblem("weight", "is int32, not float")
    w.values = np.ones((2, 3), np.float32)
    operands = linear_operands(gs.Node("Gemm", inputs=[x, w, c], outputs=[gs.Variable("y2")]))
    assert isinstance(operands, LinearOperands) and operands.weight.shape == (2, 3) and operands.bias.shape == (3,)


def test_non_constant_weight_or_bn_parameters_are_not_folded():
    g = G()
    g.node("Conv", ["x", "w"], "c")
    g.bn("c", "y", 3)
    proto = g.model({"x": [1, 3, 4, 4], "w": [3, 3, 1, 1]}, ["y"])
    _, record = fold(proto, "fold-bn{keep-standalone=true}")
    assert record.skipped == {"Conv+BatchNormalization: Conv weight is not constant": 1}

    g = G()
    g.node("Conv", ["x", g.weight("w", (3, 3, 1, 1))], "c")
    g.node("BatchNormalization", ["c", "gamma", g.const("b", np.zeros(3)), g.const("m", np.zeros(3)),
                                  g.const("v", np.ones(3))], "y")
    proto = g.model({"x": [1, 3, 4, 4], "gamma": [3]}, ["y"])
    model, record = fold(proto)  # not even rewritten as Mul + Add
    assert ops(model) == ["Conv", "BatchNormalization"] and not record.modified
    assert record.skipped == {"BatchNormalization parameters are not constant": 1}


def test_training_mode_bn_is_not_folded():
    g = G()
    g.node("Conv", ["x", g.weight("w", (3, 3, 1, 1))], "c")
    g.bn("c", "y", 3, training_mode=1)
    proto = g.model({"x": [1, 3, 4, 4]}, ["y"], opset=15)
    model, record = fold(proto)
    assert ops(model) == ["Conv", "BatchNormalization"] and not record.modified
    assert record.skipped == {"BatchNormalization is in training mode (training_mode=1)": 1}


def test_bn_whose_running_statistics_are_read_is_not_folded():
    g = G()
    g.node("Conv", ["x", g.weight("w", (3, 3, 1, 1))], "c")
    g.bn("c", "y", 3)
    g.nodes[-1].output.extend(["running_mean", "running_var", "saved_mean", "saved_var"])
    g.nodes.append(helper.make_node("Identity", ["running_mean"], ["m"]))
    proto = g.model({"x": [1, 3, 4, 4]}, ["y", "m"], opset=9)
    model, record = fold(proto)
    assert op_count(model, "BatchNormalization") == 1 and not record.modified
    assert list(record.skipped) == ["BatchNormalization is in training mode (its running statistics are read)"]


# -- ConvTranspose -> BN ------------------------------------------------------------------------------


@pytest.mark.parametrize("group, cin, cout, bias", [(1, 4, 6, False), (1, 4, 6, True), (2, 4, 6, True),
                                                   (3, 6, 6, False), (4, 4, 4, True)])
def test_convtranspose_bn_folds_grouped(tmp_path, group, cin, cout, bias):
    g = G(seed=group)
    inputs = ["x", g.weight("w", (cin, cout // group, 3, 3))] + ([g.rand("b", (cout,))] if bias else [])
    g.node("ConvTranspose", inputs, "c", group=group, strides=[2, 2], pads=[1, 1, 1, 1])
    g.bn("c", "y", cout)
    proto = g.model({"x": [2, cin, 5, 5]}, ["y"])
    model, record = fold(proto)
    assert ops(model) == ["ConvTranspose"] and record.stats == {"convtranspose_bn": 1}
    check_exact(proto, model, tmp_path)


# -- Gemm / MatMul -> BN ------------------------------------------------------------------------------


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [None, (5,), (1, 5), (), (3, 5)])
def test_gemm_bn_folds(tmp_path, trans_b, c_shape):
    g = G(seed=7)
    inputs = ["x", g.weight("w", (5, 4) if trans_b else (4, 5))]
    if c_shape is not None:
        inputs.append(g.rand("c0", c_shape))
    g.node("Gemm", inputs, "c", transB=trans_b, alpha=0.5, beta=2.0)
    g.bn("c", "y", 5)
    proto = g.model({"x": [3, 4]}, ["y"])
    model, record = fold(proto)
    assert ops(model) == ["Gemm"] and record.stats == {"gemm_bn": 1}
    check_exact(proto, model, tmp_path)


def test_matmul_bn_folds_weight_on_the_right_2d(tmp_path):
    g = G()
    g.node("MatMul", ["x", g.weight("w", (4, 5))], "c")
    g.bn("c", "y", 5)
    proto = g.model({"x": [3, 4]}, ["y"])
    model, record = fold(proto)
    assert ops(model) == ["MatMul", "Add"] and record.stats == {"matmul_bn": 1}
    check_exact(proto, model, tmp_path)


def test_matmul_bn_folds_weight_on_the_left_3d(tmp_path):
    g = G()
    g.node("MatMul", [g.weight("w", (5, 4)), "x"], "c")  # (5,4) @ (2,4,7) -> (2,5,7): channels on axis 1
    g.bn("c", "y", 5)
    proto = g.model({"x": [2, 4, 7]}, ["y"])
    model, record = fold(proto)
    assert ops(model) == ["MatMul", "Add"] and record.stats == {"matmul_bn": 1}
    check_exact(proto, model, tmp_path)


def test_matmul_bn_with_zero_shift_needs_no_add(tmp_path):
    g = G()
    g.node("MatMul", ["x", g.weight("w", (4, 5))], "c")
    g.bn("c", "y", 5, shift=False)
    proto = g.model({"x": [3, 4]}, ["y"])
    model, _ = fold(proto)
    assert ops(model) == ["MatMul"]
    check_exact(proto, model, tmp_path)


def test_matmul_3d_bn_on_rows_is_not_folded_into_weight(tmp_path):
    """(2,5,4) @ (4,6): BN normalizes axis 1 (5 rows), not the weight's columns."""
    g = G()
    g.node("MatMul", ["x", g.weight("w", (4, 6))], "c")
    g.bn("c", "y", 5)
    proto = g.model({"x": [2, 5, 4]}, ["y"])
    model, record = fold(proto)
    assert ops(model) == ["MatMul", "Mul", "Add"] and record.stats == {"standalone_bn": 1}
    assert record.skipped == {"MatMul+BatchNormalization: MatMul output channels are not on axis 1, "
                              "which BN normalizes": 1}
    check_exact(proto, model, tmp_path)


# -- BN -> Conv ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("group, bias, attrs", [
    (1, False, {}),
    (1, True, {"pads": [0, 0, 0, 0], "strides": [2, 2]}),
    (2, True, {"auto_pad": "VALID", "dilations": [2, 2]}),
    (4, False, {}),
])
def test_bn_conv_without_padding_folds(tmp_path, group, bias, attrs):
    g = G(seed=11)
    g.node("Relu", ["x"], "r")
    g.bn("r", "b", 4)
    inputs = ["b", g.weight("w", (6 if group != 4 else 4, 4 // group, 3, 3))] + ([g.rand("cb", (6 if group != 4 else 4,))] if bias else [])
    g.node("Conv", inputs, "y", group=group, **attrs)
    proto = g.model({"x": [1, 4, 9, 9]}, ["y"])
    model, record = fold(proto)
    assert ops(model) == ["Relu", "Conv"] and record.stats == {"bn_conv": 1}
    check_exact(proto, model, tmp_path)


def test_bn_conv_same_padding_with_1x1_kernel_folds(tmp_path):
    g = G()
    g.bn("x", "b", 3)
    g.node("Conv", ["b", g.weight("w", (5, 3, 1, 1))], "y", auto_pad="SAME_UPPER", strides=[2, 2])
    proto = g.model({"x": [1, 3, 5, 5]}, ["y"])
    model, record = fold(proto)
    assert ops(model) == ["Conv"] and record.stats == {"bn_conv": 1}
    check_exact(proto, model, tmp_path)


@pytest.mark.parametrize("attrs", [{"pads": [1, 1, 1, 1]}, {"auto_pad": "SAME_UPPER"}])
def test_bn_conv_with_zero_padding_and_shift_is_not_folded(tmp_path, attrs):
    g = G()
    g.bn("x", "b", 3)
    g.node("Conv", ["b", g.weight("w", (5, 3, 3, 3))], "y", **attrs)
    proto = g.model({"x": [1, 3, 5, 5]}, ["y"])
    model, record = fold(proto)
    assert ops(model) == ["Mul", "Add", "Conv"] and record.stats == {"standalone_bn": 1}
    assert record.skipped == {"BatchNormalization+Conv: Conv after BatchNormalization pads with zeros "
                              "and the BN shift is non-zero": 1}
    check_exact(proto, model, tmp_path)


def test_bn_conv_with_padding_and_zero_shift_folds(tmp_path):
    g = G()
    g.bn("x", "b", 3, shift=False)
    g.node("Conv", ["b", g.weight("w", (5, 3, 3, 3))], "y", pads=[1, 1, 1, 1])
    proto = g.model({"x": [1, 3, 5, 5]}, ["y"])
    model, record = fold(proto)
    assert ops(model) == ["Conv"] and record.stats == {"bn_conv": 1}
    check_exact(proto, model, tmp_path)


def test_bn_read_by_conv_weight_or_by_two_convs_is_not_folded_into_them(tmp_path):
    g = G()
    g.bn("x", "b", 3)
    g.node("Conv", ["b", g.weight("w1", (2, 3, 1, 1))], "y1")
    g.node("Conv", ["b", g.weight("w2", (2, 3, 1, 1))], "y2")
    proto = g.model({"x": [1, 3, 5, 5]}, ["y1", "y2"])
    model, record = fold(proto)
    assert ops(model) == ["Mul", "Add", "Conv", "Conv"] and record.stats == {"standalone_bn": 1}
    check_exact(proto, model, tmp_path)


def test_conv_bn_conv_folds_into_the_producer_first(tmp_path):
    g = G()
    g.node("Conv", ["x", g.weight("w1", (4, 3, 3, 3))], "c", pads=[1, 1, 1, 1])
    g.bn("c", "b", 4)
    g.node("Conv", ["b", g.weight("w2", (2, 4, 3, 3))], "y", pads=[1, 1, 1, 1])
    proto = g.model({"x": [1, 3, 6, 6]}, ["y"])
    model, record = fold(proto)
    assert ops(model) == ["Conv", "Conv"] and record.stats == {"conv_bn": 1}
    check_exact(proto, model, tmp_path)


# -- per-channel Mul / Add ------------------------------------------------------------------------------


@pytest.mark.parametrize("mul_shape, add_shape", [((4, 1, 1), (1, 4, 1, 1)), ((1,), ()), ((), (4, 1, 1)),
                                                  (None, (1, 4, 1, 1)), ((1, 4, 1, 1), None)])
def test_conv_mul_add_folds(tmp_path, mul_shape, add_shape):
    g = G()
    y = g.node("Conv", ["x", g.weight("w", (4, 2, 3, 3)), g.rand("b", (4,))], "c", group=2)
    if mul_shape is not None:
        y = g.node("Mul", [y, g.rand("m", mul_shape)], "mu")
    if add_shape is not None:
        y = g.node("Add", [g.rand("a", add_shape), y], "ad")  # constant first: Add commutes
    g.node("Relu", [y], "y")
    proto = g.model({"x": [1, 4, 5, 5]}, ["y"])
    model, record = fold(proto)
    assert ops(model) == ["Conv", "Relu"]
    assert sum(record.stats.values()) == (mul_shape is not None) + (add_shape is not None)
    check_exact(proto, model, tmp_path)


def test_convtranspose_add_then_bn_fold_together(tmp_path):
    """Paddle's exporter: ConvTranspose -> Add(bias (1,C,1,1)) -> BatchNormalization."""
    g = G()
    g.node("ConvTranspose", ["x", g.weight("w", (4, 3, 2, 2))], "c", strides=[2, 2], group=2)
    g.node("Add", ["c", g.rand("a", (1, 6, 1, 1))], "a1")
    g.bn("a1", "y", 6)
    proto = g.model({"x": [1, 4, 3, 3]}, ["y"])
    model, record = fold(proto)
    assert ops(model) == ["ConvTranspose"]
    assert record.stats == {"convtranspose_add": 1, "convtranspose_bn": 1}
    check_exact(proto, model, tmp_path)


@pytest.mark.parametrize("shape", [(5,), (1, 5), ()])
def test_gemm_and_matmul_mul_add_fold(tmp_path, shape):
    g = G()
    g.node("Gemm", ["x", g.weight("w", (4, 5)), g.rand("c0", (5,))], "c")
    g.node("Mul", ["c", g.rand("m", shape)], "mu")
    g.node("Add", ["mu", g.rand("a", shape)], "ad")
    g.node("MatMul", ["ad", g.weight("w2", (5, 3))], "mm")
    g.node("Mul", ["mm", g.rand("m2", (3,))], "y")
    proto = g.model({"x": [2, 4]}, ["y"])
    model, record = fold(proto)
    assert ops(model) == ["Gemm", "MatMul"]
    assert record.stats == {"gemm_mul": 1, "gemm_add": 1, "matmul_mul": 1}
    check_exact(proto, model, tmp_path)


@pytest.mark.parametrize("shape", [(1, 1, 5, 5), (1, 4, 5, 1), (2, 4, 1, 1), (1, 1, 4, 1, 1)])
def test_mul_add_not_per_channel_is_not_folded(tmp_path, shape):
    g = G()
    g.node("Conv", ["x", g.weight("w", (4, 4, 1, 1))], "c")
    g.node("Mul", ["c", g.rand("m", shape)], "y")
    proto = g.model({"x": [2, 4, 5, 5]}, ["y"])
    model, record = fold(proto)
    assert ops(model) == ["Conv", "Mul"] and not record.modified
    assert len(record.skipped) == 1 and list(record.skipped)[0].startswith("Conv+Mul: Mul constant of shape")


def test_add_after_matmul_and_non_constant_mul_are_left(tmp_path):
    g = G()
    g.node("MatMul", ["x", g.weight("w", (4, 5))], "mm")
    g.node("Add", ["mm", g.rand("a", (5,))], "ad")
    g.node("Conv", ["x4", g.weight("w2", (3, 3, 1, 1))], "c")
    g.node("Mul", ["c", "x4"], "y2")
    proto = g.model({"x": [2, 4], "x4": [1, 3, 2, 2]}, ["ad", "y2"])
    model, record = fold(proto)
    assert ops(model) == ["MatMul", "Add", "Conv", "Mul"]
    assert not record.modified and record.skipped == {}


def test_mul_on_graph_output_is_folded_and_keeps_the_name(tmp_path):
    g = G()
    g.node("Conv", ["x", g.weight("w", (3, 3, 1, 1))], "c")
    g.node("Mul", ["c", g.rand("m", (3, 1, 1))], "y")
    proto = g.model({"x": [1, 3, 4, 4]}, ["y"])
    model, record = fold(proto)
    assert ops(model) == ["Conv"] and model.graph.outputs[0].name == "y"
    check_exact(proto, model, tmp_path)


# -- standalone BN --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [[3, 4], [2, 4, 5], [1, 4, 3, 3], [1, 4, 2, 3, 2]])
def test_standalone_bn_becomes_mul_add_for_any_rank(tmp_path, shape):
    g = G()
    g.node("Relu", ["x"], "r")
    g.bn("r", "y", 4)
    proto = g.model({"x": shape}, ["y"])
    model, record = fold(proto)
    assert ops(model) == ["Relu", "Mul", "Add"] and record.stats == {"standalone_bn": 1}
    assert record.skipped == {"no Conv/ConvTranspose/Gemm/MatMul neighbour to fold into": 1}
    mul = model.graph.nodes[1]
    assert mul.inputs[1].values.shape == (4,) + (1,) * (len(shape) - 2)
    check_exact(proto, model, tmp_path)


def test_standalone_bn_keeps_its_dtype(tmp_path):
    g = G()
    g.node("Relu", ["x"], "r")
    params = [g.const(f"p{i}", v, np.float64) for i, v in enumerate([[1.5, 0.5], [0.1, -2.0], [0.3, 0.0], [0.2, 4.0]])]
    g.node("BatchNormalization", ["r"] + params, "y")
    proto = g.model({"x": [2, 2, 3]}, ["y"], elem=TensorProto.DOUBLE)
    model, _ = fold(proto)
    assert ops(model) == ["Relu", "Mul", "Add"]
    assert all(n.inputs[1].values.dtype == np.float64 for n in model.graph.nodes[1:])
    path = assert_valid(model, tmp_path)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 2, 3))}
    np.testing.assert_allclose(run(path, feeds)[0], run(proto, feeds)[0], rtol=1e-12, atol=1e-12)


def test_keep_standalone_leaves_bn(tmp_path):
    g = G()
    g.node("Relu", ["x"], "r")
    g.bn("r", "y", 4)
    proto = g.model({"x": [1, 4, 2, 2]}, ["y"])
    model, record = fold(proto, "fold-bn{keep-standalone=true}")
    assert ops(model) == ["Relu", "BatchNormalization"] and not record.modified


def test_float16_conv_bn_folds(tmp_path):
    g = G()
    g.node("Conv", ["x", g.weight("w", (4, 3, 3, 3), dtype=np.float16)], "c")
    params = [g.const(f"p{i}", v, np.float16) for i, v in
              enumerate([np.ones(4) * 1.5, np.arange(4), np.linspace(-1, 1, 4), np.full(4, 0.5)])]
    g.node("BatchNormalization", ["c"] + params, "y")
    proto = g.model({"x": [1, 3, 5, 5]}, ["y"], elem=TensorProto.FLOAT16)
    model, record = fold(proto)
    assert ops(model) == ["Conv"] and record.stats == {"conv_bn": 1}
    assert model.graph.nodes[0].inputs[1].values.dtype == np.float16
    path = assert_valid(model, tmp_path)
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 5, 5)).astype(np.float16)}
    np.testing.assert_allclose(run(path, feeds)[0], run(proto, feeds)[0], rtol=1e-2, atol=1e-2)


# -- real models ------------------------------------------------------------------------------------------


@pytest.mark.real
def test_real_ppocr_models_fold_every_bn_exactly(ppocr, tmp_path):
    """cls: 35 BN -> 0; det: 3 -> 0 (one behind ConvTranspose + Add); rec: 6 -> 0. Exact at
    rtol 1e-5 / atol 1e-6 in onnxruntime (graph optimizations off, so the reference really runs
    its BatchNormalization nodes) at the PP-OCR test shapes, on image-like inputs."""
    from graphc.verify import Tolerances, compare_models

    kind, path = ppocr
    proto = onnx.load(str(path))
    model = graphc.load(path)
    before = op_count(model, "BatchNormalization")
    record = PassManager("fold-bn").run(model).records[0]
    assert before == {"cls": 35, "det": 3, "rec": 6}[kind]
    assert op_count(model, "BatchNormalization") == 0
    assert "standalone_bn" not in record.stats
    out = assert_valid(model, tmp_path)
    shapes = {proto.graph.input[0].name: PPOCR_SHAPES[kind]}
    for seed in (0, 1):
        feeds = random_feeds(proto, shapes, seed=seed)
        feeds = {k: (v * 0.5 + 0.5).astype(v.dtype) for k, v in feeds.items()}  # image-like values
        assert_same_outputs(proto, out, feeds, rtol=RTOL, atol=ATOL)
    report = compare_models(path, out, input_shapes=shapes, tolerances=Tolerances(rtol=RTOL, atol=ATOL),
                            optimize=False)
    assert report.passed, report.summary()
    again = PassManager("fold-bn").run(model).records[0]
    assert not again.modified
