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
compared too and a divergence there is named by path (``Conv 'If_0/then_branch/conv'``).
Inside Loop and Scan bodies: the body's tensors are lifted out as scan outputs, stacked over the
iterations, and compared before the node's own outputs, iteration by iteration
(:mod:`graphc.verify.body_tensors` says why and how), so a divergence there is named by path
(``MatMul 'loop/body/step'``) with the iteration it first shows in. A chunk holds a body's
tensors whole. A divergence first seen at the output of an If the samples take both ways (or of
a Loop/Scan whose body could not be lifted) is reported at that node, with a note that its body
was not searched.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from math import prod
from typing import Any, Callable, Iterator

import numpy as np
import onnx_graphsurgeon as gs

from graphc.calib.data import DataSource
from graphc.ir.model import Model
from graphc.ir.outputs import with_outputs
from graphc.ir.shapes import infer_shapes
from graphc.ir.structure import node_label
from graphc.progress import progress
from graphc.runtime import create_session, run_session
from graphc.verify.body_tensors import computed_in_order, first_failure
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
    candidate_path: str = ""   # the body the candidate's node sits in ("" top graph)
    reference_path: str = ""
    loop: str | None = None    # the outermost Loop/Scan whose body computes it (None: top graph)

    @property
    def candidate_label(self) -> str:
        return node_label(self.candidate_node, self.candidate_path)

    @property
    def reference_label(self) -> str:
        return node_label(self.reference_node, self.reference_path)


def shared_tensors(reference: Model, candidate: Model,
                   input_shapes: dict[str, tuple[int, ...]] | None = None) -> list[SharedTensor]:
    """Tensors computed in both models under the same name (also inside Loop/Scan bodies, in
    both models), in the candidate's order (:mod:`graphc.verify.body_tensors`); those whose
    static shapes are known to differ are left out."""
    ref_tensors = {c.tensor.name: c for c in computed_in_order(reference)}
    ref_shapes = infer_shapes(reference, input_shapes)
    cand_shapes = infer_shapes(candidate, input_shapes)
    shared = []
    for found in computed_in_order(candidate):
        ref = ref_tensors.get(found.tensor.name)
        if ref is None or (found.loop is None) != (ref.loop is None):
            continue
        a, b = cand_shapes.get(found.tensor.name), ref_shapes.get(found.tensor.name)
        if a is not None and b is not None and a.static and b.static and a.shape != b.shape:
            continue
        shared.append(SharedTensor(found.tensor.name, found.node, ref.node,
                                   _nbytes(a) if found.loop is None else 0,
                                   found.path, ref.path, found.loop))
    return shared


def _nbytes(info) -> int:
    if info is None or not info.static or info.dtype is None:
        return 0
    return int(prod(info.shape)) * np.dtype(info.dtype).itemsize


def chunks(tensors: list[SharedTensor], chunk_size: int, max_bytes: int) -> Iterator[list[SharedTensor]]:
    """Consecutive runs of at most ``chunk_size`` tensors and (where known) ``max_bytes``; the
    tensors of one Loop/Scan body stay in one chunk (their order is judged per iteration)."""
    chunk: list[SharedTensor] = []
    size = 0
    for tensor in tensors:
        same_body = tensor.loop is not None and chunk and chunk[-1].loop == tensor.loop
        if chunk and not same_body and (len(chunk) >= chunk_size or size + tensor.nbytes > max_bytes):
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
    unsearched: set[str] = set()
    for chunk in progress(chunks(shared, max(1, chunk_size), max_bytes), desc="localizing", unit="chunk"):
        run = ChunkRun(reference, candidate, chunk, budget, optimize, by_iteration=True).measure(data)
        unsearched |= run.unsearched
        name = first_failure([t.name for t in chunk], {t.name: t.loop for t in chunk},
                             dict(zip((t.name for t in chunk), run.overall)), run.per_iteration)
        upto = next(i for i, t in enumerate(chunk) if t.name == name) + 1 if name is not None else len(chunk)
        compared += sum(m is not None for m in run.overall[:upto])
        if name is not None:
            tensor = chunk[upto - 1]
            metrics, note = run.verdict(tensor)
            return Localization(tensor.name, tensor.candidate_label, tensor.reference_label, metrics,
                                len(shared), compared, note or _body_note(tensor.candidate_node, unsearched))
    return Localization(None, None, None, None, len(shared), compared,
                        "every shared tensor is within budget; the divergence is in tensors "
                        "the models do not share")


