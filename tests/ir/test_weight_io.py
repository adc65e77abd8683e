"""Large weights between files and numpy without protobuf copies (graphc.ir.weight_io, used by
graphc.load / graphc.save): files read back by protobuf unchanged, every fallback, peak memory."""
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.errors import InputError
from graphc.ir import weight_io
from support import assert_same_outputs, make_model, random_feeds


def _conv_chain(blocks=3, channels=16, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(blocks):
        w = (rng.standard_normal((channels, channels, 3, 3)) / 12).astype(dtype)  # 9 KB: streamed
        b = rng.standard_normal(channels).astype(dtype)                            # 64 B: protobuf
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        y = "y" if i == blocks - 1 else f"c{i}"
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [y], pads=[1, 1, 1, 1]))
        x = y
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", elem, [1, channels, 5, 5])],
                              [helper.make_tensor_value_info("y", elem, [1, channels, 5, 5])], inits)
    return make_model(graph)


def _initializers(proto):
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


def _same_initializers(a, b):
    ia, ib = _initializers(a), _initializers(b)
    assert ia.keys() == ib.keys()
    for name in ia:
        assert ia[name].dtype == ib[name].dtype
        np.testing.assert_array_equal(ia[name], ib[name])


def test_split_finds_large_raw_data_and_leaves_the_rest(tmp_path):
    proto = _conv_chain()
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    light, raw = weight_io.split_model_file(path)
    assert sorted(t.name for t in raw) == ["w0", "w1", "w2"]
    rest = onnx.ModelProto.FromString(light)
    assert [t.name for t in rest.graph.initializer] == ["b0", "b1", "b2"]
    assert len(rest.graph.node) == 3 and len(light) < 1000
    with open(path, "rb") as fh:
        for tensor in raw:
            np.testing.assert_array_equal(weight_io.read_raw(fh, tensor), _initializers(proto)[tensor.name])


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_load_save_roundtrip_reads_back_with_protobuf(tmp_path, dtype):
    proto = _conv_chain(dtype=dtype)
    src = tmp_path / "in.onnx"
    onnx.save(proto, src)
    model = graphc.load(src)
    assert isinstance(model.graph.tensors()["w0"], graphc.ir.model.gs.Constant)
    out = graphc.save(model, tmp_path / "out.onnx")
    saved = onnx.load(str(out))  # protobuf's own parser on the hand-framed file
    onnx.checker.check_model(saved, full_check=True)
    _same_initializers(proto, saved)
    assert [n.op_type for n in saved.graph.node] == ["Conv"] * 3
    if dtype != np.float64:  # onnxruntime has no float64 Conv
        assert_same_outputs(proto, out, random_feeds(proto) if dtype == np.float32 else
                            {"x": np.ones((1, 16, 5, 5), dtype)}, rtol=0, atol=0)
    again = graphc.save(graphc.load(out), tmp_path / "again.onnx")
    _same_initializers(proto, onnx.load(str(again)))


def test_external_data_is_written_from_the_arrays(tmp_path):
    proto = _conv_chain()
    model = graphc.load(proto)
    out = graphc.save(model, tmp_path / "ext.onnx", external_data=True)
    assert next(tmp_path.glob("ext.onnx.*.data")).stat().st_size == 3 * (9 * 16 * 16 * 4 + 16 * 4)
    light = onnx.load(str(out), load_external_data=False)
    assert all(t.data_location == TensorProto.EXTERNAL for t in light.graph.initializer)
    _same_initializers(proto, onnx.load(str(out)))
    reloaded = graphc.load(out)
    _same_initializers(proto, graphc.ir.to_proto(reloaded))


def test_initializer_that_is_also_a_graph_input_loads_as_from_the_proto(tmp_path):
    """Such weights are not split off: graphsurgeon sees them exactly as in the file. They are
    inputs with a default (issue 15): they stay inputs and keep their default."""
    proto = _conv_chain(blocks=1)
    proto.graph.input.append(helper.make_tensor_value_info("w0", TensorProto.FLOAT, [16, 16, 3, 3]))
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    from_file, from_proto = graphc.load(path), graphc.load(proto)
    assert [t.name for t in from_file.graph.inputs] == [t.name for t in from_proto.graph.inputs]
    assert "w0" in [t.name for t in from_file.graph.inputs]
    np.testing.assert_array_equal(from_file.input_defaults["w0"], from_proto.input_defaults["w0"])
    _same_initializers(proto, onnx.load(str(graphc.save(from_file, tmp_path / "out.onnx"))))


def test_model_with_subgraphs_keeps_weights_in_the_proto(tmp_path):
    big = numpy_helper.from_array(np.arange(512, dtype=np.float32), "big")
    then = helper.make_graph([helper.make_node("Add", ["x", "big"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [512])])
    other = helper.make_graph([helper.make_node("Sub", ["x", "big"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [512])])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)], "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [512])], [big])
    proto = make_model(graph)
    path = tmp_path / "if.onnx"
    onnx.save(proto, path)
    out = graphc.save(graphc.load(path), tmp_path / "out.onnx")
    feeds = {"c": np.array(True), "x": np.ones(512, np.float32)}
    assert_same_outputs(proto, out, feeds, rtol=0, atol=0)


def test_truncated_file_is_an_input_error(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_conv_chain(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(InputError):
        graphc.load(path)


def test_load_and_save_hold_the_weights_about_once(tmp_path):
    """A 64 MB model: peak RSS of load + save stays under the import baseline + 1.5x the weights
    (protobuf parsing and serializing held about 4x)."""
    proto = _conv_chain(blocks=64, channels=160)  # 64 x 0.92 MB
    path = tmp_path / "big.onnx"
    onnx.save(proto, path)
    size = path.stat().st_size
    script = textwrap.dedent(f"""
        import graphc, graphc.ir.weight_io
        from graphc.passmanager.memory import peak_rss
        base = peak_rss()
        model = graphc.load({str(path)!r})
        graphc.save(model, {str(tmp_path / 'out.onnx')!r})
        print(base, peak_rss())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    base, peak = map(int, out.stdout.split())
    assert peak - base < 1.5 * size, (peak - base) / size
