"""Error metrics between a reference output and a candidate output (numpy only: verification,
calibration and the quant error budget all sum them the same way).

- SQNR (dB): 10 log10( sum(ref^2) / sum((ref - got)^2) ); +inf when identical.
- cosine similarity of the flattened outputs (1.0 when both are zero).
- max abs error, and max relative error |ref - got| / max(|ref|, tiny).
- top-1 agreement: fraction of positions where argmax over ``axis`` agrees (class scores,
  per-timestep character scores).
- decoded-string agreement of CTC recognizers: fraction of sequences whose greedy decodings
  (best class per step, repeats merged, blanks dropped) are equal.
All are computed in float64. ``sqnr_from_sums`` / ``cosine_from_sums`` give the same values from
running sums, so metrics over many samples need not hold the samples (see ``running.py``).
"""
from __future__ import annotations

import numpy as np


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    ref = np.asarray(ref, dtype=np.float64)
    noise = float(np.sum((ref - np.asarray(got, dtype=np.float64)) ** 2))
    signal = float(np.sum(ref ** 2))
    return sqnr_from_sums(signal, noise)


def sqnr_from_sums(signal: float, noise: float) -> float:
    """SQNR in dB from sum(ref^2) and sum((ref - got)^2)."""
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return float(10.0 * np.log10(signal / noise))


def cosine(ref: np.ndarray, got: np.ndarray) -> float:
    a = np.asarray(ref, dtype=np.float64).ravel()
    b = np.asarray(got, dtype=np.float64).ravel()
    return cosine_from_sums(float(np.einsum("i,i->", a, b)), float(np.einsum("i,i->", a, a)),
                            float(np.einsum("i,i->", b, b)))


def cosine_from_sums(dot: float, ref_sq: float, got_sq: float) -> float:
    """Cosine similarity from sum(ref*got), sum(ref^2) and sum(got^2)."""
    if ref_sq == 0.0 and got_sq == 0.0:
        return 1.0
    if ref_sq == 0.0 or got_sq == 0.0:
        return 0.0
    return float(dot / (np.sqrt(ref_sq) * np.sqrt(got_sq)))


def max_abs_error(ref: np.ndarray, got: np.ndarray) -> float:
    diff = np.abs(np.asarray(ref, dtype=np.float64) - np.asarray(got, dtype=np.float64))
    return float(diff.max()) if diff.size else 0.0


def max_rel_error(ref: np.ndarray, got: np.ndarray) -> float:
    ref64 = np.asarray(ref, dtype=np.float64)
    diff = np.abs(ref64 - np.asarray(got, dtype=np.float64))
    rel = diff / np.maximum(np.abs(ref64), np.finfo(np.float32).tiny)
    return float(rel.max()) if rel.size else 0.0


def top1_agreement(ref: np.ndarray, got: np.ndarray, axis: int = -1) -> float:
    ref, got = np.asarray(ref), np.asarray(got)
    if ref.ndim == 0 or ref.shape[axis] < 2:
        return float("nan")
    return float(np.mean(np.argmax(ref, axis=axis) == np.argmax(got, axis=axis)))




def ctc_greedy_decode(scores: np.ndarray, blank: int = 0) -> list[tuple[int, ...]]:
    """Greedy CTC decoding of ``[N, T, C]`` scores: the best class per step, runs of one class
    merged, ``blank`` dropped; one tuple of class ids per sequence."""
    best = np.asarray(scores).argmax(axis=-1)
    decoded = []
    for row in best.reshape(-1, best.shape[-1]):
        keep = np.concatenate([[True], row[1:] != row[:-1]]) & (row != blank)
        decoded.append(tuple(int(c) for c in row[keep]))
    return decoded


def decoded_agreement(ref: np.ndarray, got: np.ndarray, blank: int = 0) -> float:
    """Fraction of sequences of ``[N, T, C]`` scores whose greedy CTC decodings are equal."""
    a, b = ctc_greedy_decode(ref, blank), ctc_greedy_decode(got, blank)
    return float(np.mean([x == y for x, y in zip(a, b)])) if a else 1.0
