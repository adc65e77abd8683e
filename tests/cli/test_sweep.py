"""``graphc sweep``: two zoo models x two recipes write every output model, report and result
row, one summary (JSON, Markdown, HTML) with the Pareto front per model marked; a re-run skips
finished combinations (counted: no build runs), and a removed result runs again alone."""
from __future__ import annotations

import json
import math

import pytest

import graphc.sweep as sweep_module
from graphc.cli import main
from graphc.errors import OutputError
from graphc.executor import LocalExecutor
from graphc.sweep import mark_pareto, sweep
from support import MODELS

ZOO = [str(MODELS / "mobilenetv2_digits.onnx"), str(MODELS / "transformer_digits.onnx")]


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = sweep_module.build
    monkeypatch.setattr(sweep_module, "build", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    return calls


def test_sweep_writes_everything_and_resumes(tmp_path, counted, sweep_recipes):
    out = tmp_path / "out"
    recipes = sweep_recipes
    first = sweep(ZOO, recipes, out, executor=LocalExecutor(1))  # in this process: builds are counted
    assert (first.ran, first.skipped, len(counted)) == (4, 0, 4)
    for model in ("mobilenetv2_digits", "transformer_digits"):
        for recipe in ("exact", "int8"):
            folder = out / f"{model}--{recipe}"
            assert (folder / "model.onnx").stat().st_size > 0
            assert json.loads((folder / "report.json").read_text())["schema"].startswith("graphc.report/")
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert [(r["model"], r["recipe"]) for r in rows] == [(m, r) for m in ZOO for r in recipes]
    for row in rows:
        assert row["size_bytes"] > 0 and row["sqnr_db"] is not None
    for model in ZOO:
        exact, int8 = [r for r in rows if r["model"] == model]
        assert float(exact["sqnr_db"]) > 100 > 60 > float(int8["sqnr_db"])
        # exact is the most accurate: on the front; int8 only where it is smaller
        assert exact["pareto"] and int8["pareto"] == (int8["size_bytes"] < exact["size_bytes"])
    assert "| mobilenetv2_digits.onnx | int8.toml |" in (out / "summary.md").read_text()
    assert (out / "summary.html").read_text().count('class="pareto"') == sum(r["pareto"] for r in rows)
    # the size/error plot: one per model, a point per recipe at its entropy-coded size and SQNR
    page = (out / "summary.html").read_text()
    finite = [r for r in rows if math.isfinite(float(r["sqnr_db"]))]  # an exact result is listed, not drawn
    assert page.count("<svg") == 2 and page.count('<circle class="point') == len(finite) >= 2
    assert page.count("Not drawn: exact.toml (SQNR inf)") == len(rows) - len(finite)
    for row in rows:
        assert 0 < row["entropy_coded_bytes"] <= row["size_bytes"] * 1.02
    for row in finite:
        assert f'data-x="{float(row["entropy_coded_bytes"])!r}" data-y="{float(row["sqnr_db"])!r}"' in page

    again = sweep(ZOO, recipes, out, executor=LocalExecutor(1))
    assert (again.ran, again.skipped, len(counted)) == (0, 4, 4)
    assert again.rows == first.rows
    (out / "transformer_digits--int8" / "result.json").unlink()
    third = sweep(ZOO, recipes, out, executor=LocalExecutor(1))
    assert (third.ran, third.skipped, len(counted)) == (1, 3, 5)
    assert counted[-1] == ZOO[1]


def test_pareto_front_per_model():
    rows = [{"model": "a", "size_bytes": 10, "latency_ms": None, "sqnr_db": 40.0},
            {"model": "a", "size_bytes": 5, "latency_ms": None, "sqnr_db": 30.0},
            {"model": "a", "size_bytes": 6, "latency_ms": None, "sqnr_db": 20.0},  # dominated by the 2nd
            {"model": "b", "size_bytes": 99, "latency_ms": None, "sqnr_db": 1.0}]  # alone for its model
    assert [r["pareto"] for r in mark_pareto(rows)] == [True, True, False, True]


def test_colliding_names_are_refused(tmp_path, sweep_recipes):
    with pytest.raises(OutputError, match="share a file name"):
        sweep([ZOO[0], ZOO[0]], sweep_recipes[:1], tmp_path / "out")


def test_cli_sweep_on_local_processes(tmp_path, capsys, sweep_recipes):
    out = tmp_path / "out"
    args = ["sweep", "--model", ZOO[0], "--recipe", *sweep_recipes, "-o", str(out)]
    assert main(args) == 0
    assert "2 run, 0 already finished" in capsys.readouterr().out
    assert main(args) == 0
    assert "0 run, 2 already finished" in capsys.readouterr().out
    assert main(["sweep", "--model", str(tmp_path / "missing.onnx"), "--recipe", *sweep_recipes,
                 "-o", str(out)]) == 2
