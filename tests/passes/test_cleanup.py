"""cleanup: each rewrite on a tiny graph (must / must not), idempotence, exactness."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.passmanager import PassManager
from support import assert_same_outputs, assert_valid, make_model, op_count, random_feeds


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _run(proto, pipeline="cleanup"):
    model = graphc.load(proto)
    record = PassManager(pipeline).run(model).records[0]
    return model, record


def _check_exact_and_idempotent(proto, model, tmp_path):
    path = assert_valid(model, tmp_path)
    assert_same_outputs(proto, path, random_feeds(proto), rtol=0, atol=0)
    again = PassManager("cleanup").run(model).records[0]
    assert not again.modified and again.stats == {}


def test_removes_identity_dropout_noop_reshape_transpose_cast(tmp_path):
    shape = numpy_helper.from_array(np.array([1, 4, 2], np.int64), "shape")
    nodes = [
        helper.make_node("Identity", ["x"], ["a"]),
        helper.make_node("Dropout", ["a"], ["b"]),
        helper.make_node("Reshape", ["b", "shape"], ["c"]),
        helper.make_node("Transpose", ["c"], ["d"], perm=[0, 1, 2]),
        helper.make_node("Cast", ["d"], ["e"], to=TensorProto.FLOAT),
        helper.make_node("Relu", ["e"], ["y"]),
    ]
    proto = make_model(helper.make_graph(nodes, "g", [_vi("x", [1, 4, 2])], [_vi("y", [1, 4, 2])], [shape]))
    model, record = _run(proto)
    assert [n.op for n in model.graph.nodes] == ["Relu"]
    assert record.stats["identity_removed"] == 1 and record.stats["dropout_removed"] == 1
    assert record.stats["noop_reshape_removed"] == 1
    _check_exact_and_idempotent(proto, model, tmp_path)


def test_keeps_real_reshape_transpose_cast(tmp_path):
    shape = numpy_helper.from_array(np.array([1, 8], np.int64), "shape")
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["c"]),
        helper.make_node("Transpose", ["c"], ["d"], perm=[1, 0]),
        helper.make_node("Cast", ["d"], ["y"], to=TensorProto.DOUBLE),
    ]
    proto = make_model(helper.make_graph(nodes, "g", [_vi("x", [1, 4, 2])], [_vi("y", [8, 1], TensorProto.DOUBLE)], [shape]))
    model, record = _run(proto)
    assert [n.op for n in model.graph.nodes] == ["Reshape", "Transpose", "Cast"]
    assert not record.modified


def test_identity_on_graph_output_keeps_output_name(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Identity", ["a"], ["y"])]
    proto = make_model(helper.make_graph(nodes, "g", [_vi("x", [3])], [_vi("y", [3])]))
    model, _ = _run(proto)
    assert [n.op for n in model.graph.nodes] == ["Relu"]
    assert model.graph.outputs[0].name == "y"
    _check_exact_and_idempotent(proto, model, tmp_path)


def test_identity_from_input_to_output_is_kept_and_counted():
    proto = make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                                         [_vi("x", [3])], [_vi("y", [3])]))
    model, record = _run(proto)
    assert op_count(model, "Identity") == 1
    assert sum(record.skipped.values()) == 1


def test_duplicate_constants_and_nodes_merged(tmp_path):
    c1 = numpy_helper.from_array(np.full((3,), 2.0, np.float32), "c1")
    c2 = numpy_helper.from_array(np.full((3,), 2.0, np.float32), "c2")
    c3 = numpy_helper.from_array(np.full((3,), 3.0, np.float32), "c3")
    nodes = [
        helper.make_node("Mul", ["x", "c1"], ["a"]),
        helper.make_node("Mul", ["x", "c2"], ["b"]),   # duplicate of the first after merging c2
        helper.make_node("Mul", ["x", "c3"], ["c"]),   # different constant: stays
        helper.make_node("Sum", ["a", "b", "c"], ["y"]),
    ]
    proto = make_model(helper.make_graph(nodes, "g", [_vi("x", [3])], [_vi("y", [3])], [c1, c2, c3]))
    model, record = _run(proto)
    assert record.stats["duplicate_constants"] == 1 and record.stats["duplicate_nodes"] == 1
    assert op_count(model, "Mul") == 2
    _check_exact_and_idempotent(proto, model, tmp_path)


def test_dead_nodes_unused_initializers_and_inputs(tmp_path):
    unused = numpy_helper.from_array(np.ones((5,), np.float32), "unused")
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["dead"])]
    proto = make_model(helper.make_graph(nodes, "g", [_vi("x", [3]), _vi("extra", [3])], [_vi("y", [3])], [unused]))
    model, record = _run(proto)
    assert [n.op for n in model.graph.nodes] == ["Relu"]
    assert [t.name for t in model.graph.inputs] == ["x"]
    assert record.stats["dead_nodes"] == 1 and record.stats["unused_inputs"] == 1
    kept, _ = _run(proto, "cleanup{keep-inputs=true}")
    assert [t.name for t in kept.graph.inputs] == ["x", "extra"]


def test_unknown_domain_op_left_alone(tmp_path):
    nodes = [helper.make_node("Identity", ["x"], ["a"]),
             helper.make_node("Mystery", ["a"], ["y"], domain="com.example")]
    model = make_model(helper.make_graph(nodes, "g", [_vi("x", [3])], [_vi("y", [3])]))
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    ir, record = _run(model)
    assert [(n.op, n.domain) for n in ir.graph.nodes] == [("Mystery", "com.example")]


@pytest.mark.real
def test_real_models_exact(ppocr, tmp_path):
    from support import PPOCR_SHAPES

    kind, path = ppocr
    proto = onnx.load(path)
    model = graphc.load(path)
    report = PassManager("cleanup,fold-constants,cleanup").run(model)
    assert report.modified
    out = assert_valid(model, tmp_path)
    feeds = random_feeds(proto, {"x": PPOCR_SHAPES[kind]})
    assert_same_outputs(proto, out, feeds, rtol=1e-5, atol=1e-6)


def test_reshape_with_a_float_shape_is_left_alone():
    """An invalid Reshape whose shape constant is float (here NaN) is not a no-op to bypass; cleanup
    used to raise ValueError converting NaN to int (found by tests/property's fuzz oracle)."""
    shape = numpy_helper.from_array(np.array([np.nan, 8], np.float32), "shape")
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"])]
    proto = make_model(helper.make_graph(nodes, "g", [_vi("x", [1, 8])], [_vi("y", [1, 8])], [shape]))
    model, record = _run(proto)
    assert [n.op for n in model.graph.nodes] == ["Reshape"]
    assert not record.modified
