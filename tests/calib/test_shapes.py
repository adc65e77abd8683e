"""Concrete shapes for dynamic inputs: --input-shape, else the data's first sample, else a
nominal shape (batch 1, side 224 / length 128), said in one line - not a refusal."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

import graphc
from graphc.calib.shapes import NOMINAL_LENGTH, NOMINAL_SIDE, concrete_input_shapes, nominal_shape
from graphc.cli import main
from graphc.passmanager import PassManager
from support import ppocr_model


def _spec(name, *shape):
    return SimpleNamespace(name=name, shape=tuple(shape))


def test_order_given_then_data_then_nominal():
    specs = [_spec("x", None, 3, "H", "W")]
    given = concrete_input_shapes(specs, {"x": (2, 3, 32, 48)}, [{"x": np.zeros((1, 3, 8, 8))}])
    assert given.shapes == {"x": (2, 3, 32, 48)} and given.origin == "--input-shape"
    data = concrete_input_shapes(specs, None, [{"x": np.zeros((1, 3, 8, 10))}])
    assert data.shapes == {"x": (1, 3, 8, 10)} and data.origin == "the first data sample's shape"
    nominal = concrete_input_shapes(specs)
    assert nominal.shapes == {"x": (1, 3, NOMINAL_SIDE, NOMINAL_SIDE)}
    assert nominal.origin == "a nominal shape (x:1x3x224x224; --input-shape to choose)"


def test_nominal_dims_and_the_plain_cases():
    assert nominal_shape(("N", 3, 48, None)) == (1, 3, 48, NOMINAL_SIDE)    # PP-OCR rec: width 224
    assert nominal_shape((None, "T")) == (1, NOMINAL_LENGTH)                 # a sequence
    batch = concrete_input_shapes([_spec("x", "N", 3, 8, 8)])
    assert batch.shapes == {"x": (1, 3, 8, 8)} and batch.origin.startswith("batch 1 (x:1x3x8x8")
    static = concrete_input_shapes([_spec("x", 1, 3, 8, 8)])
    assert static.shapes == {"x": (1, 3, 8, 8)} and static.origin is None
    assert concrete_input_shapes([_spec("x"), _spec("t", "T")]).shapes == {"x": (), "t": (1,)}  # () is a scalar


@pytest.mark.parametrize("kind", ["det", "cls"])
def test_ppocr_prune_flops_runs_without_flags(kind, tmp_path, capsys):
    path = ppocr_model(kind)
    if path is None:
        pytest.skip("rapidocr-onnxruntime is not installed")
    out = tmp_path / "out.onnx"
    code = main(["opt", str(path), "-p", "prune{flops=0.8}", "-o", str(out), "--report", str(tmp_path / "r.json")])
    text = capsys.readouterr().out
    assert code == 0 and out.is_file(), text
    assert "  prune counts MACs at a nominal shape (x:1x3x" in text
    report = json.loads((tmp_path / "r.json").read_text())
    assert any(n.startswith("prune counts MACs at a nominal shape") for n in report["notes"])
    prune = report["passes"][0]["stats"]
    assert 0.75 <= prune["macs_kept"] <= 0.8


def test_manager_notes_the_shape_once_per_run():
    from tiny_nets import conv_net

    model = graphc.load(conv_net(batch="N", spatial="S"))
    report = PassManager("prune{flops=0.7 round-to=1}").run(model)
    assert report.notes == ["prune counts MACs at a nominal shape (x:1x3x224x224; --input-shape to choose)"]
