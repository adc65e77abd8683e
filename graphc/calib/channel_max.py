"""Per-channel maximum of ``|x|`` over calibration data, for rewrites that balance channel ranges
(SmoothQuant's activation outliers).

``channel_absmax(model, data, {name: axis})`` runs the model once over the data in one
onnxruntime session, exposing the requested intermediate tensors as extra outputs, and returns
``max |x|`` over every axis but ``axis`` (float64), one value per channel. Tensors inside
If/Loop/Scan bodies are lifted out (:func:`graphc.ir.outputs.with_outputs`): count ``axis`` from the
end for them (a Loop stacks its iterations on a new leading axis). A tensor that never held a value
(an If branch no feed took) is missing from the result.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from graphc.errors import DataError
from graphc.calib.shards import ShardedJob, shards_of
from graphc.ir.model import Model, load, model_bytes
from graphc.ir.outputs import with_outputs
from graphc.progress import progress

log = logging.getLogger(__name__)


def channel_absmax(model: Model, data: Iterable[dict[str, np.ndarray]],
                   tensors: Mapping[str, int], *, max_samples: int | None = None) -> dict[str, np.ndarray]:
    """``{tensor name: max |x| per channel}`` for ``tensors = {name: channel axis}``.

    Enough samples for several shards go shard by shard to the executor in force
    (:mod:`graphc.calib.shards`); the maxima merge exactly, so the result is the same bytes."""
    if not tensors:
        return {}
    shards = shards_of(data, max_samples)
    if shards is not None:
        return _sharded(model, shards, dict(tensors))
    found, samples = _absmax(model, data, tensors, max_samples, True)
    if samples == 0:
        raise DataError("no calibration samples: the data source is empty")
    log.info("channel ranges of %d tensor(s) over %d feed(s)", len(tensors), samples)
    return found


@dataclass(frozen=True)
class AbsmaxJob:
    """The executor's shared value: the model and the tensors' channel axes."""

    model_bytes: bytes
    tensors: dict[str, int]


def absmax_shard(job: AbsmaxJob, feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """An executor task: the channel maxima of one shard of feeds."""
    return _absmax(load(job.model_bytes), feeds, job.tensors, None, False)[0]


def merge_absmax(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Element-wise maxima in shard order (exact); a tensor first seen in a later shard is added
    where one pass would have added it."""
    merged = dict(parts[0])
    for part in parts[1:]:
        for name, m in part.items():
            merged[name] = m if name not in merged else np.maximum(merged[name], m)
    return merged


def _sharded(model: Model, shards, tensors: dict[str, int]) -> dict[str, np.ndarray]:
    """The shards' maxima (:class:`graphc.calib.shards.ShardedJob`), merged exactly."""
    found = ShardedJob(
        desc="channel ranges",
        here=lambda feeds: _absmax(model, feeds, tensors, None, True)[0],
        task=absmax_shard,
        shared=lambda: AbsmaxJob(model_bytes(model), tensors),
        merge=merge_absmax,
    ).run(shards)
    log.info("channel ranges of %d tensor(s) over %d feed(s)", len(tensors), sum(map(len, shards)))
    return found


def _absmax(model: Model, data, tensors: Mapping[str, int], max_samples: int | None,
            show_progress: bool) -> tuple[dict[str, np.ndarray], int]:
    """One pass over ``data`` in this process: (maxima found, samples seen)."""
    # lazy: loads onnxruntime
    from graphc.runtime import create_session, run_session

    inputs = {t.name for t in model.graph.inputs}
    fetched = [n for n in tensors if n not in inputs]
    session = create_session(with_outputs(model, fetched), label="model (channel ranges)", spin=False)
    found: dict[str, np.ndarray] = {}
    samples = 0
    feeds = progress(data, desc="channel ranges", unit="sample") if show_progress else data
    for feed in feeds:
        if max_samples is not None and samples >= max_samples:
            break
        values = {n: feed[n] for n in tensors if n in inputs}
        if fetched:
            values.update(zip(fetched, run_session(session, feed, fetched, label="model (channel ranges)")))
        for name, axis in tensors.items():
            x = np.abs(np.asarray(values[name], dtype=np.float64))
            if x.size == 0:  # an If branch this feed did not take (graphc.ir.lift): nothing seen
                continue
            other = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
            m = x.max(axis=other)
            found[name] = m if name not in found else np.maximum(found[name], m)
        samples += 1
    return found, samples
