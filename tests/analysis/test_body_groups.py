"""Channel groups inside If/Loop bodies (graphc/analysis/body_groups.py, `graphc inspect --groups`):
a Conv chain inside an If branch gets its groups, named by path; the branch's output, the outer
input it reads and a weight shared with the top graph are boundaries (blocked, said so); removing
a prunable group's channels inside the branch keeps the model valid and, for channels that carry
zeros, its outputs exact in onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.analysis import body_channel_groups, format_groups, remove_channels
from graphc.ir import walk_graphs
from graphc.passmanager import Context
from support import assert_valid, cli, make_model, run

RNG = np.random.default_rng(5)
F = TensorProto.FLOAT


def weight(name: str, *shape: int, zero_row: int | None = None) -> onnx.TensorProto:
    value = (RNG.standard_normal(shape) * 0.3).astype(np.float32)
    if zero_row is not None:
        value[zero_row] = 0
    return numpy_helper.from_array(value, name)


def const(name: str, tensor: onnx.TensorProto) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=f"{name}.const", value=tensor)


def if_model(shared_weight: bool = False) -> onnx.ModelProto:
    """y = If(flag) then Conv(Relu(Conv(x, w1)), w2) else Relu(Conv(x, w_else)); x [1, 3, 8, 8].
    Channel 2 of the then-branch's first Conv is all zero (its row of w1 and its bias)."""
    w1, b1 = weight("w1", 8, 3, 3, 3, zero_row=2), numpy_helper.from_array(
        np.where(np.arange(8) == 2, 0, RNG.standard_normal(8) * 0.1).astype(np.float32), "b1")
    then_nodes = [const("w1", w1), const("b1", b1),
                  helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
                  helper.make_node("Conv", ["r1", "w2"], ["y_then"], name="conv2", pads=[1, 1, 1, 1])]
    if not shared_weight:
        then_nodes.insert(0, const("w2", weight("w2", 4, 8, 3, 3)))
    then_branch = helper.make_graph(then_nodes, "then", [], [helper.make_tensor_value_info("y_then", F, [1, 4, 8, 8])])
    else_branch = helper.make_graph(
        [const("w_else", weight("w_else", 4, 3, 1, 1)),
         helper.make_node("Conv", ["x", "w_else"], ["c_else"], name="conv_else"),
         helper.make_node("Relu", ["c_else"], ["y_else"], name="relu_else")],
        "else", [], [helper.make_tensor_value_info("y_else", F, [1, 4, 8, 8])])
    nodes = [helper.make_node("If", ["flag"], ["y"], name="If_0", then_branch=then_branch, else_branch=else_branch)]
    inits = []
    outputs = [helper.make_tensor_value_info("y", F, [1, 4, 8, 8])]
    if shared_weight:  # w2 is a top-graph initializer, also read by a top-level Conv
        inits.append(weight("w2", 4, 8, 3, 3))
        nodes.append(helper.make_node("Conv", ["z", "w2"], ["y2"], name="top_conv", pads=[1, 1, 1, 1]))
        outputs.append(helper.make_tensor_value_info("y2", F, [1, 4, 8, 8]))
    inputs = [helper.make_tensor_value_info("x", F, [1, 3, 8, 8]), helper.make_tensor_value_info("flag", TensorProto.BOOL, [])]
    if shared_weight:
        inputs.append(helper.make_tensor_value_info("z", F, [1, 8, 8, 8]))
    return make_model(helper.make_graph(nodes, "if_model", inputs, outputs, inits), opset=16)


def bodies(model):
    ctx = Context(model)
    return {a.path: a for a in body_channel_groups(model.graph, ctx.shapes(), ctx.opset)}


def groups_of(analysis, producer_label: str):
    return [g for g in analysis.groups if producer_label in [m.label for m in g.producers]]


