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

Batching (``batch > 1``): consecutive feeds whose inputs have the same shapes run as one, stacked
along axis 0, when every model input's axis 0 is symbolic (a dynamic batch); each output is split
back along axis 0 by the feeds' rows. Rows are independent in such models, but a model may not be
(an output that mixes rows, a row's output that depends on its position in the batch or on the
batch size, or a batch axis the outputs do not keep), so batched outputs are checked against the
same feeds run one at a time (the rule: :func:`batched_outputs`); if they differ or the outputs
do not split, the session runs one feed at a time. PP-OCRv4 rec (48x320 lines, 32 at a time): the
outputs are bit-identical to one at a time. What batching buys depends on the threads: float
model, random 48x320 lines, alternated, medians of 5 (2026-12-07, load ~1.6): with onnxruntime's
default 2 threads (what budget evaluations use here) a batch of 32 costs 0.72x the 32 lines alone
(0.63 s against 0.88 s), with one thread 1.75x (1.22 s against 0.67 s: one thread runs a single
line faster than two, the batch slower). So batching pays where evaluations have more than one
thread each; an executor that gives each worker one thread would want ``batch=1``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

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


def reference_outputs(model: Model, feeds: list[dict], label: str = "float model",
                      batch: int = 1) -> list[list[np.ndarray]]:
    """Every output of ``model`` on each feed, in the graph's output order (``batch``: see the
    module docstring)."""
    session = create_session(model, label=label, spin=False)
    return list(batched_outputs(session, feeds, batch, label=label))


def score_outputs(candidate: Model, feeds: list[dict], references: list[list[np.ndarray]],
                  label: str = "candidate model", threads: int | None = None,
                  keep: list | None = None, batch: int = 1) -> OutputScore:
    """``candidate``'s outputs on ``feeds`` against ``references`` (one list of outputs per feed);
    ``threads``: onnxruntime's intra-op threads (None: its default); ``keep``: a list (or any
    object with ``append``) the candidate's outputs are appended to (one list per feed, for a task
    metric); ``batch``: see the module docstring."""
    session = create_session(candidate, threads=threads, label=label, spin=False)
    signal = noise = 0.0
    hits = positions = 0
    cosines: list[np.ndarray] = []
    for outputs, reference in zip(batched_outputs(session, feeds, batch, label=label), references):
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


#: input shapes whose first batched group is checked against one at a time (see batched_outputs)
CHECKED_SHAPES = 4


def batched_outputs(session, feeds: list[dict], batch: int = 1, label: str = "model") -> Iterator[list[np.ndarray]]:
    """Each feed's outputs, in order; feeds run ``batch`` at a time where the model allows (see
    the module docstring).

    The check: the first group of each input shape (the first ``CHECKED_SHAPES`` shapes met; a
    group is at most ``batch`` consecutive feeds of one shape) has its first, middle and last
    feed run again one at a time, and their outputs must equal the batched ones (rtol 1e-5, atol
    1e-6 of the output's scale). First, middle and last, not the first two: a model that mixes
    rows or reads a row's position or the batch size shows it on any row but the first only in
    some models (a running sum along the batch axis leaves the first rows alone), so the sample
    spreads over the group; each shape, because such a dependence can come with one shape only
    (feeds of another length). Not the whole group: on PP-OCRv4 rec (48x320, 1000 evaluation
    lines, 32 at a time; one thread, measured 2026-12-07 under load 1.8: 21 ms a line alone,
    1.13 s a group of 32) the whole group adds 32 single runs to every evaluation (0.68 s, 1.9%;
    ~27 s over the ~40 evaluations of a 30-layer budget), three add 0.06 s (0.18%). Any
    difference: this group and every later feed run one at a time."""
    names = [i.name for i in session.get_inputs()]
    dynamic = batch > 1 and bool(names) and all(i.shape and not isinstance(i.shape[0], int) for i in session.get_inputs())
    checked: set[tuple] = set()
    start = 0
    while start < len(feeds):
        group = _same_shapes(feeds, start, batch if dynamic else 1, names)
        start += len(group)
        if len(group) == 1:
            yield _alone(session, group[0], label)
            continue
        rows = [int(np.shape(f[names[0]])[0]) for f in group]
        stacked = {n: np.concatenate([f[n] for f in group], axis=0) for n in names}
        split = _split(run_session(session, stacked, label=label), rows)
        shape = tuple(np.shape(group[0][n]) for n in names)
        if split is not None and shape not in checked and len(checked) < CHECKED_SHAPES:
            checked.add(shape)
            if not _matches_alone(session, group, split, label):
                split = None
        if split is None:  # rows are not independent here: one feed at a time from now on
            dynamic = False
            split = [_alone(session, f, label) for f in group]
        yield from split


def _alone(session, feed: dict, label: str) -> list[np.ndarray]:
    return [np.asarray(x) for x in run_session(session, feed, label=label)]


def _matches_alone(session, group: list[dict], split: list[list[np.ndarray]], label: str) -> bool:
    """The first, middle and last feed of ``group`` run one at a time give ``split``'s outputs."""
    for i in sorted({0, len(group) // 2, len(group) - 1}):
        if not all(_close(a, b) for a, b in zip(_alone(session, group[i], label), split[i])):
            return False
    return True


def _same_shapes(feeds: list[dict], start: int, batch: int, names: list[str]) -> list[dict]:
    """The feeds from ``start``, at most ``batch``, whose inputs have the shapes of the first."""
    shapes = [np.shape(feeds[start].get(n)) for n in names]
    end = start + 1
    while end < min(start + batch, len(feeds)) and [np.shape(feeds[end].get(n)) for n in names] == shapes:
        end += 1
    if any(n not in feeds[start] or not shape for n, shape in zip(names, shapes)):
        return feeds[start:start + 1]  # missing or scalar input: run alone (errors as usual)
    return feeds[start:end]


def _split(outputs: list, rows: list[int]) -> list[list[np.ndarray]] | None:
    """Batched outputs cut back into one list per feed (None: an output lost the batch axis)."""
    total = sum(rows)
    if any(np.ndim(x) == 0 or np.shape(x)[0] != total for x in outputs):
        return None
    bounds = np.cumsum([0] + rows)
    return [[np.asarray(x)[a:b] for x in outputs] for a, b in zip(bounds[:-1], bounds[1:])]


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    if np.shape(a) != np.shape(b) or np.asarray(a).dtype != np.asarray(b).dtype:
        return False
    if not np.issubdtype(np.asarray(a).dtype, np.floating):
        return bool(np.array_equal(a, b))
    scale = float(np.max(np.abs(a))) if np.size(a) else 0.0
    return bool(np.allclose(b, a, rtol=1e-5, atol=1e-6 * max(scale, 1.0)))
