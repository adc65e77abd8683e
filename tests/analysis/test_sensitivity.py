"""Pruning sensitivity: per group SQNR when it alone is pruned, against direct masking in
onnxruntime; its noise curves; the table; `graphc sensitivity`."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

import graphc
from graphc.analysis import analyze_channels, mask_channels
from graphc.passes.prune.importance import group_importance, removal_order
from graphc.passes.prune.sensitivity import format_sensitivity, measure_sensitivity
from graphc.calib.data import open_data
from graphc.cli import main
from graphc.errors import DataError, OptionError
from graphc.ir import infer_shapes
from support import MODELS, run

MODEL = MODELS / "mobilenetv2_digits.onnx"
DATA = MODELS / "digits_calib.npz"


@pytest.fixture(scope="module")
def report():
    model = graphc.load(MODEL)
    return measure_sensitivity(model, open_data(DATA, model, batch=8), ratios=(0.25, 0.5), samples=4)


def test_every_prunable_group_is_measured_at_every_ratio(report):
    model = graphc.load(MODEL)
    analysis = analyze_channels(model.graph, infer_shapes(model), model.opset)
    assert {g.gid for g in report.groups} == {g.id for g in analysis.prunable}
    assert report.blocked == len(analysis.groups) - len(analysis.prunable) and report.samples == 4
    for g in report.groups:
        assert set(g.sqnr_db) == {0.25, 0.5}
        assert g.removed == {0.25: round(0.25 * g.size), 0.5: round(0.5 * g.size)}


def test_sqnr_is_that_of_the_masked_model(report):
    model = graphc.load(MODEL)
    data = open_data(DATA, model, batch=8)
    feeds = [f for _, f in zip(range(4), data)]
    row = min(report.groups, key=lambda g: g.sqnr_db[0.5])
    masked = model.copy()
    analysis = analyze_channels(masked.graph, infer_shapes(masked), masked.opset)
    group = analysis.groups[row.gid]
    scores, _ = group_importance(group, "l1")
    mask_channels(masked.graph, group, removal_order(scores)[:row.removed[0.5]])
    signal = noise = 0.0
    for feed in feeds:
        ref, got = run(model, feed)[0].astype(np.float64), run(masked, feed)[0].astype(np.float64)
        signal, noise = signal + np.sum(ref ** 2), noise + np.sum((ref - got) ** 2)
    assert row.sqnr_db[0.5] == pytest.approx(10 * math.log10(signal / noise), abs=1e-3)


def test_noise_curves_start_at_zero_and_grow(report):
    groups = {g.gid: g for g in report.groups}
    growing = 0
    for gid, (fractions, noise) in report.curves().items():
        g = groups[gid]
        assert fractions[0] == 0 and noise[0] == 0
        ratios = sorted(g.removed, key=lambda r: g.removed[r])
        np.testing.assert_allclose(fractions[1:], [g.removed[r] / g.size for r in ratios])
        # noise-to-signal power is 10^(-SQNR/10) of the measured SQNR at each ratio
        np.testing.assert_allclose(noise[1:], [10 ** (-g.sqnr_db[r] / 10) for r in ratios], rtol=1e-12)
        # removing more of a group's channels (a superset, by the same importance order) never
        # lowers the output error on these data (measured on mobilenetv2_digits: all 9 groups)
        assert np.all(np.diff(noise) >= 0), f"group {gid}: noise {noise} shrinks as more is removed"
        growing += bool(noise[-1] > noise[1] > 0)
    assert growing >= len(groups) - 1  # one group's channels are dead: 0 noise at both ratios


def test_table_lists_the_most_sensitive_group_first(report):
    text = format_sensitivity(report)
    lines = text.splitlines()
    assert lines[0].startswith(f"sensitivity: {len(report.groups)} prunable group(s)")
    assert "r=0.25" in lines[1] and "r=0.5" in lines[1] and len(lines) == 2 + len(report.groups)
    worst = min(report.groups, key=lambda g: min(g.sqnr_db.values()))
    assert lines[2].startswith(worst.label)
    json.dumps(report.to_dict(), allow_nan=False)


def test_errors():
    model = graphc.load(MODEL)
    with pytest.raises(DataError):
        measure_sensitivity(model, None)
    with pytest.raises(OptionError, match="ratios"):
        measure_sensitivity(model, open_data(DATA, model), ratios=(0.0, 0.5))
    with pytest.raises(OptionError, match="criterion"):
        measure_sensitivity(model, open_data(DATA, model), criterion="nope")


def test_cli(capsys):
    code = main(["sensitivity", str(MODEL), "--data", str(DATA), "--ratios", "0.5", "--samples", "2",
                 "--criterion", "activation", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["criterion"] == "activation" and out["ratios"] == [0.5] and len(out["groups"]) == 9
    assert main(["sensitivity", str(MODEL), "--data", str(DATA), "--ratios", "1.5"]) == 2
