"""equalize and smooth inside If branches: the pair / site in one branch is rescaled, the one whose
tensor has another reader is not; exact against onnxruntime (rtol 1e-5 / atol 1e-6) on feeds
that take each branch; a second run changes nothing; bias absorption from data measures a
branch's tensors through lifted outputs."""
import numpy as np
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.calib.data import open_data
from graphc.ir import walk_graphs
from support import assert_same_outputs, assert_valid, make_model

RTOL, ATOL = 1e-5, 1e-6
C = 8


def const_node(name, value):
    return helper.make_node("Constant", [], [name], name=f"{name}.c",
                            value=numpy_helper.from_array(np.asarray(value, np.float32), name))


def unbalanced_pair(rng, p):
    """W1, b1, W2 of Conv -> Relu -> Conv with channel ranges spread over three decades (the
    function is what a balanced pair computes)."""
    w1 = rng.standard_normal((C, C, 3, 3)) / 6
    b1 = rng.standard_normal(C) * 0.1
    b1[:3] += 10.0  # channels that stay positive (what BatchNorm's beta often leaves): bias to absorb
    w2 = rng.standard_normal((C, C, 1, 1)) / 3  # 1x1: reads no padding (bias absorption needs that)
    k = 10.0 ** rng.uniform(-1.5, 1.5, C)
    return [const_node(f"{p}.w1", w1 * k[:, None, None, None]), const_node(f"{p}.b1", b1 * k),
            const_node(f"{p}.w2", w2 / k[None, :, None, None])]


def conv_relu_conv_branch(rng, p, extra_reader=False):
    nodes = unbalanced_pair(rng, p) + [
        helper.make_node("Conv", ["x", f"{p}.w1", f"{p}.b1"], [f"{p}.c1"], name=f"{p}.conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", [f"{p}.c1"], [f"{p}.a1"], name=f"{p}.relu"),
        helper.make_node("Conv", [f"{p}.a1", f"{p}.w2"], [f"{p}.c2"], name=f"{p}.conv2")]
    out = f"{p}.c2"
    if extra_reader:  # the Relu output has a second reader: rescaling it would change the Add
        nodes.append(helper.make_node("Add", [f"{p}.c2", f"{p}.a1"], [f"{p}.sum"], name=f"{p}.add"))
        out = f"{p}.sum"
    return helper.make_graph(nodes, p, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, C, 6, 6])])


def if_model(then_g, else_g, x_shape=(1, C, 6, 6), y_shape=(1, C, 6, 6)):
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], name="If_0", then_branch=then_g, else_branch=else_g)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape)),
              helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))])
    return make_model(graph, 13)


def feeds(shape, n=4, seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal(shape).astype(np.float32), "flag": np.array(i % 2 == 0)} for i in range(n)]


def branch(model, name):
    return dict(walk_graphs(model.graph))[f"If_0/{name}"]


def weight(scope, name):
    return next(t for t in scope.tensors().values() if t.name == name).values


def check_exact(proto, model, tmp_path, shape):
    path = assert_valid(model, tmp_path)
    for feed in feeds(shape, 2, seed=5):
        assert_same_outputs(proto, path, feed, rtol=RTOL, atol=ATOL)


def equalize_model():
    rng = np.random.default_rng(0)
    return if_model(conv_relu_conv_branch(rng, "then"), conv_relu_conv_branch(rng, "else", extra_reader=True))


def test_equalize_inside_a_branch_exact(tmp_path):
    proto = equalize_model()
    model = graphc.load(proto)
    before = {n: weight(branch(model, b), n).copy() for b, n in (("then_branch", "then.w1"), ("else_branch", "else.w1"))}
    record = graphc.PassManager("equalize").run(model).records[0]
    assert record.stats["pairs_equalized"] == 1
    assert "activation output has other readers or is a graph output" in record.skipped
    then = branch(model, "then_branch")
    r1 = np.abs(weight(then, "then.w1")).reshape(C, -1).max(axis=1)
    r2 = np.abs(weight(then, "then.w2")).transpose(1, 0, 2, 3).reshape(C, -1).max(axis=1)
    np.testing.assert_allclose(r1, r2, rtol=0.02)  # each channel's range is shared by the two layers
    assert not np.array_equal(before["then.w1"], weight(then, "then.w1"))
    np.testing.assert_array_equal(before["else.w1"], weight(branch(model, "else_branch"), "else.w1"))
    check_exact(proto, model, tmp_path, (1, C, 6, 6))
    assert not graphc.PassManager("equalize").run(model).records[0].modified


