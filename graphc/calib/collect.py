"""Streaming range collection: run the model once per sample with the wanted intermediate tensors
exposed as outputs, and fold each tensor into a running min/max and a histogram of |x|.

Memory is O(tensors x bins) whatever the number of samples: a sample's activations are dropped as
soon as they are folded in. When the exposed tensors of one sample would not fit in
``memory_limit`` bytes (estimated from inferred shapes), the tensors are split into chunks, each
calibrated with its own session in its own pass over the data.

Histogram without re-binning error. Each tensor has a signed histogram of ``2 x 2048`` bins of
width ``w`` over ``[-2048 w, 2048 w)``; ``w`` is a power of two, chosen from the first sample so
that ``2048 w > max |x|``. When a later sample reaches the range, the width doubles (``k`` times)
and each run of ``2^k`` old bins is summed into one new bin (runs never straddle 0). Because
``x * (1/w)`` is exact for a power-of-two ``w`` and ``floor(floor(y) / 2^k) = floor(y / 2^k)``,
the result is exactly the histogram of all the data at once with the final width:
``np.histogram(x, bins=4096, range=(-2048 w, 2048 w))``.
"""
from __future__ import annotations

import logging
import math
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from graphc.calib.ranges import NUM_BINS, SignedHistogram
from graphc.errors import DataError
from graphc.ir.model import Model
from graphc.ir.outputs import with_outputs
from graphc.ir.shapes import infer_shapes
from graphc.progress import progress_bar, progress_enabled

log = logging.getLogger(__name__)

#: default budget for the activations of one sample that a calibration session exposes.
DEFAULT_MEMORY_LIMIT = 1 << 30
#: elements binned at a time (scratch of 64K floats and indices, shared by all collectors).
BLOCK = 1 << 16
_SCRATCH = threading.local()


