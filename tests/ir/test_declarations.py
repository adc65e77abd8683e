"""Load repairs shape declarations onnxruntime ignores and onnx.checker enforces (issue 18 item 2).

The final result check must then fail only on problems the passes introduced: a Conv/ConvTranspose/
Gemm + BN model whose graph output has no shape goes through ``opt -p fold-bn,cleanup`` and folds
exactly; declarations that contradict shape inference are replaced; a model whose output shape
cannot be repaired is refused at load, before any pass runs.
"""
from __future__ import annotations

from pathlib import Path

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.cli import main
from graphc.errors import ModelError
from support import make_model, random_feeds, run

BAD = Path(__file__).resolve().parents[1] / "data" / "bad"  # the hostile corpus (tests/data/make_bad.py)

vi = helper.make_tensor_value_info


@pytest.mark.parametrize("op", ["conv", "convtranspose", "gemm"])
def test_shapeless_output_folds_exactly(op, tmp_path, capfd):
    src = BAD / f"shapeless_output_{op}_bn.onnx"
    out = tmp_path / "out.onnx"
    assert main(["opt", str(src), "-p", "fold-bn,cleanup", "-o", str(out)]) == 0
    warnings = [line for line in capfd.readouterr().err.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "declared without a shape" in warnings[0] and "'y'" in warnings[0]
    result = onnx.load(out)
    onnx.checker.check_model(result, full_check=True)
    assert [n.op_type for n in result.graph.node] == [{"conv": "Conv", "convtranspose": "ConvTranspose",
                                                       "gemm": "Gemm"}[op]]
    assert result.graph.output[0].type.tensor_type.HasField("shape")
    feeds = random_feeds(src)
    for ref, got in zip(run(src, feeds), run(out, feeds)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_contradicting_declarations_replaced(tmp_path, caplog):
    src = BAD / "wrong_declared_shapes.onnx"
    with caplog.at_level(logging.WARNING, logger="graphc"):
        model = graphc.load(src)
    assert model.graph.outputs[0].shape == [1, 4, 8, 8]  # was [1, 'seqlen']
    assert model.graph.tensors()["c"].shape is None  # value-info [0, 0, 8, 8] dropped
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert any("contradict shape inference; replaced: 'y'" in m for m in messages)
    assert any("value-info" in m and "'c'" in m for m in messages)
    graphc.PassManager("fold-bn,cleanup").run(model)
    out = graphc.save(model, tmp_path / "out.onnx")  # full checker
    feeds = random_feeds(src)
    for ref, got in zip(run(src, feeds), run(out, feeds)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_declarations_that_agree_are_kept(caplog):
    """Symbolic or unknown dims agree with anything: no repair, no warning."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["y"])]
    proto = make_model(helper.make_graph(nodes, "g", [vi("x", TensorProto.FLOAT, ["n", 4])],
                                         [vi("y", TensorProto.FLOAT, ["batch", None])],
                                         value_info=[vi("r", TensorProto.FLOAT, ["n", 4])]))
    with caplog.at_level(logging.WARNING, logger="graphc"):
        model = graphc.load(proto)
    assert not caplog.records
    assert model.graph.outputs[0].shape == ["batch", None]
    assert model.graph.tensors()["r"].shape == ["n", 4]


def test_output_shape_that_cannot_be_repaired(tmp_path, capfd):
    """An op of an unknown domain: inference cannot give the shape-less output a shape. The
    model loads (inspect and analyses work, with a warning), but ``opt`` refuses it before any
    pass runs: the result check would fail after the whole pipeline."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Foo", ["r"], ["y"], domain="com.example")]
    proto = make_model(helper.make_graph(nodes, "g", [vi("x", TensorProto.FLOAT, [2])],
                                         [vi("y", TensorProto.FLOAT, None)]))
    proto.opset_import.append(helper.make_opsetid("com.example", 1))
    assert "shape" in graphc.load(proto).checker_error
    src, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(proto, src)
    assert main(["inspect", str(src)]) == 0
    capfd.readouterr()
    assert main(["opt", str(src), "-p", "cleanup", "-o", str(out)]) == 2
    captured = capfd.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("graphc: error: ") and "no valid result" in lines[0], lines
    assert "cleanup" not in captured.out and not out.exists()


def test_group_must_divide_input_channels_when_weight_fits():
    """The weight alone (4 output channels, group 2) is fine; the input has 3 channels."""
    w = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "w")
    proto = make_model(helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="c", group=2)], "g",
                                         [vi("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                                         [vi("y", TensorProto.FLOAT, [1, 4, 6, 6])], [w]))
    with pytest.raises(ModelError, match="Conv 'c': group 2 does not divide the 3 channels of its input 'x'"):
        graphc.load(proto)
    proto.graph.input[0].CopyFrom(vi("x", TensorProto.FLOAT, [1, 2, 8, 8]))  # must load
    graphc.load(proto)
