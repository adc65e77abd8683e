"""Loading and saving: sources, Constant nodes, metadata, atomic writes, external data."""
import hashlib
import os

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.errors import InputError, ModelError, OutputError, UnsafeModelError
from support import assert_same_outputs, make_model, ppocr_model, random_feeds


def _conv_model_with_constant_node() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Constant", [], ["w_c"], value=w, name="wconst"),
        helper.make_node("Conv", ["x", "w_c"], ["y"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["y"], ["z"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 8, 8])])
    model = make_model(graph)
    model.producer_name = "unit-test"
    model.producer_version = "9.9"
    model.metadata_props.append(onnx.StringStringEntryProto(key="author", value="me"))
    return model


def test_load_from_path_bytes_and_proto(tmp_path):
    proto = _conv_model_with_constant_node()
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    for source in (path, str(path), path.read_bytes(), proto):
        model = graphc.load(source)
        assert [n.op for n in model.graph.nodes] == ["Conv", "Relu"]  # Constant node became a constant
        assert isinstance(model.graph.nodes[0].inputs[1], gs.Constant)


def test_roundtrip_keeps_model_fields_and_outputs(tmp_path):
    proto = _conv_model_with_constant_node()
    model = graphc.load(proto)
    out = graphc.save(model, tmp_path / "out.onnx")
    saved = onnx.load(out)
    onnx.checker.check_model(saved, full_check=True)
    assert saved.producer_name == "unit-test" and saved.producer_version == "9.9"
    assert {p.key: p.value for p in saved.metadata_props} == {"author": "me"}
    assert saved.opset_import[0].version == 13
    feeds = random_feeds(proto)
    assert_same_outputs(proto, saved, feeds, rtol=0, atol=0)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    model = graphc.load(_conv_model_with_constant_node())
    graphc.save(model, tmp_path / "a.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx"]


