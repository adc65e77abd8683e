"""The evaluations of the quant error budget (:mod:`graphc.passes.quant.error_budget`): each
quantizes the model with a given set of layers kept in float and scores its outputs against the
float model's, computed once (:mod:`graphc.verify.scores`: output SQNR and top-1 disagreement).

What every evaluation shares (:class:`Job`: the float model's bytes, the feeds, the reference
outputs, the activation ranges calibrated once on the float model, the fixed placement) is built
on the first evaluation that is not cached. Independent evaluations run on the executor in
force (:mod:`graphc.executor`: by default two spawned processes, each given the job once;
or Ray, the job put in its object store once); results come back in the order asked.

Evaluation data. A metric budget (``max-metric-drop``) scores on the evaluation data when the run
has it (``--eval-data``, :attr:`Context.evaluation`; up to ``MAX_EVAL_FEEDS`` samples, all of them
when it has labels), apart from the calibration samples the ranges come from: more samples than
calibration needs, and not the ones the ranges were fitted on. With labels
(:attr:`Context.evaluation_labels`) the metric's truth is the labels, not the float outputs. Each evaluation then also gives the metric drop's upper confidence
bound (``metric-confidence``, :mod:`graphc.verify.metric_bound`), which the budget holds to.

Many evaluation samples. A bound is only as tight as its sample is large (the paired bootstrap's
margin shrinks as ``1 / sqrt(n)``: on PP-OCRv4 rec about 0.3 CER points on 300 lines, 0.16 on
1000), so evaluations must stay affordable on thousands of samples:

- feeds of the same shape run ``EVAL_BATCH`` at a time along the batch axis when the model's
  inputs allow it (:func:`graphc.verify.scores.batched_outputs`; checked against one at a time);
- a metric with per-sample counts (``function.counts``) is counted ``COUNTS_CHUNK`` samples at a
  time as the candidate's outputs come, and only the counts are kept: the score is their pooled
  rate and the bound is computed from them, the same numbers as counting all outputs at once, but
  a worker never holds every candidate output (PP-OCRv4 rec: 1 MB per line). The float model's
  counts are computed once, with its outputs.

Mixed evaluations (the per-layer mix of :mod:`graphc.passes.quant.mix`): a :class:`Mix` names
the static units kept out of the static placement (float or dynamic) and the MatMul/Gemm written
dynamic on top of the static QDQ model (:func:`write_dynamic`: DynamicQuantizeLinear + MatMulInteger,
their outlier channels measured once on the calibration data and held in the job), and with
``tables`` the embedding tables as int8 rows (:mod:`graphc.passes.quant.embedding`). A dynamic
MatMul reads float tensors only (a static neighbour's DequantizeLinear output is float), so the
two forms compose in one graph.

Cache. Every evaluation is stored in a JSON file keyed by the digest of the model bytes, the
feeds and the quant options (other than the budget), under ``$GRAPHC_CACHE_DIR`` or
``~/.cache/graphc`` (``quant-budget/<digest>.json``): a second run with another budget re-uses
the sensitivity sweep and every set already measured.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from graphc.calib.data import open_data
from graphc.errors import PassError
from graphc.executor import current as current_executor
from graphc.ir import load, model_bytes
from graphc.passes.quant.dynamic import DynamicWriter, dynamic_targets
from graphc.passes.quant.embedding import quantize_embeddings
from graphc.passes.quant.outliers import OutlierSplit, measure_outliers
from graphc.passes.quant.quantizer import Quantizer, activation_names
from graphc.passmanager import Context, PassResult

log = logging.getLogger(__name__)

MAX_FEEDS = 32
CACHE_VERSION = 6  # 6: a MatMul's folded bias Add belongs to its unit
#: at most this many evaluation samples (--eval-data) a metric budget scores on
MAX_EVAL_FEEDS = 1000
#: evaluation feeds of the same shape run this many at a time (a dynamic batch axis)
EVAL_BATCH = 32
#: samples a counts metric is counted on at a time (the candidate's outputs held meanwhile)
COUNTS_CHUNK = 64


def cache_dir() -> Path:
    return Path(os.environ.get("GRAPHC_CACHE_DIR") or Path.home() / ".cache" / "graphc")


@dataclass(frozen=True)
class Score:
    """One evaluation: output SQNR (dB), top-1 disagreement (None: no class-score output), mean
    row cosine of the outputs, and the user's metric lost against the float model (None: no metric
    asked for)."""

    sqnr: float
    disagreement: float | None
    cosine: float = 1.0
    metric_drop: float | None = None
    #: upper confidence bound of the metric drop (None: no bound asked for or the metric has no counts)
    metric_bound: float | None = None

    def to_json(self) -> dict:
        return {"sqnr": self.sqnr, "disagreement": self.disagreement, "cosine": self.cosine,
                "metric_drop": self.metric_drop, "metric_bound": self.metric_bound}


class EvaluationCache:
    """``{sorted float layers: Score}`` in a JSON file, written after each batch of evaluations."""

    def __init__(self, key: str):
        self.path = cache_dir() / "quant-budget" / f"{key}.json"
        self.values: dict[str, Score] = {}
        self.hits = 0
        try:
            stored = json.loads(self.path.read_text())
            if stored.get("version") == CACHE_VERSION:
                self.values = {k: Score(float(v["sqnr"]), v["disagreement"], float(v["cosine"]),
                                        v.get("metric_drop"), v.get("metric_bound"))
                               for k, v in stored["evaluations"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self.values = {}

    @staticmethod
    def key_of(float_layers, dynamic=()) -> str:
        """The float set's names; with dynamic layers, ``"\\0dynamic\\0"`` and their names after."""
        key = "\n".join(sorted(float_layers))
        return key + "\0dynamic\0" + "\n".join(sorted(dynamic)) if dynamic else key

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"version": CACHE_VERSION,
                       "evaluations": {k: v.to_json() for k, v in self.values.items()}}, f)
        os.replace(tmp, self.path)


