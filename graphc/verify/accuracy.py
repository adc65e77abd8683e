"""The task metric: classification accuracy of the reference and the candidate against labels.

Labels come from the user (``--labels eval.npz:labels``, or a ``labels`` array in the evaluation
``.npz``), one integer class per sample, in the order the evaluation data yields them. The
prediction of a feed is the argmax over the last axis of one output (the first output that has a
class axis as top-1 agreement defines it: floating point, [N, C] or [N, T, C] with C >= 2, unless
``output`` names one); a feed with a
batch of B samples gives B predictions and consumes B labels. Both models run over the same
feeds in one loop, so ``drop = reference - candidate`` compares like with like.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from graphc.calib.data import DataSource
from graphc.errors import DataError
from graphc.progress import progress
from graphc.runtime import create_session, run_session
from graphc.verify.compare import match_outputs
from graphc.verify.feeds import ModelInput, open_model

LABELS_KEY = "labels"


@dataclass
class TaskAccuracy:
    """Accuracy of both models on ``samples`` labelled samples."""

    output: str
    samples: int
    reference: float
    candidate: float

    @property
    def drop(self) -> float:
        """Accuracy lost by the candidate (a fraction: 0.01 is one point)."""
        return self.reference - self.candidate

    def to_dict(self) -> dict[str, Any]:
        return {"metric": "accuracy", "output": self.output, "samples": self.samples,
                "reference": self.reference, "candidate": self.candidate, "drop": self.drop}


def load_labels(spec: str | Path | np.ndarray, *, integers: bool = True) -> np.ndarray:
    """Labels from ``file.npz:key``, ``file.npz`` (key ``labels``), ``file.npy`` or an array;
    ``integers=False`` keeps any non-object array as stored (a user metric's labels: text, boxes)."""
    if isinstance(spec, np.ndarray):
        return _as_labels(spec, "labels", integers)
    text = str(spec)
    path, key = Path(text), LABELS_KEY
    if not path.exists() and ":" in text:
        head, _, key = text.rpartition(":")
        path = Path(head)
    if not path.is_file():
        raise DataError(f"{path}: labels file not found")
    if path.suffix == ".npy":
        return _as_labels(np.load(path, allow_pickle=False), str(path), integers)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if key not in npz.files:
                raise DataError(f"{path}: no array '{key}' (has: {', '.join(npz.files) or 'none'})")
            return _as_labels(npz[key], f"{path}:{key}", integers)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read labels ({exc})") from None


def has_labels(path: str | Path) -> bool:
    """True for an ``.npz`` that holds a ``labels`` array (evaluation data with labels)."""
    path = Path(path)
    if path.suffix != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as npz:
            return LABELS_KEY in npz.files
    except (OSError, ValueError):
        return False


def _as_labels(values: np.ndarray, where: str, integers: bool = True) -> np.ndarray:
    values = np.asarray(values)
    if not integers:
        return values
    if not np.issubdtype(values.dtype, np.integer):
        raise DataError(f"{where}: labels must be integers, got {values.dtype}")
    return values.reshape(-1).astype(np.int64)


def class_output(model: Any, output: str | None = None) -> str:
    """The output whose argmax is the prediction (see the module docstring)."""
    outputs = model.graph.outputs
    if output is not None:
        if output not in [t.name for t in outputs]:
            raise DataError(f"no output named '{output}'")
        return output
    for tensor in outputs:
        shape, dtype = tensor.shape, tensor.dtype
        if dtype is not None and np.issubdtype(np.dtype(dtype), np.floating) and shape and len(shape) in (2, 3) \
                and not (isinstance(shape[-1], int) and shape[-1] < 2):
            return tensor.name
    raise DataError("no output has a class axis (float, [N, C] or [N, T, C], C >= 2) to take accuracy on")


def task_accuracy(reference: ModelInput, candidate: ModelInput, data: DataSource, labels: np.ndarray,
                  *, output: str | None = None) -> TaskAccuracy:
    """Accuracy of both models over ``data`` against ``labels`` (see the module docstring)."""
    ref_model, ref_src = open_model(reference)
    cand_model, cand_src = open_model(candidate)
    ref_name = class_output(ref_model, output)
    cand_name = dict(match_outputs(ref_model, cand_model)[0])[ref_name]
    ref_session = create_session(ref_src, label="reference", spin=False)
    cand_session = create_session(cand_src, label="candidate", spin=False)
    hits = {"reference": 0, "candidate": 0}
    seen = 0
    for feed in progress(data, desc="accuracy", unit="sample"):
        ref_pred = _predictions(run_session(ref_session, feed, [ref_name], label="reference")[0])
        cand_pred = _predictions(run_session(cand_session, feed, [cand_name], label="candidate")[0])
        if seen + len(ref_pred) > len(labels):
            raise DataError(f"the evaluation data has more samples than the {len(labels)} labels")
        truth = labels[seen:seen + len(ref_pred)]
        hits["reference"] += int(np.count_nonzero(ref_pred == truth))
        hits["candidate"] += int(np.count_nonzero(cand_pred == truth))
        seen += len(ref_pred)
    if seen == 0:
        raise DataError("no labelled samples to measure accuracy on")
    if seen != len(labels):
        raise DataError(f"{len(labels)} labels for {seen} evaluated samples")
    return TaskAccuracy(ref_name, seen, hits["reference"] / seen, hits["candidate"] / seen)


def _predictions(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores)
    return np.argmax(scores, axis=-1).reshape(-1)
