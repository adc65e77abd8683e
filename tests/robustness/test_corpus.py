"""Every file of the hostile-input corpus (tests/data/bad/) through the API and the CLI.

``tests/data/make_bad.py`` generates the files and holds the manifest: ``reject`` files must be
refused with a GraphcError naming the problem (CLI: exit 2, one stderr line ``graphc: error: ...``,
no output file); ``accept`` files are valid but odd models that must load, go through every
registered pass (each either handles or skips them) and come out valid, with unchanged outputs
for exact passes and untouched ``keep`` ops. No command may change a byte of the corpus, every
command finishes within ``TIME_CAP`` seconds, and no command (CLI run, or load + pass + save)
raises the process's peak resident memory by ``MEMORY_CAP`` or more.

The memory is measured in this process (:class:`graphc.passmanager.memory.PeakRss`: the kernel's
high-water mark, reset to the current RSS when the command starts, read when it ends; exact, no
sampling): peak during the command minus the RSS before it. Where the mark cannot be reset
(no writable /proc/self/clear_refs) the cap is not checked.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

import graphc
from corpus import ACCEPT, BAD, MANIFEST, REJECT, entry_id, folder_digest, make_bad
from graphc.calib.data import RandomSource, input_specs
from graphc.errors import GraphcError
from graphc.passmanager import PassManager, all_passes
from graphc.passmanager.memory import PeakRss, reset_peak
from support import random_feeds, run, session

EXACT_PASSES = {"cleanup", "fold-constants", "fold-bn", "canonicalize", "equalize", "smooth"}
#: seconds any command may take on a corpus file (they are tiny: seconds means unbounded work).
TIME_CAP = 60
#: bytes any command may add to the process's peak RSS on a corpus file. They are a few KB; the
#: largest growth measured is imports and onnxruntime's first session (about 100 MB). The constant
#: MatMul outer product folded before issue 15 peaked at 6.2 GB.
MEMORY_CAP = 1 << 30

KNOWN_BUGS: dict[tuple[str, str], str] = {}
#: pipeline text per pass where the defaults would not exercise the rewrite on tiny models.
PASS_TEXT = {"quant": "quant{placement=all}"}


def _param(entry: dict, check: str):
    reason = KNOWN_BUGS.get((entry["file"], check))
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(entry, id=entry_id(entry), marks=marks)


@pytest.fixture(autouse=True)
def corpus_is_untouched():
    before = folder_digest()
    yield
    assert folder_digest() == before, "a command changed, added or removed a file in tests/data/bad/"


def test_corpus_matches_its_generator(tmp_path):
    """The committed files are what make_bad.py writes (regenerate after editing the script)."""
    make_bad.write(tmp_path)
    assert folder_digest(tmp_path) == folder_digest(BAD)


def test_manifest_covers_every_file():
    listed = {e["file"] for e in MANIFEST} | {x for e in MANIFEST for x in e["extra"]}
    assert listed == set(folder_digest(BAD))
    assert len({e["file"] for e in MANIFEST}) == len(MANIFEST)
    assert all(e["expect"] in ("reject", "accept") and e["why"] for e in MANIFEST)


def _rss() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@contextlib.contextmanager
def memory_capped(what: str):
    """Fail if the block raises the peak RSS by ``MEMORY_CAP`` or more (see the module doc)."""
    before = _rss()
    if before is None or not reset_peak():
        yield
        return
    with PeakRss() as peak:
        yield
    grown = peak.peak - before
    assert grown < MEMORY_CAP, f"{what} raised the peak RSS by {grown / 2**20:.0f} MiB"


# -- API ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", [_param(e, "load") for e in REJECT])
def test_reject_at_load(entry):
    with pytest.raises(GraphcError, match=entry["error"]) as info:
        graphc.load(BAD / entry["file"])
    assert str(info.value).strip(), "empty error message"


def _passes():
    return [c.name for c in all_passes()]


def _accept_params():
    return [pytest.param(e, name, id=f"{entry_id(e)}-{name}",
                         marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[(e["file"], name)])]
                         if (e["file"], name) in KNOWN_BUGS else [])
            for e in ACCEPT for name in _passes()]


def _kept(proto: onnx.ModelProto, ops: tuple[str, ...]) -> list[tuple]:
    """What must survive of a node: op, domain, attributes, arity (inputs may be renamed when a
    pass removes an Identity in front of it)."""
    return sorted((n.op_type, n.domain, len(n.input), len(n.output),
                   tuple(a.SerializeToString() for a in n.attribute))
                  for n in proto.graph.node if n.op_type in ops)


@pytest.mark.parametrize("entry,name", _accept_params())
def test_accept_every_pass(entry, name, tmp_path):
    """Load, run one pass, save (full checker), compare outputs for exact passes."""
    path = BAD / entry["file"]
    original = onnx.load(path)
    cls = next(c for c in all_passes() if c.name == name)
    if cls.needs_data and (not entry["runs"] or entry["skip_run"]):
        pytest.skip("a pass that needs data cannot calibrate a model onnxruntime cannot run")
    with memory_capped(f"{name} on {entry['file']}"):
        model = graphc.load(path)
        data = RandomSource(input_specs(model), n=4) if cls.needs_data else None
        # quant's speed model leaves tiny graphs in float; placement=all exercises the rewrite
        PassManager(PASS_TEXT.get(name, name), data=data).run(model)
        out = graphc.save(model, tmp_path / "out.onnx")
    onnx.checker.check_model(str(out), full_check=True)
    result = onnx.load(out)
    if entry["keep"]:
        # Subgraph bodies may be handled (runnable models are then compared numerically below);
        # ops onnxruntime cannot run must come out with the same op, domain and attributes.
        count = [n.op_type for n in result.graph.node if n.op_type in entry["keep"]]
        assert len(count) == len([n for n in original.graph.node if n.op_type in entry["keep"]])
        if not entry["runs"]:
            assert _kept(result, entry["keep"]) == _kept(original, entry["keep"]), \
                f"{name} changed {entry['keep']} nodes it should have left alone"
    if entry["runs"] and not entry["skip_run"]:
        feeds = random_feeds(original)
        got = run(result, feeds)
        if name in EXACT_PASSES:
            for ref, new in zip(run(original, feeds), got):
                np.testing.assert_allclose(new, ref, rtol=1e-5, atol=1e-6)


def test_accept_files_are_valid_onnx():
    """Sanity of the corpus: accept files pass the full checker; 'runs' says whether onnxruntime
    executes them (when it does not, the CLI's verify has to turn that into exit 2)."""
    for entry in ACCEPT:
        path = BAD / entry["file"]
        if entry["repaired"]:  # only the shape declarations are wrong: the checker refuses it
            with pytest.raises((onnx.checker.ValidationError, onnx.shape_inference.InferenceError)):
                onnx.checker.check_model(str(path), full_check=True)
        else:
            onnx.checker.check_model(str(path), full_check=True)
        if entry["skip_run"]:
            continue
        if entry["runs"]:
            run(path, random_feeds(path))
        else:
            with pytest.raises(Exception):
                _run_on_ones(path)


def _run_on_ones(path) -> None:
    sess = session(path)
    sess.run(None, {i.name: np.ones([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
                    for i in sess.get_inputs()})


# -- CLI ------------------------------------------------------------------------------------------


def _cli():
    try:
        from graphc.cli import main
    except ImportError:
        pytest.skip("graphc/cli.py is not there yet")
    return main


def _pipeline() -> str:
    return "cleanup,fold-bn" if "fold-bn" in _passes() else "cleanup"


def _argv(command: str, path, out) -> list[str]:
    if command == "inspect":
        return ["inspect", str(path)]
    if command == "opt":
        return ["opt", str(path), "-p", _pipeline(), "-o", str(out)]
    return ["verify", str(path), str(path)]


def _cli_params():
    params = []
    for e in MANIFEST:
        for command in ("inspect", "opt", "verify"):
            if e["skip_run"] and command == "verify":
                continue
            reason = KNOWN_BUGS.get((e["file"], f"cli-{command}"))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            params.append(pytest.param(e, command, id=f"{entry_id(e)}-{command}", marks=marks))
    return params


@pytest.mark.parametrize("entry,command", _cli_params())
def test_cli(entry, command, tmp_path, capfd):
    main = _cli()
    out = tmp_path / "out.onnx"
    start = time.perf_counter()
    with memory_capped(f"graphc {command} {entry['file']}"):
        code = main(_argv(command, BAD / entry["file"], out))
    seconds = time.perf_counter() - start
    captured = capfd.readouterr()  # fd level: C++ logs from onnxruntime/onnx count too
    lines = captured.err.splitlines()
    runs = entry["runs"] and not entry["skip_run"]
    expect_ok = entry["expect"] == "accept" and (command != "verify" or runs)
    assert seconds < TIME_CAP, f"{command} took {seconds:.0f} s"
    if expect_ok:
        assert code == 0, f"exit {code}: {captured.err.strip()}"
        if command == "opt":
            assert out.is_file()
            onnx.checker.check_model(str(out), full_check=True)
            if runs:
                session(out)
        return
    assert code == 2, f"exit {code}, stderr: {captured.err.strip()}"
    assert len(lines) == 1, f"stderr must be one line, got {len(lines)}:\n{captured.err}"
    assert lines[0].startswith("graphc: error: ") and "internal error" not in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a failed command left files behind"
