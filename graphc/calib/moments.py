"""Second moments of activations over calibration data, for data-aware rewrites.

``input_second_moments(model, data, tensors)`` runs the model over the data (one onnxruntime
session per pass; see sharding below), with the requested intermediate tensors exposed as extra outputs, and returns
``S = E[x x^T]`` (float64, uncentred) per tensor. How samples ``x`` are read from a tensor is its
:class:`Layout`:

- ``Layout()`` (default): features on the last axis, every other axis indexes samples
  (the input of MatMul, or of Gemm without transA);
- ``Layout.channels()``: features on axis 1, batch and spatial positions are samples
  (im2col-free; the exact moment of the input of a 1x1, stride-1, unpadded Conv);
- ``Layout.conv(kernel, strides, pads, dilations)``: samples are a Conv's receptive fields (im2col),
  zero padding included, flattened channel-major ``(c, k1, k2, ...)`` as ``W.reshape(Cout, -1)``
  reads them, so ``tr(W S W^T)`` is the Conv's mean squared output. A 1x1 kernel is read by
  strided slicing, without im2col.

``Layout(..., affine=True)`` appends a constant 1 to every sample, so the moment is the augmented
``[[E x x^T, E x], [E x^T, 1]]``: first moments come with the second ones (least squares with a
bias term, as pruning's reconstruction solves).

``second_moments`` is the general form (several layouts of one tensor under keys of your choice).
``channel_moments`` is the cheap diagonal: per channel ``E|x|``, ``E x`` and ``E x^2`` (O(C) per
sample instead of O(C^2)), for importance scores.
Accumulation is in float64, one feed at a time and in row chunks: memory holds the moment
matrices plus one chunk, whatever the amount of data.

Shards (:mod:`graphc.calib.shards`): sums are always folded shard by shard (:class:`ShardSums`:
a partial sum per :data:`~graphc.calib.shards.SHARD_SIZE` samples, partials added in shard order),
whether the shards run on the executor in force (enough samples, when it pays) or stream here, so
the moments are the same bytes on every executor. They differ from one running sum over all
samples only in the order of float64 additions (see :class:`ShardSums` for the bound). Uses of least-squares reconstruction
(pruning) and whitening (factorization) divide out the sample count, so moments are means.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from math import prod
from typing import Hashable, Iterable, Iterator, Mapping

import numpy as np

from graphc.calib.shards import SHARD_SIZE, ShardedJob, shards_of
from graphc.errors import DataError
from graphc.ir.model import Model, load, model_bytes
from graphc.ir.outputs import with_outputs

log = logging.getLogger(__name__)

#: rows (samples) converted to float64 at a time.
CHUNK_ROWS = 8192


@dataclass(frozen=True)
class Layout:
    """Which axis holds features, and for Conv inputs the receptive-field geometry."""

    axis: int = -1
    kernel: tuple[int, ...] | None = None
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()  # ONNX order: all begins, then all ends
    dilations: tuple[int, ...] = ()
    affine: bool = False  # append a constant 1 to every sample (the last feature)

    @classmethod
    def channels(cls) -> "Layout":
        return cls(axis=1)

    @classmethod
    def conv(cls, kernel, strides=None, pads=None, dilations=None) -> "Layout":
        nd = len(kernel)
        return cls(
            axis=1,
            kernel=tuple(int(k) for k in kernel),
            strides=tuple(int(s) for s in strides) if strides else (1,) * nd,
            pads=tuple(int(p) for p in pads) if pads else (0,) * (2 * nd),
            dilations=tuple(int(d) for d in dilations) if dilations else (1,) * nd,
        )

    def features(self, shape: tuple[int, ...]) -> int:
        """Length of one sample vector for a tensor of ``shape``."""
        channels = shape[self.axis]
        return (channels * prod(self.kernel) if self.kernel else channels) + int(self.affine)

    def rows(self, x: np.ndarray) -> Iterator[np.ndarray]:
        """Samples of ``x`` as float64 blocks (n, features), at most about CHUNK_ROWS rows each."""
        if not self.affine:
            yield from self._rows(x)
            return
        for block in self._rows(x):
            yield np.concatenate([block, np.ones((block.shape[0], 1))], axis=1)

    def _rows(self, x: np.ndarray) -> Iterator[np.ndarray]:
        if self.kernel is not None:
            yield from self._patches(x)
            return
        flat = np.moveaxis(x, self.axis, -1).reshape(-1, x.shape[self.axis])
        for start in range(0, flat.shape[0], CHUNK_ROWS):
            yield flat[start:start + CHUNK_ROWS].astype(np.float64)

    def _patches(self, x: np.ndarray) -> Iterator[np.ndarray]:
        nd = len(self.kernel)
        if x.ndim != nd + 2:
            raise DataError(f"conv layout with a {nd}-d kernel cannot read a tensor of shape {x.shape}")
        widths = [(0, 0), (0, 0)] + list(zip(self.pads[:nd], self.pads[nd:]))
        padded = np.pad(x, widths) if any(self.pads) else x
        span = [d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilations)]
        out = [(padded.shape[2 + i] - span[i]) // self.strides[i] + 1 for i in range(nd)]
        if min(out) <= 0:
            raise DataError(f"conv layout {self} leaves no output positions on shape {x.shape}")
        if all(k == 1 for k in self.kernel):  # 1x1: strided positions, no im2col
            steps = tuple(slice(0, o * s, s) for o, s in zip(out, self.strides))
            picked = padded[(slice(None), slice(None)) + steps]
            yield from Layout.channels().rows(picked)
            return
        channels = x.shape[1]
        per_row = prod(out[1:]) if nd > 1 else 1
        step = max(1, CHUNK_ROWS // per_row)
        for n in range(padded.shape[0]):
            windows = np.lib.stride_tricks.sliding_window_view(padded[n], span, axis=tuple(range(1, nd + 1)))
            index = (slice(None),) + tuple(slice(0, o * s, s) for o, s in zip(out, self.strides)) \
                + tuple(slice(None, None, d) for d in self.dilations)
            windows = windows[index]  # (C, o1, ..., ond, k1, ..., knd)
            order = tuple(range(1, nd + 1)) + (0,) + tuple(range(nd + 1, 2 * nd + 1))
            windows = windows.transpose(order)  # (o1, ..., ond, C, k1, ..., knd)
            for start in range(0, out[0], step):
                block = windows[start:start + step]
                yield block.reshape(-1, channels * prod(self.kernel)).astype(np.float64)


def input_second_moments(model: Model, data: Iterable[dict[str, np.ndarray]],
                         tensors: Mapping[str, Layout] | Iterable[str]) -> dict[str, np.ndarray]:
    """``{tensor name: E[x x^T]}`` over ``data`` (feed dicts); names alone mean ``Layout()``."""
    if not isinstance(tensors, Mapping):
        tensors = {name: Layout() for name in tensors}
    return second_moments(model, data, {name: (name, layout) for name, layout in tensors.items()})


def second_moments(model: Model, data: Iterable[dict[str, np.ndarray]],
                   requests: Mapping[Hashable, tuple[str, Layout]],
                   counts_out: dict | None = None) -> dict[Hashable, np.ndarray]:
    """``{key: E[x x^T]}`` for ``requests = {key: (tensor name, layout)}``.
    Keys with equal requests are accumulated once and share one (read-only by convention) array.
    ``counts_out``, if given, receives ``{key: number of samples (rows) averaged}``."""
    if not requests:
        return {}
    unique = tuple(dict.fromkeys(requests.values()))  # equal requests are accumulated once
    sums = sum_in_shards(model, data, "second", unique, "second moments")
    log.info("second moments of %d tensor(s) over %d feed(s)", len({n for n, _ in unique}), sums.samples)
    means = {request: sums.total[request][0] / max(sums.counts[request], 1) for request in unique}
    if counts_out is not None:
        counts_out.update({key: sums.counts[request] for key, request in requests.items()})
    return {key: means[request] for key, request in requests.items()}


def _second_sums(model: Model, data: Iterable[dict[str, np.ndarray]], unique: tuple,
                 sums: "ShardSums") -> "ShardSums":
    """Fold ``sum x x^T`` of the ``unique`` (tensor, layout) requests over ``data`` into ``sums``."""
    # lazy: loads onnxruntime
    from graphc.runtime import create_session, run_session

    names = list(dict.fromkeys(name for name, _ in unique))
    inputs = {t.name for t in model.graph.inputs}
    fetched = [n for n in names if n not in inputs]
    session = create_session(with_outputs(model, fetched), label="model (second moments)")
    for feed in data:
        values = {n: feed[n] for n in names if n in inputs}
        if fetched:
            values.update(zip(fetched, run_session(session, feed, fetched, label="model (second moments)")))
        for request in unique:
            name, layout = request
            for block in layout.rows(np.asarray(values[name])):
                sums.add(request, [block.T @ block], block.shape[0])
        sums.end_sample()
    return sums


@dataclass
class ChannelMoments:
    """Per-channel first and second moments of one tensor (means over samples and positions)."""

    mean_abs: np.ndarray
    mean: np.ndarray
    mean_square: np.ndarray
    count: int

    @property
    def variance(self) -> np.ndarray:
        return np.clip(self.mean_square - self.mean ** 2, 0.0, None)


def channel_moments(model: Model, data: Iterable[dict[str, np.ndarray]],
                    tensors: Mapping[str, int]) -> dict[str, ChannelMoments]:
    """``{tensor name: ChannelMoments}`` for ``tensors = {name: channel axis}``."""
    if not tensors:
        return {}
    sums = sum_in_shards(model, data, "channel", tuple(tensors.items()), "channel moments")
    log.info("channel moments of %d tensor(s) over %d feed(s)", len(tensors), sums.samples)
    return {name: ChannelMoments(*(part / max(sums.counts[name], 1) for part in sums.total[name]),
                                 sums.counts[name]) for name in tensors}


def _channel_sums(model: Model, data: Iterable[dict[str, np.ndarray]], tensors: tuple,
                  sums: "ShardSums") -> "ShardSums":
    """Fold per-channel ``sum |x|``, ``sum x``, ``sum x^2`` of ``tensors`` ((name, axis) pairs)."""
    # lazy: loads onnxruntime
    from graphc.runtime import create_session, run_session

    inputs = {t.name for t in model.graph.inputs}
    fetched = [n for n, _ in tensors if n not in inputs]
    session = create_session(with_outputs(model, fetched), label="model (channel moments)")
    for feed in data:
        values = {n: feed[n] for n, _ in tensors if n in inputs}
        if fetched:
            values.update(zip(fetched, run_session(session, feed, fetched, label="model (channel moments)")))
        for name, axis in tensors:
            x = np.asarray(values[name])
            other = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
            x64 = x.astype(np.float64)
            parts = [np.abs(x64).sum(axis=other), x64.sum(axis=other), np.square(x64).sum(axis=other)]
            sums.add(name, parts, x.size // max(x.shape[axis], 1))
        sums.end_sample()
    return sums


class ShardSums:
    """Float64 sums of per-sample terms, folded by shards of :data:`SHARD_SIZE` samples: terms add
    in sample order into a shard's partial sum, and each shard's partial sum is added to the total
    in shard order. A shard computed on a worker (``sum_shard``) and merged (:meth:`merge`)
    performs exactly these additions, so the sums are the same bytes on every executor and in
    this process.

    Against one running sum over all samples (the grouping before sharding), only the order of
    additions differs: both are float64 sums of the same terms, each within ``n * eps * sum |t|``
    (``eps = 2**-53``, ``n`` additions) of the exact sum - a relative difference of about
    ``1e-13`` for thousands of samples, far below the float32 activations' own precision.
    """

    def __init__(self) -> None:
        self.total: dict[Hashable, list[np.ndarray]] = {}
        self.partial: dict[Hashable, list[np.ndarray]] = {}
        self.counts: dict[Hashable, int] = {}
        self.samples = 0

    def add(self, key: Hashable, terms: list[np.ndarray], count: int) -> None:
        acc = self.partial.get(key)
        self.partial[key] = terms if acc is None else [a + b for a, b in zip(acc, terms)]
        self.counts[key] = self.counts.get(key, 0) + count

    def end_sample(self) -> None:
        self.samples += 1
        if self.samples % SHARD_SIZE == 0:
            self.close_shard()

    def close_shard(self) -> None:
        """Add the current shard's partial sums to the total."""
        self._add_to_total(self.partial)
        self.partial = {}

    def merge(self, other: "ShardSums") -> None:
        """Add the (closed) sums of the shards that follow this one's."""
        self._add_to_total(other.total)
        for key, count in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + count
        self.samples += other.samples

    def _add_to_total(self, sums: dict[Hashable, list[np.ndarray]]) -> None:
        for key, terms in sums.items():
            acc = self.total.get(key)
            self.total[key] = terms if acc is None else [a + b for a, b in zip(acc, terms)]