def test_failed_save_leaves_nothing(tmp_path):
    model = graphc.load(_conv_model_with_constant_node())
    model.graph.nodes[0].op = "NoSuchOp"  # fails the full checker
    with pytest.raises(ModelError):
        graphc.save(model, tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_missing_folder_and_input_path(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_conv_model_with_constant_node(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    model = graphc.load(path)
    with pytest.raises(OutputError, match="does not exist"):
        graphc.save(model, tmp_path / "nope" / "x.onnx")
    with pytest.raises(OutputError, match="overwrite the input"):
        graphc.save(model, path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("content,match", [
    (b"", "empty file"),
    (b"hello, this is not a model", "not an ONNX model"),
    (b"\x08\x07\x12\x00", "not an ONNX model"),
])
def test_load_rejects_non_models(tmp_path, content, match):
    path = tmp_path / "x.onnx"
    path.write_bytes(content)
    with pytest.raises(InputError, match=match):
        graphc.load(path)


def test_load_rejects_truncated_real_model(tmp_path):
    src = ppocr_model("cls")
    if src is None:
        pytest.skip("rapidocr-onnxruntime not installed")
    data = src.read_bytes()
    path = tmp_path / "half.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises((InputError, ModelError)):
        graphc.load(path)


def test_load_rejects_missing_and_folder(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        graphc.load(tmp_path / "missing.onnx")
    with pytest.raises(InputError, match="not a file"):
        graphc.load(tmp_path)


def _two_node_graph(first_inputs, second_inputs):
    nodes = [helper.make_node("Relu", first_inputs, ["a"], name="r1"),
             helper.make_node("Relu", second_inputs, ["b"], name="r2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])])
    return make_model(graph)


def test_structure_errors_name_the_node():
    with pytest.raises(ModelError, match="Relu 'r1' reads 'ghost'"):
        graphc.load(_two_node_graph(["ghost"], ["a"]))
    cyc = _two_node_graph(["b"], ["a"])
    with pytest.raises(ModelError, match="cycle"):
        graphc.load(cyc)
    empty = make_model(helper.make_graph([], "g", [], []))
    with pytest.raises(ModelError, match="empty graph"):
        graphc.load(empty)


def test_unsorted_graph_is_accepted_and_sorted():
    nodes = [helper.make_node("Relu", ["a"], ["b"], name="second"),
             helper.make_node("Relu", ["x"], ["a"], name="first")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])])
    model = graphc.load(make_model(graph))
    report = graphc.PassManager("cleanup").run(model)
    assert [n.name for n in model.graph.nodes] == ["first", "second"]
    assert report.records[0].name == "cleanup"


def _external_model(tmp_path, location: str):
    proto = _conv_model_with_constant_node()
    model = graphc.load(proto)
    path = graphc.save(model, tmp_path / "ext.onnx", external_data=True)
    saved = onnx.load(path, load_external_data=False)
    for init in saved.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(saved, path)
    return path


def test_external_data_roundtrip(tmp_path):
    proto = _conv_model_with_constant_node()
    model = graphc.load(proto)
    path = graphc.save(model, tmp_path / "ext.onnx", external_data=True)
    data_files = sorted(p.name for p in tmp_path.glob("ext.onnx.*.data"))
    assert len(data_files) == 1
    reloaded = graphc.load(path)
    assert reloaded.external_files == {tmp_path / data_files[0]}
    out = graphc.save(reloaded, tmp_path / "again.onnx")
    assert_same_outputs(proto, out, random_feeds(proto), rtol=0, atol=0)


@pytest.mark.parametrize("location", ["/etc/passwd", "../outside.bin", "sub/../../x.bin"])
def test_external_data_outside_folder_is_refused(tmp_path, location):
    path = _external_model(tmp_path, location)
    with pytest.raises(UnsafeModelError, match="refused"):
        graphc.load(path)


def test_external_weights_are_mapped_copy_on_write(tmp_path):
    proto = _conv_model_with_constant_node()
    path = graphc.save(graphc.load(proto), tmp_path / "ext.onnx", external_data=True)
    data = next(tmp_path.glob("ext.onnx.*.data"))
    before = data.read_bytes()
    model = graphc.load(path)
    weight = model.graph.nodes[0].inputs[1].values
    assert isinstance(weight, np.memmap)
    weight[...] = 0  # a pass writing in place never reaches the input file
    assert data.read_bytes() == before


def test_resave_replaces_data_pair_and_keeps_input_data(tmp_path):
    proto = _conv_model_with_constant_node()
    first = graphc.save(graphc.load(proto), tmp_path / "out.onnx", external_data=True)
    old = {p.name for p in tmp_path.glob("out.onnx.*.data")}
    model = graphc.load(first)
    model.graph.nodes[0].inputs[1].values = np.ones((4, 3, 3, 3), np.float32)
    second = graphc.save(model, tmp_path / "other.onnx", external_data=True)
    assert {p.name for p in tmp_path.glob("out.onnx.*.data")} == old  # the input's data is kept
    again = graphc.load(proto)  # a different model written over the same output
    again.graph.nodes[0].inputs[1].values = np.full((4, 3, 3, 3), 2, np.float32)
    graphc.save(again, second, external_data=True)
    assert len(list(tmp_path.glob("other.onnx.*.data"))) == 1  # the stale pair's data is gone
    assert np.all(graphc.load(tmp_path / "other.onnx").graph.nodes[0].inputs[1].values == 2)


def test_same_model_saved_twice_is_byte_identical(tmp_path):
    model = graphc.load(_conv_model_with_constant_node())
    a = graphc.save(model, tmp_path / "a" / "m.onnx", external_data=True) if (tmp_path / "a").mkdir() is None else None
    b = graphc.save(model, tmp_path / "b" / "m.onnx", external_data=True) if (tmp_path / "b").mkdir() is None else None
    assert a.read_bytes() == b.read_bytes()
    assert [p.read_bytes() for p in a.parent.glob("*.data")] == [p.read_bytes() for p in b.parent.glob("*.data")]


def test_abandoned_staging_folder_of_a_dead_save_is_removed(tmp_path):
    """A folder a dead save left, proven ours by its marker (see tests/ir/test_save_output_safety.py
    for the folders that only look like ours and are kept)."""
    import json
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".m.onnx.graphc-tmp-{dead.stdout.strip()}-abc"
    stale.mkdir()
    (stale / "m.onnx").write_bytes(b"partial")
    (stale / ".graphc-owner").write_text(json.dumps(
        {"kind": "graphc temporary save folder", "pid": int(dead.stdout), "token": "abc"}))
    graphc.save(graphc.load(_conv_model_with_constant_node()), tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize("entry,value,match", [
    ("offset", "abc", "not a number"),
    ("location", "a\x00b", "refused"),
])
def test_malformed_external_entries_are_one_line_errors(tmp_path, entry, value, match):
    path = graphc.save(graphc.load(_conv_model_with_constant_node()), tmp_path / "ext.onnx", external_data=True)
    saved = onnx.load(path, load_external_data=False)
    for init in saved.graph.initializer:
        for e in init.external_data:
            if e.key == entry:
                e.value = value.replace("\\x00", "\x00")
        if entry == "offset" and not any(e.key == "offset" for e in init.external_data):
            init.external_data.add(key="offset", value=value)
    onnx.save(saved, path)
    with pytest.raises((InputError, UnsafeModelError), match=match):
        graphc.load(path)


def test_missing_external_data_file(tmp_path):
    path = _external_model(tmp_path, "gone.bin")
    with pytest.raises(InputError, match="missing"):
        graphc.load(path)


def test_constant_node_feeding_graph_output_stays_a_node(tmp_path):
    const = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones(2, np.float32)))
    graph = helper.make_graph([const], "g", [], [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2])])
    model = graphc.load(make_model(graph))
    assert [n.op for n in model.graph.nodes] == ["Constant"]
    graphc.save(model, tmp_path / "c.onnx")


def test_model_copy_is_independent():
    model = graphc.load(_conv_model_with_constant_node())
    clone = model.copy()
    clone.graph.nodes[0].inputs[1].values[...] = 0
    assert np.any(model.graph.nodes[0].inputs[1].values != 0)
    assert os.fspath(clone.source or "") == os.fspath(model.source or "")


def test_toposort_orders_if_after_producers_its_branches_read():
    from graphc.ir import toposort

    then_graph = helper.make_graph([helper.make_node("Identity", ["outer"], ["t"])], "then", [],
                                   [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    else_graph = helper.make_graph([helper.make_node("Neg", ["outer"], ["e"])], "else", [],
                                   [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"]),
             helper.make_node("Relu", ["x"], ["outer"], name="producer"),
             helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph, name="if")]
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [zero])
    model = graphc.load(make_model(graph))
    g = model.graph
    producer_node = next(n for n in g.nodes if n.name == "producer")
    g.nodes.remove(producer_node)
    g.nodes.append(producer_node)  # now after the If, as a pass appending nodes would leave it
    toposort(g)
    names = [n.name for n in g.nodes]
    assert names.index("producer") < names.index("if")
