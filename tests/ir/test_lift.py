"""Lifting body tensors to graph outputs (graphc/ir/lift.py through with_outputs): the values
onnxruntime reports for a tensor inside an If branch, a Loop body (stacked over iterations), a
Scan body and an If nested in a Loop equal what numpy computes; the original model is untouched;
calibration sees branch tensors only on the samples that take the branch."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.calib import calibrate
from graphc.errors import ModelError
from graphc.ir.outputs import with_outputs
from graphc.ir.model import to_proto
from support import make_model, run

F = TensorProto.FLOAT


def vi(name, shape, t=F):
    return helper.make_tensor_value_info(name, t, shape)


def scalar(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def if_model() -> onnx.ModelProto:
    """then: t1 = x * 2, y = Relu(t1); else: e1 = x - 1, y = Abs(e1)."""
    then_g = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["t1"], name="t.mul"),
                                helper.make_node("Relu", ["t1"], ["t.y"], name="t.relu")],
                               "then", [], [vi("t.y", [2, 3])])
    else_g = helper.make_graph([helper.make_node("Sub", ["x", "one"], ["e1"], name="e.sub"),
                                helper.make_node("Abs", ["e1"], ["e.y"], name="e.abs")],
                               "else", [], [vi("e.y", [2, 3])])
    graph = helper.make_graph([helper.make_node("If", ["flag"], ["y"], name="If_0", then_branch=then_g,
                                                else_branch=else_g)],
                              "g", [vi("x", [2, 3]), vi("flag", [], TensorProto.BOOL)], [vi("y", [2, 3])],
                              [scalar("two", 2.0), scalar("one", 1.0)])
    return make_model(graph, 13)


def loop_body(inner=None) -> onnx.GraphProto:
    """h' = h * 0.5 + x[i]; pre = h * 0.5 (lifted); scan output h'. ``inner``: an If node placed
    on ``pre`` whose output feeds the Add instead."""
    nodes = [helper.make_node("Gather", ["xs", "i"], ["x_i"], name="b.gather", axis=0),
             helper.make_node("Add", ["i", "one64"], ["i_plus"], name="b.count"),  # int64, no declaration
             helper.make_node("Mul", ["h", "half"], ["pre"], name="b.mul")]
    add_in = "pre"
    if inner is not None:
        nodes.append(inner)
        add_in = "inner_out"
    nodes += [helper.make_node("Add", [add_in, "x_i"], ["h_next"], name="b.add"),
              helper.make_node("Identity", ["cond"], ["cond_out"], name="b.cond"),
              helper.make_node("Identity", ["h_next"], ["h_scan"], name="b.scan")]
    return helper.make_graph(nodes, "body", [vi("i", [], TensorProto.INT64), vi("cond", [], TensorProto.BOOL),
                                             vi("h", [3])],
                             [vi("cond_out", [], TensorProto.BOOL), vi("h_next", [3]), vi("h_scan", [3])])


def loop_model(body: onnx.GraphProto, steps: int = 4) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Loop", ["steps", "", "h0"], ["h_final", "h_all"], name="Loop_0", body=body)],
        "g", [vi("xs", [steps, 3]), vi("h0", [3])], [vi("h_final", [3]), vi("h_all", [steps, 3])],
        [scalar("steps", steps, np.int64), scalar("half", 0.5), scalar("one64", 1, np.int64)])
    return make_model(graph, 13)


def loop_reference(xs, h0, negate=False):
    h, pres, inner = h0.astype(np.float64), [], []
    for x in xs:
        pre = h * 0.5
        pres.append(pre)
        after = -pre if negate else pre
        inner.append(after)
        h = after + x
    return np.stack(pres), np.stack(inner)


def exposed(proto, names, feed):
    model = graphc.load(proto)
    lifted = with_outputs(model, names)
    values = run(to_proto(lifted), feed)
    assert len(model.graph.outputs) == len(proto.graph.output)  # the original is untouched
    return dict(zip([t.name for t in lifted.graph.outputs], values))


def test_if_branch_tensors_come_out_and_the_other_branch_is_empty():
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2
    for flag in (True, False):
        got = exposed(if_model(), ["t1", "e1"], {"x": x, "flag": np.array(flag)})
        taken, other = ("t1", "e1") if flag else ("e1", "t1")
        np.testing.assert_array_equal(got[taken], x * 2 if flag else x - 1)
        assert got[other].size == 0
        np.testing.assert_array_equal(got["y"], np.maximum(x * 2, 0) if flag else np.abs(x - 1))


def test_loop_body_tensor_is_stacked_over_iterations():
    rng = np.random.default_rng(0)
    xs, h0 = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    got = exposed(loop_model(loop_body()), ["pre", "x_i", "h"], {"xs": xs, "h0": h0})
    pres, _ = loop_reference(xs, h0)
    assert got["pre"].shape == (4, 3)
    np.testing.assert_allclose(got["pre"], pres, rtol=1e-6)
    np.testing.assert_array_equal(got["x_i"], xs)
    np.testing.assert_allclose(got["h"][1:], pres[1:] * 2, rtol=1e-6)  # a body input lifts too


def test_undeclared_int_tensor_lifts_with_its_inferred_type():
    got = exposed(loop_model(loop_body()), ["i_plus"], {"xs": np.zeros((4, 3), np.float32),
                                                        "h0": np.zeros(3, np.float32)})
    assert got["i_plus"].dtype == np.int64
    np.testing.assert_array_equal(got["i_plus"], [1, 2, 3, 4])


def test_scan_body_tensor_is_stacked():
    body = helper.make_graph(
        [helper.make_node("Mul", ["s", "x_t"], ["prod"], name="s.mul"),
         helper.make_node("Add", ["prod", "x_t"], ["s_next"], name="s.add"),
         helper.make_node("Identity", ["s_next"], ["y_t"], name="s.out")],
        "scan_body", [vi("s", [3]), vi("x_t", [3])], [vi("s_next", [3]), vi("y_t", [3])])
    graph = helper.make_graph(
        [helper.make_node("Scan", ["s0", "xs"], ["s_final", "ys"], name="Scan_0", body=body, num_scan_inputs=1,
                          scan_output_axes=[0])],
        "g", [vi("s0", [3]), vi("xs", [5, 3])], [vi("s_final", [3]), vi("ys", [5, 3])])
    rng = np.random.default_rng(1)
    s0, xs = rng.standard_normal(3).astype(np.float32), rng.standard_normal((5, 3)).astype(np.float32)
    got = exposed(make_model(graph, 13), ["prod"], {"s0": s0, "xs": xs})
    s, prods = s0, []
    for x in xs:
        prods.append(s * x)
        s = s * x + x
    np.testing.assert_allclose(got["prod"], np.stack(prods), rtol=1e-5)


def test_tensor_in_an_if_nested_in_a_loop():
    neg_g = helper.make_graph([helper.make_node("Neg", ["pre"], ["neg"], name="n.neg")], "neg", [], [vi("neg", [3])])
    id_g = helper.make_graph([helper.make_node("Identity", ["pre"], ["same"], name="n.id")], "same", [], [vi("same", [3])])
    inner = helper.make_node("If", ["flag"], ["inner_out"], name="If_inner", then_branch=neg_g, else_branch=id_g)
    proto = loop_model(loop_body(inner))
    proto.graph.input.append(vi("flag", [], TensorProto.BOOL))
    rng = np.random.default_rng(2)
    xs, h0 = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    got = exposed(proto, ["neg", "same"], {"xs": xs, "h0": h0, "flag": np.array(True)})
    _, inner_ref = loop_reference(xs, h0, negate=True)
    np.testing.assert_allclose(got["neg"], inner_ref, rtol=1e-6)
    assert got["same"].size == 0


def test_unknown_name_still_refused():
    with pytest.raises(ModelError, match="nope"):
        with_outputs(graphc.load(if_model()), ["nope"])


def test_calibration_sees_a_branch_only_on_the_samples_that_take_it():
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2  # -2..3
    data = [{"x": x, "flag": np.array(True)}, {"x": x * 10, "flag": np.array(True)}]
    ranges = calibrate(graphc.load(if_model()), data, ["t1", "e1"], "minmax")
    assert (ranges["t1"].observed_min, ranges["t1"].observed_max) == (-40.0, 60.0)
    assert ranges["t1"].count == 12
    assert ranges["e1"].count == 0  # the else branch never ran
