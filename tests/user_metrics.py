"""User metrics for the --metric tests (imported by name, as a user's module would be)."""
from __future__ import annotations

import numpy as np


def agreement(reference, candidate, labels=None, output="probs"):
    """Fraction of samples whose argmax matches the labels (or the reference's argmax)."""
    predicted = np.concatenate([np.argmax(feed[output], axis=-1).reshape(-1) for feed in candidate])
    if labels is None:
        labels = np.concatenate([np.argmax(feed[output], axis=-1).reshape(-1) for feed in reference])
    return float(np.mean(predicted == np.asarray(labels).reshape(-1)))


def mean_abs_error(reference, candidate, labels=None, scale="1"):
    """Mean |reference - candidate| over every output value, times ``scale``: lower is better."""
    diffs = [np.abs(r[k] - c[k]).reshape(-1) for r, c in zip(reference, candidate) for k in r]
    return float(np.mean(np.concatenate(diffs))) * float(scale)


mean_abs_error.higher_is_better = False


def raises(reference, candidate, labels=None):
    raise KeyError("no output 'logits'\nsecond line")


def returns_nan(reference, candidate, labels=None):
    return float("nan")


def returns_text(reference, candidate, labels=None):
    return "good"


not_callable = 3


def relative_error(reference, candidate, labels=None):
    """sum |reference - candidate| / sum |reference| over every output: lower is better."""
    num = sum(float(np.sum(np.abs(r[k] - c[k]))) for r, c in zip(reference, candidate) for k in r)
    den = sum(float(np.sum(np.abs(r[k]))) for r in reference for k in r)
    return num / den


relative_error.higher_is_better = False


def _argmax_counts(reference, candidate, labels=None, output="y"):
    """Per sample: positions whose argmax over axis 1 differs from the labels' (one [H, W] map of
    class indices per sample) or else from the reference's, and positions."""
    errors, totals = [], []
    for i, (r, c) in enumerate(zip(reference, candidate)):
        cand = np.argmax(c[output], axis=1)
        truth = np.argmax(r[output], axis=1) if labels is None else np.asarray(labels[i]).reshape(cand.shape)
        errors.append(int(np.sum(truth != cand)))
        totals.append(truth.size)
    return np.array(errors), np.array(totals)


def argmax_error(reference, candidate, labels=None, output="y"):
    """Pooled fraction of positions whose argmax over axis 1 moved: lower is better; its per-sample
    counts let a budget bound it (graphc.verify.metric_bound)."""
    errors, totals = _argmax_counts(reference, candidate, labels, output)
    return float(errors.sum() / totals.sum())


argmax_error.higher_is_better = False
argmax_error.counts = _argmax_counts
