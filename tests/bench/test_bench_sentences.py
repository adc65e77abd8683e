"""Sentences benchmarks/ writes into BENCHMARKS.md: computed from the values they are given.

Each test feeds a sentence generator made-up measurements on both sides of its condition and checks
that the words follow the numbers (a verdict, a comparison, which term dominates), so a sentence
can no longer say what an earlier run measured whatever this run measures.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_compression  # noqa: E402
import bench_executor  # noqa: E402
import bench_fp16  # noqa: E402
import bench_prune  # noqa: E402
import bench_quant  # noqa: E402
import bench_robustness  # noqa: E402
import run as bench_run  # noqa: E402
from graphc.bench import LatencyComparison, LatencyStats  # noqa: E402


def _stats(times: list[float]) -> LatencyStats:
    return LatencyStats.from_times(times)


# -- run.py: the file header -----------------------------------------------------------------


def test_header_of_a_whole_run_says_all_sections_and_no_failure():
    text = bench_run._header([], 0.0, 65.0, ["a", "b"], [], [])
    assert "all 2 benchmark sections in one run" in text
    assert "none failed, exit status 0" in text and "(65 s)" in text
    assert "commit" in text or "not a git checkout" in text


def test_header_of_a_partial_run_names_the_sections_kept_from_earlier_runs():
    text = bench_run._header(["a"], 0.0, 5.0, ["a"], ["a"], ["b", "c"])
    assert "all 1 benchmark" not in text
    assert "the others (b, c) are kept from earlier runs" in text
    assert "1 failed (a), exit status 1" in text


def test_design_notes_section_says_it_is_not_re_run_and_names_sources():
    text = bench_run._design_notes()
    assert text.startswith("## Design notes") and "not re-run by `make bench`" in text.splitlines()[0]
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert rows and all("commit " in row.split("|")[-2] for row in rows)


# -- executor: which term bounds the cluster estimate ------------------------------------------


def test_executor_bound_note_names_the_largest_term():
    parts = {"t_seq'": 1.0, "the sweep": 6.0, "R_search sequential evaluations": 2.0, "the transfer": 1.0}
    note = bench_executor._bound_note(parts, sum(parts.values()))
    assert "the largest, the sweep, is 60% of it" in note
    parts["t_seq'"] = 20.0
    assert "the largest, t_seq', is" in bench_executor._bound_note(parts, sum(parts.values()))


# -- fp16: CPU against emulated SQNR, storage mode around 1 ------------------------------------


def test_fp16_notes_compare_cpu_and_emulated_sqnr_as_measured():
    seen = {"sqnr": {"det": (53.2, 50.1), "rec": (40.0, 42.5)}}
    text = bench_fp16._notes(seen)
    assert "det 53.2 vs 50.1 dB (above)" in text and "rec 40.0 vs 42.5 dB (not above)" in text


def test_fp16_notes_say_for_which_models_storage_brackets_hold_one():
    around_one = LatencyComparison(_stats([1.0, 1.0, 1.0, 1.0]), _stats([0.9, 1.1, 0.95, 1.05]), 1, 0)
    faster = LatencyComparison(_stats([2.0, 2.0, 2.0, 2.0]), _stats([1.0, 1.0, 1.0, 1.0]), 1, 0)
    seen = {"vs_fold_bn": {("det", "graphc fp16{mode=storage}"): around_one,
                           ("rec", "graphc fp16{mode=storage}"): faster,
                           ("det", "graphc fp16"): faster}}
    text = bench_fp16._notes(seen)
    assert "brackets hold 1.00 for det and do not for rec" in text


# -- prune: the round-to=8 rows against their defaults ----------------------------------------


def test_prune_cpu_note_quotes_the_round_to_8_pairs_measured():
    ratios = {"prune{flops=0.5}": 1.93, "prune{flops=0.5 round-to=8}": 1.44,
              "prune{flops=0.5 allocation=uniform}": 1.90}
    text = bench_prune._cpu_note(ratios)
    assert "`prune{flops=0.5 round-to=8}` 1.44x against `prune{flops=0.5}` 1.93x" in text
    assert "uniform round-to=8" not in text  # not timed: not quoted
    assert "no round-to=8 pair timed" in bench_prune._cpu_note({"prune{flops=0.5}": 1.9})


# -- compression: storage and packing notes from the measured sizes ----------------------------


def test_storage_note_quotes_the_table_ratios():
    ratios = {(0.5, "dense float32 (what sparsify writes)"): 1.0,
              (0.5, "ONNX sparse initializers (int64 indices)"): 1.46,
              (0.5, "cluster{bits=4 pack=false}: uint8 indices + codebook"): 0.33,
              (0.5, "cluster{bits=4}: packed 4-bit indices + codebook"): 0.24,
              (0.8, "ONNX sparse initializers (int64 indices)"): 0.64}
    text = bench_compression._storage_note(ratios)
    assert "sparse initializers 1.46 at 50% and 0.64 at 80%" in text
    assert "uint8 indices 0.33 at 50%" in text and "packed 4-bit indices (two per byte" in text
    assert "0.24 at 50%" in text and "4x" not in text and "8x" not in text


def test_packing_note_from_the_two_rows_that_differ_only_in_pack():
    class Size:
        def __init__(self, file_bytes, entropy):
            self.file_bytes, self.entropy_coded_bytes = file_bytes, entropy

    sizes = {bench_compression.PACKED: Size(376_000, 195_000), bench_compression.UNPACKED: Size(713_000, 186_000)}
    text = bench_compression._packing_note(sizes)
    assert "from 713 kB to 376 kB" in text and "from 186.0 kB to 195.0 kB" in text
    assert bench_compression._packing_note({}) == ""


# -- robustness: the rewritten share the property test requires ---------------------------------


@pytest.mark.parametrize("rewritten, verdict", [(8, "met"), (7, "MISSED")])
def test_property_row_judges_the_required_share(rewritten, verdict):
    row = bench_robustness._property_row("prune", "lossy", 10, rewritten, 0.8, 2.0)
    assert f"| 10 | {rewritten} | >= 80%: {verdict} | 2.0 | 5.0 |" in row


def test_property_row_with_no_graph_is_missed():
    assert "MISSED" in bench_robustness._property_row("x", "exact", 0, 0, 0.5, 0.0)


# -- quant: targets and never slower than fp32 -------------------------------------------------


def _measured(graphc_ms: float) -> dict:
    original = [10.0] * 5
    stats = {"original": _stats(original), "graphc": _stats([graphc_ms] * 5),
             "graphc float": _stats([8.0] * 5), "graphc all": _stats([7.0] * 5)}
    return {kind: {"stats": stats, "ints": {"graphc": 5, "graphc all": 9}} for kind in ("det", "rec", "cls")}


def test_quant_verdict_meets_targets_when_fast_enough():
    text = bench_quant._speed_verdict(_measured(5.0))  # 2.0x
    assert "det 2.00x (target 1.8x: met; never slower than fp32: met)" in text
    assert "cls 2.00x (target 1.2x: met" in text


def test_quant_verdict_misses_when_slower_than_fp32():
    text = bench_quant._speed_verdict(_measured(12.5))  # 0.8x
    assert "det 0.80x (target 1.8x: MISSED; never slower than fp32: MISSED)" in text


def test_repair_margin_is_against_magnitude_only():
    sqnr = {label: value for (label, _), value in zip(bench_compression.TRANSFORMER, (2.9, 19.2, 18.9))}
    text = bench_compression._repair_margin(sqnr)
    assert "magnitude-only (2.9 dB)" in text and "repair, sequential (default): +16.0 dB" in text


# -- bench_transformer: quant's sibling merge against quant{merge-siblings=false} ---------------------


def _merge_rows(one, sixteen, cosine=0.99868, nn=0.973):
    import bench_transformer

    return {bench_transformer.GRAPHC: {"cosine": 0.99868, "nn": 0.973},
            bench_transformer.UNMERGED: {"cosine": cosine, "nn": nn,
                                         "merge_gain": {"16 sentences": sixteen, "1 sentence": one}}}


def test_merge_line_says_faster_only_when_the_quartiles_agree():
    import bench_transformer

    text = bench_transformer.merge_line(_merge_rows(one=(1.04, 1.01, 1.07), sixteen=(1.01, 0.98, 1.03)))
    assert "faster on 1 sentence (1.040x [1.010-1.070])" in text
    assert "no clear difference on 16 sentences (1.010x [0.980-1.030])" in text
    assert "accuracy the same" in text
    text = bench_transformer.merge_line(_merge_rows(one=(0.95, 0.93, 0.98), sixteen=(1.0, 0.99, 1.01), nn=0.96))
    assert "slower on 1 sentence" in text and "accuracy differs" in text
