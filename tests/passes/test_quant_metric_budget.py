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


def _eval_feeds(n=12):
    rng = np.random.default_rng(5)
    return [{"x": rng.standard_normal(f["x"].shape).astype(np.float32)} for f in _feeds(n)]


def _bounded(text, feeds, evaluation):
    model = _chain()
    reference = model.copy()
    manager = graphc.PassManager(text, data=open_data(feeds, model), metric=load_metric("user_metrics:argmax_error"),
                                 evaluation=open_data(evaluation, model) if evaluation else None)
    return reference, model, manager.run(model).records[-1]


def test_metric_budget_holds_the_upper_bound_on_the_evaluation_data():
    from graphc.verify.metric_bound import rate_upper
    from graphc.verify.scores import reference_outputs
    from user_metrics import _argmax_counts

    base = "quant{placement=all per-channel=false calib=minmax max-metric-drop=0.08"
    evaluation = _eval_feeds()
    # the point estimate: all quantized loses 0.0775 <= 0.08 on these 1200 positions, so it passes
    _, _, point = _bounded(base + " metric-confidence=0}", _feeds(), evaluation)
    assert point.stats["budget_metric_drop_all_quantized"] <= 0.08 and point.stats["budget_float_layers"] == 0
    assert "budget_metric_drop_bound" not in point.stats
    # its 95% upper bound does not: layers stay float until the bound holds
    reference, model, record = _bounded(base + "}", _feeds(), evaluation)
    s = record.stats
    assert s["budget_metric_data"] == "evaluation" and s["budget_metric_samples"] == 12
    assert s["budget_metric_confidence"] == 0.95 and s["budget_float_layers"] > 0
    # by hand, through the same session settings (argmax ties move with float rounding)
    ref = [{"y": outs[0]} for outs in reference_outputs(reference, evaluation)]
    got = [{"y": outs[0]} for outs in reference_outputs(model, evaluation)]
    bound = rate_upper(*_argmax_counts(ref, got), 0.95)
    assert bound <= 0.08 and s["budget_metric_drop_bound"] == pytest.approx(bound, abs=1e-6)
    kept = [d for d in record.details if d.get("precision") == "float"]
    assert kept and all("upper bound" in d["reason"] for d in kept)


def test_metric_budget_without_evaluation_data_scores_the_calibration_samples():
    _, _, record = _bounded("quant{placement=all per-channel=false calib=minmax max-metric-drop=0.2}",
                            _feeds(), None)
    assert record.stats["budget_metric_data"] == "calibration" and record.stats["budget_metric_samples"] == 6


def test_a_bound_too_wide_for_the_data_says_to_give_more():
    # 0 errors in 6 x 100 positions bounds the rate at 1 - 0.05^(1/600) = 0.005 > 0.001
    _, model, record = _bounded("quant{placement=all per-channel=false calib=minmax max-metric-drop=0.001}",
                                _feeds(), None)
    assert any("more --eval-data tightens it" in reason for reason in record.skipped)


def test_with_labels_the_budget_bounds_the_change_against_the_truth():
    from graphc.verify.metric_bound import paired_bootstrap_upper
    from user_metrics import _argmax_counts

    def every_7th_moved(labels):  # the float model's argmax moved here and there: the float model has errors
        labels.reshape(-1)[::7] = (labels.reshape(-1)[::7] + 1) % 16

    s, float_out, got, cand, ref = _labelled_budget(every_7th_moved, 0.03)
    drop = cand[0].sum() / cand[1].sum() - ref[0].sum() / ref[1].sum()
    assert ref[0].sum() > 0  # the float model is not the truth here
    assert s["budget_metric_drop"] == pytest.approx(drop, abs=1e-6)
    bound = paired_bootstrap_upper(cand, ref, 0.95)
    assert s["budget_metric_drop_bound"] == pytest.approx(bound, abs=1e-6) and bound <= 0.03
    # against the labels the drop is a difference: smaller than the disagreement with the float model
    disagreement = _argmax_counts(float_out, got)
    assert drop < disagreement[0].sum() / disagreement[1].sum()


