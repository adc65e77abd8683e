"""docs/tutorial.md, run step by step on the real PP-OCRv4 detector. A step whose pipeline names a
pass that is not registered yet is skipped with that reason (and, as the tutorial says, its input
is copied to its output so the next steps still run); it turns on by itself when the pass lands."""
from __future__ import annotations

import importlib.util
import shlex
import shutil

import pytest

from doc_commands import ROOT, console_commands, missing_passes, option_value, run_command, workspace
from support import ppocr_model

TUTORIAL = ROOT / "docs" / "tutorial.md"
COMMANDS = console_commands(TUTORIAL.read_text())


def step_id(index: int) -> str:
    words = shlex.split(COMMANDS[index])
    return f"{index:02d}-{'-'.join(w for w in words[:3] if not w.startswith('-'))}"


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    if ppocr_model("det") is None:
        pytest.skip("rapidocr-onnxruntime (the PP-OCR models) is not installed")
    if not (ROOT / "benchmarks" / "ppocr_data.py").is_file():
        pytest.skip("benchmarks/ppocr_data.py (the page renderer) is not in this checkout")
    if importlib.util.find_spec("graphc.calib.images") is None:
        pytest.skip("graphc.calib.images (image folders as data) is not in this checkout")
    return {"folder": workspace(tmp_path_factory.mktemp("tutorial")), "skipped": set()}


def test_the_tutorial_covers_the_whole_story():
    text = " ".join(COMMANDS)
    for piece in ("fold-bn", "prune", "quant", "graphc verify", "graphc bench", "--report", "--recipe"):
        assert piece in text
    assert len(COMMANDS) >= 10


@pytest.mark.real
@pytest.mark.parametrize("index", range(len(COMMANDS)), ids=step_id)
def test_tutorial_step(tutorial, index):
    folder, skipped = tutorial["folder"], tutorial["skipped"]
    args = shlex.split(COMMANDS[index])
    needs = [f for f in (option_value(args, "--recipe"), *args[1:3]) if f in skipped]
    if needs:
        pytest.skip(f"needs {needs[0]}, which a skipped step would have written")
    missing = missing_passes(args)
    if missing:
        _keep_the_chain_going(args, folder, skipped)
        pytest.skip(f"pass '{missing[0]}' is not registered yet; this step runs once it lands")
    code, printed = run_command(args, folder)
    assert code == 0, f"{COMMANDS[index]}\n{printed}"
    if "--write-recipe" in args:
        written = [option_value(args, "--write-recipe")]
    else:
        written = [option_value(args, "-o", "--output"), option_value(args, "--report")]
    for name in filter(None, written):
        assert (folder / name).is_file(), f"{name} was not written"
        if name.endswith(".html"):  # the plots are in it
            assert (folder / name).read_text().count('<img src="data:image/png;base64,') >= 2


def _keep_the_chain_going(args, folder, skipped):
    recipe = option_value(args, "--write-recipe")
    if recipe:
        skipped.add(recipe)
        return
    source, out = args[2], option_value(args, "-o", "--output")
    if out and (folder / source).is_file():
        shutil.copyfile(folder / source, folder / out)  # what the tutorial tells readers to do