_SUMMERS = {"second": _second_sums, "channel": _channel_sums}


@dataclass(frozen=True)
class SumJob:
    """The executor's shared value for moment shards: the model, which sums, of what."""

    model_bytes: bytes
    kind: str
    requests: tuple


def sum_shard(job: SumJob, feeds: list[dict[str, np.ndarray]]) -> ShardSums:
    """An executor task: one shard's sums (its own session)."""
    sums = _SUMMERS[job.kind](load(job.model_bytes), feeds, job.requests, ShardSums())
    sums.close_shard()
    return sums


def merge_sums(parts: list[ShardSums]) -> ShardSums:
    """The shards' (closed) sums added in shard order, into the first."""
    for part in parts[1:]:
        parts[0].merge(part)
    return parts[0]


def sum_in_shards(model: Model, data: Iterable[dict[str, np.ndarray]], kind: str, requests: tuple,
                  desc: str) -> ShardSums:
    """The ``kind`` sums of ``requests`` over ``data``, shard by shard: on the executor in force
    when that pays (:class:`graphc.calib.shards.ShardedJob`), else streamed here - the same
    additions either way. Raises DataError on empty data."""
    summer = _SUMMERS[kind]
    shards = shards_of(data)
    if shards is None:
        sums = summer(model, data, requests, ShardSums())
    else:
        sums = ShardedJob(
            desc=desc,
            here=lambda feeds: summer(model, feeds, requests, ShardSums()),  # closes at SHARD_SIZE samples
            task=sum_shard,
            shared=lambda: SumJob(model_bytes(model), kind, requests),
            merge=merge_sums,
            resume=lambda before, feeds: summer(model, feeds, requests, before),
        ).run(shards)
    sums.close_shard()
    if sums.samples == 0:
        raise DataError("no calibration samples: the data source is empty")
    return sums


