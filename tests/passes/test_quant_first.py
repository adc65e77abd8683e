"""quant as the first and only pass: graphs nothing canonicalized before it.

Exporters write affine maps as chains of scalar Add/Mul (tf2onnx's ``(h + 1) * 0.5``, paddle2onnx's
``h + 3`` read by two nodes). The quant planner folds such a chain into one DequantizeLinear of its
source's integers; a fold's output has no integers of its own, so no fold may start from it
(before the fix, ``write_fold`` raised ``KeyError`` on PP-OCRv4 det/rec and on a tf2onnx-style
classifier whenever quant ran without canonicalize before it).
"""
import sys

import numpy as np
import pytest
from onnx import helper, numpy_helper

import graphc
from graphc.calib.data import open_data
from support import ROOT, assert_valid, make_model, op_count, ppocr_model, sqnr_over
from tf2onnx_net import tf2onnx_classifier, tf2onnx_feeds

RNG = np.random.default_rng(3)


def _quantize(model, feeds, pipeline):
    reference = model.copy()
    report = graphc.PassManager(pipeline, data=open_data(feeds, model)).run(model)
    return reference, report


def _conv_then(nodes, inits, channels=8):
    """x (1, 4, 10, 10) -> Conv 'conv' -> c, then ``nodes`` ending in 'y' -> Conv 'head' -> out."""
    n = helper.make_node
    body = [n("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"), *nodes,
            n("Conv", ["y", "w2"], ["out"], name="head")]
    consts = {"w": (RNG.standard_normal((channels, 4, 3, 3)) * 0.3).astype(np.float32),
              "b": (RNG.standard_normal(channels) * 0.1).astype(np.float32),
              "w2": (RNG.standard_normal((channels, channels, 1, 1)) * 0.3).astype(np.float32),
              **{k: np.asarray(v, np.float32) for k, v in inits.items()}}
    graph = helper.make_graph(
        body, "g", [helper.make_tensor_value_info("x", 1, [1, 4, 10, 10])],
        [helper.make_tensor_value_info("out", 1, [1, channels, 10, 10])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return graphc.load(make_model(graph))


def _feeds(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 4, 10, 10)).astype(np.float32)} for _ in range(n)]


def test_add_then_mul_chain_folds_into_one_dequantize(tmp_path):
    n = helper.make_node
    model = _conv_then([n("Add", ["c", "one"], ["s"], name="add"), n("Mul", ["s", "half"], ["y"], name="mul")],
                       {"one": 1.0, "half": 0.5})
    reference, report = _quantize(model, _feeds(), "quant{placement=all prepare=false}")
    assert op_count(model, "Add") == 0 and op_count(model, "Mul") == 0  # (c + 1) * 0.5 is one DQ of c's integers
    assert report.records[-1].modified
    assert_valid(model, tmp_path)
    assert sqnr_over(reference, model, _feeds(4, seed=9)) > 30


def test_fold_never_starts_from_a_fold_output(tmp_path):
    """``y1 = c + 3`` has two readers, so its fold stops there; ``y1 + 0.5`` must not fold from
    ``y1`` (a DQ of c's integers, not integers of its own) - it runs as a QLinearAdd instead."""
    n = helper.make_node
    model = _conv_then([n("Add", ["c", "three"], ["y1"], name="add1"),
                        n("Add", ["y1", "half"], ["y2"], name="add2"),
                        n("Mul", ["y1", "y2"], ["y"], name="mul")], {"three": 3.0, "half": 0.5})
    reference, report = _quantize(model, _feeds(), "quant{placement=all prepare=false}")
    record = report.records[-1]
    assert record.modified
    assert op_count(model, "Add") == 1  # add1 folded into a DQ; add2 stays (on integers)
    assert_valid(model, tmp_path)
    assert sqnr_over(reference, model, _feeds(4, seed=9)) > 25


@pytest.mark.parametrize("placement", ["auto", "all"])
def test_tf2onnx_classifier_quantizes_as_the_only_pass(placement, tmp_path):
    model = tf2onnx_classifier()
    # static QDQ (activations=auto measures static against dynamic on this model: tests/passes/test_quant_mode.py)
    reference, report = _quantize(model, tf2onnx_feeds(), f"quant{{placement={placement} activations=u8 prepare=false}}")
    assert report.records[-1].modified
    assert op_count(model, "QuantizeLinear") >= 5
    assert_valid(model, tmp_path)
    assert sqnr_over(reference, model, tf2onnx_feeds(8, seed=5)) > 30


def _rendered(kind, n):
    if not (ROOT / "benchmarks" / "ppocr_data.py").is_file():
        pytest.skip("benchmarks/ppocr_data.py (the page renderer) is not in this checkout")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import ppocr_data

    return ppocr_data.feeds(kind, n, seed=1, det_side=160)


@pytest.mark.parametrize("kind", ["det", "rec"])
def test_ppocr_quant_first_and_only(kind, tmp_path):
    """Measured on rendered pages/lines (4 to calibrate, 2 held out): det 12.4 dB, rec 17.2 dB
    (with the preparation, the default: 29.9 dB and 16.9 dB)."""
    path = ppocr_model(kind)
    if path is None:
        pytest.skip("rapidocr-onnxruntime is not installed")
    model = graphc.load(path)
    feeds = _rendered(kind, 6)
    reference, report = _quantize(model, feeds[:4], "quant{prepare=false}")
    assert [r.name for r in report.records] == ["quant"]
    assert report.records[-1].modified and op_count(model, "QuantizeLinear") > 10
    assert_valid(model, tmp_path)
    assert sqnr_over(reference, model, feeds[4:]) > 10
