"""The greedy re-promotion shared by the static error budget's leave-out and the per-layer mix
(:func:`graphc.passes.quant.error_budget.promote_greedily`), on synthetic scores: the order of
the trials, the first rung that meets is kept and the rest of that layer's rungs are not tried,
each trial is made against the state the earlier layers left, and nothing met leaves the state."""
from __future__ import annotations

import numpy as np

from graphc.passes.quant.error_budget import Target, promote_greedily
from graphc.passes.quant.evaluations import Score

NOISE = {"fast": 0.6, "mid": 0.3, "float": 0.0}  # noise power of a layer in each state


def _score(states: dict[str, str]) -> Score:
    noise = sum(NOISE[v] for v in states.values())
    return Score(-10 * np.log10(noise) if noise else float("inf"), None)


def _promote(states, moves, limit):
    asked = []

    def score_of(trial):
        asked.append(dict(trial))
        return _score(trial)
    result = promote_greedily(states, _score(states), moves, lambda st, name, rung: {**st, name: rung},
                              score_of, Target(-10 * np.log10(limit), None), "%s %s again: %s")
    return result, asked


def test_each_layer_keeps_its_first_rung_that_meets_and_tries_no_further():
    """a: fast 0.6 with b float is within 0.7: kept, and a's 'mid' rung is never tried; b: fast
    (0.6 + 0.6) is refused, mid (0.6 + 0.3) is refused, so b stays float."""
    (states, score), asked = _promote({"a": "float", "b": "float"},
                                      [("a", ("fast", "mid")), ("b", ("fast", "mid"))], 0.7)
    assert asked == [{"a": "fast", "b": "float"}, {"a": "fast", "b": "fast"}, {"a": "fast", "b": "mid"}]
    assert states == {"a": "fast", "b": "float"} and score.sqnr == _score(states).sqnr


def test_trials_are_made_against_the_state_the_earlier_layers_left():
    """Within 1.0: a fast (0.6) is kept; b then meets only at mid (0.6 + 0.3), against a fast,
    not against the starting state (where fast, 0.6, would have met)."""
    (states, score), asked = _promote({"a": "float", "b": "float"},
                                      [("a", ("fast",)), ("b", ("fast", "mid"))], 1.0)
    assert asked == [{"a": "fast", "b": "float"}, {"a": "fast", "b": "fast"}, {"a": "fast", "b": "mid"}]
    assert states == {"a": "fast", "b": "mid"}
    assert score.sqnr == _score({"a": "fast", "b": "mid"}).sqnr


def test_the_moves_are_tried_in_the_order_given():
    """Within 0.7 only one layer fits fast: the first one listed gets it."""
    (states, _), _ = _promote({"a": "float", "b": "float"}, [("b", ("fast",)), ("a", ("fast",))], 0.7)
    assert states == {"a": "float", "b": "fast"}
    (states, _), _ = _promote({"a": "float", "b": "float"}, [("a", ("fast",)), ("b", ("fast",))], 0.7)
    assert states == {"a": "fast", "b": "float"}


def test_nothing_that_meets_leaves_the_state_and_its_score():
    start = {"a": "mid", "b": "float"}
    (states, score), asked = _promote(start, [("b", ("fast", "mid"))], 0.4)
    assert len(asked) == 2 and states == start and score.sqnr == _score(start).sqnr


def test_the_static_leave_out_is_one_rung_per_float_layer():
    """The static budget's use: the state is the float set, the one rung quantizes the layer
    again (drops it from the set); each trial drops from the set the earlier ones left."""
    asked = []

    def score_of(floats):
        asked.append(floats)
        return Score(40.0 if "x" in floats else 20.0, None)  # only x must stay float
    floats, score = promote_greedily(("x", "y", "z"), Score(50.0, None), [(n, ("quantized",)) for n in "yxz"],
                                     lambda fs, name, _: tuple(v for v in fs if v != name), score_of,
                                     Target(30.0, None), "%s %s again: %s")
    assert asked == [("x", "z"), ("z",), ("x",)]
    assert floats == ("x",) and score.sqnr == 40.0
