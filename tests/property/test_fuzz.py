"""Fuzzing: mutated valid models through ``graphc inspect`` and ``graphc opt -p cleanup,fold-bn``.

Seeds are the zoo (models/*.onnx), random graphs and the valid corpus files with subgraphs
(tests/property/mutations.py); each case applies one to three protobuf- or graph-level mutations
and runs tests/property/fuzz_target.py. Any outcome other than success or a clean one-line
rejection (exit 2, ``graphc: error: ...``, no output, input unchanged) fails, with the seed and the
mutations that reproduce it. A pass that raises a Python exception (KeyError, IndexError...) is a
crash too, even though the pass manager wraps it into a one-line PassError for the user: a clean
refusal is a typed error raised on purpose.

``make test`` runs 100 cases drawn by a seeded numpy generator, so CI sees the same ones every run
whatever ran before (hypothesis, even derandomized, mixes literals of the modules already imported
into its draws, so its cases depend on the test order); ``make fuzz`` sets ``GRAPHC_FUZZ_EXAMPLES``
to 2000 and explores new cases with hypothesis (which shrinks a failure) on every run.
Cases per minute are measured by ``python benchmarks/run.py robustness``.
"""
from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from fuzz_target import run_case
from mutations import KINDS, apply, describe, seed_models

ROOT = Path(__file__).resolve().parents[2]
EXPLORE = "GRAPHC_FUZZ_EXAMPLES" in os.environ
EXAMPLES = int(os.environ.get("GRAPHC_FUZZ_EXAMPLES", "100"))
SEEDS = seed_models(ROOT)

STEPS = st.lists(st.tuples(st.integers(0, KINDS - 1), st.integers(0, 2**16), st.integers(0, 2**16),
                           st.integers(0, 2**16)), min_size=1, max_size=3)


def fixed_cases(count: int, seed: int = 2024) -> list[tuple[int, list[tuple[int, int, int, int]]]]:
    """``count`` (seed index, mutations) pairs, a pure function of ``seed``."""
    rng = np.random.default_rng(seed)
    return [(int(rng.integers(len(SEEDS))),
             [(int(rng.integers(KINDS)), *(int(v) for v in rng.integers(0, 2**16 + 1, 3)))
              for _ in range(int(rng.integers(1, 4)))]) for _ in range(count)]


def test_fuzz_inspect_and_opt_never_crash(record_property):
    outcomes: Counter[str] = Counter()

    def case(seed: int, steps) -> None:
        name, data = SEEDS[seed]
        if EXPLORE:
            note(f"seed {name}; mutations: {describe(steps)}")
        with tempfile.TemporaryDirectory(prefix="graphc-fuzz-") as tmp:
            outcome = run_case(apply(data, steps), Path(tmp))
        outcomes[outcome.kind] += 1
        assert outcome.kind != "crash", f"seed {name} + mutations [{describe(steps)}]: {outcome.detail}"

    start = time.perf_counter()
    if EXPLORE:
        settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
                 suppress_health_check=list(HealthCheck))(given(seed=st.integers(0, len(SEEDS) - 1), steps=STEPS)(case))()
    else:
        for seed, steps in fixed_cases(EXAMPLES):
            case(seed, steps)
    minutes = (time.perf_counter() - start) / 60
    total = sum(outcomes.values())
    record_property("fuzz_cases", total)
    record_property("fuzz_cases_per_minute", round(total / minutes, 1) if minutes else None)
    print(f"fuzz: {total} cases in {minutes * 60:.1f} s ({total / minutes:.0f}/min): {dict(outcomes)}")


#: seeds that fail for a known bug (strict xfail: delete the entry once it is fixed).
SEED_BUGS: dict[str, str] = {}


@pytest.mark.parametrize("index", [
    pytest.param(i, id=name.split("[")[0] + str(i),
                 marks=[pytest.mark.xfail(strict=True, reason=SEED_BUGS[name])] if name in SEED_BUGS else [])
    for i, (name, _) in enumerate(SEEDS)])
def test_fuzz_seed_is_accepted(index, tmp_path):
    """Each seed is accepted as it is (else its cases would test only the rejection paths)."""
    name, data = SEEDS[index]
    outcome = run_case(data, tmp_path)
    assert outcome.kind == "ok", f"{name}: {outcome}"
