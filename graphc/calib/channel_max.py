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
from typing import Iterable, Mapping

import numpy as np

from graphc.errors import DataError
from graphc.ir.model import Model
from graphc.ir.outputs import with_outputs
from graphc.progress import progress

log = logging.getLogger(__name__)


def channel_absmax(model: Model, data: Iterable[dict[str, np.ndarray]],
                   tensors: Mapping[str, int], *, max_samples: int | None = None) -> dict[str, np.ndarray]:
    """``{tensor name: max |x| per channel}`` for ``tensors = {name: channel axis}``."""
    if not tensors:
        return {}
    # lazy: loads onnxruntime
    from graphc.runtime import create_session, run_session

    inputs = {t.name for t in model.graph.inputs}
    fetched = [n for n in tensors if n not in inputs]
    session = create_session(with_outputs(model, fetched), label="model (channel ranges)", spin=False)
    found: dict[str, np.ndarray] = {}
    samples = 0
    for feed in progress(data, desc="channel ranges", unit="sample"):
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
    if samples == 0:
        raise DataError("no calibration samples: the data source is empty")
    log.info("channel ranges of %d tensor(s) over %d feed(s)", len(tensors), samples)
    return found
