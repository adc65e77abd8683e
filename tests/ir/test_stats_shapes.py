"""Statistics (params, MACs) and shape inference with input-shape overrides."""
import numpy as np
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.ir import infer_shapes, upgrade_opset
from graphc.stats import model_stats
from support import assert_same_outputs, make_model, random_feeds


def _net(batch="N"):
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), "wdw"),
        numpy_helper.from_array(rng.standard_normal((8, 4, 2, 2)).astype(np.float32), "wt"),
        numpy_helper.from_array(rng.standard_normal((4 * 16 * 16, 10)).astype(np.float32), "wg"),
        numpy_helper.from_array(rng.standard_normal((10, 5)).astype(np.float32), "wm"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),       # 8x8x8
        helper.make_node("Conv", ["c1", "wdw"], ["c2"], pads=[1, 1, 1, 1], group=8),           # 8x8x8
        helper.make_node("ConvTranspose", ["c2", "wt"], ["c3"], strides=[2, 2]),               # 4x16x16
        helper.make_node("Flatten", ["c3"], ["f"]),
        helper.make_node("Gemm", ["f", "wg"], ["g"]),
        helper.make_node("MatMul", ["g", "wm"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 5])], inits)
    return make_model(graph)


EXPECTED = {
    "Conv0": 8 * 8 * 8 * 3 * 9,
    "Conv1": 8 * 8 * 8 * 1 * 9,
    "ConvTranspose": 8 * 8 * 8 * 4 * 4,
    "Gemm": 1024 * 10,
    "MatMul": 10 * 5,
}


def test_macs_per_node_with_input_shape_override():
    model = graphc.load(_net())
    stats = model_stats(model, {"x": (1, 3, 16, 16)})
    macs = [n.macs for n in stats.per_node]
    assert macs == list(EXPECTED.values())
    assert stats.macs == sum(EXPECTED.values())
    assert stats.params == 8 * 27 + 8 * 9 + 8 * 16 + 10240 + 50
    assert stats.weight_bytes == stats.params * 4
    assert stats.op_histogram["Conv"] == 2


def test_dynamic_model_reports_unknown_macs():
    stats = model_stats(graphc.load(_net()))
    assert len(stats.unknown_macs) == 5 and stats.macs == 0


def test_static_model_needs_no_override():
    stats = model_stats(graphc.load(_net(batch=2)))
    assert stats.macs == 2 * sum(EXPECTED.values())


def test_infer_shapes_does_not_touch_graph():
    model = graphc.load(_net())
    shapes = infer_shapes(model, {"x": (1, 3, 16, 16)})
    assert shapes["c3"].shape == (1, 4, 16, 16) and shapes["c3"].static
    assert model.graph.inputs[0].shape[0] == "N"
    assert infer_shapes(model)["c3"].shape[0] == "N"


def test_upgrade_opset_in_place_is_exact(tmp_path):
    proto = _net(batch=1)
    proto.opset_import[0].version = 11
    model = graphc.load(proto)
    graph = model.graph
    assert upgrade_opset(model, 13)
    assert model.graph is graph and model.opset == 13
    out = graphc.save(model, tmp_path / "up.onnx")
    assert_same_outputs(proto, out, random_feeds(proto), rtol=1e-6, atol=1e-6)
    assert not upgrade_opset(model, 12)


def test_measured_fallback_when_inference_stops():
    """PP-OCR rec computes Reshape targets at run time: static inference stops before its
    MatMuls, the measured fallback fills them in."""
    import pytest

    from support import PPOCR_SHAPES, ppocr_model

    path = ppocr_model("rec")
    if path is None:
        pytest.skip("rapidocr-onnxruntime not installed")
    model = graphc.load(path)
    static = model_stats(model, {"x": PPOCR_SHAPES["rec"]}, measure=False)
    measured = model_stats(model, {"x": PPOCR_SHAPES["rec"]})
    assert static.unknown_macs and not measured.unknown_macs
    assert measured.macs > static.macs
    matmuls = [n for n in measured.per_node if n.op == "MatMul"]
    assert all(n.macs > 0 for n in matmuls)
