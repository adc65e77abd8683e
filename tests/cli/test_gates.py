"""Build-step gates: --min-sqnr, --max-top1-drop, --min-speedup (and the other error gates). A failed
gate exits 1 and leaves no model (unless --keep-failed); a passed one writes it."""
from __future__ import annotations

import functools
import itertools
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import graphc.build
from graphc.bench import latency
from report_passes import write_labelled_data, write_net
from support import cli, make_model


pytestmark = pytest.mark.usefixtures("report_passes_registered")


@pytest.fixture
def net(tmp_path):
    return write_net(tmp_path)


@pytest.fixture
def outdir(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    return out


def report_of(path):
    return json.loads(path.read_text())


def gate(report, name):
    return next(g for g in report["gates"] if g["name"] == name)


@pytest.fixture
def fake_clock(monkeypatch):
    """Every run of model A takes 2 ms and of model B 1 ms (A is timed first in each round)."""
    ticks = itertools.accumulate(itertools.cycle([0.0, 0.002, 0.0, 0.001]))
    clock = functools.partial(next, ticks)
    monkeypatch.setattr(latency, "alternate", functools.partial(latency.alternate, clock=clock))


def test_min_sqnr_fails_and_writes_nothing_then_passes(capsys, net, outdir):
    out, report = outdir / "x.onnx", outdir / "r.json"
    code, text, err = cli(capsys, "opt", net, "-p", "test-scale", "-o", out, "--min-sqnr", "40", "--report", report)
    assert code == 1 and err == ""
    assert not out.exists() and sorted(p.name for p in outdir.iterdir()) == ["r.json"]
    data = report_of(report)
    sqnr = gate(data, "min_sqnr")
    assert not sqnr["passed"] and sqnr["value"] < 40 and sqnr["detail"] == "worst output 'probs'"
    assert data["passed"] is False and data["output_written"] is False
    assert sqnr["value"] == pytest.approx(float(data["verification"]["outputs"][0]["sqnr_db"]))
    assert "min SQNR" in text and "FAIL" in text and "not written" in text
    code, text, _ = cli(capsys, "opt", net, "-p", "test-scale", "-o", out, "--min-sqnr", "3")
    assert code == 0 and out.is_file() and "result: PASS" in text


def test_keep_failed_writes_the_model_but_still_exits_1(capsys, net, outdir):
    out = outdir / "x.onnx"
    code, text, _ = cli(capsys, "opt", net, "-p", "test-scale", "-o", out, "--min-sqnr", "40", "--keep-failed")
    assert code == 1 and out.is_file() and f"wrote {out}" in text
    onnx.checker.check_model(str(out), full_check=True)


def test_max_top1_drop_with_labels_uses_accuracy(capsys, tmp_path, net, outdir):
    data = write_labelled_data(tmp_path)
    labels = np.load(data)["labels"]
    report = outdir / "r.json"
    # fc's weight zeroed: every prediction becomes argmax(bias)
    code, _, _ = cli(capsys, "opt", net, "-p", "test-scale{node=fc factor=0.0}", "-o", outdir / "x.onnx",
                     "--eval-data", data, "--max-top1-drop", "0.05", "--report", report)
    r = report_of(report)
    drop = gate(r, "max_top1_drop")
    assert code == 1 and not drop["passed"] and not (outdir / "x.onnx").exists()
    assert r["accuracy"]["reference"] == 1.0 and r["accuracy"]["samples"] == 16
    assert r["accuracy"]["candidate"] == pytest.approx(np.mean(labels == _bias_class()))
    assert drop["value"] == pytest.approx(1.0 - np.mean(labels == _bias_class())) == r["accuracy"]["drop"]
    assert "on 16 labelled samples" in drop["detail"]
    code, _, _ = cli(capsys, "opt", net, "-p", "test-scale{node=c1 factor=1.0}", "-o", outdir / "x.onnx",
                     "--eval-data", data, "--max-top1-drop", "0.0")
    assert code == 0 and (outdir / "x.onnx").is_file()


def _bias_class() -> int:
    from tiny_nets import _weights

    return int(np.argmax(_weights()["bfc"]))


def test_max_top1_drop_without_labels_uses_agreement(capsys, tmp_path, net, outdir):
    report = outdir / "r.json"
    code, _, _ = cli(capsys, "opt", net, "-p", "test-scale{node=fc factor=0.0}", "-o", outdir / "x.onnx",
                     "--max-top1-drop", "0.05", "--samples", "16", "--report", report)
    r = report_of(report)
    drop = gate(r, "max_top1_drop")
    top1 = r["verification"]["outputs"][0]["top1"]
    assert code == 1 and r["accuracy"] is None
    assert drop["value"] == pytest.approx(1.0 - top1) and "top-1 disagreement" in drop["detail"]


def test_min_speedup_runs_the_benchmark(capsys, net, outdir, fake_clock):
    report = outdir / "r.json"
    code, text, _ = cli(capsys, "opt", net, "-p", "cleanup", "-o", outdir / "x.onnx", "--min-speedup", "1.5",
                        "--bench-rounds", "4", "--report", report)
    r = report_of(report)
    assert code == 0 and r["latency"]["ratio"] == pytest.approx(2.0) and r["latency"]["runs"] == 4
    assert gate(r, "min_speedup")["value"] == pytest.approx(2.0) and r["summary"]["latency"]["speedup"] == 2.0
    assert "2.00x speed" in text
    code, _, _ = cli(capsys, "opt", net, "-p", "cleanup", "-o", outdir / "y.onnx", "--min-speedup", "3",
                     "--bench-rounds", "4")
    assert code == 1 and not (outdir / "y.onnx").exists()


def test_a_gate_that_cannot_be_measured_fails(capsys, tmp_path, outdir):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "scalar",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])])
    src = tmp_path / "scalar.onnx"
    src.write_bytes(make_model(graph).SerializeToString())
    report = outdir / "r.json"
    code, _, _ = cli(capsys, "opt", src, "-p", "cleanup", "-o", outdir / "x.onnx", "--min-top1", "0.5",
                     "--report", report)
    r = report_of(report)
    assert code == 1 and r["verification"]["passed"] and not gate(r, "min_top1")["passed"]
    assert gate(r, "min_top1")["value"] is None and "no output has a" in gate(r, "min_top1")["detail"]
    assert not (outdir / "x.onnx").exists()


