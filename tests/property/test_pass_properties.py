"""Properties every registered pass must have, on random valid graphs it applies to.

For each pass returned by ``graphc.passmanager.all_passes()`` (new passes are picked up without
editing this file), graphs are drawn from that pass's menu (tests/property/random_graphs.py
``MENUS``: Conv+BN chains for fold-bn, MatMul chains for smooth, low-rank weights for
factorize, ...) and checked by ``pass_checks.check_pass_on``: checker, onnxruntime, interface,
exactness or lossy floors and pass-specific oracles, idempotence. Each test also asserts that the
pass rewrote at least ``MIN_REWRITTEN`` of its graphs - a pass that silently does nothing fails.

Graphs are drawn with a seeded numpy generator (``random_recipe``), not hypothesis: hypothesis
mixes literals it collects from the modules already imported into its draws, so the same
derandomized test drew different graphs alone than after tests/property/test_fuzz.py (that is
how ``smooth is not idempotent`` failed only when tests/property ran alone). A failure names the
recipe; ``build_model(Recipe(...))`` replays it.

The number of graphs that ran is counted, printed and written to ``COUNTS_FILE`` (JSON);
benchmarks/bench_robustness.py runs ``check_pass`` on the same draws and counts its own. Examples per pass: ``GRAPHC_PROPERTY_EXAMPLES`` (default
60; a third for passes that calibrate on data, which run onnxruntime inside the pass).

Measured at the defaults (60 graphs, 20 for passes with data): rewritten cleanup 56/60,
fold-constants 57/60, fold-bn 60/60, canonicalize 56/60, equalize 60/60, smooth 19/20, quant 20/20,
merge-matmuls 58/60,
factorize 60/60, prune 45/57 (3 skipped: KNOWN_BUGS), fp16 20/20, sparsify 19/20, cluster 19/20,
exact pipeline 48/60; lowest output SQNR quant 23.3 dB (floor 15), factorize 53.8 dB (floor 45),
fp16 61.6 dB (floor 45), cluster 14.4 dB (floor 12). About 35 s in all.

tests/property/test_injected_bugs.py breaks each pass on purpose and shows these checks fail.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest

import graphc
from graphc.ir import to_proto
from graphc.passmanager import PassManager, all_passes
from pass_checks import (  # noqa: F401 - re-exported for benchmarks/bench_robustness.py
    CHAIN_EXCLUDED,
    EXACT_PASSES,
    KNOWN_BUGS,
    LOSSY_PASSES,
    MIN_REWRITTEN,
    check_pass_on,
    is_exact,
)
from random_graphs import MENUS, Recipe, build_model, input_feeds, random_recipe
from support import run

EXAMPLES = int(os.environ.get("GRAPHC_PROPERTY_EXAMPLES", "60"))
RTOL, ATOL = 1e-5, 1e-6
#: where the counted graphs of the last run are written (gitignored).
COUNTS_FILE = Path(os.environ.get("GRAPHC_PROPERTY_COUNTS", Path(__file__).with_name("last_counts.json")))
_is_exact = is_exact  # the name benchmarks/bench_robustness.py uses


@dataclass
class Tally:
    """Graphs a property run checked, and how many the pass rewrote."""

    ran: int = 0
    rewritten: int = 0
    recipes: list[str] = field(default_factory=list)


def examples_for(cls, examples: int = EXAMPLES) -> int:
    return max(10, examples // 3) if cls.needs_data else examples


def draw(name: str, count: int, seed: int = 0) -> list[Recipe]:
    """``count`` recipes from the pass's menu (``any`` for a pass without one)."""
    rng = np.random.default_rng([seed, sum(map(ord, name))])
    return [random_recipe(rng, menu=name if name in MENUS else "any") for _ in range(count)]


