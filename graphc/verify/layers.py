"""Per-layer error: how far each layer's output in the candidate is from the reference's.

The tensors measured are those a weighted layer (Conv, ConvTranspose, Gemm, MatMul) computes in
the candidate under a name the reference also computes (see
:func:`graphc.verify.localize.shared_tensors`): rewrites that keep tensor names (quantization,
folding, cleanup) leave almost every layer measurable. After fold-bn a Conv computes what the
BatchNormalization computed before, under the same name, so the error is measured after the
normalization. Tensors whose shape changed (pruned channels) are not comparable and are left out.

A layer inside a Loop or Scan body is keyed by its path (``loop/body/conv``) and its error is that
of its output stacked over every iteration (:mod:`graphc.verify.body_tensors`): the metrics of all
iterations' values concatenated.

A layer inside a branch of a top-graph If is keyed by its path (``If_0/then_branch/conv``) and its
error is measured over the samples that take its branch: the samples are grouped by the branches
they take and each group runs copies of both models with the taken branches inlined
(:func:`graphc.verify.branches.taken_branch_views`), where the branch's tensors are top-level
tensors. A layer taken by several groups (two Ifs: each branch of the first under both branches
of the second) pools its metrics over all of them. A branch no sample takes has no error; nor do
layers in Loop/Scan bodies inside a branch, or in an If inside a Loop/Scan body.

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
from graphc.verify.branches import taken_branch_views
from graphc.verify.localize import DEFAULT_MAX_BYTES, ChunkRun, _compare_chunk, chunks, shared_tensors
from graphc.verify.running import RunningMetrics, TensorMetrics
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
    branch_errors = branch_layer_errors(reference, candidate, data, ops=ops, input_shapes=input_shapes,
                                        chunk_size=chunk_size, max_bytes=max_bytes)
    for name, metrics in branch_errors.items():
        errors.setdefault(name, metrics)
    return errors


def branch_layer_errors(reference: Model, candidate: Model, data: DataSource, *,
                        ops: tuple[str, ...] = WEIGHTED_OPS,
                        input_shapes: dict[str, tuple[int, ...]] | None = None,
                        chunk_size: int = 128, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, TensorMetrics]:
    """``{path name: metrics}`` of the layers of ``ops`` inside the branches of the candidate's
    top-graph If nodes, each over the samples that take its branch (see the module docstring)."""
    prefixes = tuple(f"{node.name}/{attr}/" for node in candidate.graph.nodes if node.op == "If" and node.name
                     for attr in ("then_branch", "else_branch"))
    if not prefixes:
        return {}
    pool = _BranchLayers()
    for ref_view, cand_view, samples, inlined in taken_branch_views(reference, candidate, data):
        # in a view the taken branches' nodes are top-level nodes named by their path
        shared = [t for t in shared_tensors(ref_view, cand_view, input_shapes)
                  if t.loop is None and t.candidate_node.op in ops and t.candidate_node.name.startswith(prefixes)]
        if inlined and shared:
            pool.measure(ref_view, cand_view, shared, list(samples), max(1, chunk_size), max_bytes)
    return pool.results()


class _BranchLayers:
    """Running metrics of If-branch layers, by path name, pooled over the views that run them."""

    def __init__(self):
        self.running: dict[str, RunningMetrics] = {}
        self.broken: set[str] = set()   # not comparable in some view (shape or dtype differ)

    def measure(self, reference: Model, candidate: Model, shared: list, samples: list,
                chunk_size: int, max_bytes: int) -> None:
        # by layer, not by tensor: the two branches write the If's output under one tensor name
        layer = {t.name: path_name(t.candidate_path, t.candidate_node) for t in shared}

        def running(tensor: str) -> RunningMetrics:
            return self.running.setdefault(layer[tensor], RunningMetrics(layer[tensor], tensor, MEASURE_ONLY))

        for chunk in chunks(shared, chunk_size, max_bytes):
            run = ChunkRun(reference, candidate, chunk, MEASURE_ONLY, True, running=running).measure(samples)
            self.broken.update(layer[t.name] for t, metrics in zip(chunk, run.overall) if metrics is None)

    def results(self) -> dict[str, TensorMetrics]:
        return {name: acc.result() for name, acc in self.running.items() if name not in self.broken}
