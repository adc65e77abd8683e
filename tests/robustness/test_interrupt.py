"""Ctrl-C or a kill while ``graphc.save`` writes must not leave a partial output file.

A child process loads a 64 MiB model and saves it (inline, and with external data); the parent
interrupts it with SIGINT or SIGKILL at spread-out moments of the save (measured first on an
uninterrupted save). Afterwards the destination is either absent or complete and valid, never a
partial file, and - for SIGINT, where Python can clean up - no temp files are left.

``graphc.save`` writes into a hidden temp folder ``.<name>.XXXX`` next to the destination and
renames into place; SIGKILL gives it no chance to delete that folder, which is what the last test
checks: the next save of the same output removes it (its marker names the dead pid).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

import big_model
import graphc

CHILD = """
import sys, time, graphc
src, out, external = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
model = graphc.load(src)
for t in model.graph.tensors().values():
    getattr(t, "values", None)  # bring the weights in before the save starts
print("saving", flush=True)
start = time.perf_counter()
graphc.save(model, out, external_data=external)
print(f"saved {time.perf_counter() - start:.3f}", flush=True)
"""

FRACTIONS = (0.2, 0.7)
_durations: dict[bool, float] = {}


@pytest.fixture(scope="module")
def medium_model(tmp_path_factory) -> Path:
    return big_model.write_big_model(tmp_path_factory.mktemp("medium"), layers=1, features=4096)


def _start(src: Path, out: Path, external: bool) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(src), str(out), "1" if external else "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # libraries may print warnings first
        if line.strip() == "saving":
            return proc
    proc.wait()
    raise AssertionError(f"child failed before saving: {proc.stderr.read()[-2000:]}")


def _save_duration(src: Path, folder: Path, external: bool) -> float:
    """How long an uninterrupted save takes (measured once per mode)."""
    if external in _durations:
        return _durations[external]
    proc = _start(src, folder / "timing.onnx", external)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    for p in folder.iterdir():
        p.unlink()
    _durations[external] = float(out.split()[-1])  # "saved <seconds>"
    return _durations[external]


def _assert_complete_or_absent(out: Path, external: bool) -> None:
    data = out.with_name(out.name + ".data")
    if not out.exists():
        assert not (external and data.exists()), "external data file left without its model"
        return
    onnx.checker.check_model(str(out), full_check=True)
    loaded = onnx.load(str(out))  # reads the external data too: it must be all there
    assert len(loaded.graph.initializer) > 0


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
@pytest.mark.parametrize("external", [False, True], ids=["inline", "external"])
def test_interrupted_save_leaves_no_partial_output(medium_model, tmp_path, sig, external):
    duration = _save_duration(medium_model, tmp_path, external)
    for fraction in FRACTIONS:
        folder = tmp_path / f"kill{fraction}"
        folder.mkdir()
        out = folder / "out.onnx"
        proc = _start(medium_model, out, external)
        time.sleep(duration * fraction)
        proc.send_signal(sig)
        proc.communicate(timeout=600)
        _assert_complete_or_absent(out, external)
        leftovers = sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
        if sig == signal.SIGINT:
            assert leftovers == [], f"temp files left after Ctrl-C at {fraction:.0%}: {leftovers}"


@pytest.mark.slow
def test_killed_save_leaves_no_temp_folder(medium_model, tmp_path):
    """SIGKILL gives the save no chance to clean up: its staging folder (its marker names its
    pid) stays until the next save of the same output, which removes it."""
    out = tmp_path / "out.onnx"
    proc = _start(medium_model, out, False)
    deadline = time.monotonic() + 120
    # the save is writing: its staging folder holds the marker that lets a later save remove it
    while not any((p / ".graphc-owner").is_file() for p in tmp_path.iterdir() if p.name.startswith(".")):
        assert proc.poll() is None and time.monotonic() < deadline, "the save never started writing"
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=600)
    assert not out.exists()
    graphc.save(_small_model(1.0), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"], "the abandoned staging folder stayed"


def _small_model(value: float) -> graphc.Model:
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((64, 64), value, np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return graphc.load(model)


def test_interrupt_between_data_and_model_rename_keeps_a_consistent_pair(tmp_path, monkeypatch):
    out = tmp_path / "out.onnx"
    graphc.save(_small_model(1.0), out, external_data=True)
    import graphc.ir.model as model_module

    real_replace = os.replace
    calls = []

    def interrupted_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C right after the data file was renamed
        return real_replace(src, dst)

    monkeypatch.setattr(model_module.os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        graphc.save(_small_model(2.0), out, external_data=True)
    monkeypatch.undo()
    loaded = onnx.load(str(out))
    values = onnx.numpy_helper.to_array(loaded.graph.initializer[0])
    model_on_disk = json.dumps(sorted(e.value for e in loaded.graph.initializer[0].external_data))
    assert np.all(values == values.flat[0]) and values.flat[0] in (1.0, 2.0), model_on_disk
    assert values.flat[0] == 1.0, "the old model now reads the new model's data file"
