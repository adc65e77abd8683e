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

Shards. The final width is the smallest power of two with ``2048 w > max |x|`` (computed with
``frexp``, no ``log2`` rounding): a function of the data's range alone. Two collectors that saw two
shards of the data therefore merge exactly (:meth:`RangeCollector.merge`: re-bin the narrower to the
wider width, add the integer counts, compare min and max) into the collector that saw all of it,
which is how :func:`collect_stats` spreads many samples over the executor
(:mod:`graphc.calib.shards`).
"""
from __future__ import annotations

import logging
import math
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence

import numpy as np

from graphc.calib.ranges import NUM_BINS, SignedHistogram
from graphc.calib.shards import ShardedJob, shards_of
from graphc.errors import DataError
from graphc.ir.model import Model, load, model_bytes
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
        """Widen the range to more than ``amax``: the bin width becomes the smallest power of two
        ``w`` with ``bins * w > amax`` (a function of ``amax`` alone, so any split of the data into
        shards reaches the same final width), merging bins exactly."""
        target = _power_of_two_above(amax / self.bins)
        if self.width == 0.0:  # only zeros so far: they stay in bin ``bins`` at any width
            self.width = target
            return
        self._rebin(target)

    def _rebin(self, width: float) -> None:
        """Re-bin to ``width`` (a power of two, >= the current one): each run of ``width / self.width``
        bins is summed into one (runs never straddle 0), exactly the histogram at ``width``."""
        if self.width == 0.0 or width <= self.width:
            return
        factor = int(width / self.width)
        merged = np.zeros(2 * self.bins, dtype=np.int64)
        if factor >= self.bins:  # everything lands in the two bins next to zero
            merged[self.bins - 1] = self.counts[:self.bins].sum()
            merged[self.bins] = self.counts[self.bins:].sum()
        else:
            half = self.bins // factor
            merged[self.bins - half:self.bins + half] = self.counts.reshape(-1, factor).sum(axis=1)
        self.counts = merged
        self.width = width

    def merge(self, other: "RangeCollector") -> None:
        """Fold in what ``other`` saw (another shard of the data). Exact: min/max are compared,
        counts are integers, and both histograms are re-binned to the wider of the two power-of-two
        widths before adding - the result is the collector that saw both shards' data, bit for bit."""
        if other.bins != self.bins or other.histogram != self.histogram:
            raise ValueError("cannot merge collectors with different bins or histogram settings")
        if other.count == 0:
            return
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        self.count += other.count
        if not self.histogram:
            return
        width = max(self.width, other.width)
        counts = other.counts
        if other.width != width:
            counts = other.copy_rebinned(width)
        self._rebin(width)
        if self.width == 0.0:
            self.width = width
        self.counts = self.counts + counts

    def copy_rebinned(self, width: float) -> np.ndarray:
        """The counts re-binned to ``width``, this collector unchanged."""
        twin = RangeCollector(self.bins, self.histogram)
        twin.width, twin.counts = self.width, self.counts.copy()
        twin._rebin(width)
        return twin.counts

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
    Enough samples for several shards (:mod:`graphc.calib.shards`) are collected shard by shard on
    the executor in force and merged (:meth:`RangeCollector.merge`, exact): the same statistics,
    bit for bit, as one pass in this process.
    """
    if not isinstance(model, Model):
        raise TypeError("collect_stats needs a graphc.ir.Model")
    tensors = list(dict.fromkeys(tensors))
    job = ShardJob(b"", tuple(tensors), histograms, bins, memory_limit, threads)
    shards = shards_of(data, max_samples)
    if shards is not None:
        collectors = _collect_sharded(model, shards, job, progress)
    else:
        collectors, samples_seen = _collect(model, data, job, max_samples, progress)
        if samples_seen == 0:
            raise DataError("calibration data is empty")
    return {name: TensorStats(name, c.min, c.max, c.count, c.signed_histogram())
            for name, c in collectors.items()}


@dataclass(frozen=True)
class ShardJob:
    """What every calibration shard needs (the executor's shared value): the model and settings."""

    model_bytes: bytes
    tensors: tuple[str, ...]
    histograms: bool
    bins: int
    memory_limit: int
    threads: int | None


def _collect_sharded(model: Model, shards: list[list[dict[str, np.ndarray]]], job: ShardJob,
                     progress: bool | None) -> dict[str, RangeCollector]:
    """The shards' collectors (:class:`graphc.calib.shards.ShardedJob`). The merge is exact: where
    shards ran never changes the statistics."""
    return ShardedJob(
        desc="calibrating",
        here=lambda feeds: _collect(model, feeds, job, None, progress)[0],
        task=collect_shard,
        shared=lambda: replace(job, model_bytes=model_bytes(model)),
        merge=merge_collectors,
    ).run(shards)


def collect_shard(job: ShardJob, feeds: list[dict[str, np.ndarray]]) -> dict[str, RangeCollector]:
    """An executor task: the collectors of one shard of feeds (its own onnxruntime session)."""
    collectors, _ = _collect(load(job.model_bytes), feeds, job, None, False)
    return collectors


def merge_collectors(parts: list[dict[str, RangeCollector]]) -> dict[str, RangeCollector]:
    """The shards' collectors merged in shard order (exact, so the order only fixes the work)."""
    merged = parts[0]
    for part in parts[1:]:
        for name, collector in merged.items():
            collector.merge(part[name])
    return merged


def _collect(model: Model, data, job: ShardJob, max_samples: int | None,
             progress: bool | None) -> tuple[dict[str, RangeCollector], int]:
    """One pass per chunk of tensors over ``data`` in this process: (collectors, samples seen)."""
    collectors = {name: RangeCollector(job.bins, job.histograms) for name in job.tensors}
    input_names = {t.name for t in model.graph.inputs}
    computed = [t for t in job.tensors if t not in input_names]
    chunks = _chunks(model, data, computed, job.memory_limit)
    samples_seen = 0
    for index, chunk in enumerate(chunks):
        first = index == 0
        samples_seen = _run_chunk(model, data, chunk, collectors, input_names if first else set(),
                                  max_samples, progress, job.threads, f"{index + 1}/{len(chunks)}")
    if not chunks:  # only graph inputs
        samples_seen = _run_chunk(model, data, [], collectors, input_names, max_samples, progress,
                                  job.threads, "1/1")
    return collectors, samples_seen


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


def _power_of_two_above(value: float) -> float:
    """The smallest power of two strictly greater than ``value`` (> 0), exactly (no log2 rounding)."""
    _, exponent = math.frexp(value)  # value = m * 2**exponent, 0.5 <= m < 1
    return math.ldexp(1.0, exponent)


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
