"""``--max-seconds`` and the recipe's ``limits.max_seconds``: a pass over the wall-clock limit stops
the build with one line naming the pass and the limit, exit 2, and nothing written (no model, no
report); a generous limit changes nothing.

The slow input is real work, not a sleeping test pass: cleanup on a 5000-node Relu chain takes
well over 10 ms on any machine (about 0.2 s on an idle one; a loaded machine is only slower),
so a 0.01 s limit always stops it and a 600 s one never does."""
from __future__ import annotations

import hashlib

import onnx
from onnx import TensorProto, helper

from support import cli


def _chain(path, n=5000):
    nodes = [helper.make_node("Relu", [f"t{i - 1}" if i else "x"], [f"t{i}"], name=f"n{i}") for i in range(n)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info(f"t{n - 1}", TensorProto.FLOAT, [2, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_a_pass_over_max_seconds_stops_with_one_line_and_writes_nothing(tmp_path, capsys):
    model = _chain(tmp_path / "chain.onnx")
    before = _digest(tmp_path)
    code, out, err = cli(capsys, "opt", model, "-p", "cleanup,canonicalize", "-o", tmp_path / "out.onnx",
                         "--report", tmp_path / "r.json", "--max-seconds", "0.01")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("graphc: error: pass 'cleanup' exceeded --max-seconds 0.01 (stopped after ")
    assert _digest(tmp_path) == before  # no model, no report, no temporary folder; input untouched


def test_a_generous_limit_changes_nothing(tmp_path, capsys):
    model = _chain(tmp_path / "chain.onnx", n=50)
    code, _, err = cli(capsys, "opt", model, "-p", "cleanup", "-o", tmp_path / "out.onnx", "--max-seconds", "600",
                       "-q")
    assert code == 0, err
    assert len(onnx.load(str(tmp_path / "out.onnx")).graph.node) == 50


def test_max_seconds_must_be_positive(tmp_path, capsys):
    model = _chain(tmp_path / "chain.onnx", n=5)
    code, _, err = cli(capsys, "opt", model, "-p", "cleanup", "-o", tmp_path / "out.onnx", "--max-seconds", "0")
    assert code == 2 and err.startswith("graphc: error: argument --max-seconds: 0 is outside")
    assert not (tmp_path / "out.onnx").exists()


def test_recipe_limit_applies_and_the_flag_overrides_it(tmp_path, capsys):
    model = _chain(tmp_path / "chain.onnx")
    recipe = tmp_path / "r.toml"
    recipe.write_text('pipeline = "cleanup"\n\n[outputs]\nmodel = "out.onnx"\n\n[limits]\nmax_seconds = 0.01\n')
    code, _, err = cli(capsys, "opt", model, "--recipe", recipe)
    assert code == 2 and "pass 'cleanup' exceeded --max-seconds 0.01" in err
    assert not (tmp_path / "out.onnx").exists()
    code, _, err = cli(capsys, "opt", model, "--recipe", recipe, "--max-seconds", "600", "-q")
    assert code == 0, err
    assert (tmp_path / "out.onnx").exists()


def test_recipe_limit_out_of_range_is_a_recipe_error(tmp_path, capsys):
    model = _chain(tmp_path / "chain.onnx", n=5)
    recipe = tmp_path / "r.toml"
    recipe.write_text('pipeline = "cleanup"\n\n[outputs]\nmodel = "out.onnx"\n\n[limits]\nmax_seconds = 0\n')
    code, _, err = cli(capsys, "opt", model, "--recipe", recipe)
    assert code == 2 and "limits.max_seconds" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.onnx").exists()
