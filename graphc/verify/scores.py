"""A candidate model's outputs scored against reference outputs computed once (what the quant
error budget measures for every set of float layers it tries):

- SQNR of all outputs, ``10 log10(sum r^2 / sum (r - q)^2)`` with both sums taken over every
  output and every feed (:func:`graphc.metrics.sqnr_from_sums`);
- cosine: the mean over every output row (axis 0 of each output, the rest flattened) of every
  feed of ``cos(r, q)`` (1 where both rows are zero): for a sentence encoder, the mean
  embedding cosine;
- top-1 disagreement: the fraction of positions whose argmax over the last axis differs from the
  reference's, pooled over the outputs that hold class scores (float ``[N, C]`` or per-step
  ``[N, T, C]``, :func:`graphc.verify.running.has_top1`); None when no output does.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphc.ir.model import Model
from graphc.metrics import sqnr_from_sums
from graphc.runtime import create_session, run_session
from graphc.verify.running import has_top1


@dataclass(frozen=True)
class OutputScore:
    """Output SQNR (dB), top-1 disagreement (None: no class-score output), mean row cosine."""

    sqnr: float
    disagreement: float | None
    cosine: float = 1.0


def reference_outputs(model: Model, feeds: list[dict], label: str = "float model") -> list[list[np.ndarray]]:
    """Every output of ``model`` on each feed, in the graph's output order."""
    session = create_session(model, label=label, spin=False)
    return [[np.asarray(x) for x in run_session(session, feed)] for feed in feeds]


def score_outputs(candidate: Model, feeds: list[dict], references: list[list[np.ndarray]],
                  label: str = "candidate model", threads: int | None = None,
                  keep: list | None = None) -> OutputScore:
    """``candidate``'s outputs on ``feeds`` against ``references`` (one list of outputs per feed);
    ``threads``: onnxruntime's intra-op threads (None: its default); ``keep``: a list the
    candidate's outputs are appended to (one list per feed, for a task metric)."""
    session = create_session(candidate, threads=threads, label=label, spin=False)
    signal = noise = 0.0
    hits = positions = 0
    cosines: list[np.ndarray] = []
    for feed, reference in zip(feeds, references):
        outputs = run_session(session, feed)
        if keep is not None:
            keep.append([np.asarray(x) for x in outputs])
        for r, c in zip(reference, outputs):
            r64, c64 = np.asarray(r, np.float64), np.asarray(c, np.float64)
            signal += float(np.sum(r64 ** 2))
            noise += float(np.sum((r64 - c64) ** 2))
            if r64.shape == c64.shape:
                cosines.append(_row_cosines(r64, c64))
            if has_top1(np.asarray(r).dtype, np.shape(r)) and np.shape(c) == np.shape(r):
                hits += int(np.count_nonzero(np.argmax(r, axis=-1) == np.argmax(c, axis=-1)))
                positions += int(np.prod(np.shape(r)[:-1]))
    cosine = float(np.mean(np.concatenate(cosines))) if cosines else 1.0
    return OutputScore(sqnr_from_sums(signal, noise), 1.0 - hits / positions if positions else None, cosine)


def _row_cosines(r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``cos`` of each row (axis 0; a 0-d or 1-d output is one row), 1 where both are zero."""
    rows = 1 if r.ndim < 2 else r.shape[0]
    r, c = r.reshape(rows, -1), c.reshape(rows, -1)
    dot, norms = np.sum(r * c, axis=1), np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1)
    return np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), np.where(dot == 0, 1.0, 0.0))
