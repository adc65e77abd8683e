"""PassManager: runs a pipeline over a model with checks and instrumentation.

After every pass: the graph is topologically sorted and structurally checked (a pass that breaks
it raises :class:`StructureError` naming the pass and the ones before it); cached analyses are
invalidated unless preserved; wall time and the process's peak RSS during the pass are recorded,
and the run's :attr:`RunReport.peak_rss_bytes` is the process's peak from its start to the end of
the run (loading the model and every pass: per-pass resets do not hide it, see
:mod:`graphc.passmanager.memory`).
With ``verify_each`` the :class:`~graphc.passmanager.verify_each.VerifyEach` instrument runs the
model before and after each pass in onnxruntime on the same inputs; an exact pass outside
tolerance raises :class:`VerificationError`, a lossy one records its error.
The canonical pipeline text is written into the model's metadata (``graphc.pipeline``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from graphc.errors import DataError, GraphcError, PassError, PassTimeoutError, StructureError
from graphc.ir.collector import collector_paused
from graphc.ir.model import Model
from graphc.ir.stats import all_nodes
from graphc.ir.structure import check_structure
from graphc.passmanager.base import Pass, PassResult
from graphc.passmanager.context import Context
from graphc.passmanager.deadline import Deadline, DeadlineReached
from graphc.passmanager.memory import PeakRss, process_peak_rss
from graphc.passmanager.pipeline import Pipeline, expand_preparation, parse_pipeline, pipeline_from_passes
from graphc.version import __version__

log = logging.getLogger(__name__)


@dataclass
class PassRecord:
    """What one pass did, as reports show it."""

    name: str
    text: str
    modified: bool
    wall_s: float
    peak_rss_bytes: int | None
    nodes_before: int
    nodes_after: int
    stats: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    details: list[dict[str, Any]] = field(default_factory=list)
    verify: Any = None  # graphc.verify report when verify_each is on


@dataclass
class RunReport:
    pipeline: str
    records: list[PassRecord]
    #: the process's peak RSS from its start to the end of the run (load and every pass included)
    peak_rss_bytes: int | None = None
    #: what the manager decided on its own (passes inserted for another's preparation, shapes
    #: assumed for dynamic inputs)
    notes: list[str] = field(default_factory=list)

    @property
    def modified(self) -> bool:
        return any(r.modified for r in self.records)

    @property
    def wall_s(self) -> float:
        return sum(r.wall_s for r in self.records)


class Instrument:
    """Hooks around each pass; subclass and pass instances to :class:`PassManager`."""

    #: True: the pass manager keeps a copy of the model before the pipeline (``ctx.original``).
    keeps_original = False

    def before_pass(self, step: Pass, ctx: Context) -> None:
        pass

    def after_pass(self, step: Pass, ctx: Context, record: PassRecord) -> None:
        pass


class PassManager:
    """``PassManager("fold-bn,cleanup").run(model)`` - the same behaviour as ``graphc opt``."""

    def __init__(
        self,
        pipeline: str | Pipeline | Iterable[Pass],
        *,
        data: Any = None,
        input_shapes: dict[str, tuple[int, ...]] | None = None,
        verify_each: bool = False,
        tolerances: Any = None,
        instruments: Iterable[Instrument] = (),
        seed: int = 0,
        verify_data: Any = None,
        prepare: bool = True,
        max_seconds: float | None = None,
        metric: Any = None,
        evaluation: Any = None,
        evaluation_labels: Any = None,
    ):
        if isinstance(pipeline, str):
            pipeline = parse_pipeline(pipeline)
        elif not isinstance(pipeline, Pipeline):
            pipeline = pipeline_from_passes(list(pipeline))
        #: ``prepare=False`` runs the pipeline exactly as written (a pass tested on its own)
        self.pipeline = expand_preparation(pipeline) if prepare else pipeline
        for note in self.pipeline.notes:
            log.info("%s", note)
        self.data = data
        self.input_shapes = input_shapes
        self.instruments = list(instruments)
        self.seed = seed
        self.metric = metric  # the user's task metric, for budgets (Context.metric)
        self.evaluation = evaluation  # evaluation data apart from calibration (Context.evaluation)
        self.evaluation_labels = evaluation_labels  # its labels, for a metric budget
        #: wall-clock limit of each pass (its post-pass check included); None: no limit
        if max_seconds is not None and not max_seconds > 0:
            raise ValueError(f"max_seconds must be positive, not {max_seconds}")
        self.max_seconds = max_seconds
        if verify_each:  # first, so that the other instruments see each record's verify report
            # lazy: the instrument loads onnxruntime, which runs without verify-each never need
            from graphc.passmanager.verify_each import VerifyEach

            self.instruments.insert(0, VerifyEach(tolerances, verify_data, seed))

    def run(self, model: Model) -> RunReport:
        """Run every pass on ``model`` in place; returns the per-pass records."""
        steps = [(spec, spec.instantiate()) for spec in self.pipeline.steps]
        if self.data is None:  # a pass that can do without the data substitutes itself
            steps = [(spec, _without_data(step)) for spec, step in steps]
        needing = [spec.name for spec, step in steps if step.requires_data()]
        if needing and self.data is None:
            raise DataError(f"pass '{needing[0]}' needs calibration data (--data)")
        if self.data is not None:  # declarations the run contradicts must not guide the passes
            # lazy: it loads onnxruntime, which a run without data never needs
            from graphc.calib.declared_shapes import repair_declarations_by_run

            repair_declarations_by_run(model, self.data)
        ctx = Context(model, data=self.data, input_shapes=self.input_shapes, seed=self.seed, metric=self.metric,
                      evaluation=self.evaluation, evaluation_labels=self.evaluation_labels)
        keep = any(inst.keeps_original for inst in self.instruments) or any(
            step.requires_data() or step.wants_original() for _, step in steps)
        ctx.original = model.copy() if keep else None
        records = []
        done: list[str] = []
        for spec, step in steps:
            records.append(self._run_one(step, spec.text(), ctx, done))
            done.append(spec.name)
        model.metadata["graphc.pipeline"] = self.pipeline.text()
        model.metadata["graphc.version"] = __version__
        return RunReport(self.pipeline.text(), records, process_peak_rss(), [*self.pipeline.notes, *ctx.notes])

    def _run_one(self, step: Pass, text: str, ctx: Context, done: list[str]) -> PassRecord:
        graph = ctx.graph
        nodes_before = len(all_nodes(graph))  # If/Loop/Scan bodies included
        for inst in self.instruments:
            inst.before_pass(step, ctx)
        after = f" (after {', '.join(done)})" if done else ""
        try:
            with Deadline(self.max_seconds) as deadline:
                result, wall, peak = self._run_pass(step, graph, ctx, after)
                if not isinstance(result, PassResult):
                    raise PassError(f"pass '{step.name}' returned {type(result).__name__}, not PassResult")
                if result.modified:
                    ctx.invalidate(result.preserved)
                with collector_paused():
                    self._check(step, ctx, after)
        except DeadlineReached:
            raise PassTimeoutError(f"pass '{step.name}' exceeded --max-seconds {self.max_seconds:g} "
                                   f"(stopped after {deadline.elapsed:.1f} s){after}",
                                   pass_name=step.name) from None
        record = PassRecord(step.name, text, result.modified, wall, peak, nodes_before,
                            len(all_nodes(ctx.graph)), result.stats, result.skipped, result.details)
        for inst in self.instruments:
            inst.after_pass(step, ctx, record)
        log.info("%s: %s in %.3fs, nodes %d -> %d %s", step.name,
                 "modified" if result.modified else "unchanged", wall, nodes_before,
                 record.nodes_after, result.stats)
        return record

    @staticmethod
    def _run_pass(step: Pass, graph, ctx: Context, after: str) -> tuple[Any, float, int | None]:
        """(result, wall seconds, peak RSS) of ``step.run``; failures become PassError."""
        with PeakRss() as rss, collector_paused():
            start = time.perf_counter()
            try:
                result = step.run(graph, ctx)
            except GraphcError as exc:
                if isinstance(exc, PassError) and exc.pass_name is None:
                    exc.pass_name = step.name
                raise
            except Exception as exc:
                raise PassError(f"pass '{step.name}' failed{after}: {type(exc).__name__}: {exc}",
                                pass_name=step.name) from exc
            wall = time.perf_counter() - start
        return result, wall, rss.peak

    def _check(self, step: Pass, ctx: Context, after: str) -> None:
        try:
            ctx.graph.nodes = check_structure(ctx.graph)  # checked and topologically sorted
        except GraphcError as exc:
            raise StructureError(f"pass '{step.name}' left an invalid graph{after}: {exc}",
                                 pass_name=step.name) from None


def _without_data(step: Pass) -> Pass:
    """``step``, or what it runs instead when it needs data and there is none (:meth:`Pass.without_data`)."""
    if not step.requires_data():
        return step
    substitute = step.without_data()
    return substitute if substitute is not None else step
