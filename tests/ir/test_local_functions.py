"""Model-local functions are inlined at load (graphc/ir/functions.py): passes reach the nodes
inside them. fold-bn folds a Conv+BatchNormalization that lives in a function body exactly
(against onnxruntime running the original, function-calling model), quant quantizes the Conv
inside it, inlined nodes are named by path (``call/body node``), and load says so in one line."""
import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.ir import walk_graphs
from graphc.passmanager import PassManager
from support import assert_same_outputs, assert_valid, sqnr_over

RTOL, ATOL = 1e-5, 1e-6
RNG = np.random.default_rng(7)
BLOCK_INPUTS = ["x", "w", "scale", "bias", "mean", "var"]


def conv_bn_function() -> onnx.FunctionProto:
    """lib.ConvBlock(x, w, scale, bias, mean, var) = Relu(BN(Conv(x, w)))."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="Conv_0", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["b"], name="BN_1"),
             helper.make_node("Relu", ["b"], ["y"], name="Relu_2")]
    return helper.make_function("lib", "ConvBlock", BLOCK_INPUTS, ["y"], nodes,
                                [helper.make_opsetid("", 17)])


def block_weights(p: str, cin: int, cout: int) -> list[onnx.TensorProto]:
    w = RNG.standard_normal((cout, cin, 3, 3)).astype(np.float32) / np.sqrt(9 * cin)
    stats = [RNG.random(cout) + 0.5, RNG.standard_normal(cout) * 0.2, RNG.standard_normal(cout) * 0.5,
             RNG.random(cout) * 1.5 + 0.5]
    return [numpy_helper.from_array(np.asarray(v, np.float32), f"{p}.{s}")
            for s, v in zip(BLOCK_INPUTS[1:], [w, *stats])]


def function_model(calls: int = 2) -> onnx.ModelProto:
    """x [1, 3, 8, 8] -> ConvBlock (3->8) -> ConvBlock (8->8) ... -> GlobalAveragePool -> y."""
    nodes, inits, source, cin = [], [], "x", 3
    for i in range(calls):
        p = f"block{i}"
        inits += block_weights(p, cin, 8)
        nodes.append(helper.make_node("ConvBlock", [source] + [f"{p}.{s}" for s in BLOCK_INPUTS[1:]],
                                      [f"{p}.out"], name=f"/{p}/ConvBlock", domain="lib"))
        source, cin = f"{p}.out", 8
    nodes.append(helper.make_node("GlobalAveragePool", [source], ["y"], name="pool"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 1, 1])], inits)
    model = helper.make_model(graph, functions=[conv_bn_function()],
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("lib", 1)])
    model.ir_version = 8
    return model


def feeds(n: int = 1, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(n)]


def ops(model) -> list[str]:
    return [n.op for _, g in walk_graphs(model.graph) for n in g.nodes]


def test_load_inlines_calls_named_by_path_and_says_so_once(caplog):
    proto = function_model()
    before = proto.SerializeToString()
    with caplog.at_level(logging.WARNING):
        model = graphc.load(proto)
    assert proto.SerializeToString() == before  # the input proto is not modified
    assert ops(model).count("ConvBlock") == 0 and ops(model).count("Conv") == 2
    names = {n.name for n in model.graph.nodes}
    assert {"/block0/ConvBlock/Conv_0", "/block0/ConvBlock/BN_1", "/block1/ConvBlock/Relu_2", "pool"} <= names
    lines = [r.getMessage() for r in caplog.records if "local function" in r.getMessage()]
    assert lines == ["input: 2 call(s) of local function(s) 'lib.ConvBlock' inlined (onnxruntime inlines them "
                     "too; the result has no local functions)"]


def test_model_without_functions_loads_as_before(caplog):
    proto = function_model()
    plain = onnx.inliner.inline_local_functions(proto)
    with caplog.at_level(logging.WARNING):
        model = graphc.load(plain)
    assert not [r for r in caplog.records if "local function" in r.getMessage()]
    assert [n.name for n in model.graph.nodes] == [n.name for n in plain.graph.node]


def test_nested_function_calls_are_inlined_with_nested_paths(tmp_path):
    inner = conv_bn_function()
    outer = helper.make_function("lib", "Stage", BLOCK_INPUTS, ["z"],
                                 [helper.make_node("ConvBlock", BLOCK_INPUTS, ["y"], name="block", domain="lib"),
                                  helper.make_node("Relu", ["y"], ["z"], name="act")],
                                 [helper.make_opsetid("", 17), helper.make_opsetid("lib", 1)])
    proto = function_model(calls=1)
    proto.graph.node[0].op_type = "Stage"
    proto.functions.append(outer)
    model = graphc.load(proto)
    names = [n.name for n in model.graph.nodes]
    assert "/block0/ConvBlock/block/Conv_0" in names and "/block0/ConvBlock/act" in names
    assert inner.name not in ops(model)
    for feed in feeds(2):
        assert_same_outputs(proto, assert_valid(model, tmp_path), feed, rtol=RTOL, atol=ATOL)


def test_fold_bn_folds_inside_local_function_exactly(tmp_path):
    proto = function_model()
    model = graphc.load(proto)
    record = PassManager("fold-bn").run(model).records[0]
    assert record.modified and record.stats.get("conv_bn") == 2, record.stats
    assert "BatchNormalization" not in ops(model) and ops(model).count("Conv") == 2
    path = assert_valid(model, tmp_path)
    assert not onnx.load(str(path)).functions
    for feed in feeds(3):
        assert_same_outputs(proto, path, feed, rtol=RTOL, atol=ATOL)
    again = PassManager("fold-bn").run(model).records[0]
    assert not again.modified


def test_quant_quantizes_the_conv_inside_a_local_function(tmp_path):
    proto = function_model()
    model = graphc.load(proto)
    data = feeds(8, seed=1)
    PassManager("quant{placement=all}", data=data).run(model)  # tiny convs: the speed model keeps them float
    convs = [n for n in model.graph.nodes if n.op == "Conv"]
    assert len(convs) == 2
    for conv in convs:
        weight = conv.inputs[1]
        assert weight.inputs and weight.inputs[0].op == "DequantizeLinear", conv.name
        assert weight.inputs[0].inputs[0].values.dtype == np.int8
    path = assert_valid(model, tmp_path)
    assert sqnr_over(proto, path, feeds(4, seed=2)) > 25


@pytest.mark.parametrize("pipeline", ["fold-bn", "canonicalize", "fold-bn,canonicalize,fold-constants,cleanup"])
def test_exact_pipelines_on_function_model_verify(tmp_path, pipeline):
    proto = function_model(calls=3)
    model = graphc.load(proto)
    PassManager(pipeline).run(model)
    path = assert_valid(model, tmp_path)
    for feed in feeds(3, seed=3):
        assert_same_outputs(proto, path, feed, rtol=RTOL, atol=ATOL)
