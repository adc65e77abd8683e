"""Recipes: round-trip, strict keys and types, paths relative to the recipe, flags over the recipe,
and `graphc opt --recipe` running a build step from one file."""
from __future__ import annotations

import dataclasses
import json

import pytest

from graphc.cli import OPT_FLAGS
from graphc.errors import RecipeError
from graphc.recipe import (ALL_KEYS, SECTIONS, BenchSettings, DataSettings, GateSettings, ImageSettings,
                           LimitSettings, MetricSettings, OutputSettings, Recipe, VerifySettings, dumps,
                           load_recipe, loads, save_recipe)
from report_passes import registered, write_labelled_data, write_net
from support import cli

EVERYTHING = Recipe(
    pipeline="cleanup,fold-constants{max-elements=64}",
    data=DataSettings(calibration="calib", evaluation="eval.npz", labels="eval.npz:labels", samples=3, seed=7,
                      input_shapes=("x:1x3x8x8", "y:2x4")),
    image=ImageSettings(size="32x48", height=32, max_width=320, pad=False, mean=(0.5, 0.25, 0.125),
                        std=(1.0, 2.0, 0.5), scale=0.5, layout="nhwc", channels="bgr"),
    verify=VerifySettings(enabled=True, each=True, rtol=1e-4, atol=2.5e-7, localize=True),
    gates=GateSettings(min_sqnr=31.5, min_cosine=0.99, min_top1=0.9, max_top1_drop=0.01, min_speedup=1.25,
                       min_metric=0.5, max_metric_drop=0.003),
    metric=MetricSettings(function="graphc.task_metrics:ctc_cer", args=("charset=keys.txt", "blank=0")),
    bench=BenchSettings(enabled=True, threads=1, rounds=7, warmup=0),
    outputs=OutputSettings(model="out/m.onnx", report="out/r.html", keep_failed=True,
                           histograms=("a", "b c"), layer_errors=False),
    limits=LimitSettings(max_seconds=90.5),
)


def test_every_field_is_set_in_the_round_trip_example():
    for name in SECTIONS:
        section = getattr(EVERYTHING, name)
        for f in dataclasses.fields(section):
            assert getattr(section, f.name) != f.default, f"{name}.{f.name} keeps its default"


def test_round_trip_text_and_values():
    text = dumps(EVERYTHING)
    assert loads(text) == EVERYTHING
    assert dumps(loads(text)) == text
    assert dumps(Recipe()) == "# graphc recipe: graphc opt MODEL --recipe THIS_FILE (docs/recipes.md)\n"
    assert loads(dumps(Recipe())) == Recipe()
    assert 'mean = [0.5, 0.25, 0.125]' in text and "atol = 2.5e-07" in text and "keep_failed = true" in text


def test_strings_survive_toml_escaping():
    tricky = Recipe(pipeline="cleanup", outputs=OutputSettings(histograms=('quote " and \\ back', "tab\tü")))
    assert loads(dumps(tricky)) == tricky


def test_save_and_load_keep_paths_relative_to_the_recipe(tmp_path, monkeypatch):
    folder = tmp_path / "deploy"
    folder.mkdir()
    absolute = EVERYTHING.rebased(tmp_path)
    assert absolute.data.labels == f"{tmp_path}/eval.npz:labels"
    path = save_recipe(absolute, folder / "r.toml")
    text = path.read_text()
    assert 'calibration = "../calib"' in text and 'labels = "../eval.npz:labels"' in text
    assert 'model = "../out/m.onnx"' in text
    monkeypatch.chdir(tmp_path.parent)  # loading does not depend on the working folder
    loaded = load_recipe(path)
    assert loaded.data.calibration == str(folder / "../calib")
    assert loaded.rebased(folder, relative=True) == EVERYTHING.rebased(folder, relative=True).updated({
        key: "../" + EVERYTHING.get(key) for key in ("data.calibration", "data.evaluation", "data.labels",
                                                      "outputs.model", "outputs.report")})


