"""Each pass asks for what it needs: a pass's ``prepares`` are inserted before it by the pass
manager when the pipeline does not already run them earlier, shown in the pipeline text, the
run's notes and ``graphc opt``'s output; ``quant{prepare=false}`` (or ``prepare=False`` for the
PassManager) runs exactly what was written."""
from __future__ import annotations

import json

import numpy as np
import pytest

import graphc
from graphc.calib.data import open_data
from graphc.cli import main
from graphc.passmanager import expand_preparation, parse_pipeline
from tiny_nets import conv_net

NOTE = "quant requires fold-bn,canonicalize: inserted"


@pytest.mark.parametrize("written, expanded, note", [
    ("quant", "fold-bn,canonicalize,quant", NOTE),
    ("prune,quant{calib=minmax}", "prune,fold-bn,canonicalize,quant{calib=minmax}", NOTE),
    ("canonicalize,quant", "canonicalize,fold-bn,quant", "quant requires fold-bn: inserted"),
    ("fold-bn,canonicalize{upgrade-opset=true},quant", "fold-bn,canonicalize{upgrade-opset=true},quant", None),
    ("quant{prepare=false}", "quant{prepare=false}", None),
    ("quant{weights-only=true}", "quant{weights-only=true}", None),
    ("fold-bn,cleanup", "fold-bn,cleanup", None),
])
def test_expansion(written, expanded, note):
    pipeline = expand_preparation(parse_pipeline(written))
    assert pipeline.text() == expanded
    if note is None:
        assert pipeline.notes == ()
    else:
        assert len(pipeline.notes) == 1 and pipeline.notes[0].startswith(note)
    # the printed text is a fixed point: parsing and expanding it again inserts nothing
    again = expand_preparation(parse_pipeline(pipeline.text()))
    assert again == pipeline and again.notes == ()


def _feeds(n=4):
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(n)]


def test_manager_runs_and_reports_the_inserted_passes():
    model = graphc.load(conv_net())
    report = graphc.PassManager("quant{placement=all}", data=open_data(_feeds(), model)).run(model)
    assert [r.name for r in report.records] == ["fold-bn", "canonicalize", "quant"]
    assert report.pipeline == "fold-bn,canonicalize,quant{placement=all}"
    assert report.notes and report.notes[0].startswith(NOTE)
    assert model.metadata["graphc.pipeline"] == report.pipeline


def test_manager_prepare_false_runs_the_pipeline_as_written():
    model = graphc.load(conv_net())
    report = graphc.PassManager("quant", data=open_data(_feeds(), model), prepare=False).run(model)
    assert [r.name for r in report.records] == ["quant"] and report.notes == []


def test_cli_prints_the_inserted_passes(capsys, tmp_path):
    src = tmp_path / "net.onnx"
    src.write_bytes(conv_net().SerializeToString())
    data = tmp_path / "calib.npz"
    np.savez(data, x=np.concatenate([f["x"] for f in _feeds(8)]))
    code = main(["opt", str(src), "-p", "quant", "--data", str(data), "-o", str(tmp_path / "out.onnx"),
                 "--report", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert code == 0
    assert "pipeline: fold-bn,canonicalize,quant\n  " + NOTE in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["pipeline"] == "fold-bn,canonicalize,quant"
    assert report["notes"][0].startswith(NOTE)
    assert [p["name"] for p in report["passes"]] == ["fold-bn", "canonicalize", "quant"]


def test_graphc_passes_says_what_runs_first(capsys):
    assert main(["passes"]) == 0
    assert "quant  (lossy, needs --data, runs fold-bn,canonicalize first)" in capsys.readouterr().out
