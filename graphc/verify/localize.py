"""First-divergence localization: where does the candidate start to differ from the reference?

The tensors compared are those a node computes in both models under the same name (rewrites
that keep tensor names - QDQ insertion on float tensors, cleanup, folding - leave most of them
shared; tensors that vanished from one model are skipped). They are visited in the candidate's
topological order, ``chunk_size`` at a time (fewer when their static sizes add up to more than
``max_bytes``): each chunk is exposed as extra graph outputs of copies of both models
(:func:`graphc.ir.outputs.with_outputs`), both run on every sample, and per-tensor metrics are
accumulated as for outputs. The first tensor of the first chunk that holds a failure is the
answer, so memory holds one chunk of one sample at a time and the search stops early.

A tensor whose shape or dtype differs between the models in some sample is not comparable (the
rewrite changed what that name means, e.g. pruned channels) and is skipped, not reported.

The budget is :meth:`Tolerances.for_intermediates`: rtol/atol in exact mode, the SQNR / cosine
thresholds in lossy mode. With only a top-1 threshold there is no budget for intermediates and
the result says so. Exposing a tensor stops onnxruntime from fusing across it (e.g. a QDQ
model's DequantizeLinear -> Conv -> QuantizeLinear no longer becomes QLinearConv), so the values
compared are those of the graph as written.

Inside If branches: an If that every sample takes the same way is replaced, in copies of both
models, by the branch it takes (:mod:`graphc.verify.branches`), so the branch's tensors are
compared too and a divergence there is named by path (``Conv 'If_0/then_branch/conv'``). A
divergence first seen at the output of a Loop or Scan (or of an If the samples take both ways)
is reported at that node, with a note that its body was not searched.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from math import prod
from typing import Any, Iterator

import numpy as np
import onnx_graphsurgeon as gs

from graphc.calib.data import DataSource
from graphc.ir.model import Model
from graphc.ir.outputs import computed_tensors, with_outputs
from graphc.ir.shapes import infer_shapes
from graphc.ir.structure import node_label
from graphc.progress import progress
from graphc.runtime import create_session, run_session
from graphc.verify.branches import taken_branch_views
from graphc.verify.running import RunningMetrics, TensorMetrics
from graphc.verify.tolerances import Tolerances

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 256 * 2**20


@dataclass
class Localization:
    """The first shared tensor over budget (``tensor`` is None when none was found)."""

    tensor: str | None
    candidate_node: str | None       # node_label of the producer in the candidate
    reference_node: str | None       # node_label of the producer in the reference
    metrics: TensorMetrics | None
    shared: int                      # tensors present in both models
    compared: int                    # comparable tensors checked before stopping
    note: str = ""

    def summary(self) -> str:
        if self.tensor is None:
            return f"not localized: {self.note}"
        reason = self.metrics.failures[0] if self.metrics is not None and self.metrics.failures else ""
        text = (f"first divergence at tensor '{self.tensor}' computed by {self.candidate_node} "
                f"(reference: {self.reference_node}): {reason}")
        return f"{text}; {self.note}" if self.note else text

    def to_dict(self) -> dict[str, Any]:
        return {
            "tensor": self.tensor,
            "candidate_node": self.candidate_node,
            "reference_node": self.reference_node,
            "metrics": self.metrics.to_dict() if self.metrics is not None else None,
            "shared": self.shared,
            "compared": self.compared,
            "note": self.note,
        }


@dataclass(frozen=True)
class SharedTensor:
    name: str
    candidate_node: gs.Node
    reference_node: gs.Node
    nbytes: int  # static size in the candidate, 0 when unknown


def shared_tensors(reference: Model, candidate: Model,
                   input_shapes: dict[str, tuple[int, ...]] | None = None) -> list[SharedTensor]:
    """Tensors computed in both models under the same name, in the candidate's topological
    order; those whose static shapes are known to differ are left out."""
    ref_tensors = {t.name: t for t in computed_tensors(reference)}
    ref_shapes = infer_shapes(reference, input_shapes)
    cand_shapes = infer_shapes(candidate, input_shapes)
    shared = []
    for tensor in computed_tensors(candidate):
        ref = ref_tensors.get(tensor.name)
        if ref is None:
            continue
        a, b = cand_shapes.get(tensor.name), ref_shapes.get(tensor.name)
        if a is not None and b is not None and a.static and b.static and a.shape != b.shape:
            continue
        shared.append(SharedTensor(tensor.name, tensor.inputs[0], ref.inputs[0], _nbytes(a)))
    return shared


def _nbytes(info) -> int:
    if info is None or not info.static or info.dtype is None:
        return 0
    return int(prod(info.shape)) * np.dtype(info.dtype).itemsize


def chunks(tensors: list[SharedTensor], chunk_size: int, max_bytes: int) -> Iterator[list[SharedTensor]]:
    """Consecutive runs of at most ``chunk_size`` tensors and (where known) ``max_bytes``."""
    chunk: list[SharedTensor] = []
    size = 0
    for tensor in tensors:
        if chunk and (len(chunk) >= chunk_size or size + tensor.nbytes > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(tensor)
        size += tensor.nbytes
    if chunk:
        yield chunk


def localize_divergence(
    reference: Model,
    candidate: Model,
    data: DataSource,
    tolerances: Tolerances = Tolerances(),
    *,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    chunk_size: int = 256,
    max_bytes: int = DEFAULT_MAX_BYTES,
    optimize: bool = True,
) -> Localization:
    """Find the first shared tensor whose error exceeds the intermediate budget (inside the If
    branches the samples take: :mod:`graphc.verify.branches`)."""
    budget = tolerances.for_intermediates()
    if not budget.elementwise and not budget.thresholds:
        shared = shared_tensors(reference, candidate, input_shapes)
        return Localization(None, None, None, None, len(shared), 0,
                            "top-1 applies to outputs only; give min_sqnr or min_cosine to localize")
    found = None
    for ref_view, cand_view, samples, inlined in taken_branch_views(reference, candidate, data):
        if inlined:
            log.info("localize: %d If node(s) replaced by the branch %d sample(s) take", inlined,
                     len(samples))
        found = _first_divergence(ref_view, cand_view, samples, budget, input_shapes, chunk_size,
                                  max_bytes, optimize)
        if found.tensor is not None:
            return found
    return found


def _first_divergence(reference: Model, candidate: Model, data, budget: Tolerances,
                      input_shapes, chunk_size: int, max_bytes: int, optimize: bool) -> Localization:
    shared = shared_tensors(reference, candidate, input_shapes)
    if not shared:
        return Localization(None, None, None, None, 0, 0, "the models share no intermediate tensor names")
    compared = 0
    for chunk in progress(chunks(shared, max(1, chunk_size), max_bytes), desc="localizing", unit="chunk"):
        results = _compare_chunk(reference, candidate, chunk, data, budget, optimize)
        for tensor, metrics in zip(chunk, results):
            if metrics is None:
                continue
            compared += 1
            if not metrics.passed:
                return Localization(tensor.name, node_label(tensor.candidate_node),
                                    node_label(tensor.reference_node), metrics, len(shared), compared,
                                    _body_note(tensor.candidate_node))
    return Localization(None, None, None, None, len(shared), compared,
                        "every shared tensor is within budget; the divergence is in tensors "
                        "the models do not share")


def _body_note(node: gs.Node) -> str:
    """What localization cannot see: the inside of the body of the node it stopped at."""
    if node.op in ("Loop", "Scan"):
        return f"inside the {node.op}'s body: not localized further (its body runs once per iteration)"
    if node.op == "If":
        return "inside the If's branches: not localized further (the samples take different branches)"
    return ""


def _compare_chunk(reference: Model, candidate: Model, chunk: list[SharedTensor], data: DataSource,
                   budget: Tolerances, optimize: bool) -> list[TensorMetrics | None]:
    """Metrics per tensor of the chunk (None: not comparable: shape or dtype differ)."""
    names = [t.name for t in chunk]
    log.info("localize: comparing %d tensors from '%s'", len(names), names[0])
    ref_session = create_session(with_outputs(reference, names), optimize=optimize,
                                 label="reference", spin=False)
    cand_session = create_session(with_outputs(candidate, names), optimize=optimize,
                                  label="candidate", spin=False)
    running = [RunningMetrics(n, n, budget) for n in names]
    comparable = [True] * len(names)
    for feed in data:
        ref_values = run_session(ref_session, feed, names, label="reference")
        cand_values = run_session(cand_session, feed, names, label="candidate")
        for i, (ref, got) in enumerate(zip(ref_values, cand_values)):
            if not comparable[i]:
                continue
            if np.shape(ref) != np.shape(got) or np.asarray(ref).dtype != np.asarray(got).dtype:
                comparable[i] = False
                continue
            running[i].update(ref, got)
    return [r.result() if ok else None for r, ok in zip(running, comparable)]
