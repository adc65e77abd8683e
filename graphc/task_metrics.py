"""Ready task metrics for ``--metric`` (numpy only): CTC character error rate and box-level F1.

Every metric here has the user-metric signature (see :mod:`graphc.verify.user_metric`)::

    metric(reference, candidate, labels=None, **args) -> float

``reference`` and ``candidate`` are lists with one dict per evaluation feed, mapping the input
model's output names to arrays (the candidate's outputs under the reference's names). The score is
the candidate's; the truth is ``labels`` when given, else the reference's own outputs (so
``metric(reference, reference)`` is the best score and the drop is the candidate's cost). Arguments
come from ``--metric-arg KEY=VALUE`` as strings. ``higher_is_better`` on the function says which way
is better.

- ``ctc_cer``: greedy CTC decoding of [N, T, C] character scores (argmax per step, repeats merged,
  blank index 0 dropped); a charset file (``charset=keys.txt``, one character a line, index k >= 1
  is line k - 1, one past the last line is a space as PP-OCR's decoder adds) turns indices into
  text (or ``charset=rec.onnx``: the model's ``character`` metadata, how rapidocr ships PP-OCR's
  dictionary; ``spaces=collapse`` strips and merges runs of spaces first). CER = sum of Levenshtein distances / sum of truth lengths over all lines (corpus CER, not
  the mean of per-line rates); 0 when every truth is empty and every prediction too. Labels: one
  string per sample. Lower is better.
- ``box_f1``: [N, B, 4 + K] detector outputs, boxes x1, y1, x2, y2 then K scores; a box counts
  when its best score is at least ``score`` (default 0.5); the class is the argmax of the scores
  (0 when K = 1) and only same-class boxes match. Predictions, best score first, each take the unmatched truth box of
  highest IoU >= ``iou`` (default 0.5). F1 = 2 TP / (2 TP + FP + FN) over all images (1.0 when
  neither side has a box). Labels: [N, M, 4] or [N, M, 5] (class last) truth boxes, rows with NaN
  are padding. Higher is better.
- ``det_box_f1``: the same F1 for a text detector whose output is a [N, 1, H, W] probability map
  (PP-OCR det, DBNet): boxes are extracted as DB post-processing does (``thresh`` 0.3 binarizes,
  8-connected components, a component's mean probability is its score, kept at ``box_thresh``
  0.6 and sides >= ``min_size`` 3 pixels; axis-aligned, no unclip: :func:`probability_map_boxes`),
  then matched at ``iou`` (default 0.5) against the float model's boxes or ``labels`` ([N, M, 4]
  in map pixels). Higher is better.

Each metric also exposes ``function.counts`` (per-sample errors and opportunities: edit
operations and truth characters; ``FP + FN`` and ``2 TP + FP + FN``), from which an error budget
bounds the drop with a confidence margin (:mod:`graphc.verify.metric_bound`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

Outputs = Sequence[dict[str, np.ndarray]]


class MetricArgumentError(ValueError):
    """A bad ``--metric-arg`` or output layout for a ready metric."""


def edit_distance(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Levenshtein distance (insertions, deletions, substitutions cost 1)."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def ctc_greedy_decode(scores: np.ndarray, blank: int = 0) -> list[list[int]]:
    """Index sequences of [N, T, C] scores: argmax per step, repeats merged, blanks dropped."""
    scores = np.asarray(scores)
    if scores.ndim == 2:
        scores = scores[None]
    if scores.ndim != 3:
        raise MetricArgumentError(f"CTC scores must be [N, T, C], got shape {list(scores.shape)}")
    best = np.argmax(scores, axis=-1)
    lines = []
    for row in best:
        keep = np.ones(len(row), dtype=bool)
        keep[1:] = row[1:] != row[:-1]
        lines.append([int(k) for k in row[keep] if k != blank])
    return lines


def read_charset(path: str | Path) -> list[str]:
    """Characters of a keys file, one a line (PP-OCR's format), or of an ONNX model's ``character``
    metadata (how rapidocr ships the PP-OCR rec dictionary); a space is appended as index len + 1."""
    try:
        if str(path).endswith(".onnx"):
            text = _model_charset(Path(path))
        else:
            text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise MetricArgumentError(f"charset file {path}: {exc.strerror or exc}") from None
    return [line.rstrip("\r\n") for line in text.splitlines()] + [" "]


def _model_charset(path: Path) -> str:
    # lazy: onnx is needed only for a dictionary stored in a model
    import onnx

    if not path.is_file():
        raise MetricArgumentError(f"charset file {path}: no such file")
    proto = onnx.load(str(path), load_external_data=False)
    found = {p.key: p.value for p in proto.metadata_props}.get("character")
    if found is None:
        raise MetricArgumentError(f"charset file {path}: the model has no 'character' metadata")
    return found


def ctc_cer(reference: Outputs, candidate: Outputs, labels: Any = None, *, charset: str | None = None,
            output: str | None = None, blank: str = "0", spaces: str = "keep") -> float:
    """Character error rate of the candidate's greedy CTC decoding (see the module docstring);
    ``spaces=collapse`` strips text and merges runs of spaces on both sides first."""
    errors, totals = ctc_cer_counts(reference, candidate, labels, charset=charset, output=output,
                                    blank=blank, spaces=spaces)
    total = int(totals.sum())
    if total == 0:
        return 0.0 if errors.sum() == 0 else 1.0
    return float(errors.sum()) / total


def ctc_cer_counts(reference: Outputs, candidate: Outputs, labels: Any = None, *, charset: str | None = None,
                   output: str | None = None, blank: str = "0", spaces: str = "keep") -> tuple[np.ndarray, np.ndarray]:
    """Per line: the edit distance to the truth and the truth's length (``ctc_cer`` pools them)."""
    blank_index = int(blank)
    chars = read_charset(charset) if charset else None
    squeeze = (lambda s: " ".join(s.split())) if spaces == "collapse" else (lambda s: s)  # noqa: E731
    if spaces not in ("keep", "collapse"):
        raise MetricArgumentError(f"spaces must be keep or collapse, not '{spaces}'")
    predicted = [squeeze(p) if chars else p for p in _decoded(candidate, output, blank_index, chars)]
    if labels is not None:
        truth = [squeeze(str(t)) for t in np.asarray(labels).reshape(-1)]
        if chars is None:
            raise MetricArgumentError("text labels need a charset (--metric-arg charset=keys.txt)")
    else:
        truth = [squeeze(t) if chars else t for t in _decoded(reference, output, blank_index, chars)]
    if len(truth) != len(predicted):
        raise MetricArgumentError(f"{len(truth)} labels for {len(predicted)} decoded lines")
    errors = np.array([edit_distance(t, p) for t, p in zip(truth, predicted)], dtype=np.int64)
    return errors, np.array([len(t) for t in truth], dtype=np.int64)


ctc_cer.higher_is_better = False
ctc_cer.counts = ctc_cer_counts


def _decoded(outputs: Outputs, output: str | None, blank: int, chars: list[str] | None) -> list[Any]:
    lines = []
    for feed in outputs:
        for seq in ctc_greedy_decode(_pick(feed, output), blank):
            if chars is None:
                lines.append(seq)
            else:
                lines.append("".join(chars[k - 1] if 0 < k <= len(chars) else "\ufffd" for k in seq))
    return lines


def _pick(feed: dict[str, np.ndarray], output: str | None) -> np.ndarray:
    if output is None:
        return next(iter(feed.values()))
    if output not in feed:
        raise MetricArgumentError(f"no output named '{output}' (has: {', '.join(feed)})")
    return feed[output]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of [A, 4] and [B, 4] x1, y1, x2, y2 boxes (0 where the union is empty)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    area = lambda boxes: np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=-1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def box_f1(reference: Outputs, candidate: Outputs, labels: Any = None, *, output: str | None = None,
           iou: str = "0.5", score: str = "0.5") -> float:
    """Box-level F1 of the candidate's detections at an IoU threshold (see the module docstring)."""
    errors, totals = box_f1_counts(reference, candidate, labels, output=output, iou=iou, score=score)
    return _f1_of(errors, totals)


def _f1_of(errors: np.ndarray, totals: np.ndarray) -> float:
    # 1 - F1 = (FP + FN) / (2 TP + FP + FN)
    return 1.0 if totals.sum() == 0 else 1.0 - float(errors.sum()) / float(totals.sum())


def box_f1_counts(reference: Outputs, candidate: Outputs, labels: Any = None, *, output: str | None = None,
                  iou: str = "0.5", score: str = "0.5") -> tuple[np.ndarray, np.ndarray]:
    """Per image: ``FP + FN`` and ``2 TP + FP + FN`` (``box_f1`` is one minus their pooled ratio)."""
    score_min = float(score)
    return _box_counts(lambda outputs: _detections(outputs, output, score_min), reference, candidate, labels,
                       float(iou))


def _box_counts(extract: Callable[[Outputs], list], reference: Outputs, candidate: Outputs, labels: Any,
                iou_min: float) -> tuple[np.ndarray, np.ndarray]:
    """Counts of the candidate's boxes (``extract(candidate)``) against the truth: the labels' boxes
    when given, else the reference's boxes extracted the same way."""
    predicted = extract(candidate)
    if labels is not None:
        truth = [_truth_boxes(image) for image in np.asarray(labels, dtype=np.float64)]
    else:
        truth = extract(reference)
    return _image_counts(truth, predicted, iou_min)


def _image_counts(truth: list, predicted: list, iou_min: float) -> tuple[np.ndarray, np.ndarray]:
    if len(truth) != len(predicted):
        raise MetricArgumentError(f"truth boxes for {len(truth)} images, detections for {len(predicted)}")
    errors, totals = [], []
    for (t_boxes, t_cls, _), (p_boxes, p_cls, p_scores) in zip(truth, predicted):
        tp = _matches(t_boxes, t_cls, p_boxes, p_cls, p_scores, iou_min)
        fp, fn = len(p_boxes) - tp, len(t_boxes) - tp
        errors.append(fp + fn)
        totals.append(2 * tp + fp + fn)
    return np.array(errors, dtype=np.int64), np.array(totals, dtype=np.int64)


box_f1.higher_is_better = True
box_f1.counts = box_f1_counts


def _detections(outputs: Outputs, output: str | None, score_min: float) -> list[tuple[np.ndarray, ...]]:
    images = []
    for feed in outputs:
        boxes = np.asarray(_pick(feed, output), dtype=np.float64)
        if boxes.ndim != 3 or boxes.shape[-1] < 5:
            raise MetricArgumentError(f"detections must be [N, boxes, 4 + scores], got shape {list(boxes.shape)}")
        for image in boxes:
            scores = image[:, 4:]
            best, cls = scores.max(axis=1), scores.argmax(axis=1)
            keep = best >= score_min
            images.append((image[keep, :4], cls[keep], best[keep]))
    return images


def _truth_boxes(image: np.ndarray) -> tuple[np.ndarray, ...]:
    if image.ndim != 2 or image.shape[-1] not in (4, 5):
        raise MetricArgumentError(f"box labels must be [N, M, 4] or [N, M, 5], got a {list(image.shape)} image")
    image = image[~np.isnan(image).any(axis=1)]
    cls = image[:, 4].astype(np.int64) if image.shape[1] == 5 else np.zeros(len(image), np.int64)
    return image[:, :4], cls, np.ones(len(image))


def _matches(t_boxes: np.ndarray, t_cls: np.ndarray, p_boxes: np.ndarray, p_cls: np.ndarray,
             p_scores: np.ndarray, iou_min: float) -> int:
    """Greedy matching, best-scored prediction first; returns the number of true positives."""
    if len(t_boxes) == 0 or len(p_boxes) == 0:
        return 0
    overlap = np.where(p_cls[:, None] == t_cls[None, :], box_iou(p_boxes, t_boxes), 0.0)
    taken = np.zeros(len(t_boxes), dtype=bool)
    hits = 0
    for i in np.argsort(-p_scores, kind="stable"):
        candidates = np.where(taken, -1.0, overlap[i])
        j = int(np.argmax(candidates))
        if candidates[j] >= iou_min:
            taken[j] = True
            hits += 1
    return hits


def det_box_f1(reference: Outputs, candidate: Outputs, labels: Any = None, *, output: str | None = None,
               iou: str = "0.5", thresh: str = "0.3", box_thresh: str = "0.6", min_size: str = "3") -> float:
    """Box-level F1 of a text detector's probability maps (see the module docstring): boxes are
    extracted from both models' maps by :func:`probability_map_boxes`, then matched as ``box_f1``."""
    errors, totals = det_box_f1_counts(reference, candidate, labels, output=output, iou=iou, thresh=thresh,
                                       box_thresh=box_thresh, min_size=min_size)
    return _f1_of(errors, totals)


def det_box_f1_counts(reference: Outputs, candidate: Outputs, labels: Any = None, *, output: str | None = None,
                      iou: str = "0.5", thresh: str = "0.3", box_thresh: str = "0.6",
                      min_size: str = "3") -> tuple[np.ndarray, np.ndarray]:
    """Per image: ``FP + FN`` and ``2 TP + FP + FN`` of the boxes extracted from the maps."""
    settings = (float(thresh), float(box_thresh), int(min_size))
    return _box_counts(lambda outputs: _map_detections(outputs, output, settings), reference, candidate, labels,
                       float(iou))


det_box_f1.higher_is_better = True
det_box_f1.counts = det_box_f1_counts


def _map_detections(outputs: Outputs, output: str | None, settings: tuple) -> list[tuple[np.ndarray, ...]]:
    images = []
    for feed in outputs:
        maps = np.asarray(_pick(feed, output), dtype=np.float64)
        if maps.ndim == 4 and maps.shape[1] == 1:
            maps = maps[:, 0]
        if maps.ndim != 3:
            raise MetricArgumentError(f"probability maps must be [N, 1, H, W] or [N, H, W], got shape "
                                      f"{list(np.shape(_pick(feed, output)))}")
        for prob in maps:
            boxes, scores = probability_map_boxes(prob, *settings)
            images.append((boxes, np.zeros(len(boxes), np.int64), scores))
    return images


def probability_map_boxes(prob: np.ndarray, thresh: float = 0.3, box_thresh: float = 0.6,
                          min_size: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of a [H, W] text probability map as DB post-processing finds them: pixels above
    ``thresh``, 8-connected components, each component's axis-aligned box ``x1, y1, x2, y2``
    (pixel edges, x2/y2 exclusive) scored by its mean probability; kept when the score is at least
    ``box_thresh`` and both sides are at least ``min_size`` pixels. No unclip (DB's polygon offset):
    truth and candidate go through the same extraction, so matching does not need it; boxes are in
    map pixels. Components are found on runs of each row (union-find), in numpy and Python."""
    prob = np.asarray(prob, dtype=np.float64)
    runs = _row_runs(prob > thresh)
    if not runs:
        return np.zeros((0, 4)), np.zeros(0)
    root = _merge_runs(runs)
    sums = np.concatenate([np.zeros((prob.shape[0], 1)), np.cumsum(prob, axis=1)], axis=1)
    found: dict[int, list[float]] = {}
    for k, (row, start, end) in enumerate(runs):
        box = found.setdefault(root[k], [start, row, end, row + 1, 0.0, 0.0])
        box[0], box[1] = min(box[0], start), min(box[1], row)
        box[2], box[3] = max(box[2], end), max(box[3], row + 1)
        box[4] += sums[row, end] - sums[row, start]
        box[5] += end - start
    boxes, scores = [], []
    for x1, y1, x2, y2, total, pixels in found.values():
        score = total / pixels
        if score >= box_thresh and x2 - x1 >= min_size and y2 - y1 >= min_size:
            boxes.append((x1, y1, x2, y2))
            scores.append(score)
    return np.array(boxes, dtype=np.float64).reshape(-1, 4), np.array(scores, dtype=np.float64)


def _row_runs(mask: np.ndarray) -> list[tuple[int, int, int]]:
    """(row, start, end) of every run of True pixels, end exclusive, rows in order."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    rows_up, cols_up = np.nonzero(edges == 1)
    _, cols_down = np.nonzero(edges == -1)  # same row-major order: the k-th start meets the k-th end
    return list(zip(rows_up.tolist(), cols_up.tolist(), cols_down.tolist()))


def _merge_runs(runs: list[tuple[int, int, int]]) -> list[int]:
    """Each run's component root: runs on adjacent rows that touch, diagonals included, join."""
    parent = list(range(len(runs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_row: dict[int, list[int]] = {}
    for k, (row, _, _) in enumerate(runs):
        by_row.setdefault(row, []).append(k)
    for k, (row, start, end) in enumerate(runs):
        for j in by_row.get(row - 1, ()):
            _, p_start, p_end = runs[j]
            if p_start <= end and start <= p_end:  # 8-connected: overlap or touch at a corner
                a, b = find(j), find(k)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    return [find(k) for k in range(len(runs))]
