"""graphc/ir/output_safety.py through ``graphc.save``: the API refuses what the CLI refuses, and
a save removes a leftover temporary folder only when graphc can prove it created it (a marker
inside naming the folder's pid and token, the pid dead, no protected file inside)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

import graphc
from graphc.errors import OutputError, UnsafeOutputError
from graphc.ir.output_safety import MARKER_NAME, TEMP_MARK, ProtectedFiles, TempFolder, remove_abandoned_temp
from tiny_nets import conv_net

needs_links = pytest.mark.skipif(not hasattr(os, "symlink") or not hasattr(os, "link"),
                                 reason="no symlinks or hard links")


def write_input(folder: Path, name: str = "model.onnx", data: str = "w.bin") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(conv_net(), folder / name, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data, size_threshold=0)
    return folder / name


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def leftover(parent: Path, out_name: str, *, pid: int, token: str = "0f0f", marker: dict | None = None) -> Path:
    """A folder named like a temporary save of ``out_name``; ``marker`` is written as its marker."""
    folder = parent / f".{out_name}{TEMP_MARK}{pid}-{token}"
    folder.mkdir()
    (folder / out_name).write_bytes(b"partial")
    if marker is not None:
        (folder / MARKER_NAME).write_text(json.dumps(marker))
    return folder


def ours(pid: int, token: str = "0f0f") -> dict:
    return {"kind": "graphc temporary save folder", "pid": pid, "token": token}


# -- refusals through the API ------------------------------------------------------------------------

def test_save_refuses_the_inputs_external_data(tmp_path):
    path = write_input(tmp_path)
    before = (tmp_path / "w.bin").read_bytes()
    model = graphc.load(path)
    with pytest.raises(UnsafeOutputError, match="external data of the input model"):
        graphc.save(model, tmp_path / "w.bin")
    with pytest.raises(UnsafeOutputError, match="external data of the input model"):
        graphc.save(model.copy(), tmp_path / "w.bin")  # a copy remembers what it was loaded from
    assert (tmp_path / "w.bin").read_bytes() == before
    assert issubclass(UnsafeOutputError, OutputError)


@needs_links
def test_save_refuses_a_hard_link_to_the_input(tmp_path):
    path = write_input(tmp_path / "A")
    (tmp_path / "alias.onnx").hardlink_to(path)
    with pytest.raises(UnsafeOutputError, match="the input model"):
        graphc.save(graphc.load(path), tmp_path / "alias.onnx")


@needs_links
def test_stale_data_removal_keeps_a_hard_link_to_the_inputs_data(tmp_path):
    """OUT.<digest12>.data files are removed after a save of OUT - unless one is (by inode) a file
    the model was loaded from."""
    path = write_input(tmp_path)
    alias = tmp_path / "out.onnx.0123456789ab.data"
    alias.hardlink_to(tmp_path / "w.bin")
    stale = tmp_path / "out.onnx.ba9876543210.data"
    stale.write_bytes(b"old")
    graphc.save(graphc.load(path), tmp_path / "out.onnx")
    assert alias.exists() and not stale.exists()


def test_protected_files_are_read_from_the_structure_only(tmp_path):
    path = write_input(tmp_path)
    refs = ProtectedFiles.of_model_file(path).refs
    assert [(r.what, r.real) for r in refs] == [("the input model", path.resolve()),
                                                ("external data of the input model", (tmp_path / "w.bin").resolve())]
    (tmp_path / "junk.onnx").write_bytes(b"not a model")  # unreadable: only the file itself
    assert [r.path.name for r in ProtectedFiles.of_model_file(tmp_path / "junk.onnx").refs] == ["junk.onnx"]


# -- temporary folders ---------------------------------------------------------------------------------

def test_temp_folder_carries_a_marker_with_its_pid_and_token(tmp_path):
    with TempFolder.create(tmp_path / "m.onnx") as folder:
        pid, token = folder.name[len(f".m.onnx{TEMP_MARK}"):].split("-")
        marker = json.loads((folder / MARKER_NAME).read_text())
        assert marker == ours(int(pid), token) and int(pid) == os.getpid() and len(token) == 16
        assert sorted(p.name for p in folder.iterdir()) == [MARKER_NAME]
    assert list(tmp_path.iterdir()) == []


def test_leftover_with_our_marker_and_a_dead_pid_is_removed(tmp_path):
    pid = dead_pid()
    folder = leftover(tmp_path, "m.onnx", pid=pid, marker=ours(pid))
    assert remove_abandoned_temp(tmp_path / "m.onnx", ProtectedFiles()) == [folder]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["no marker", "token differs", "pid differs", "not ours", "alive", "garbage"])
def test_leftover_graphc_cannot_prove_it_created_is_kept(tmp_path, case):
    pid = os.getppid() if case == "alive" else dead_pid()
    marker = {"no marker": None, "token differs": ours(pid, "abab"), "pid differs": ours(pid + 1),
              "not ours": {"pid": pid, "token": "0f0f"}, "alive": ours(pid), "garbage": ours(pid)}[case]
    folder = leftover(tmp_path, "m.onnx", pid=pid, marker=marker)
    if case == "garbage":
        (folder / MARKER_NAME).write_bytes(b"\xff{")
    assert remove_abandoned_temp(tmp_path / "m.onnx", ProtectedFiles()) == []
    assert (folder / "m.onnx").read_bytes() == b"partial"


@needs_links
@pytest.mark.parametrize("how", ["inside", "hardlink"])
def test_leftover_holding_the_input_is_kept(tmp_path, how):
    """Even a folder graphc made is kept while the model being saved was loaded from it."""
    pid = dead_pid()
    folder = leftover(tmp_path, "out.onnx", pid=pid, marker=ours(pid))
    if how == "inside":
        path = write_input(folder)
    else:
        path = write_input(tmp_path / "A")
        (folder / "copy.bin").hardlink_to(path.parent / "w.bin")
    graphc.save(graphc.load(path), tmp_path / "out.onnx")
    assert folder.is_dir() and (tmp_path / "out.onnx").is_file()
    assert graphc.load(path) is not None


@needs_links
def test_symlink_named_like_a_leftover_is_kept(tmp_path):
    pid = dead_pid()
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / MARKER_NAME).write_text(json.dumps(ours(pid)))
    (target / "keep.txt").write_text("mine")
    (tmp_path / f".m.onnx{TEMP_MARK}{pid}-0f0f").symlink_to(target, target_is_directory=True)
    graphc.save(graphc.load(conv_net()), tmp_path / "m.onnx")
    assert (target / "keep.txt").read_text() == "mine"
    assert (tmp_path / f".m.onnx{TEMP_MARK}{pid}-0f0f").is_symlink()


def test_save_removes_its_own_dead_leftover_and_keeps_the_rest(tmp_path):
    pid = dead_pid()
    mine = leftover(tmp_path, "m.onnx", pid=pid, token="aaaa", marker=ours(pid, "aaaa"))
    theirs = leftover(tmp_path, "m.onnx", pid=pid, token="bbbb")
    graphc.save(graphc.load(conv_net()), tmp_path / "m.onnx")
    assert not mine.exists() and theirs.is_dir()
    assert (theirs / "m.onnx").read_bytes() == b"partial"