@dataclass
class Job:
    """What every evaluation shares: the float model, feeds, the float outputs, the ranges."""

    model_bytes: bytes
    feeds: list[dict]
    references: list[list[np.ndarray]]
    ranges: dict
    options: object
    positions: frozenset[int] | None  # nodes the speed model puts on integers (None: placement=all)
    metric: Any = None                # the user's metric (UserMetric), when the budget bounds it
    output_names: tuple[str, ...] = ()
    metric_reference: float | None = None  # the float model's own score (its outputs as the truth)
    confidence: float = 0.0  # of the metric drop's upper bound (0: the point estimate only)
    calibration_feeds: list[dict] | None = None  # when the budget scores on evaluation data
    labels: Any = None  # of the evaluation data: the metric's truth (None: the float outputs)
    #: the per-layer mix: options of the dynamic rewrite and the outliers of its inputs (measured once)
    dynamic_options: Any = None
    outliers: dict = field(default_factory=dict)
    batch: int = 1  # feeds run at a time where the model allows (graphc.verify.scores.batched_outputs)
    reference_counts: Any = None  # the float model's per-sample counts, when the metric is counted in chunks
    chunk: int = COUNTS_CHUNK  # samples counted at a time

    @property
    def counts_in_chunks(self) -> bool:
        """Whether the metric is counted chunk by chunk (it has per-sample counts, and the labels,
        if any, are one per feed, so a chunk of feeds has its chunk of labels)."""
        return (self.metric is not None and self.metric.has_counts
                and (self.labels is None or len(self.labels) == len(self.feeds)))

    def chunk_counts(self, start: int, outputs: list[list[np.ndarray]]) -> tuple:
        """Per-sample counts of ``outputs``, the outputs of feeds ``start, start + 1, ...``."""
        named = lambda lists: [dict(zip(self.output_names, o)) for o in lists]  # noqa: E731
        end = start + len(outputs)
        labels = None if self.labels is None else self.labels[start:end]
        return self.metric.counts(named(self.references[start:end]), named(outputs), labels)

    def counts_drop(self, counts: tuple) -> tuple[float, float | None]:
        """The metric drop and its upper bound from the candidate's per-sample counts."""
        from graphc.verify.user_metric import counts_drop_bound, counts_rate  # lazy: loads onnxruntime

        drop = counts_rate(counts) - counts_rate(self.reference_counts)  # a counts metric's score is its rate
        bound = None
        if self.confidence > 0:
            bound = counts_drop_bound(counts, self.reference_counts, self.confidence, self.labels is not None)
        return drop, bound

    def metric_drop(self, outputs: list[list[np.ndarray]] | None) -> tuple[float | None, float | None]:
        """What the candidate's ``outputs`` lose in the user's metric (positive is worse), and the
        upper confidence bound of that loss (:mod:`graphc.verify.metric_bound`; None: not asked)."""
        if self.metric is None or outputs is None:
            return None, None
        named = lambda lists: [dict(zip(self.output_names, o)) for o in lists]  # noqa: E731
        gap = self.metric_reference - self.metric.score(named(self.references), named(outputs), self.labels)
        bound = None
        if self.confidence > 0:
            bound = self.metric.drop_upper_bound(named(self.references), named(outputs), self.confidence,
                                                 self.labels)
        return (gap if self.metric.higher_is_better else -gap), bound

    def allowed(self, graph, float_layers) -> frozenset[int] | None:
        return allowed_positions(self.positions, graph, float_layers)