def check_pass(cls, recipes: list[Recipe]) -> Tally:
    """Every property on every recipe; an AssertionError names the recipe that failed."""
    tally = Tally()
    bug = KNOWN_BUGS.get(cls.name)
    for recipe in recipes:
        proto = build_model(recipe)
        if bug is not None and bug[0](proto):
            continue
        feeds = input_feeds(recipe)
        try:
            rewritten = check_pass_on(cls, proto, feeds, run(proto, feeds))
        except AssertionError as exc:
            raise AssertionError(f"{cls.name} on {recipe!r}: {exc}") from exc
        tally.ran += 1
        tally.rewritten += rewritten
        tally.recipes.append(str(recipe))
    return tally


def assert_share(name: str, tally: Tally) -> None:
    share = MIN_REWRITTEN.get(name, 0.5)
    assert tally.ran > 0, f"{name}: no graph ran"
    assert tally.rewritten >= share * tally.ran, \
        f"{name} rewrote {tally.rewritten} of {tally.ran} graphs drawn for it (at least {share:.0%} expected)"


def _record_count(key: str, tally: Tally) -> None:
    counts = {}
    if COUNTS_FILE.is_file():
        try:
            counts = json.loads(COUNTS_FILE.read_text())
        except ValueError:
            counts = {}
    counts[key] = {"ran": tally.ran, "rewritten": tally.rewritten}
    COUNTS_FILE.write_text(json.dumps(counts, indent=1, sort_keys=True) + "\n")


def _pass(name: str):
    return next(c for c in all_passes() if c.name == name)


def test_exactness_lists_match_the_passes_declarations():
    for cls in all_passes():
        if cls.name in EXACT_PASSES:
            assert cls.exact, f"{cls.name} is listed exact here but declares exact=False"
        elif cls.name in LOSSY_PASSES:
            assert not cls.exact, f"{cls.name} is listed lossy here but declares exact=True"
        else:
            pytest.fail(f"pass '{cls.name}' is in neither EXACT_PASSES nor LOSSY_PASSES of "
                        "tests/property/pass_checks.py: say which, and give it a menu in random_graphs.MENUS")


def test_every_pass_has_a_menu_and_a_share():
    for cls in all_passes():
        assert cls.name in MENUS, f"pass '{cls.name}' has no menu in random_graphs.MENUS"
        assert cls.name in MIN_REWRITTEN, f"pass '{cls.name}' has no MIN_REWRITTEN share in pass_checks.py"


@pytest.mark.parametrize("name", [cls.name for cls in all_passes()])
def test_pass_properties_on_random_graphs(name, record_property):
    cls = _pass(name)
    tally = check_pass(cls, draw(name, examples_for(cls)))
    record_property("graphs", tally.ran)
    _record_count(name, tally)
    print(f"{name}: {tally.ran} graphs checked, {tally.rewritten} rewritten")
    assert_share(name, tally)


def test_exact_pipeline_on_random_graphs(record_property):
    """All exact passes chained, forwards then backwards: still exact, then a fixed point."""
    # equalize rescales weights for quantization; canonicalize's affine folds after it can
    # re-create an imbalance, so the chain is not a fixed point with it. Its own property test
    # (test_pass_properties_on_random_graphs[equalize]) checks exactness and idempotence.
    exact = [c.name for c in all_passes() if is_exact(c) and not c.needs_data and c.name not in CHAIN_EXCLUDED]
    tally = Tally()
    for recipe in draw("any", EXAMPLES):
        proto = build_model(recipe)
        if any(KNOWN_BUGS[n][0](proto) for n in exact if n in KNOWN_BUGS):
            continue
        feeds = input_feeds(recipe)
        reference = run(proto, feeds)
        model = graphc.load(proto)
        report = PassManager(",".join(exact + exact[::-1])).run(model)
        result = to_proto(model)
        onnx.checker.check_model(result, full_check=True)
        for ref, out in zip(reference, run(result, feeds)):
            np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL, err_msg=repr(recipe))
        again = PassManager(",".join(exact)).run(model)
        assert not again.modified, (recipe, [(r.name, r.stats) for r in again.records if r.modified])
        tally.ran += 1
        tally.rewritten += any(r.modified for r in report.records)
    record_property("graphs", tally.ran)
    _record_count("exact-pipeline", tally)
    print(f"exact pipeline: {tally.ran} graphs checked, {tally.rewritten} rewritten")
    assert_share("exact-pipeline", tally)
