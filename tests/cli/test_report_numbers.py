"""The report's numbers equal what `graphc inspect`, `graphc verify` and `graphc bench` print for the
same models and data: one measurement, however it is asked for."""
from __future__ import annotations

import functools
import itertools
import json

import pytest

from graphc.bench import latency
from graphc.cli import main
from report_passes import write_labelled_data, write_net


pytestmark = pytest.mark.usefixtures("report_passes_registered")


def cli_json(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert err == ""
    return code, json.loads(out) if out.strip().startswith("{") else out


@pytest.fixture
def deterministic_clock(monkeypatch):
    """Alternated runs take 3 ms (A) and 2 ms (B): bench and report then measure the same."""
    def alternate(*args, **kwargs):
        ticks = itertools.accumulate(itertools.cycle([0.0, 0.003, 0.0, 0.002]))
        return real(*args, clock=functools.partial(next, ticks), **kwargs)

    real = latency.alternate
    monkeypatch.setattr(latency, "alternate", alternate)


def test_report_numbers_equal_inspect_verify_and_bench(capsys, monkeypatch, tmp_path, deterministic_clock):
    monkeypatch.chdir(tmp_path)
    write_net(tmp_path)
    write_labelled_data(tmp_path)
    code, _ = cli_json(capsys, "opt", "net.onnx", "-p", "test-scale{node=c2 factor=1.2},cleanup", "-o", "out.onnx",
                       "--eval-data", "eval.npz", "--min-cosine", "0.5", "--samples", "5", "--bench",
                       "--bench-rounds", "3", "--report", "r.json", "-q")
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())

    _, before = cli_json(capsys, "inspect", "net.onnx", "--json")
    _, after = cli_json(capsys, "inspect", "out.onnx", "--json")
    assert report["before"] == before and report["after"] == after
    assert report["summary"]["params"] == {"before": before["params"], "after": after["params"], "ratio": 1.0}
    assert report["summary"]["file_bytes"]["after"] == (tmp_path / "out.onnx").stat().st_size

    _, verified = cli_json(capsys, "verify", "net.onnx", "out.onnx", "--data", "eval.npz", "--min-cosine", "0.5",
                           "--samples", "5", "--json")
    assert report["accuracy"] == verified.pop("accuracy")
    assert report["verification"] == verified
    assert report["summary"]["error"]["sqnr_db"] == verified["outputs"][0]["sqnr_db"]
    assert report["summary"]["task"] == report["accuracy"] and report["accuracy"]["samples"] == 16

    _, bench = cli_json(capsys, "bench", "net.onnx", "out.onnx", "--data", "eval.npz", "--rounds", "3", "--json")
    assert report["latency"] == bench and bench["ratio"] == pytest.approx(1.5)


def test_text_report_shows_the_five_numbers(capsys, tmp_path):
    net = write_net(tmp_path)
    data = write_labelled_data(tmp_path)
    code = main([str(a) for a in ("opt", net, "-p", "test-scale", "-o", tmp_path / "o.onnx", "--eval-data", data,
                                  "--bench", "--bench-rounds", "2", "--bench-warmup", "0")])
    out = capsys.readouterr().out
    assert code == 0
    for label in ("parameters", "file size", "MACs", "SQNR (worst output)", "accuracy (16 labelled)",
                  "latency (median, 2 threads)"):
        assert label in out