@pytest.mark.parametrize("text,message", [
    ('pipelin = "cleanup"', "unknown key 'pipelin' (did you mean 'pipeline'?)"),
    ('[gates]\nmin_snr = 30', "unknown key 'gates.min_snr' (did you mean 'gates.min_sqnr'?)"),
    ("samples = 3", "unknown key 'samples' (did you mean 'data.samples'?)"),
    ("[gate]\nmin_sqnr = 30", "unknown key 'gate' (did you mean 'gates'?)"),
    ("[data.extra]\nx = 1", "unknown key 'data.extra'"),
    ("data = 3", "'data' must be a table"),
    ("[[gates]]\nmin_sqnr = 1", "'gates' must be a table"),
    ('[data]\nsamples = "4"', "'data.samples' must be an integer, got a string '4'"),
    ("[data]\nsamples = 0", "'data.samples' is 0, outside [1, inf]"),
    ("[gates]\nmin_cosine = 2", "'gates.min_cosine' is 2.0, outside [-1.0, 1.0]"),
    ("[bench]\nenabled = 1", "'bench.enabled' must be true or false"),
    ('[image]\nlayout = "nhcw"', "not one of nchw, nhwc (did you mean 'nhwc'?)"),
    ("[outputs]\nhistograms = [1]", "'outputs.histograms' must be a string"),
    ("[gates]\nmin_sqnr = inf", "must be a finite number"),
    ('pipeline = "cleenup"', "pipeline: unknown pass 'cleenup'"),
    ("pipeline = ", "not valid TOML"),
])
def test_bad_recipes_are_rejected_naming_the_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


def test_missing_recipe_is_one_line_exit_2(capsys, tmp_path):
    code, out, err = cli(capsys, "opt", tmp_path / "m.onnx", "--recipe", tmp_path / "none.toml")
    assert code == 2 and out == "" and err.strip() == f"graphc: error: {tmp_path / 'none.toml'}: no such recipe"


def test_every_recipe_key_has_a_flag_and_a_doc():
    assert sorted(OPT_FLAGS.values()) == sorted(ALL_KEYS)
    for cls in [Recipe, *SECTIONS.values()]:
        for f in dataclasses.fields(cls):
            assert f.name in SECTIONS or f.metadata["doc"], f"{cls.__name__}.{f.name} has no doc"


def test_opt_runs_from_a_recipe_and_flags_override_it(capsys, tmp_path, monkeypatch):
    with registered():
        write_net(tmp_path)
        write_labelled_data(tmp_path)
        (tmp_path / "out").mkdir()
        (tmp_path / "deploy.toml").write_text(
            'pipeline = "test-scale{factor=1.1},cleanup"\n\n[data]\nevaluation = "eval.npz"\nsamples = 4\n\n'
            '[gates]\nmin_sqnr = 10.0\n\n[outputs]\nmodel = "out/net.opt.onnx"\nreport = "out/report.json"\n')
        monkeypatch.chdir(tmp_path / "out")  # recipe paths are relative to the recipe, not to here
        code, text, err = cli(capsys, "opt", "../net.onnx", "--recipe", "../deploy.toml", "--samples", "6")
        assert code == 0, err
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        assert report["recipe"]["data"]["samples"] == 6 and report["verification"]["samples"] == 6
        assert report["gates"][0]["name"] == "min_sqnr" and report["accuracy"]["samples"] == 16
        assert (tmp_path / "out" / "net.opt.onnx").is_file() and "result: PASS" in text
        code, _, _ = cli(capsys, "opt", "../net.onnx", "--recipe", "../deploy.toml", "--min-sqnr", "80")
        assert code == 1


def test_write_recipe_freezes_the_flags_into_a_file(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_net(tmp_path)
    (tmp_path / "deploy").mkdir()
    code, out, _ = cli(capsys, "opt", "net.onnx", "-p", "cleanup", "-o", "net.opt.onnx", "--verify",
                       "--input-shape", "x:1x3x8x8", "--bench", "--report", "r.html", "--write-recipe",
                       "deploy/r.toml")
    assert code == 0 and out.strip() == "wrote deploy/r.toml" and not (tmp_path / "net.opt.onnx").exists()
    text = (tmp_path / "deploy" / "r.toml").read_text()
    assert 'model = "../net.opt.onnx"' in text and 'report = "../r.html"' in text
    recipe = load_recipe(tmp_path / "deploy" / "r.toml")
    assert recipe.pipeline == "cleanup" and recipe.verify.enabled and recipe.bench.enabled
    assert recipe.data.input_shapes == ("x:1x3x8x8",)
    code, _, _ = cli(capsys, "opt", "net.onnx", "--recipe", "deploy/r.toml", "-q", "--bench-rounds", "2")
    assert code == 0 and (tmp_path / "net.opt.onnx").is_file() and (tmp_path / "r.html").is_file()
