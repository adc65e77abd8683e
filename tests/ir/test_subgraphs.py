"""Subgraphs are graphs: walk_graphs reaches If/Loop bodies, load turns Constant nodes inside
bodies into constants, and cleanup, fold-constants, fold-bn and canonicalize rewrite inside the
bodies with outer-scope names resolved (exact against onnxruntime on both branches)."""
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.ir import NameFactory, toposort, walk_graphs
from graphc.passmanager import PassManager
from graphc.stats import model_stats
from support import assert_same_outputs, assert_valid, make_model

RTOL, ATOL = 1e-5, 1e-6
CORPUS = Path(__file__).resolve().parents[1] / "models" / "corpus"
RNG = np.random.default_rng(0)


def const(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def branch(name: str, nodes: list, out: str, inits=()) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 4, 6, 6])],
                             list(inits))


def if_model(then_g: onnx.GraphProto, else_g: onnx.GraphProto, pre=(), inits=(), opset=13) -> onnx.ModelProto:
    """y = If(flag, then_g, else_g); x [1, 4, 6, 6] float and flag bool are graph inputs."""
    nodes = [*pre, helper.make_node("If", ["flag"], ["y"], name="If_0", then_branch=then_g, else_branch=else_g)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6]),
                     helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], list(inits))
    return make_model(graph, opset)


def conv_bn_branch(p: str, source: str = "x") -> tuple[list, list]:
    """Conv -> BN inside a body; weights as Constant nodes of the body (as spox writes them)."""
    w = RNG.standard_normal((4, 4, 3, 3)).astype(np.float32) / 6
    stats = [RNG.random(4) + 0.5, RNG.standard_normal(4) * 0.2, RNG.standard_normal(4) * 0.5, RNG.random(4) * 1.5 + 0.5]
    names = [f"{p}.{s}" for s in ("w", "scale", "bias", "mean", "var")]
    consts = [helper.make_node("Constant", [], [n], name=f"{n}.c", value=const(n, v))
              for n, v in zip(names, [w, *stats])]
    return consts + [
        helper.make_node("Conv", [source, names[0]], [f"{p}.conv"], name=f"{p}.Conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", [f"{p}.conv", *names[1:]], [f"{p}.out"], name=f"{p}.BN"),
    ], names


def feeds_both() -> list[dict]:
    x = RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)
    return [{"x": x, "flag": np.array(True)}, {"x": x, "flag": np.array(False)}]


def run_pass(proto: onnx.ModelProto, pipeline: str):
    model = graphc.load(proto)
    record = PassManager(pipeline).run(model).records[0]
    return model, record


def check_exact(proto, model, tmp_path):
    path = assert_valid(model, tmp_path)
    for feed in feeds_both():
        assert_same_outputs(proto, path, feed, rtol=RTOL, atol=ATOL)


def body_ops(model, path: str) -> list[str]:
    return [n.op for p, g in walk_graphs(model.graph) if p == path for n in g.nodes]


def bn_model() -> onnx.ModelProto:
    then_nodes, _ = conv_bn_branch("t")
    else_nodes, _ = conv_bn_branch("e")
    return if_model(branch("then", then_nodes, "t.out"), branch("else", else_nodes, "e.out"))


# -- the walk ---------------------------------------------------------------------------------------