def _body_note(node: gs.Node, unsearched: set[str]) -> str:
    """What localization cannot see: the inside of the body of the node it stopped at."""
    if node.op in ("Loop", "Scan") and (node.name in unsearched or not node.name):
        return f"inside the {node.op}'s body: not localized further (its body could not be lifted out)"
    if node.op == "If":
        return "inside the If's branches: not localized further (the samples take different branches)"
    return ""


class ChunkRun:
    """Runs both models with a chunk's tensors exposed and accumulates their metrics over the
    samples: ``overall`` per tensor (None: not comparable, shape or dtype differ), and with
    ``by_iteration`` also ``per_iteration[name]`` for body tensors (one per outer iteration).
    A chunk whose body tensors onnxruntime cannot lift (their shape changes between iterations) is
    measured without them; their Loop/Scan names are in ``unsearched``. ``running`` gives a
    tensor's accumulator by name (default: a new one per run), so that a caller can pool a
    tensor's metrics over several runs (the samples of several If-branch views)."""

    def __init__(self, reference: Model, candidate: Model, chunk: list[SharedTensor], budget: Tolerances,
                 optimize: bool, by_iteration: bool = False,
                 running: Callable[[str], RunningMetrics] | None = None):
        self.reference, self.candidate, self.chunk = reference, candidate, chunk
        self.budget, self.optimize, self.by_iteration = budget, optimize, by_iteration
        self.running = running if running is not None else (lambda name: RunningMetrics(name, name, budget))
        self.overall: list[TensorMetrics | None] = []
        self.per_iteration: dict[str, list[TensorMetrics]] = {}
        self.unsearched: set[str] = set()

    def measure(self, data) -> "ChunkRun":
        try:
            self._measure(self.chunk, data)
        except Exception as exc:  # onnxruntime refuses a lifted body tensor: compare without the bodies
            bodies = {t.loop for t in self.chunk if t.loop is not None}
            if not bodies:
                raise
            log.info("localize: Loop/Scan bodies %s not searched: %s", sorted(bodies), exc)
            self.unsearched |= bodies
            top = [t for t in self.chunk if t.loop is None]
            self.overall = []
            if top:
                self._measure(top, data)
            kept = dict(zip((t.name for t in top), self.overall))
            self.overall = [kept.get(t.name) for t in self.chunk]
            self.per_iteration = {}
        return self

    def verdict(self, tensor: SharedTensor) -> tuple[TensorMetrics | None, str]:
        """The metrics to report for a failing tensor and a note: a body tensor's are those of the
        first iteration that fails."""
        if tensor.loop is None:
            return self.overall[self.chunk.index(tensor)], ""
        iterations = self.per_iteration.get(tensor.name, [])
        first = next(i for i, m in enumerate(iterations) if not m.passed)
        return iterations[first], (f"inside the body of {tensor.loop}: first diverges in iteration {first} "
                                   f"(of {len(iterations)})")

    def _measure(self, tensors: list[SharedTensor], data) -> None:
        names = [t.name for t in tensors]
        log.info("localize: comparing %d tensors from '%s'", len(names), names[0])
        ref_session = create_session(with_outputs(self.reference, names), optimize=self.optimize,
                                     label="reference", spin=False)
        cand_session = create_session(with_outputs(self.candidate, names), optimize=self.optimize,
                                      label="candidate", spin=False)
        running = [self.running(n) for n in names]
        steps: dict[str, list[RunningMetrics]] = {t.name: [] for t in tensors if t.loop is not None}
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
                if self.by_iteration and names[i] in steps:
                    self._update_steps(steps[names[i]], names[i], np.asarray(ref), np.asarray(got))
        self.overall = [r.result() if ok else None for r, ok in zip(running, comparable)]
        self.per_iteration = {n: [r.result() for r in steps[n]] for n, ok in zip(names, comparable)
                              if ok and n in steps}

    def _update_steps(self, steps: list[RunningMetrics], name: str, ref: np.ndarray, got: np.ndarray) -> None:
        """Per outer iteration (the lifted value's leading axis) metrics of a body tensor."""
        while len(steps) < ref.shape[0]:
            steps.append(RunningMetrics(name, name, self.budget))
        for i in range(ref.shape[0]):
            steps[i].update(ref[i], got[i])


def _compare_chunk(reference: Model, candidate: Model, chunk: list[SharedTensor], data: DataSource,
                   budget: Tolerances, optimize: bool) -> list[TensorMetrics | None]:
    """Metrics per tensor of the chunk over all samples (and, for a body tensor, all iterations;
    None: not comparable: shape or dtype differ, or a body that could not be lifted)."""
    return ChunkRun(reference, candidate, chunk, budget, optimize).measure(data).overall
