"""The sentences benchmarks/bench_lstm_speed.py writes follow its measurements: a choice is
right when it matches which side of 1 the float/int8 ratio lies, too close to call when the
spread straddles 1, and the tally counts only the clear cases."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_lstm_speed  # noqa: E402


def test_a_choice_is_judged_by_the_side_of_one_the_ratio_lies():
    assert bench_lstm_speed.judge(True, False, 1.2, 1.3, 1.25) == ("right", (True, False))
    assert bench_lstm_speed.judge(True, True, 0.8, 0.9, 0.85) == ("WRONG", (False, False))
    assert bench_lstm_speed.judge(False, True, 0.8, 0.9, 0.85) == ("right", (True, False))
    assert bench_lstm_speed.judge(False, False, 0.95, 1.05, 1.01) == ("close", None)


def test_the_tally_counts_clear_cases_only():
    text = bench_lstm_speed.tally([(True, False), (True, True), None, (False, True)])
    assert text.startswith("Measured table: 2 of 3 clear cases chosen right, builtin rule: 2 of 3")
    assert "(1 within the 1-thread timing spread, not counted)" in text