class RangeCollector:
    """Running min, max and signed histogram of one tensor: ``2 * bins`` bins of width ``width``
    over ``[-bins * width, bins * width)``."""

    def __init__(self, bins: int = NUM_BINS, histogram: bool = True):
        if bins & (bins - 1):
            raise ValueError("bins must be a power of two")
        self.bins = bins
        self.histogram = histogram
        self.min = math.inf
        self.max = -math.inf
        self.count = 0
        self.counts = np.zeros(2 * bins, dtype=np.int64)
        self.width = 0.0  # 0 until a non-zero value was seen

    def update(self, x: np.ndarray) -> None:
        flat = np.asarray(x).reshape(-1)
        if flat.size == 0:
            return
        if flat.dtype != np.float32 and flat.dtype != np.float64:
            flat = flat.astype(np.float32)
        lo, hi = float(flat.min()), float(flat.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            flat = flat[np.isfinite(flat)]
            if flat.size == 0:
                return
            lo, hi = float(flat.min()), float(flat.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += flat.size
        if not self.histogram:
            return
        amax = max(-lo, hi)
        if amax > 0 and amax >= self.bins * self.width:
            self._grow(amax)
        if self.width == 0.0:  # all zeros so far
            self.counts[self.bins] += flat.size
            return
        # floor(x / w) + bins, exact: 1/w is a power of two and floor(...) is a small integer.
        # In blocks, so the intermediate arrays stay in cache (about 1.5x faster than whole arrays).
        inv = flat.dtype.type(1.0 / self.width)
        scaled, index = self._buffers(flat.dtype)
        for start in range(0, flat.size, BLOCK):
            block = flat[start:start + BLOCK]
            n = block.size
            s, i = scaled[:n], index[:n]
            np.multiply(block, inv, out=s)
            np.floor(s, out=s)
            np.add(s, self.bins, out=s)
            np.copyto(i, s, casting="unsafe")
            self.counts += np.bincount(i, minlength=2 * self.bins)[:2 * self.bins]

    @staticmethod
    def _buffers(dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """Scratch shared by every collector of the thread (updates run one at a time)."""
        cache = _SCRATCH.__dict__.setdefault("buffers", {})
        if dtype not in cache:
            cache[dtype] = (np.empty(BLOCK, dtype=dtype), np.empty(BLOCK, dtype=np.intp))
        return cache[dtype]

    def _grow(self, amax: float) -> None:
        """Widen the range to more than ``amax`` by doubling the bin width, merging bins exactly."""
        if self.width == 0.0:
            self.width = 2.0 ** (math.floor(math.log2(amax / self.bins)) + 1)
            return  # all values so far are zeros, in the bin at zero whatever the width
        k = max(1, math.floor(math.log2(amax / (self.bins * self.width))) + 1)
        self._widen(2 ** k)

    def _widen(self, factor: int) -> None:
        """Multiply the bin width by ``factor`` (a power of two), summing runs of ``factor`` bins."""
        merged = np.zeros(2 * self.bins, dtype=np.int64)
        if factor >= self.bins:  # everything lands in the two bins next to zero
            merged[self.bins - 1] = self.counts[:self.bins].sum()
            merged[self.bins] = self.counts[self.bins:].sum()
        else:
            half = self.bins // factor
            merged[self.bins - half:self.bins + half] = self.counts.reshape(-1, factor).sum(axis=1)
        self.counts = merged
        self.width *= factor

    def merge(self, other: "RangeCollector") -> None:
        """Fold in ``other``, a collector of other samples: the result is exactly the collector of
        both (min, max and count combine; widths are powers of two, the narrower histogram is
        widened by summing runs of bins as growing does, then counts add - integers, so the
        order shards are merged in does not change a bit)."""
        if other.bins != self.bins or other.histogram != self.histogram:
            raise ValueError("merging collectors with different bins or histogram settings")
        if other.count == 0:
            return
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        self.count += other.count
        if not self.histogram:
            return
        counts = other.counts
        if other.width > self.width > 0.0:
            self._widen(int(other.width / self.width))
        elif self.width == 0.0:
            self.width = other.width  # self holds zeros only, in the bin at zero
        elif 0.0 < other.width < self.width:
            wider = RangeCollector(self.bins)
            wider.counts, wider.width = other.counts.copy(), other.width
            wider._widen(int(self.width / other.width))
            counts = wider.counts
        self.counts = self.counts + counts

    def state(self) -> tuple:
        """What a worker sends back: ``(min, max, count, counts, width)``."""
        return self.min, self.max, self.count, self.counts, self.width

    @classmethod
    def from_state(cls, state: tuple, bins: int = NUM_BINS, histogram: bool = True) -> "RangeCollector":
        collector = cls(bins, histogram)
        collector.min, collector.max, collector.count, collector.counts, collector.width = state
        return collector

    def signed_histogram(self) -> SignedHistogram | None:
        if not self.histogram or self.count == 0:
            return None
        width = self.width if self.width > 0 else 1.0 / self.bins
        return SignedHistogram(self.counts.copy(), width)

    @property
    def amax(self) -> float:
        return max(-self.min, self.max, 0.0) if self.count else 0.0

    def nbytes(self) -> int:
        return self.counts.nbytes


@dataclass
class TensorStats:
    """What calibration saw of one tensor."""

    name: str
    min: float
    max: float
    count: int
    histogram: SignedHistogram | None

    @property
    def amax(self) -> float:
        return max(-self.min, self.max, 0.0)


def collect_stats(model, data: Iterable[dict[str, np.ndarray]], tensors: Sequence[str], *,
                  histograms: bool = True, bins: int = NUM_BINS, max_samples: int | None = None,
                  memory_limit: int = DEFAULT_MEMORY_LIMIT, progress: bool | None = None,
                  threads: int | None = None) -> dict[str, TensorStats]:
    """Run ``model`` (a :class:`graphc.ir.Model`) over ``data`` and return statistics of ``tensors``.

    Graph inputs among ``tensors`` are read from the feeds; the others are exposed as outputs.
    """
    collectors = collect_collectors(model, data, tensors, histograms=histograms, bins=bins, max_samples=max_samples,
                                    memory_limit=memory_limit, progress=progress, threads=threads)
    return {name: TensorStats(name, c.min, c.max, c.count, c.signed_histogram())
            for name, c in collectors.items()}


def collect_collectors(model, data: Iterable[dict[str, np.ndarray]], tensors: Sequence[str], *,
                       histograms: bool = True, bins: int = NUM_BINS, max_samples: int | None = None,
                       memory_limit: int = DEFAULT_MEMORY_LIMIT, progress: bool | None = None,
                       threads: int | None = None) -> dict[str, RangeCollector]:
    """:func:`collect_stats` before the statistics are read out: the collectors themselves, which
    merge (:meth:`RangeCollector.merge`; :mod:`graphc.calib.sharded`)."""
    if not isinstance(model, Model):
        raise TypeError("collect_stats needs a graphc.ir.Model")
    tensors = list(dict.fromkeys(tensors))
    collectors = {name: RangeCollector(bins, histograms) for name in tensors}
    input_names = {t.name for t in model.graph.inputs}
    computed = [t for t in tensors if t not in input_names]
    chunks = _chunks(model, data, computed, memory_limit)
    samples_seen = 0
    for index, chunk in enumerate(chunks):
        first = index == 0
        samples_seen = _run_chunk(model, data, chunk, collectors, input_names if first else set(),
                                  max_samples, progress, threads, f"{index + 1}/{len(chunks)}")
    if not chunks:  # only graph inputs
        samples_seen = _run_chunk(model, data, [], collectors, input_names, max_samples, progress,
                                  threads, "1/1")
    if samples_seen == 0:
        raise DataError("calibration data is empty")
    return collectors


def _run_chunk(model, data, chunk: list[str], collectors: dict[str, RangeCollector],
               inputs_to_read: set[str], max_samples: int | None, progress: bool | None,
               threads: int | None, label: str) -> int:
    """One pass over ``data``: onnxruntime computes sample k+1 while a worker thread folds sample
    k into the histograms (onnxruntime and numpy release the GIL), so at most two samples'
    activations are alive."""
    from graphc.runtime import create_session, run_session  # lazy: loads onnxruntime

    label_model = "model (calibration)"
    session = (create_session(with_outputs(model, chunk), threads=threads, spin=False, label=label_model)
               if chunk else None)
    want_inputs = [name for name in collectors if name in inputs_to_read]
    total = _length(data, max_samples)
    bar = _progress_bar(total, f"calibrating ({label})" if label != "1/1" else "calibrating", progress)

    def fold(values: list[tuple[str, np.ndarray]]) -> None:
        for name, value in values:
            collectors[name].update(value)

    seen = 0
    pending = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="graphc-calib") as worker:
        try:
            for feed in data:
                if max_samples is not None and seen >= max_samples:
                    break
                values = [(name, feed[name]) for name in want_inputs]
                if session is not None:
                    values += list(zip(chunk, run_session(session, feed, chunk, label=label_model)))
                if pending is not None:
                    pending.result()
                pending = worker.submit(fold, values)
                del values
                seen += 1
                if bar is not None:
                    bar.update(1)
            if pending is not None:
                pending.result()
        finally:
            if bar is not None:
                bar.close()
    return seen


def _length(data, max_samples: int | None) -> int | None:
    try:
        n = len(data)
    except TypeError:
        n = None
    if n is not None and max_samples is not None:
        return min(n, max_samples)
    return n if n is not None else max_samples


def _progress_bar(total: int | None, desc: str, enabled: bool | None) -> Any:
    """A tqdm bar on stderr (graphc.progress decides when bars show; ``enabled`` overrides)."""
    if enabled is False:
        return None
    if enabled is None and not progress_enabled():
        return None
    if enabled:
        from tqdm import tqdm  # lazy: tqdm loads only when a bar is shown

        return tqdm(total=total, desc=desc, unit="sample", file=sys.stderr, leave=False)
    return progress_bar(total, desc, unit="sample")


def _chunks(model, data, names: list[str], memory_limit: int) -> list[list[str]]:
    """Split ``names`` so that each chunk's activations for one sample fit in ``memory_limit``."""
    if not names:
        return []
    sizes = _estimated_bytes(model, data, names)
    chunks: list[list[str]] = [[]]
    used = 0
    for name in names:
        size = sizes.get(name, 0)
        if chunks[-1] and used + size > memory_limit:
            chunks.append([])
            used = 0
        chunks[-1].append(name)
        used += size
    if len(chunks) > 1:
        log.info("calibrating %d tensors in %d chunks (about %.0f MB of activations per sample)",
                 len(names), len(chunks), sum(sizes.values()) / 1e6)
    return chunks


def _estimated_bytes(model, data, names: list[str]) -> dict[str, int]:
    """Bytes per sample of each tensor, from shapes inferred with the first sample's input shapes.
    Unknown shapes count as the largest known size (a pessimistic guess)."""
    first = next(iter(data), None)
    input_shapes = {k: tuple(np.shape(v)) for k, v in first.items()} if first is not None else None
    info = infer_shapes(model, input_shapes)
    sizes = {}
    for name in names:
        ti = info.get(name)
        if ti is not None and ti.static:
            itemsize = np.dtype(ti.dtype).itemsize if ti.dtype is not None else 4
            sizes[name] = int(np.prod(ti.shape, dtype=np.int64)) * itemsize
    fallback = max(sizes.values(), default=0)
    return {name: sizes.get(name, fallback) for name in names}
