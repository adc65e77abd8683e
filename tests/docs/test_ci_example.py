"""docs/ci/model-build.yml, the documented GitHub Actions job: its steps run here, on the real
PP-OCR classifier, with docs/ci/deploy.toml at the workspace root as the docs instruct; the
build passes its gates and leaves the files the upload steps upload."""
from __future__ import annotations

import shutil

import pytest

from doc_commands import ROOT, missing_passes, run_command, workspace
from graphc.recipe import load_recipe, loads
from support import ppocr_model

yaml = pytest.importorskip("yaml")

WORKFLOW = ROOT / "docs" / "ci" / "model-build.yml"
RECIPE = ROOT / "docs" / "ci" / "deploy.toml"


def steps() -> list[dict]:
    return yaml.safe_load(WORKFLOW.read_text())["jobs"]["optimize"]["steps"]


def test_the_workflow_optimizes_with_the_recipe_and_always_uploads_the_report():
    runs = [s["run"] for s in steps() if "run" in s]
    assert any(line.strip() == "graphc opt models/cls.onnx --recipe deploy.toml" for r in runs
               for line in r.splitlines())
    uploads = [s for s in steps() if s.get("uses", "").startswith("actions/upload-artifact@")]
    report = next(s for s in uploads if s["with"]["name"] == "graphc-report")
    recipe = loads(RECIPE.read_text())  # paths as written, relative to the recipe at the root
    assert report["if"] == "always()" and report["with"]["path"] == recipe.outputs.report
    model = next(s for s in uploads if s["with"]["name"] == "model")
    assert model["with"]["path"] == recipe.outputs.model
    assert "docs/ci/model-build.yml" in (ROOT / "docs" / "recipes.md").read_text()


@pytest.mark.real
def test_the_workflow_steps_run_and_pass_their_gates(tmp_path):
    if ppocr_model("cls") is None:
        pytest.skip("rapidocr-onnxruntime (the PP-OCR models) is not installed")
    if not (ROOT / "benchmarks" / "ppocr_data.py").is_file():
        pytest.skip("benchmarks/ppocr_data.py (the text renderer) is not in this checkout")
    missing = missing_passes(["graphc", "opt", "-p", load_recipe(RECIPE).pipeline])
    if missing:
        pytest.skip(f"pass '{missing[0]}' is not registered yet")
    folder = workspace(tmp_path)
    shutil.copyfile(RECIPE, folder / "deploy.toml")
    for step in steps():
        for line in step.get("run", "").splitlines():
            if not line.strip() or line.startswith("pip install"):
                continue  # the test environment has graphc and rapidocr-onnxruntime already
            code, printed = run_command(line, folder)
            assert code == 0, f"{line}\n{printed}"
    for step in steps():
        if step.get("uses", "").startswith("actions/upload-artifact@"):
            assert (folder / step["with"]["path"]).is_file()
    report = (folder / "build" / "report.html").read_text()
    assert "graphc opt report" in report and "PASS" in report