def allowed_positions(positions: frozenset[int] | None, graph, float_layers) -> frozenset[int] | None:
    """The fixed placement minus the layers kept float: every evaluation and the final run
    quantize exactly these nodes, so what was measured is what is written (None: placement=all)."""
    if positions is None:
        return None
    names = set(float_layers)
    return frozenset(i for i in positions if graph.nodes[i].name not in names)


@dataclass(frozen=True)
class Mix:
    """One assignment of the per-layer mix: op names kept out of the static placement (float, or
    dynamic below) and the MatMul/Gemm names written dynamic."""

    float_ops: tuple[str, ...]
    dynamic: tuple[str, ...] = ()
    tables: bool = False  #: embedding tables (Gather of a constant) as int8 rows

    def key(self) -> str:
        return EvaluationCache.key_of(self.float_ops, self.dynamic) + ("\0tables" if self.tables else "")


def write_dynamic(graph, options, names, outliers: dict, result: PassResult) -> int:
    """Writes the MatMul/Gemm named ``names`` in the dynamic form (:mod:`graphc.passes.quant.dynamic`,
    ``options`` its options), with the ``outliers`` of their inputs; returns how many."""
    wanted = set(names)
    targets = [t for t in dynamic_targets(graph, options, {}, PassResult(modified=False))
               if t.node.name in wanted]
    writer = DynamicWriter(graph, options.per_channel)
    split = OutlierSplit(graph, outliers)
    for target in targets:
        result.count(f"quantized_{target.node.op}")
        split.apply(target, writer.rewrite)
    if writer.quantized:
        result.count("dynamic_quantize_linear", len(writer.quantized))
    return len(targets)


def evaluate(job: Job, item: tuple[str, ...] | Mix) -> Score:
    """The score of the model quantized with ``job.options``: ``item`` the op names kept float,
    or a :class:`Mix` (static, with its dynamic layers written dynamic after)."""
    from graphc.verify.scores import score_outputs  # lazy: loads onnxruntime

    mix = item if isinstance(item, Mix) else Mix(tuple(item))
    model = load(job.model_bytes)
    ctx = Context(model, data=open_data(job.calibration_feeds or job.feeds, model))
    Quantizer(job.options).keeping_float(mix.float_ops).quantize(
        model.graph, ctx, PassResult(modified=False), known_ranges=job.ranges,
        positions=job.allowed(model.graph, mix.float_ops))
    if mix.dynamic:
        write_dynamic(model.graph, job.dynamic_options, mix.dynamic, job.outliers, PassResult(modified=False))
    if mix.tables:
        quantize_embeddings(model.graph, job.options.exclude, PassResult(modified=False))
    model.graph.cleanup().toposort()
    if job.counts_in_chunks:
        counter = ChunkCounter(job)
        score = score_outputs(ctx.model, job.feeds, job.references, label="quantized model (budget)",
                              keep=counter, batch=job.batch)
        return Score(score.sqnr, score.disagreement, score.cosine, *job.counts_drop(counter.finish()))
    outputs: list | None = [] if job.metric is not None else None
    score = score_outputs(ctx.model, job.feeds, job.references, label="quantized model (budget)", keep=outputs,
                          batch=job.batch)
    return Score(score.sqnr, score.disagreement, score.cosine, *job.metric_drop(outputs))


