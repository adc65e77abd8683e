"""Mean per-channel shift between the layer outputs of a quantized model and its float reference,
for empirical bias correction (``quant{bias-correction=true}``).

``OutputShift(reference, layers)`` opens one onnxruntime session on the float model with the
reference tensors exposed as extra outputs; ``measure(candidate, data)`` runs the candidate (its
tensors exposed likewise) and the reference on the same feeds and returns, per layer,
``E[y_q - y_f]`` averaged over every axis but the channel axis and over the feeds (float64).
The means are running sums, so memory does not grow with the number of feeds. The same run
also returns the SQNR (dB) of the candidate's own graph outputs against the reference's, so a
caller can check that a correction helped.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from graphc.errors import DataError
from graphc.ir.model import Model
from graphc.ir.outputs import with_outputs
from graphc.metrics import sqnr_from_sums
from graphc.progress import progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerOutput:
    """A layer output: its tensor in the candidate, the same value in the reference, its channel axis."""

    candidate: str
    reference: str
    axis: int


class OutputShift:
    """Measures ``E[y_q - y_f]`` per channel; the reference session is opened once."""

    def __init__(self, reference: Model, layers: Iterable[LayerOutput]):
        from graphc.runtime import create_session  # lazy: onnxruntime loads on first use

        self.outputs = [t.name for t in reference.graph.outputs]
        self.names = self.outputs + sorted({layer.reference for layer in layers} - set(self.outputs))
        self.session = create_session(with_outputs(reference, self.names), label="float model (bias correction)",
                                      spin=False)

    def measure(self, candidate: Model, layers: list[LayerOutput], data: Iterable[dict],
                max_samples: int | None = None) -> tuple[dict[str, np.ndarray], float]:
        """``{candidate tensor name: mean shift per channel}`` over at most ``max_samples`` feeds,
        and the SQNR (dB) of the candidate's graph outputs."""
        from graphc.runtime import create_session, run_session  # lazy: onnxruntime loads on first use

        outputs = [t.name for t in candidate.graph.outputs]
        fetched = outputs + [layer.candidate for layer in layers if layer.candidate not in outputs]
        session = create_session(with_outputs(candidate, fetched), label="quantized model (bias correction)",
                                 spin=False)
        sums: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        samples = 0
        signal = noise = 0.0
        for feed in progress(data, desc="bias correction", unit="sample"):
            if max_samples is not None and samples >= max_samples:
                break
            ref = dict(zip(self.names, run_session(self.session, feed, self.names, label="float model")))
            got = dict(zip(fetched, run_session(session, feed, fetched, label="quantized model")))
            for r_name, c_name in zip(self.outputs, outputs):
                r64 = np.asarray(ref[r_name], np.float64)
                signal += float(np.sum(r64 ** 2))
                noise += float(np.sum((r64 - np.asarray(got[c_name], np.float64)) ** 2))
            for layer in layers:
                diff = np.asarray(got[layer.candidate], np.float64) - np.asarray(ref[layer.reference], np.float64)
                axis = layer.axis % diff.ndim
                other = tuple(i for i in range(diff.ndim) if i != axis)
                total = diff.sum(axis=other)
                sums[layer.candidate] = total if layer.candidate not in sums else sums[layer.candidate] + total
                counts[layer.candidate] = counts.get(layer.candidate, 0) + diff.size // max(diff.shape[axis], 1)
            samples += 1
        if samples == 0:
            raise DataError("no calibration samples: the data source is empty")
        return {name: sums[name] / max(counts[name], 1) for name in sums}, sqnr_from_sums(signal, noise)
