"""The user's task metric: ``--metric package.module:function`` (recipe ``[metric] function``).

The callable is called as ``function(reference, candidate, labels, **args)`` and returns one finite
number, the candidate's score:

- ``reference``, ``candidate``: lists with one dict per evaluation feed, mapping the input model's
  output names to numpy arrays (the candidate's outputs are put under the reference's names);
- ``labels``: the labels array (``--labels`` or a ``labels`` array in the evaluation ``.npz``; any
  dtype, e.g. strings for text lines) or ``None``; with no labels the reference is the truth;
- ``args``: ``--metric-arg KEY=VALUE`` pairs, values as strings.

Whether higher is better is the callable's ``higher_is_better`` attribute (default True). The
reference's own score is ``function(reference, reference, labels)``, so

    drop = reference_score - candidate_score     (higher is better)
    drop = candidate_score - reference_score     (lower is better, e.g. an error rate)

is what the candidate costs in the metric's own units; ``--max-metric-drop`` bounds it and
``--min-metric`` bounds the candidate's score from below (from above when lower is better).
A callable whose score is a pooled error rate may expose ``function.counts`` (per-sample errors
and opportunities); its drop then has an upper confidence bound (:mod:`graphc.verify.metric_bound`),
which ``quant{max-metric-drop=...}`` holds to instead of the point estimate.
Ready metrics: ``graphc.task_metrics:ctc_cer``, ``graphc.task_metrics:box_f1`` and
``graphc.task_metrics:det_box_f1`` (probability maps, boxes extracted as DB post-processing does).
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from graphc.errors import MetricError
from graphc.progress import progress
from graphc.runtime import create_session, run_session
from graphc.verify.compare import match_outputs
from graphc.verify.feeds import ModelInput, open_model
from graphc.verify.metric_bound import paired_bootstrap_upper, pooled_rate, rate_upper


@dataclass(frozen=True)
class UserMetric:
    """A loaded metric: the callable, its arguments and its direction."""

    spec: str
    function: Callable[..., Any]
    args: tuple[tuple[str, str], ...] = ()

    @property
    def higher_is_better(self) -> bool:
        return bool(getattr(self.function, "higher_is_better", True))

    def score(self, reference: list[dict[str, np.ndarray]], candidate: list[dict[str, np.ndarray]],
              labels: Any = None) -> float:
        """The candidate's score; any failure is a one-line :class:`MetricError` naming the metric."""
        try:
            value = self.function(reference, candidate, labels, **dict(self.args))
        except Exception as exc:  # the user's code: any exception becomes one line
            raise MetricError(f"metric {self.spec} raised {type(exc).__name__}: {_first_line(exc)}") from None
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise MetricError(f"metric {self.spec} returned {type(value).__name__}, not a number") from None
        if not math.isfinite(number):
            raise MetricError(f"metric {self.spec} returned {number}, not a finite number")
        return number

    @property
    def has_counts(self) -> bool:
        """Whether the callable exposes its per-sample error counts (``function.counts``), so that
        its drop can be bounded (:mod:`graphc.verify.metric_bound`)."""
        return callable(getattr(self.function, "counts", None))

    def drop_upper_bound(self, reference: list[dict[str, np.ndarray]], candidate: list[dict[str, np.ndarray]],
                         confidence: float, labels: Any = None) -> float | None:
        """Upper ``confidence`` bound of the candidate's drop against the reference (None: the
        metric has no counts); see :mod:`graphc.verify.metric_bound`."""
        if not self.has_counts:
            return None
        ref, cand = self.counts(reference, reference, labels), self.counts(reference, candidate, labels)
        return counts_drop_bound(cand, ref, confidence, labelled=labels is not None)

    def counts(self, reference: list[dict[str, np.ndarray]], candidate: list[dict[str, np.ndarray]],
               labels: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """``function.counts``: per-sample errors and opportunities of the candidate."""
        try:
            errors, totals = self.function.counts(reference, candidate, labels, **dict(self.args))
        except Exception as exc:  # the user's code: any exception becomes one line
            raise MetricError(f"metric {self.spec} counts raised {type(exc).__name__}: {_first_line(exc)}") from None
        return np.asarray(errors), np.asarray(totals)


def counts_rate(counts: tuple[Any, Any]) -> float:
    """The pooled rate ``sum e / sum t`` of per-sample counts, not clipped (a CER can pass 1): a
    counts metric's score is this rate (``1 - rate`` when higher is better)."""
    e, t = float(np.sum(counts[0])), float(np.sum(counts[1]))
    return (0.0 if e == 0 else 1.0) if t == 0 else e / t


def counts_drop_bound(candidate: tuple[Any, Any], reference: tuple[Any, Any], confidence: float,
                      labelled: bool) -> float:
    """Upper ``confidence`` bound of the drop from per-sample counts (:mod:`graphc.verify.metric_bound`)."""
    if not labelled:  # the reference is the truth: its rate is 0, the candidate's its disagreement
        return rate_upper(*candidate, confidence) - pooled_rate(reference)
    return paired_bootstrap_upper(candidate, reference, confidence)


def load_metric(spec: str, args: Iterable[str] = ()) -> UserMetric:
    """``package.module:function`` imported and checked callable; ``args`` as ``KEY=VALUE``."""
    module_name, colon, name = spec.partition(":")
    if not colon or not module_name or not name:
        raise MetricError(f"metric '{spec}': expected package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MetricError(f"metric '{spec}': cannot import {module_name} ({_first_line(exc)})") from None
    except Exception as exc:  # importing the user's module ran its code
        raise MetricError(f"metric '{spec}': importing {module_name} raised {type(exc).__name__}: "
                          f"{_first_line(exc)}") from None
    function = getattr(module, name, None)
    if function is None:
        raise MetricError(f"metric '{spec}': {module_name} has no '{name}'")
    if not callable(function):
        raise MetricError(f"metric '{spec}': {name} is a {type(function).__name__}, not callable")
    return UserMetric(spec, function, tuple(_pair(spec, text) for text in args))


def _pair(spec: str, text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key.isidentifier():
        raise MetricError(f"metric '{spec}': argument '{text}' is not KEY=VALUE")
    return key, value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class MetricResult:
    """The metric of both models over ``samples`` evaluation feeds."""

    spec: str
    samples: int
    reference: float
    candidate: float
    higher_is_better: bool

    @property
    def drop(self) -> float:
        """What the candidate costs in the metric's units (positive is worse)."""
        gap = self.reference - self.candidate
        return gap if self.higher_is_better else -gap

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.spec, "samples": self.samples, "reference": self.reference,
                "candidate": self.candidate, "higher_is_better": self.higher_is_better, "drop": self.drop}


def model_outputs(reference: ModelInput, candidate: ModelInput, data: Any) -> tuple[list, list]:
    """Every output of both models over ``data``, one dict per feed, under the reference's names."""
    ref_model, ref_src = open_model(reference)
    cand_model, cand_src = open_model(candidate)
    pairs = match_outputs(ref_model, cand_model)[0]
    ref_session = create_session(ref_src, label="reference", spin=False)
    cand_session = create_session(cand_src, label="candidate", spin=False)
    ref_names, cand_names = [r for r, _ in pairs], [c for _, c in pairs]
    ref_out, cand_out = [], []
    for feed in progress(data, desc="metric", unit="sample"):
        ref_out.append(dict(zip(ref_names, run_session(ref_session, feed, ref_names, label="reference"))))
        cand_out.append(dict(zip(ref_names, run_session(cand_session, feed, cand_names, label="candidate"))))
    if not ref_out:
        raise MetricError("no evaluation data to measure the metric on")
    return ref_out, cand_out


def measure_metric(metric: UserMetric, reference: ModelInput, candidate: ModelInput, data: Any,
                   labels: Any = None) -> MetricResult:
    """``metric`` of both models over ``data`` (see the module docstring)."""
    ref_out, cand_out = model_outputs(reference, candidate, data)
    return MetricResult(metric.spec, len(ref_out), metric.score(ref_out, ref_out, labels),
                        metric.score(ref_out, cand_out, labels), metric.higher_is_better)