def test_walk_graphs_paths_in_order_and_nested():
    loop_body = helper.make_graph(
        [helper.make_node("Relu", ["v"], ["v2"], name="body.Relu"),
         helper.make_node("Identity", ["c"], ["c2"], name="body.cond")], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("c2", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v2", TensorProto.FLOAT, [1, 4, 6, 6])])
    then_g = branch("then", [helper.make_node("Loop", ["n", "", "x"], ["t.out"], name="Loop_0", body=loop_body)], "t.out")
    else_g = branch("else", [helper.make_node("Relu", ["x"], ["e.out"], name="e.Relu")], "e.out")
    model = graphc.load(if_model(then_g, else_g, inits=[numpy_helper.from_array(np.array(2, np.int64), "n")]))
    paths = [p for p, _ in walk_graphs(model.graph)]
    assert paths == ["", "If_0/else_branch", "If_0/then_branch", "If_0/then_branch/Loop_0/body"]  # attribute order
    assert body_ops(model, "If_0/then_branch/Loop_0/body") == ["Relu", "Identity"]


def test_load_turns_constant_nodes_inside_bodies_into_constants():
    model = graphc.load(bn_model())
    for path in ("If_0/then_branch", "If_0/else_branch"):
        assert body_ops(model, path) == ["Conv", "BatchNormalization"]


def test_toposort_sorts_bodies_and_name_factory_sees_them():
    model = graphc.load(bn_model())
    then_g = dict(walk_graphs(model.graph))["If_0/then_branch"]
    then_g.nodes.reverse()
    toposort(model.graph)
    assert [n.op for n in then_g.nodes] == ["Conv", "BatchNormalization"]
    names = NameFactory(model.graph)
    assert names("t.conv") != "t.conv" and names("e.BN") != "e.BN"


# -- passes inside bodies ---------------------------------------------------------------------------


def test_fold_bn_folds_inside_both_branches(tmp_path):
    proto = bn_model()
    model, record = run_pass(proto, "fold-bn")
    assert record.stats == {"conv_bn": 2}
    for path in ("If_0/then_branch", "If_0/else_branch"):
        assert body_ops(model, path) == ["Conv"]
    check_exact(proto, model, tmp_path)
    _, again = run_pass(onnx.load(str(tmp_path / "out.onnx")), "fold-bn")
    assert not again.modified


def test_fold_bn_leaves_an_outer_tensor_a_branch_also_reads(tmp_path):
    """Outer Conv output read by the outer BN and by a branch: folding would change the branch."""
    bn_nodes, _ = conv_bn_branch("o")
    pre = bn_nodes[:-1] + [helper.make_node("BatchNormalization", ["o.conv", "o.scale", "o.bias", "o.mean", "o.var"],
                                            ["o.out"], name="o.BN")]
    then_g = branch("then", [helper.make_node("Add", ["o.conv", "o.out"], ["t.out"], name="t.Add")], "t.out")
    else_g = branch("else", [helper.make_node("Relu", ["o.out"], ["e.out"], name="e.Relu")], "e.out")
    proto = if_model(then_g, else_g, pre=pre)
    model, record = run_pass(proto, "fold-bn{keep-standalone=true}")
    assert "conv_bn" not in record.stats
    assert [n.op for n in model.graph.nodes].count("BatchNormalization") == 1
    check_exact(proto, model, tmp_path)


def test_cleanup_inside_bodies_keeps_outer_producers(tmp_path):
    """A body's Identity of an inner tensor goes; an Identity of an outer tensor that writes the
    body's output stays (the outer producer cannot write a body output)."""
    then_g = branch("then", [helper.make_node("Relu", ["x"], ["t.r"], name="t.Relu"),
                             helper.make_node("Identity", ["t.r"], ["t.id"], name="t.Identity"),
                             helper.make_node("Neg", ["t.id"], ["t.out"], name="t.Neg")], "t.out")
    else_g = branch("else", [helper.make_node("Identity", ["x.relu"], ["e.out"], name="e.Identity")], "e.out")
    proto = if_model(then_g, else_g, pre=[helper.make_node("Relu", ["x"], ["x.relu"], name="Relu_0")])
    model, record = run_pass(proto, "cleanup")
    assert record.stats.get("identity_removed") == 1
    assert body_ops(model, "If_0/then_branch") == ["Relu", "Neg"]
    assert body_ops(model, "If_0/else_branch") == ["Identity"]
    check_exact(proto, model, tmp_path)


def test_fold_constants_inside_a_body(tmp_path):
    then_g = branch("then", [helper.make_node("Add", ["c1", "c2"], ["t.c"], name="t.AddC"),
                             helper.make_node("Mul", ["x", "t.c"], ["t.out"], name="t.Mul")], "t.out",
                    inits=[const("c1", RNG.standard_normal((1, 4, 1, 1))), const("c2", [[[[0.5]]]])])
    else_g = branch("else", [helper.make_node("Relu", ["x"], ["e.out"], name="e.Relu")], "e.out")
    proto = if_model(then_g, else_g)
    model, record = run_pass(proto, "fold-constants")
    assert record.stats.get("folded_nodes") == 1
    assert body_ops(model, "If_0/then_branch") == ["Mul"]
    check_exact(proto, model, tmp_path)


def test_canonicalize_inside_a_body(tmp_path):
    """x * 1 (identity) and Div by a constant (-> Mul) inside the else branch."""
    then_g = branch("then", [helper.make_node("Relu", ["x"], ["t.out"], name="t.Relu")], "t.out")
    else_g = branch("else", [helper.make_node("Mul", ["x", "one"], ["e.m"], name="e.Mul1"),
                             helper.make_node("Relu", ["e.m"], ["e.r"], name="e.Relu"),
                             helper.make_node("Div", ["e.r", "four"], ["e.out"], name="e.Div")], "e.out",
                    inits=[const("one", 1.0), const("four", 4.0)])
    proto = if_model(then_g, else_g)
    model, record = run_pass(proto, "canonicalize")
    assert record.modified
    ops = body_ops(model, "If_0/else_branch")
    assert "Div" not in ops and ops.count("Mul") == 1 and "Relu" in ops
    check_exact(proto, model, tmp_path)


@pytest.mark.parametrize("pipeline", ["fold-bn", "fold-bn,canonicalize,fold-constants,cleanup"])
def test_vad_if_model_branch_bns_fold_exactly(tmp_path, pipeline):
    """The corpus's spox-style VAD: three Conv+BN in each branch of If(sr == 16000)."""
    proto = onnx.load(str(CORPUS / "spox_vad_if.onnx"))
    model = graphc.load(proto)
    PassManager(pipeline).run(model)
    for path in ("If_0/then_branch", "If_0/else_branch"):
        ops = body_ops(model, path)
        assert "BatchNormalization" not in ops and ops.count("Conv") == 4
    path = assert_valid(model, tmp_path)
    with np.load(CORPUS / "spox_vad_if.npz") as data:
        for i in range(4):
            feed = {"audio": data["audio"][i], "sr": np.asarray(data["sr"][i])}
            assert_same_outputs(proto, path, feed, rtol=RTOL, atol=ATOL)


def test_stats_and_pass_records_count_body_nodes_and_weights():
    model = graphc.load(bn_model())
    stats = model_stats(model)
    assert stats.op_histogram == {"Conv": 2, "BatchNormalization": 2, "If": 1}
    assert stats.params == 2 * (4 * 4 * 3 * 3 + 4 * 4)
    record = PassManager("fold-bn").run(model).records[0]
    assert (record.nodes_before, record.nodes_after) == (5, 3)


def test_fold_bn_in_a_body_leaves_a_weight_the_outer_graph_shares(tmp_path):
    """The branch Conv and an outer Conv read one outer weight: the fold scales a copy."""
    w = RNG.standard_normal((4, 4, 3, 3)).astype(np.float32) / 6
    stats = [RNG.random(4) + 0.5, RNG.standard_normal(4) * 0.2, RNG.standard_normal(4) * 0.5, RNG.random(4) * 1.5 + 0.5]
    inits = [const("W", w)] + [const(n, v) for n, v in zip(["s", "b", "m", "v"], stats)]
    then_g = branch("then", [helper.make_node("Conv", ["x.pre", "W"], ["t.c"], name="t.Conv", pads=[1, 1, 1, 1]),
                             helper.make_node("BatchNormalization", ["t.c", "s", "b", "m", "v"], ["t.out"],
                                              name="t.BN")], "t.out")
    else_g = branch("else", [helper.make_node("Relu", ["x.pre"], ["e.out"], name="e.Relu")], "e.out")
    pre = [helper.make_node("Conv", ["x", "W"], ["x.pre"], name="outer.Conv", pads=[1, 1, 1, 1])]
    proto = if_model(then_g, else_g, pre=pre, inits=inits)
    model, record = run_pass(proto, "fold-bn")
    assert record.stats == {"conv_bn": 1}
    assert np.array_equal(model.graph.nodes[0].inputs[1].values, w)
    check_exact(proto, model, tmp_path)
