"""Graph inputs that have an initializer default stay inputs, with their default (issue 15 item 4)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

import graphc
from support import run

BAD = Path(__file__).resolve().parents[1] / "data" / "bad"  # the hostile corpus (tests/data/make_bad.py)

SRC = BAD / "input_with_default.onnx"


def test_input_with_default_stays_an_input(tmp_path):
    model = graphc.load(SRC)
    assert [t.name for t in model.graph.inputs] == ["x", "offset"]
    graphc.PassManager("cleanup,fold-constants,canonicalize").run(model)
    out = graphc.save(model, tmp_path / "out.onnx")
    result = onnx.load(out)
    assert [i.name for i in result.graph.input] == ["x", "offset"]
    default = next(t for t in result.graph.initializer if t.name == "offset")
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(default), np.full((1, 4, 1, 1), 0.5, np.float32))
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    offset = np.full((1, 4, 1, 1), -2.0, np.float32)
    np.testing.assert_allclose(run(out, {"x": x})[0], run(SRC, {"x": x})[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run(out, {"x": x, "offset": offset})[0],
                               run(SRC, {"x": x, "offset": offset})[0], rtol=1e-5, atol=1e-6)


def test_ir3_initializers_listed_as_inputs_stay_weights():
    """Before IR 4 every initializer had to be listed as an input: those are weights, not defaults."""
    model = graphc.load(BAD / "opset7.onnx")
    assert model.input_defaults == {}
    assert [t.name for t in model.graph.inputs] == ["x"]