def test_no_gate_no_verify_is_unchecked_and_writes(capsys, net, outdir):
    report = outdir / "r.json"
    code, text, _ = cli(capsys, "opt", net, "-p", "test-scale", "-o", outdir / "x.onnx", "--report", report)
    r = report_of(report)
    # the report measures the error, but only --verify or a gate decides
    assert code == 0 and r["passed"] is None and r["gates"] == [] and "result: UNCHECKED" in text
    assert r["verification"]["tolerances"]["mode"] == "lossy" and r["summary"]["error"]["sqnr_db"] < 40


@pytest.mark.parametrize("min_sqnr,passes", [("3", True), ("40", False)])
def test_large_models_are_verified_from_a_staged_file(capsys, monkeypatch, net, outdir, min_sqnr, passes):
    """Above the in-memory limit the result is saved first, verified from the file, and removed on
    failure: the no-output-on-failure guarantee holds either way."""
    from graphc import verify

    monkeypatch.setattr(graphc.build, "IN_MEMORY_LIMIT", -1)
    candidates = []
    original = verify.compare_models

    def spy(reference, candidate, **kwargs):
        candidates.append(candidate)
        assert candidate.is_file()  # verified from the staged file, not from memory
        return original(reference, candidate, **kwargs)

    monkeypatch.setattr(verify, "compare_models", spy)
    out = outdir / "x.onnx"
    code, _, _ = cli(capsys, "opt", net, "-p", "test-scale", "-o", out, "--min-sqnr", min_sqnr)
    assert code == (0 if passes else 1)
    assert len(candidates) == 1 and candidates[0].name == "x.onnx" and ".staging." in str(candidates[0])
    assert sorted(p.name for p in outdir.iterdir()) == (["x.onnx"] if passes else [])