def test_a_margin_wider_than_the_budget_is_recorded_and_warned(caplog):
    # 12 evaluation samples: the all-quantized drop's 95% margin is wider than a 0.01 budget
    import logging

    caplog.set_level(logging.WARNING, logger="graphc")
    _, _, record = _bounded("quant{placement=all per-channel=false calib=minmax max-metric-drop=0.01}",
                            _feeds(), _eval_feeds())
    margin = record.stats["budget_metric_margin_all_quantized"]
    assert margin > 0.01
    warned = [r.getMessage() for r in caplog.records if "sampling noise" in r.getMessage()]
    assert len(warned) == 1 and "on 12 evaluation samples" in warned[0]
    needed = int(warned[0].split("about ")[1].split()[0])
    assert needed == int(np.ceil(12 * (2 * margin / 0.01) ** 2)) or abs(needed - 12 * (2 * margin / 0.01) ** 2) < 2
    caplog.clear()
    # a budget wider than the margin: recorded, not warned
    _, _, wide = _bounded("quant{placement=all per-channel=false calib=minmax max-metric-drop=0.5}",
                          _feeds(), _eval_feeds())
    assert 0 < wide.stats["budget_metric_margin_all_quantized"] < 0.5
    assert not [r for r in caplog.records if "sampling noise" in r.getMessage()]


@pytest.mark.parametrize("chunk", [5, 64])
def test_counting_in_chunks_gives_the_counts_of_all_outputs_at_once(monkeypatch, chunk):
    # 12 evaluation feeds counted 5 at a time (chunks of 5, 5, 2, labels cut with them) or at once:
    # the drop and its paired-bootstrap bound are those of the whole outputs' counts
    from graphc.passes.quant import evaluations
    from graphc.verify.metric_bound import paired_bootstrap_upper

    monkeypatch.setattr(evaluations, "COUNTS_CHUNK", chunk)

    def moved_per_feed(labels):  # errors that differ from feed to feed
        moved = np.random.default_rng(3).random(labels.shape) < np.linspace(0.0, 0.3, len(labels))[:, None, None, None]
        labels[moved] = (labels[moved] + 1) % 16

    s, _, _, cand, ref = _labelled_budget(moved_per_feed, 0.05)
    assert s["budget_metric_drop"] == pytest.approx(cand[0].sum() / cand[1].sum() - ref[0].sum() / ref[1].sum(),
                                                    abs=1e-6)
    assert s["budget_metric_drop_bound"] == pytest.approx(paired_bootstrap_upper(cand, ref, 0.95), abs=1e-6)


def _labelled_budget(move_labels, limit: float):
    """Runs ``quant{... max-metric-drop=limit}`` on the chain with labels for the evaluation data
    (the float model's argmax, changed in place by ``move_labels``): (stats, float outputs,
    quantized outputs, the quantized and the float model's per-sample argmax-error counts)."""
    from graphc.verify.scores import reference_outputs
    from user_metrics import _argmax_counts

    evaluation = _eval_feeds()
    model = _chain()
    float_out = [{"y": o[0]} for o in reference_outputs(model.copy(), evaluation)]
    labels = np.stack([np.argmax(f["y"], axis=1) for f in float_out])
    move_labels(labels)
    manager = graphc.PassManager(f"quant{{placement=all per-channel=false calib=minmax max-metric-drop={limit}}}",
                                 data=open_data(_feeds(), model), metric=load_metric("user_metrics:argmax_error"),
                                 evaluation=open_data(evaluation, model), evaluation_labels=labels)
    stats = manager.run(model).records[-1].stats
    got = [{"y": o[0]} for o in reference_outputs(model, evaluation)]
    return (stats, float_out, got, _argmax_counts(float_out, got, labels),
            _argmax_counts(float_out, float_out, labels))