def test_equalize_absorbs_bias_measured_inside_a_branch(tmp_path):
    """absorb-bias=data measures the branch's Conv output through a lifted output: the bias moves
    (exact on the calibration data, where the measured minimum holds)."""
    proto = equalize_model()
    model = graphc.load(proto)
    data = feeds((1, C, 6, 6), 8)
    record = graphc.PassManager("equalize{absorb-bias=data}", data=open_data(data, model)).run(model).records[0]
    assert record.stats["bias_layers_absorbed"] == 1
    absorbed = [d for d in record.details if d.get("rule") == "absorb-bias"]
    assert absorbed[0]["node"] == "then.conv1" and absorbed[0]["source"] == "data"
    path = assert_valid(model, tmp_path)
    for feed in data:
        assert_same_outputs(proto, path, feed, rtol=RTOL, atol=1e-5)


def smooth_branch(rng, p, shared_reader=False):
    """h = x W0 (outlier channels in h), y = h W1; ``shared_reader``: h also read by an Add."""
    w0 = rng.standard_normal((16, 12)) / 4
    w0[:, [2, 7]] *= 40.0
    w1 = rng.standard_normal((12, 10)) / 4
    nodes = [const_node(f"{p}.w0", w0), const_node(f"{p}.w1", w1),
             helper.make_node("MatMul", ["x", f"{p}.w0"], [f"{p}.h"], name=f"{p}.mm0"),
             helper.make_node("MatMul", [f"{p}.h", f"{p}.w1"], [f"{p}.y"], name=f"{p}.mm1")]
    out = f"{p}.y"
    if shared_reader:
        nodes += [const_node(f"{p}.w2", rng.standard_normal((12, 10)) / 4),
                  helper.make_node("ReduceMean", [f"{p}.h"], [f"{p}.hs"], name=f"{p}.mean", axes=[1], keepdims=1),
                  helper.make_node("Add", [f"{p}.y", f"{p}.hs"], [f"{p}.out"], name=f"{p}.add")]
        out = f"{p}.out"
    return helper.make_graph(nodes, p, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, [4, 10])])


def test_smooth_inside_a_branch_exact(tmp_path):
    rng = np.random.default_rng(1)
    proto = if_model(smooth_branch(rng, "then"), smooth_branch(rng, "else", shared_reader=True),
                     x_shape=(4, 16), y_shape=(4, 10))
    model = graphc.load(proto)
    data = feeds((4, 16), 8)
    record = graphc.PassManager("smooth", data=open_data(data, model)).run(model).records[0]
    assert record.stats["smoothed_after_MatMul"] == 1
    assert "activation has readers other than MatMul/Gemm" in record.skipped
    w0 = weight(branch(model, "then_branch"), "then.w0")
    assert np.abs(w0).max(axis=0)[[2, 7]].max() < 0.5 * 40  # the outlier columns were divided
    check_exact(proto, model, tmp_path, (4, 16))
    again = graphc.PassManager("smooth", data=open_data(data, model)).run(model).records[0]
    assert not again.modified


def test_smooth_skips_a_branch_no_sample_took():
    rng = np.random.default_rng(1)
    proto = if_model(smooth_branch(rng, "then"), smooth_branch(rng, "else"), x_shape=(4, 16), y_shape=(4, 10))
    model = graphc.load(proto)
    data = [f for f in feeds((4, 16), 8) if f["flag"]]
    record = graphc.PassManager("smooth", data=open_data(data, model)).run(model).records[0]
    assert record.stats["smoothed_after_MatMul"] == 1
    assert record.skipped["activation never ran on the calibration data (an If branch no sample took)"] == 1
