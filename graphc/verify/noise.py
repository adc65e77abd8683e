"""The noise floor of an exact comparison, measured rather than guessed.

An exact rewrite (fold-bn, canonicalize, fold-constants, cleanup) is exact up to float32
reassociation: ``(a + b) + c`` and ``a + (b + c)`` differ in the last bits, and through a deep
network those bits grow to what a fixed ``atol = 1e-6`` cannot hold (PP-OCRv4 rec moves by up to
4e-6 under canonicalize, det by 3e-5). onnxruntime's own graph fusions reassociate the same way,
so the reference model's spread between ``ORT_DISABLE_ALL`` and ``ORT_ENABLE_ALL`` on the same
inputs measures how far rounding alone moves each output:

    noise(out) = max over samples and elements |ref_disable_all - ref_enable_all|
    atol(out)  = max(atol, NOISE_FACTOR * noise(out))           rtol unchanged (>= 1e-5)

``NOISE_FACTOR = 4``: a rewrite reassociates more than onnxruntime's fusions do (canonicalize
folds every scale/shift pair, onnxruntime only the ones next to a Conv), and on PP-OCR the
rewrite's error is 1.4x (det) to 2.4x (rec) the spread. A real error is orders of magnitude
above: one Conv's weight scaled by 1.01 moves PP-OCR rec by 1e-2 against a spread of 2e-6.
A model whose optimized and unoptimized runs agree exactly keeps the floor ``atol``.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable

import numpy as np

from graphc.runtime import create_session, run_session
from graphc.verify.tolerances import NOISE_FACTOR, Tolerances

log = logging.getLogger(__name__)

__all__ = ["NOISE_FACTOR", "measure_noise", "widened", "noise_note"]


def measure_noise(reference: Any, outputs: list[str], feeds: Iterable[dict[str, np.ndarray]]) -> dict[str, float]:
    """``{output: max |ref(ORT_DISABLE_ALL) - ref(ORT_ENABLE_ALL)|}`` over ``feeds`` (finite
    positions of float outputs; 0.0 for others)."""
    plain = create_session(reference, optimize=False, label="reference", spin=False)
    fused = create_session(reference, optimize=True, label="reference", spin=False)
    noise = {name: 0.0 for name in outputs}
    for feed in feeds:
        for name, a, b in zip(outputs, run_session(plain, feed, outputs, label="reference"),
                              run_session(fused, feed, outputs, label="reference")):
            a, b = np.asarray(a), np.asarray(b)
            if a.dtype.kind != "f" or a.shape != b.shape:
                continue
            both = np.isfinite(a) & np.isfinite(b)
            if both.any():
                diff = np.abs(a[both].astype(np.float64) - b[both].astype(np.float64))
                noise[name] = max(noise[name], float(diff.max()))
    return noise


def widened(tolerances: Tolerances, noise: float) -> Tolerances:
    """The tolerances of one output whose reference spread is ``noise``."""
    atol = max(tolerances.atol, tolerances.noise_factor * noise)
    return dataclasses.replace(tolerances, atol=atol, noise_factor=None)


def noise_note(tolerances: Tolerances, noise: dict[str, float]) -> str:
    """The one line that says how the atol of each output was chosen."""
    parts = [f"'{name}' {widened(tolerances, n).atol:.2g} (spread {n:.2g})" for name, n in noise.items()]
    return (f"atol measured: max({tolerances.atol:g}, {tolerances.noise_factor:g} x the reference's "
            f"own spread between onnxruntime's ORT_DISABLE_ALL and ORT_ENABLE_ALL on the same data): "
            + ", ".join(parts))
