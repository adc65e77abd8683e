"""Per-layer error: how far each layer's output in the candidate is from the reference's.

The tensors measured are those a weighted layer (Conv, ConvTranspose, Gemm, MatMul) computes in
the candidate under a name the reference also computes (see
:func:`graphc.verify.localize.shared_tensors`): rewrites that keep tensor names (quantization,
folding, cleanup) leave almost every layer measurable. After fold-bn a Conv computes what the
BatchNormalization computed before, under the same name, so the error is measured after the
normalization. Tensors whose shape changed (pruned channels) are not comparable and are left out.

A layer inside a Loop or Scan body is keyed by its path (``loop/body/conv``) and its error is that
of its output stacked over every iteration (:mod:`graphc.verify.body_tensors`): the metrics of all
iterations' values concatenated. Layers inside If branches are not measured here.

Metrics are those of :mod:`graphc.verify.running`, accumulated over every sample of ``data``,
measured only (no pass/fail). Layers are visited in chunks (as localization does), so memory
holds one chunk of one sample at a time.
"""
from __future__ import annotations

import logging

from graphc.calib.data import DataSource
from graphc.ir.model import Model
from graphc.ir.subgraphs import path_name
from graphc.progress import progress
from graphc.verify.localize import DEFAULT_MAX_BYTES, _compare_chunk, chunks, shared_tensors
from graphc.verify.running import TensorMetrics
from graphc.verify.tolerances import Tolerances

log = logging.getLogger(__name__)

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: metrics only: no threshold decides anything here.
MEASURE_ONLY = Tolerances(exact=False)


def layer_errors(reference: Model, candidate: Model, data: DataSource, *,
                 ops: tuple[str, ...] = WEIGHTED_OPS,
                 input_shapes: dict[str, tuple[int, ...]] | None = None,
                 chunk_size: int = 128, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, TensorMetrics]:
    """``{candidate node name: metrics of its output}`` for every measurable layer of ``ops``."""
    shared = [t for t in shared_tensors(reference, candidate, input_shapes)
              if t.candidate_node.op in ops and t.candidate_node.name]
    errors: dict[str, TensorMetrics] = {}
    parts = list(chunks(shared, max(1, chunk_size), max_bytes))
    for chunk in progress(parts, desc="per-layer error", unit="chunk"):
        results = _compare_chunk(reference, candidate, chunk, data, MEASURE_ONLY, True)
        for tensor, metrics in zip(chunk, results):
            if metrics is None:
                log.info("layer %s: output '%s' changed shape; error not measured",
                         tensor.candidate_node.name, tensor.name)
                continue
            errors.setdefault(path_name(tensor.candidate_path, tensor.candidate_node), metrics)
    return errors
