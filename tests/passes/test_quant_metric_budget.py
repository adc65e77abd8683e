"""quant{max-metric-drop=...}: the error budget bounds the user's metric (--metric), the float
model's outputs as the truth; what it reports is what an independent run of the result measures."""
import numpy as np
import pytest

import graphc
from graphc.calib.data import open_data
from graphc.errors import DataError
from graphc.verify.user_metric import load_metric
from support import run
from test_quant_budget import _chain, _feeds
from user_metrics import relative_error


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path / "cache"))


def _quantize(text, feeds, metric="user_metrics:relative_error"):
    model = _chain()
    reference = model.copy()
    manager = graphc.PassManager(text, data=open_data(feeds, model),
                                 metric=load_metric(metric) if metric else None)
    return reference, model, manager.run(model).records[-1]


def _by_hand(reference, model, feeds):
    ref = [{"y": run(reference, f)[0]} for f in feeds]
    got = [{"y": run(model, f)[0]} for f in feeds]
    return relative_error(ref, got)


def test_metric_budget_is_met_on_the_calibration_data():
    feeds = _feeds()
    base = "quant{placement=all per-channel=false calib=minmax"
    _, plain, _ = _quantize(base + "}", feeds, metric=None)
    reference, model, record = _quantize(base + " max-metric-drop=0.02}", feeds)
    s = record.stats
    all_quantized = _by_hand(reference, plain, feeds)
    assert all_quantized > 0.02  # the budget has work to do
    assert s["budget"] == "max-metric-drop=0.02" and s["budget_metric_drop_all_quantized"] > 0.02
    measured = _by_hand(reference, model, feeds)
    assert measured <= 0.02 and s["budget_metric_drop"] == pytest.approx(measured, rel=1e-4, abs=1e-6)
    assert 0 < s["budget_float_layers"] < s["budget_layers"]
    kept = [d for d in record.details if d.get("precision") == "float" and "max-metric-drop" in d["reason"]]
    assert kept and all("metric drop" in d["reason"] for d in kept)


def test_metric_budget_needs_a_metric():
    with pytest.raises(DataError, match="max-metric-drop needs the user's metric"):
        _quantize("quant{placement=all max-metric-drop=0.02}", _feeds(), metric=None)
