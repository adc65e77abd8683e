"""fold-constants: constant subgraphs and static shape arithmetic."""
import numpy as np
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.passmanager import PassManager
from support import assert_same_outputs, assert_valid, make_model, op_count, random_feeds


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def test_constant_subgraph_folded(tmp_path):
    a = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "a")
    b = numpy_helper.from_array(np.full((2, 3), 0.5, np.float32), "b")
    nodes = [
        helper.make_node("Mul", ["a", "b"], ["ab"]),
        helper.make_node("Transpose", ["ab"], ["abt"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "abt"], ["y"]),
    ]
    proto = make_model(helper.make_graph(nodes, "g", [_vi("x", [4, 3])], [_vi("y", [4, 2])], [a, b]))
    model = graphc.load(proto)
    record = PassManager("fold-constants").run(model).records[0]
    assert record.stats["folded_nodes"] == 2
    assert [n.op for n in model.graph.nodes] == ["MatMul"]
    weight = model.graph.nodes[0].inputs[1].values
    np.testing.assert_array_equal(weight, (np.arange(6).reshape(2, 3) * 0.5).T.astype(np.float32))
    path = assert_valid(model, tmp_path)
    assert_same_outputs(proto, path, random_feeds(proto), rtol=0, atol=0)
    assert not PassManager("fold-constants").run(model).records[0].modified


def test_static_shape_chain_folded_dynamic_kept(tmp_path):
    idx = numpy_helper.from_array(np.array([1], np.int64), "idx")
    minus1 = numpy_helper.from_array(np.array([-1], np.int64), "minus1")
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "idx"], ["c"], axis=0),
        helper.make_node("Concat", ["minus1", "c"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    proto = make_model(helper.make_graph(nodes, "g", [_vi("x", ["batch", 6, 5])], [_vi("y", ["n", 6])], [idx, minus1]))
    model = graphc.load(proto)
    record = PassManager("fold-constants").run(model).records[0]
    assert record.stats["folded_shapes"] == 1 and record.stats["folded_nodes"] == 1
    assert [n.op for n in model.graph.nodes] == ["Reshape"]
    np.testing.assert_array_equal(model.graph.nodes[0].inputs[1].values, [-1, 6])
    path = assert_valid(model, tmp_path)
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 6, 5)).astype(np.float32)}
    assert_same_outputs(proto, path, feeds, rtol=0, atol=0)


def test_dynamic_dim_not_folded():
    idx = numpy_helper.from_array(np.array([0], np.int64), "idx")
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "idx"], ["y"], axis=0)]
    proto = make_model(helper.make_graph(nodes, "g", [_vi("x", ["batch", 6])], [_vi("y", [1], TensorProto.INT64)], [idx]))
    model = graphc.load(proto)
    assert not PassManager("fold-constants").run(model).records[0].modified
    assert op_count(model, "Shape") == 1


def test_large_results_and_random_ops_not_folded():
    shape = numpy_helper.from_array(np.array([2048, 1024], np.int64), "shape")
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"], value=numpy_helper.from_array(np.ones(1, np.float32))),
        helper.make_node("RandomNormal", [], ["r"], shape=[2]),
        helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
        helper.make_node("Add", ["s", "r"], ["y"]),
    ]
    proto = make_model(helper.make_graph(nodes, "g", [], [_vi("y", [2])], [shape]))
    model = graphc.load(proto)
    record = PassManager("fold-constants{max-elements=1000}").run(model).records[0]
    assert op_count(model, "ConstantOfShape") == 1 and op_count(model, "RandomNormal") == 1
    assert record.skipped.get("result larger than max-elements") == 1


def test_dequantized_weights_stay_quantized(tmp_path):
    """DequantizeLinear of constant codes is a compressed weight: folding it would undo quant.
    The Mul of two constants next to it is folded (the case that must match)."""
    codes = numpy_helper.from_array(np.arange(-6, 6, dtype=np.int8).reshape(3, 4), "codes")
    scale = numpy_helper.from_array(np.array(0.5, np.float32), "scale")
    a = numpy_helper.from_array(np.ones((3, 4), np.float32), "a")
    nodes = [helper.make_node("DequantizeLinear", ["codes", "scale"], ["w"], name="dq"),
             helper.make_node("Mul", ["a", "a"], ["a2"], name="const_mul"),
             helper.make_node("Add", ["w", "a2"], ["w2"], name="add_w"),
             helper.make_node("MatMul", ["x", "w2"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [codes, scale, a])
    model = graphc.load(make_model(graph, opset=13))
    reference = model.copy()
    record = PassManager("fold-constants").run(model).records[0]
    assert op_count(model, "DequantizeLinear") == 1 and op_count(model, "Mul") == 0
    assert record.skipped == {"DequantizeLinear of a constant kept: folding would store the weight in float again": 1}
    assert_same_outputs(reference, model, random_feeds(model))
    assert_valid(model, tmp_path)


def _division(divisor: list[int], op: str = "Div"):
    nodes = [helper.make_node(op, ["num", "den"], ["q"]), helper.make_node("Add", ["x", "q"], ["y"])]
    inits = [numpy_helper.from_array(np.array([7, -9], np.int64), "num"),
             numpy_helper.from_array(np.array(divisor, np.int64), "den")]
    return make_model(helper.make_graph(nodes, "g", [_vi("x", [2], TensorProto.INT64)],
                                        [_vi("y", [2], TensorProto.INT64)], inits))


def test_integer_division_by_zero_not_folded(tmp_path):
    """numpy's reference gives 7 // 0 a value; onnxruntime refuses the model. Folding would
    invent a result, so the node stays (and the result is refused exactly as the input is)."""
    for op in ("Div", "Mod"):
        proto = _division([0, 2], op)
        model = graphc.load(proto)
        record = PassManager("fold-constants").run(model).records[0]
        assert not record.modified and op_count(model, op) == 1
        assert any("division by zero" in reason for reason in record.skipped), record.skipped
        graphc.save(model, tmp_path / f"{op}.onnx")  # full checker (onnxruntime refuses it, as the input)


def test_integer_division_by_nonzero_folded(tmp_path):
    proto = _division([3, 2])
    model = graphc.load(proto)
    assert PassManager("fold-constants").run(model).records[0].stats["folded_nodes"] == 1
    assert op_count(model, "Div") == 0
    path = assert_valid(model, tmp_path)
    assert_same_outputs(proto, path, {"x": np.array([1, 2], np.int64)}, rtol=0, atol=0)