class ChunkCounter:
    """Takes the candidate's outputs feed by feed (``score_outputs``'s ``keep``) and counts the
    metric every ``COUNTS_CHUNK`` feeds, keeping only the per-sample counts."""

    def __init__(self, job: Job):
        self.job, self.chunk = job, job.chunk
        self.pending: list[list[np.ndarray]] = []
        self.done = 0
        self.parts: list[tuple] = []

    def append(self, outputs: list[np.ndarray]) -> None:
        self.pending.append(outputs)
        if len(self.pending) >= self.chunk:
            self._count()

    def _count(self) -> None:
        if self.pending:
            self.parts.append(self.job.chunk_counts(self.done, self.pending))
            self.done += len(self.pending)
            self.pending = []

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        self._count()
        if self.done != len(self.job.feeds):
            raise PassError(f"quant budget: {self.done} candidate outputs for {len(self.job.feeds)} feeds")
        return tuple(np.concatenate([p[i] for p in self.parts]) for i in range(2))


class Budget:
    """Runs the evaluations (cached, in parallel where independent) for one quant pass run."""

    def __init__(self, quantizer: Quantizer, ctx: Context):
        self.options = quantizer.options
        self.model_bytes = model_bytes(ctx.model)
        self.calibration_feeds = [dict(f) for _, f in zip(range(self.options.samples or MAX_FEEDS), ctx.data)]
        self.metric = ctx.metric if getattr(self.options, "max_metric_drop", None) is not None else None
        #: what the evaluations score on: a metric budget uses the evaluation data when given
        #: (held apart from calibration, and as many samples as given, for a tighter bound)
        self.feeds = self.calibration_feeds
        self.labels = None
        if self.metric is not None and ctx.evaluation is not None:
            self.labels = ctx.evaluation_labels  # all of the evaluation data then: labels match it
            limit = None if self.labels is not None else MAX_EVAL_FEEDS
            self.feeds = [dict(f) for f in itertools.islice(ctx.evaluation, limit)]
        self.cache = EvaluationCache(self._digest())
        self.runs = 0
        self._job: Job | None = None
        self._ctx = ctx
        self._plan_ctx: Context | None = None
        self.units: dict[str, tuple[str, ...]] = {}  # candidate -> its ops; solo plans calibrated up front
        #: the per-layer mix: the dynamic rewrite's options and the MatMul/Gemm it may take
        self.dynamic_options = None
        self.dynamic: tuple[str, ...] = ()

    def job(self) -> Job:
        """Float outputs and ranges, computed the first time an evaluation is not cached."""
        if self._job is None:
            from graphc.verify.scores import reference_outputs  # lazy: loads onnxruntime

            references = reference_outputs(self._ctx.model, self.feeds, label="float model (budget)",
                                           batch=EVAL_BATCH)
            model = load(self.model_bytes)  # what the workers load: the same node order
            if [n.op for n in model.graph.nodes] != [n.op for n in self._ctx.graph.nodes]:
                raise PassError("quant budget: the model's nodes moved when serialized", node=None)
            plan_ctx = Context(model, data=open_data(self.calibration_feeds, model))
            quant = Quantizer(self.options).without_budget()
            positions = quant.speed_positions(plan_ctx.graph, plan_ctx)
            names = activation_names(quant.plan(plan_ctx.graph, plan_ctx, PassResult(modified=False), positions))
            for unit in self.units:  # the sweep's plans: a float layer moves some Q nodes
                others = self.expand(x for x in self.units if x != unit)
                names += activation_names(quant.keeping_float(others).plan(
                    plan_ctx.graph, plan_ctx, PassResult(modified=False),
                    allowed_positions(positions, plan_ctx.graph, others)))
            ranges = quant.calibrate(plan_ctx, list(dict.fromkeys(names)))
            self._job = Job(self.model_bytes, self.feeds, references, ranges, self.options, positions,
                            *self._metric_fields(references), confidence=self._confidence(),
                            calibration_feeds=self.calibration_feeds if self.feeds is not self.calibration_feeds
                            else None, labels=self.labels, dynamic_options=self.dynamic_options,
                            outliers=self._outliers(plan_ctx), batch=EVAL_BATCH, chunk=COUNTS_CHUNK)
            if self._job.counts_in_chunks:
                job = self._job
                parts = [job.chunk_counts(i, references[i:i + job.chunk])
                         for i in range(0, len(references), job.chunk)]
                job.reference_counts = tuple(np.concatenate([p[i] for p in parts]) for i in range(2))
            self._plan_ctx = plan_ctx
        return self._job

    def _outliers(self, plan_ctx: Context) -> dict:
        """The outlier channels of the dynamic layers' inputs, measured once on the calibration data."""
        if not self.dynamic:
            return {}
        wanted = set(self.dynamic)
        targets = [t for t in dynamic_targets(plan_ctx.graph, self.dynamic_options, {}, PassResult(modified=False))
                   if t.node.name in wanted]
        return measure_outliers(plan_ctx, targets, self.options.samples, self.dynamic_options.outlier_channels,
                                PassResult(modified=False))

    def speed_trim(self, float_units) -> list[str]:
        """Integer ops the speed model would rather run float once ``float_units`` are float (an
        int8 island between float layers pays two conversions for one integer kernel): the
        fixed placement minus the float set, cut again by the speed model."""
        job = self.job()
        graph, ctx = self._plan_ctx.graph, self._plan_ctx
        ops = self.expand(float_units)
        allowed = job.allowed(graph, ops)
        if allowed is None:  # placement=all: no speed model
            return []
        quant = Quantizer(self.options).keeping_float(ops)
        dropped = sorted(allowed - quant.speed_positions(graph, ctx))
        names = [graph.nodes[i].name for i in dropped]
        return [] if not all(names) else names

    def _metric_fields(self, references: list[list[np.ndarray]]) -> tuple:
        """The metric, output names and the float model's own score, when the budget bounds a metric."""
        if self.metric is None:
            return ()
        names = tuple(t.name for t in self._ctx.model.graph.outputs)
        named = [dict(zip(names, o)) for o in references]
        return self.metric, names, self.metric.score(named, named, self.labels)

    def _confidence(self) -> float:
        return float(getattr(self.options, "metric_confidence", 0.0) or 0.0) if self.metric is not None else 0.0

    def _digest(self) -> str:
        h = hashlib.sha256(self.model_bytes)
        if self.metric is not None:  # scores measured with another metric are not these
            h.update(repr((self.metric.spec, self.metric.args)).encode())
        if self.labels is not None:
            h.update(repr(np.asarray(self.labels).tolist()).encode())
        for feed in self.feeds + ([] if self.feeds is self.calibration_feeds else self.calibration_feeds):
            for name in sorted(feed):
                h.update(name.encode())
                h.update(np.ascontiguousarray(feed[name]).tobytes())
        h.update(repr(Quantizer(self.options).without_budget().options).encode())
        return h.hexdigest()[:32]

    def expand(self, units) -> tuple[str, ...]:
        """The op names of candidate ``units``."""
        return tuple(op for unit in units for op in self.units.get(unit, (unit,)))

    def score(self, float_sets: list[tuple[str, ...]], desc: str = "") -> list[Score]:
        """Scores of the float sets (of candidate names), cached by those names."""
        todo = [s for s in dict.fromkeys(map(tuple, float_sets))
                if EvaluationCache.key_of(s) not in self.cache.values]
        self.cache.hits += len(set(map(tuple, float_sets))) - len(todo)
        if todo:
            scores = current_executor().map(evaluate, self.job(), [self.expand(s) for s in todo],
                                  desc=desc, unit="layer")
            for s, score in zip(todo, scores):
                self.cache.values[EvaluationCache.key_of(s)] = score
        self.runs += len(todo)
        if todo:
            self.cache.save()
        return [self.cache.values[EvaluationCache.key_of(s)] for s in float_sets]

    def score_mix(self, mixes: list[Mix], desc: str = "") -> list[Score]:
        """Scores of per-layer mixes (``float_ops`` as candidate names), cached by their names."""
        todo = list({m.key(): m for m in mixes if m.key() not in self.cache.values}.values())
        self.cache.hits += len({m.key() for m in mixes}) - len(todo)
        if todo:
            items = [Mix(self.expand(m.float_ops), m.dynamic, m.tables) for m in todo]
            for m, score in zip(todo, current_executor().map(evaluate, self.job(), items, desc=desc, unit="layer")):
                self.cache.values[m.key()] = score
            self.runs += len(todo)
            self.cache.save()
        return [self.cache.values[m.key()] for m in mixes]
