"""The output-safety rule at the command line (graphc/ir/output_safety.py): no output of a run -
model, its external data, report, report plots, recipe, DOT graph - may write over or remove the
input model, a file the input references, or another output of the run; seen through symlinks
and hard links. Each refusal exits 2 with one ``graphc: error:`` line naming both paths, before
any work: the input tree (which holds every output path tried) is byte-for-byte unchanged.

The cases come from the sweep of issue 15: ``-o`` onto the input's external-data file,
``--write-recipe`` and ``inspect --dot`` onto the input, and a save that removed an input that
merely lived in a folder named like graphc's temporary save folder.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from graphc.cli import main
from support import random_feeds, run
from tiny_nets import conv_net

needs_links = pytest.mark.skipif(not hasattr(os, "symlink") or not hasattr(os, "link"),
                                 reason="no symlinks or hard links")


def write_input(folder: Path, name: str = "model.onnx", data: str = "w.bin") -> Path:
    """``folder/name`` whose weights all live in ``folder/data`` (external data)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    onnx.save_model(conv_net(), path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data, size_threshold=0)
    return path


def tree(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (hidden ones too): file hashes, symlink targets, folders."""
    entries = {}
    for p in sorted(folder.rglob("*")):
        key = str(p.relative_to(folder))
        if p.is_symlink():
            entries[key] = f"-> {os.readlink(p)}"
        elif p.is_dir():
            entries[key] = "folder"
        else:
            entries[key] = hashlib.sha256(p.read_bytes()).hexdigest()
    return entries


def refused(capsys, argv: list, root: Path, *names: str) -> str:
    """Run graphc; assert exit 2, one error line naming ``names``, and ``root`` unchanged."""
    before = tree(root)
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("graphc: error:"), err
    assert "Traceback" not in err and out == ""
    assert tree(root) == before, "the input tree changed (an output was written or a file removed)"
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def model(tmp_path) -> Path:
    return write_input(tmp_path / "A")


# -- the model output ------------------------------------------------------------------------------

def test_output_onto_the_inputs_external_data_is_refused(capsys, tmp_path, model):
    """Issue 15: the output replaced the input's weights, the input then computed garbage."""
    line = refused(capsys, ["opt", model, "-p", "cleanup", "-o", model.parent / "w.bin"], tmp_path,
                   "w.bin", "external data of the input model")
    assert "refusing to overwrite" in line
    feeds = random_feeds(conv_net())
    np.testing.assert_allclose(run(onnx.load(str(model)), feeds)[0], run(conv_net(), feeds)[0], rtol=1e-6)


@needs_links
@pytest.mark.parametrize("link", ["symlink", "hardlink"])
@pytest.mark.parametrize("target", ["model.onnx", "w.bin"])
def test_output_onto_a_link_to_the_input_is_refused(capsys, tmp_path, model, link, target):
    alias = tmp_path / "B" / "alias.onnx"
    alias.parent.mkdir()
    (alias.symlink_to if link == "symlink" else alias.hardlink_to)(model.parent / target)
    refused(capsys, ["opt", model, "-p", "cleanup", "-o", alias], tmp_path, str(alias), target)


@needs_links
def test_input_given_through_a_symlink_is_still_the_input(capsys, tmp_path, model):
    alias = tmp_path / "alias.onnx"
    alias.symlink_to(model)
    refused(capsys, ["opt", alias, "-p", "cleanup", "-o", model], tmp_path, str(model), str(alias))


def test_output_that_a_save_would_remove_as_stale_data_is_refused(capsys, tmp_path):
    """A save of OUT removes OUT.<digest12>.data files of earlier saves; an input named so (model
    or external data) must not go that way."""
    model = write_input(tmp_path / "A", name="out.onnx.0123456789ab.data")
    refused(capsys, ["opt", model, "-p", "cleanup", "-o", tmp_path / "A" / "out.onnx"], tmp_path,
            "out.onnx.0123456789ab.data")
    other = write_input(tmp_path / "C", data="out.onnx.0123456789ab.data")
    refused(capsys, ["opt", other, "-p", "cleanup", "-o", tmp_path / "C" / "out.onnx"], tmp_path,
            "out.onnx.0123456789ab.data", "external data")


# -- report, plots, recipe, DOT ----------------------------------------------------------------------

def test_report_onto_the_inputs_external_data_is_refused(capsys, tmp_path):
    model = write_input(tmp_path / "A", data="w.json")
    refused(capsys, ["opt", model, "-p", "cleanup", "-o", tmp_path / "A" / "o.onnx", "--report",
                     tmp_path / "A" / "w.json"], tmp_path, "w.json", "external data")


@needs_links
def test_report_onto_a_hard_link_of_the_input_is_refused(capsys, tmp_path, model):
    report = tmp_path / "A" / "r.json"
    report.hardlink_to(model)
    refused(capsys, ["opt", model, "-p", "cleanup", "-o", tmp_path / "A" / "o.onnx", "--report", report],
            tmp_path, "r.json", "the input model")


@needs_links
@pytest.mark.parametrize("same", ["path", "hardlink"])
def test_report_and_model_output_colliding_is_refused(capsys, tmp_path, model, same):
    out = tmp_path / "A" / "o.json"
    report = out
    if same == "hardlink":
        out.write_text("{}")
        report = tmp_path / "A" / "r.json"
        report.hardlink_to(out)
    refused(capsys, ["opt", model, "-p", "cleanup", "-o", out, "--report", report], tmp_path,
            "the output model", "the report")


def test_report_plots_folder_holding_the_input_is_refused(capsys, tmp_path):
    """A Markdown report writes its plots (histograms, layer errors) into <name>_plots/."""
    model = write_input(tmp_path / "A" / "r_plots", name="layer_error.png")
    refused(capsys, ["opt", model, "-p", "cleanup", "-o", tmp_path / "A" / "o.onnx", "--report",
                     tmp_path / "A" / "r.md"], tmp_path, "r_plots", "layer_error.png")


def test_report_plots_folder_holding_the_output_is_refused(capsys, tmp_path, model):
    (tmp_path / "A" / "r_plots").mkdir()
    refused(capsys, ["opt", model, "-p", "cleanup", "-o", tmp_path / "A" / "r_plots" / "o.onnx", "--report",
                     tmp_path / "A" / "r.md"], tmp_path, "r_plots", "the output model")


def test_write_recipe_onto_the_input_is_refused(capsys, tmp_path):
    """Issue 15: `graphc opt model.toml -o o.onnx --write-recipe model.toml` overwrote the model."""
    model = write_input(tmp_path / "A", name="model.toml")
    refused(capsys, ["opt", model, "-p", "cleanup", "-o", tmp_path / "A" / "o.onnx", "--write-recipe", model],
            tmp_path, "model.toml", "the recipe")


@needs_links
@pytest.mark.parametrize("target", ["model.onnx", "w.bin"])
def test_write_recipe_onto_a_symlink_to_the_input_is_refused(capsys, tmp_path, model, target):
    link = tmp_path / "A" / "r.toml"
    link.symlink_to(model.parent / target)
    refused(capsys, ["opt", model, "-p", "cleanup", "--write-recipe", link], tmp_path, "r.toml", target)


def test_write_recipe_onto_the_calibration_data_is_refused(capsys, tmp_path, model):
    data = tmp_path / "A" / "calib.npz"
    np.savez(data, x=np.zeros((2, 1, 3, 8, 8), np.float32))
    refused(capsys, ["opt", model, "-p", "cleanup", "--data", data, "--write-recipe", data], tmp_path,
            "calib.npz", "the calibration data")


def test_inspect_dot_onto_the_input_is_refused(capsys, tmp_path):
    """Issue 15: `graphc inspect model.dot --groups --dot model.dot` wrote Graphviz over the model."""
    model = write_input(tmp_path / "A", name="model.dot")
    refused(capsys, ["inspect", model, "--groups", "--dot", model], tmp_path, "model.dot", "the DOT graph")


@needs_links
@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_inspect_dot_onto_a_link_to_the_external_data_is_refused(capsys, tmp_path, model, link):
    dot = tmp_path / "A" / "g.dot"
    (dot.symlink_to if link == "symlink" else dot.hardlink_to)(model.parent / "w.bin")
    refused(capsys, ["inspect", model, "--groups", "--dot", dot], tmp_path, "g.dot", "w.bin")


# -- temporary save folders --------------------------------------------------------------------------

def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_input_inside_a_folder_named_like_a_temp_save_folder_is_kept(capsys, tmp_path):
    """Issue 15: the save took B/.out.onnx.graphc-tmp-<dead pid>-x/ for its own leftover and removed
    it, input included. Such a folder has no graphc marker, so it is never removed: the run
    succeeds, writes its output, and the input's folder is exactly as it was."""
    folder = tmp_path / "B" / f".out.onnx.graphc-tmp-{dead_pid()}-x"
    model = write_input(folder)
    before = tree(folder)
    code = main(["opt", str(model), "-p", "cleanup", "-o", str(tmp_path / "B" / "out.onnx")])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert tree(folder) == before
    assert sorted(p.name for p in (tmp_path / "B").iterdir()) == [folder.name, "out.onnx"]


def test_recipe_path_with_a_nul_byte_is_one_line(capsys, tmp_path, model):
    recipe = tmp_path / "r.toml"
    recipe.write_text('pipeline = "cleanup"\n[outputs]\nmodel = "a\\u0000b.onnx"\n')
    refused(capsys, ["opt", model, "--recipe", recipe], tmp_path, "NUL byte")