def cross_moments(model_x: Model, model_y: Model, data: Iterable[dict[str, np.ndarray]],
                  requests: Mapping[Hashable, tuple[str, Layout, str, Layout]]
                  ) -> dict[Hashable, tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """``{key: (E[x x^T], E[x y^T], E[y * y], samples)}`` (``E[y * y]`` per feature of y) for ``requests = {key: (x tensor, x layout, y tensor,
    y layout)}``: ``x`` read from ``model_x``, ``y`` from ``model_y``, on the same feeds (one session
    each). Both layouts must give the same samples in the same order - a Conv's input under
    ``Layout.conv`` and its output under ``Layout.channels()``, or two ``Layout()`` rows - which is
    how a layer of a rewritten model is fitted to the original's outputs (pruning's refit)."""
    if not requests:
        return {}
    # lazy: loads onnxruntime
    from graphc.runtime import create_session, run_session

    sessions = []
    for model, names in ((model_x, [r[0] for r in requests.values()]), (model_y, [r[2] for r in requests.values()])):
        inputs = {t.name for t in model.graph.inputs}
        fetched = list(dict.fromkeys(n for n in names if n not in inputs))
        sessions.append((create_session(_only_outputs(model, fetched), label="model (cross moments)"), fetched))
    sums: dict[Hashable, list] = {key: [None, None, 0.0] for key in requests}
    counts = dict.fromkeys(requests, 0)
    samples = 0
    for feed in data:
        values = []
        for session, fetched in sessions:
            got = dict(feed)
            if fetched:
                got.update(zip(fetched, run_session(session, feed, fetched, label="model (cross moments)")))
            values.append(got)
        for key, (xn, xl, yn, yl) in requests.items():
            acc = sums[key]
            for xb, yb in _aligned(xl.rows(np.asarray(values[0][xn])), yl.rows(np.asarray(values[1][yn]))):
                xx, xy = xb.T @ xb, xb.T @ yb
                acc[0] = xx if acc[0] is None else acc[0] + xx
                acc[1] = xy if acc[1] is None else acc[1] + xy
                acc[2] = acc[2] + np.sum(yb * yb, axis=0)
                counts[key] += xb.shape[0]
        samples += 1
    if samples == 0:
        raise DataError("no calibration samples: the data source is empty")
    log.info("cross moments of %d pair(s) over %d feed(s)", len(requests), samples)
    return {key: (acc[0] / max(counts[key], 1), acc[1] / max(counts[key], 1), acc[2] / max(counts[key], 1),
                  counts[key]) for key, acc in sums.items()}


def _only_outputs(model: Model, names: list[str]) -> Model:
    """A copy computing just ``names`` (nodes downstream of them are dropped): early layers' moments
    need only the start of the model."""
    copy = with_outputs(model, names)
    if names:
        wanted = set(names)
        copy.graph.outputs = [t for t in copy.graph.outputs if t.name in wanted]
        copy.graph.cleanup()
    return copy


def _aligned(a: Iterator[np.ndarray], b: Iterator[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pairs of equally long row blocks from two streams of the same rows chunked differently."""
    a, b = iter(a), iter(b)
    left, right = next(a, None), next(b, None)
    while left is not None and right is not None:
        n = min(len(left), len(right))
        if n:
            yield left[:n], right[:n]
        left, right = left[n:], right[n:]
        if not len(left):
            left = next(a, None)
        if not len(right):
            right = next(b, None)
    if (left is not None and len(left)) or (right is not None and len(right)) \
            or next(a, None) is not None or next(b, None) is not None:
        raise DataError("cross moments: the two layouts give different numbers of samples")