def test_conv_chain_in_a_branch_has_its_groups_named_by_path():
    found = bodies(graphc.load(if_model()))
    assert set(found) == {"If_0/then_branch", "If_0/else_branch"}
    then = found["If_0/then_branch"]
    (inner,) = groups_of(then, "Conv 'If_0/then_branch/conv1'")
    assert inner.size == 8 and inner.prunable
    assert [m.label for m in inner.consumers] == ["Conv 'If_0/then_branch/conv2'"]
    (out,) = groups_of(then, "Conv 'If_0/then_branch/conv2'")
    assert out.status == "blocked" and "graph output 'y_then'" in out.blocked  # the If's output
    reads_x = [g for g in then.groups if any(s[0] == "x" for s in g.positions)]
    assert reads_x and all(any("'x' crosses the boundary of If_0/then_branch" in r for r in g.blocked)
                           for g in reads_x)
    (else_out,) = groups_of(found["If_0/else_branch"], "Conv 'If_0/else_branch/conv_else'")
    assert not else_out.prunable  # its channels reach the branch output


def test_weight_shared_with_the_top_graph_is_a_boundary():
    then = bodies(graphc.load(if_model(shared_weight=True)))["If_0/then_branch"]
    (inner,) = groups_of(then, "Conv 'If_0/then_branch/conv1'")
    assert inner.status == "blocked"
    assert any("'w2' crosses the boundary of If_0/then_branch (also used by Conv 'top_conv')" in r
               for r in inner.blocked), inner.blocked


def test_removing_a_prunable_branch_group_keeps_the_model_exact(tmp_path):
    proto = if_model()
    model = graphc.load(proto)
    (inner,) = groups_of(bodies(model)["If_0/then_branch"], "Conv 'If_0/then_branch/conv1'")
    body = next(g for p, g in walk_graphs(model.graph) if p == "If_0/then_branch")
    remove_channels(body, inner, [2])
    conv1 = next(n for n in body.nodes if n.name == "conv1")
    conv2 = next(n for n in body.nodes if n.name == "conv2")
    assert conv1.inputs[1].values.shape[0] == 7 and conv2.inputs[1].values.shape[1] == 7
    path = assert_valid(model, tmp_path)
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    for flag in (True, False):
        feed = {"x": x, "flag": np.array(flag)}
        np.testing.assert_allclose(run(path, feed)[0], run(proto, feed)[0], rtol=1e-5, atol=1e-6)


def loop_model() -> onnx.ModelProto:
    """A Loop whose body runs Conv(Relu(Conv(h, wa)), wb) on its carried state h [1, 4, 6, 6]."""
    body = helper.make_graph(
        [const("wa", weight("wa", 6, 4, 3, 3)), const("wb", weight("wb", 4, 6, 3, 3)),
         helper.make_node("Conv", ["h", "wa"], ["a"], name="body_conv_a", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["a"], ["ra"], name="body_relu"),
         helper.make_node("Conv", ["ra", "wb"], ["h_next"], name="body_conv_b", pads=[1, 1, 1, 1]),
         helper.make_node("Identity", ["cond"], ["cond_out"], name="body_cond")],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("h", F, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_next", F, [1, 4, 6, 6])])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "", "x"], ["y"], name="loop", body=body)], "loop_model",
        [helper.make_tensor_value_info("x", F, [1, 4, 6, 6])], [helper.make_tensor_value_info("y", F, [1, 4, 6, 6])],
        [numpy_helper.from_array(np.array(2, np.int64), "n")])
    return make_model(graph, opset=16)


def test_loop_body_groups_block_the_carried_state():
    body = bodies(graphc.load(loop_model()))["loop/body"]
    (inner,) = groups_of(body, "Conv 'loop/body/body_conv_a'")
    assert inner.size == 6 and inner.prunable
    (state,) = groups_of(body, "Conv 'loop/body/body_conv_b'")
    assert "graph output 'h_next'" in state.blocked  # the carried state keeps its shape


def test_inspect_groups_reports_each_body_under_its_path(capsys, tmp_path):
    src, proto = tmp_path / "if.onnx", if_model()
    onnx.save(proto, src)
    code, out, err = cli(capsys, "inspect", src, "--groups")
    assert code == 0, err
    assert "If_0/then_branch: channel groups: " in out and "If_0/else_branch: channel groups: " in out
    assert "    Conv 'If_0/then_branch/conv1': output group " in out
    assert out.index("If_0/then_branch: channel groups") > out.index("channel groups: ")  # after the top graph's
    text = format_groups(bodies(graphc.load(proto))["If_0/then_branch"])
    assert text in out
