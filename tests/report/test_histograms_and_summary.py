"""Activation histograms (trimming, choice of tensors, agreement with the calibrated data) and the
summary's five numbers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from graphc.report.histograms import choose_tensors, trim_histogram
from graphc.report.summary import summarize


def test_trim_keeps_the_occupied_span_and_sums_down():
    counts = np.zeros(16, dtype=np.int64)
    counts[5], counts[6], counts[11] = 3, 1, 2
    kept, start, width = trim_histogram(counts, -8.0, 1.0, bins=4)
    assert (kept, start, width) == ([4, 0, 0, 2], -3.0, 2.0)
    assert trim_histogram(counts, 0.0, 0.5, bins=64) == ([3, 1, 0, 0, 0, 0, 2], 2.5, 0.5)
    assert trim_histogram(np.zeros(8, dtype=np.int64), 0.0, 1.0, bins=4) == ([0], 0.0, 1.0)


def test_default_tensors_are_the_most_clipped():
    entries = {"a": {"range": [0, 1.0], "observed": [0, 1.0]}, "b": {"range": [-1.0, 1.0], "observed": [-5, 2]},
               "c": {"range": [0, 2.0], "observed": [0, 3.0]}}
    assert choose_tensors(entries, (), 2) == ["b", "c"]
    assert choose_tensors(entries, ("c", "missing"), 2) == ["c"]


def test_histograms_of_the_shared_build_cover_the_calibration_data(html_build):
    _, outcome = html_build
    r1, r2 = outcome.report["histograms"]
    assert (r1["tensor"], r1["pass"], r1["range"], r2["range"]) == ("r1", "test-calibrate", [0.0, 0.5], [0.0, 3.0])
    # the model before test-calibrate (c1 not pruned yet) over all 16 calibration samples of 8x8 maps
    for h, channels in ((r1, 4), (r2, 6)):
        assert sum(h["counts"]) == h["values"] == 16 * channels * 64
        lo, hi = h["observed"]
        assert h["start"] <= lo and h["start"] + h["bin_width"] * len(h["counts"]) >= hi
        assert len(h["counts"]) <= 128 and h["counts"][0] > 0 and h["counts"][-1] > 0


def verification(*outputs):
    return {"samples": 3, "outputs": [{"sqnr_db": s, "cosine": c, "top1": t} for s, c, t in outputs]}


def test_summary_takes_the_worst_output_and_keeps_ratios():
    before = {"params": 1000, "file_bytes": 4000, "macs": 10, "macs_unknown": []}
    after = {"params": 250, "file_bytes": 1000, "macs": 5, "macs_unknown": ["n"]}
    latency = {"a": {"median_ms": 3.0}, "b": {"median_ms": 1.5}, "ratio": 2.0, "runs": 5, "threads": 2}
    s = summarize(before, after, verification(("inf", 1.0, None), (20.5, 0.99, 0.75)), None, latency)
    assert s["params"] == {"before": 1000, "after": 250, "ratio": 0.25} and s["macs"]["partial"]
    assert s["error"] == {"sqnr_db": 20.5, "cosine": 0.99, "top1": 0.75, "samples": 3}
    assert s["latency"] == {"before_ms": 3.0, "after_ms": 1.5, "speedup": 2.0, "runs": 5, "threads": 2}
    worst = summarize(before, None, verification(("nan", "nan", None), (30.0, 1.0, None)), None, None)["error"]
    assert math.isnan(worst["sqnr_db"]) and worst["top1"] is None and s["task"] is None


def test_summary_rows_say_unknown_macs_and_signed_points():
    from graphc.report.tables import summary_rows

    summary = summarize({"params": 1, "file_bytes": 1, "macs": 0, "macs_unknown": ["a"]}, {}, None,
                        {"metric": "accuracy", "samples": 4, "reference": 1.0, "candidate": 0.75, "drop": 0.25},
                        None)
    rows = {r[0]: r for r in summary_rows({"summary": summary})}
    assert rows["MACs"] == ["MACs", "unknown", "-", ""]
    assert rows["accuracy (4 labelled)"] == ["accuracy (4 labelled)", "100.00%", "75.00%", "-25.00 pt"]
    with pytest.raises(KeyError):
        summary_rows({})
