"""The build step: run a recipe on a model - the pipeline, then the measurements and gates, then
the result written only if everything passed, then the report. ``graphc opt`` is this function.

    from graphc.build import build
    from graphc.recipe import load_recipe
    outcome = build("model.onnx", load_recipe("deploy.toml"))
    outcome.passed, outcome.written, outcome.report      # report: see graphc.report

Measurements, each only when something asks for it:

- verification (:func:`graphc.verify.compare_models`) when ``verify.enabled`` or an error gate is
  set; when only a report is asked for, the same comparison runs as a measurement (no
  thresholds) and does not decide the result;
- the task metric (:func:`graphc.verify.accuracy.task_accuracy`) when labels are given;
- latency (:func:`graphc.bench.compare_latency`, input as A and result as B, alternated) when
  ``bench.enabled`` or a ``min_speedup`` gate is set;
- per-layer error and activation histograms when a report is written.

Gates (:func:`evaluate_gates`) turn measurements into pass/fail; a gate that cannot be measured
fails. Nothing is written unless verification and every gate passed (``keep_failed`` writes
anyway). A model too large to serialize in memory is saved first into a staging folder beside
the output, measured from that file, and moved into place only when it passed; the staging folder
is removed otherwise, so a failed build leaves no output either way.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import onnx_graphsurgeon as gs

from graphc.errors import DataError, RecipeError
from graphc.executor import executor_from, using
from graphc.ir.model import EXTERNAL_DATA_THRESHOLD, Model, load, model_bytes, require_savable, save
from graphc.ir.output_safety import OutputPlan, ProtectedFiles, check_writable
from graphc.passmanager import PassManager, expand_preparation, parse_pipeline
from graphc.recipe import GateSettings, ImageSettings, Recipe, input_shapes

log = logging.getLogger(__name__)

#: above this many bytes of weights, the result is verified from a file, not from memory.
IN_MEMORY_LIMIT = EXTERNAL_DATA_THRESHOLD


@dataclass
class BuildOutcome:
    report: dict[str, Any]
    model: Model

    @property
    def passed(self) -> bool | None:
        """True/False when something was checked, None when nothing was (no verify, no gate)."""
        return self.report["passed"]

    @property
    def written(self) -> bool:
        return self.report["output_written"]


@dataclass
class _Inputs:
    """What a build reads, opened and checked before any pass runs."""

    source: Path
    out: Path
    model: Model
    before: dict[str, Any]
    shapes: dict[str, tuple[int, ...]] | None
    calibration: Any         # DataSource or None
    evaluation: Any          # all of the user's evaluation data (a DataSource), or None
    labels: Any              # numpy array or None
    specs: list[Any]         # the input model's inputs, for random feeds
    samples: int
    seed: int
    #: what verification runs as the input model: the file, or (bytes) the model as loaded when
    #: the data's run reopened literal 0 input dims onnxruntime would refuse the data against
    runnable_source: Any = None
    metric: Any = None          # the user's metric (graphc.verify.user_metric.UserMetric) or None
    metric_labels: Any = None   # the labels as stored (any dtype), for the metric

    @property
    def reference_source(self) -> Any:
        return self.runnable_source if self.runnable_source is not None else self.source

    def feeds(self) -> Any:
        """Evaluation feeds: the first ``samples`` of the data, or seeded random ones (as
        :func:`graphc.verify.evaluation_data` makes them)."""
        # lazy: reports, verification and benchmarks load matplotlib/onnxruntime only when used
        from graphc.calib.data import RandomSource

        if self.evaluation is not None:
            return self.evaluation.take(self.samples)
        return RandomSource(self.specs, n=self.samples, seed=self.seed, input_shapes=self.shapes)


@dataclass
class Measurements:
    verification: Any = None
    accuracy: Any = None
    metric: Any = None
    latency: Any = None
    layers: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    histograms: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def build(source: str | os.PathLike, recipe: Recipe, *, instruments: tuple = ()) -> BuildOutcome:
    """Run ``recipe`` on the model at ``source``; see the module docstring."""
    # lazy: reports, verification and benchmarks load matplotlib/onnxruntime only when used
    from graphc.report import model_summary

    inputs = _open_inputs(Path(source), recipe)
    snapshots = _snapshots(recipe, inputs)
    with using(executor_from(recipe.executor)):  # where the passes' searches run
        run = _run_pipeline(recipe, inputs, [*instruments, *([snapshots] if snapshots else [])])
    output = _PendingOutput(inputs.model, inputs.out)
    try:
        measured = _measure(recipe, inputs, output.candidate(), run, snapshots)
        gates = evaluate_gates(recipe.gates, measured)
        passed = _verdict(recipe, inputs, measured, gates)
        written = passed is not False or recipe.outputs.keep_failed
        if written:
            output.commit()
    finally:
        output.discard()
    after = model_summary(inputs.model, path=inputs.out if written else None, input_shapes=inputs.shapes)
    report = _report(recipe, inputs, run, after, measured, gates, written, passed)
    if recipe.outputs.report:
        # lazy: reports, verification and benchmarks load matplotlib/onnxruntime only when used
        from graphc.report import write_report

        write_report(report, recipe.outputs.report)
    return BuildOutcome(report, inputs.model)


# -- before the pipeline --------------------------------------------------------------------------

def check_outputs(source: Path, model_path: str | None, report_path: str | None,
                  also_read: Iterable[tuple[str | os.PathLike, str]] = ()) -> Path:
    """The output path, after refusing what cannot be written and what would write over, or
    remove, the input model, its external data, ``also_read`` (``(path, what)``) or another
    output (:mod:`graphc.ir.output_safety`)."""
    # lazy: reports, verification and benchmarks load matplotlib/onnxruntime only when used
    from graphc.report import plot_folder, report_format

    if not model_path:
        raise RecipeError("no output model: give -o OUT or outputs.model in the recipe")
    plan = OutputPlan(ProtectedFiles.of_model_file(source, others=also_read))
    out = Path(model_path)
    plan.add_model(check_writable(out))
    if report_path is not None:
        report = Path(report_path)
        markdown = report_format(report) == "markdown"
        plan.add(check_writable(report), "the report")
        if markdown:
            plan.add_folder(plot_folder(report), "the report's plots")
    return out


def data_files(recipe: Recipe) -> list[tuple[str, str]]:
    """The data files a build reads (``(path, what)``): outputs must leave them alone."""
    d = recipe.data
    found = [(d.calibration, "the calibration data"), (d.evaluation, "the evaluation data")]
    if d.labels:
        head = d.labels.rpartition(":")[0]
        found.append((d.labels if Path(d.labels).exists() or not head else head, "the labels"))
    return [(path, what) for path, what in found if path and Path(path).is_file()]


def _open_inputs(source: Path, recipe: Recipe) -> _Inputs:
    # lazy: reports, verification and benchmarks load matplotlib/onnxruntime only when used
    from graphc.calib.data import input_specs, open_data
    from graphc.report import model_summary
    from graphc.verify.accuracy import has_labels

    if recipe.pipeline is None:
        raise RecipeError("no pipeline: give -p PIPELINE or 'pipeline' in the recipe")
    pipeline = parse_pipeline(recipe.pipeline)  # fail before any work
    if recipe.verify.localize and not (recipe.verify.enabled or recipe.gates_given):
        raise RecipeError("--localize needs --verify (or a gate)")
    g = recipe.gates
    lossy = [step.name for step in pipeline.steps if not step.instantiate().exact]
    if recipe.verify.enabled and lossy and all(v is None for v in (g.min_sqnr, g.min_cosine, g.min_top1)):
        # exact tolerances would fail any lossy rewrite; say what to give instead of failing late
        raise RecipeError(f"--verify after lossy passes ({', '.join(dict.fromkeys(lossy))}) needs a threshold: "
                          "--min-sqnr, --min-cosine or --min-top1")
    out = check_outputs(source, recipe.outputs.model, recipe.outputs.report, data_files(recipe))
    shapes = input_shapes(recipe)
    model = load(source)
    require_savable(model)
    images = image_options(recipe.image)
    data = recipe.data
    calibration = open_data(data.calibration, model, image_options=images) if data.calibration else None
    eval_spec = data.evaluation or data.calibration
    evaluation = open_data(eval_spec, model, image_options=images) if eval_spec else None
    labels = data.labels or (eval_spec if eval_spec and has_labels(eval_spec) else None)
    metric, raw_labels, class_labels = _metric_and_labels(recipe, labels)
    runnable = _repair_by_run(model, calibration)
    before = model_summary(model, path=source, input_shapes=shapes)
    return _Inputs(source, out, model, before, shapes, calibration, evaluation, class_labels,
                   input_specs(model), data.samples, data.seed, runnable, metric, raw_labels)


def _metric_and_labels(recipe: Recipe, labels: str | None) -> tuple[Any, Any, Any]:
    """The user's metric (loaded before any work), the labels as stored for it, and the class
    labels of the accuracy (None when a metric's labels are not integer classes)."""
    # lazy: reports, verification and benchmarks load matplotlib/onnxruntime only when used
    from graphc.verify.accuracy import load_labels
    from graphc.verify.user_metric import load_metric

    g = recipe.gates
    spec = recipe.metric.function
    if spec is None:
        if g.min_metric is not None or g.max_metric_drop is not None:
            raise RecipeError("--min-metric and --max-metric-drop need --metric MODULE:FUNCTION")
        return None, None, load_labels(labels) if labels else None
    metric = load_metric(spec, recipe.metric.args)
    raw = load_labels(labels, integers=False) if labels else None
    classes = raw.reshape(-1).astype(np.int64) if raw is not None and np.issubdtype(raw.dtype, np.integer) else None
    return metric, raw, classes


def _repair_by_run(model: Model, calibration: Any) -> bytes | None:
    """Correct the declarations the data's first run contradicts (as the PassManager would, but
    before anything else runs the model); the repaired model's bytes when an input was reopened
    (the file itself then refuses the data in onnxruntime)."""
    if calibration is None:
        return None
    # lazy: reports, verification and benchmarks load matplotlib/onnxruntime only when used
    from graphc.calib.declared_shapes import repair_declarations_by_run

    repairs = repair_declarations_by_run(model, calibration)
    return model_bytes(model) if repairs.opened_inputs else None


def image_options(settings: ImageSettings) -> Any:
    """``graphc.calib.images.ImageOptions`` from the recipe's [image] section (None if empty)."""
    given = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
             if getattr(settings, f.name) not in (None, ())}
    if not given:
        return None
    # lazy: reports, verification and benchmarks load matplotlib/onnxruntime only when used
    from graphc.calib.images import ImageOptions

    if "size" in given:
        given["size"] = ImageOptions.parse_size(given["size"])
    return ImageOptions(**given)


def _snapshots(recipe: Recipe, inputs: _Inputs) -> Any:
    if not recipe.outputs.report or inputs.calibration is None:
        return None
    if not any(step.instantiate().requires_data() for step in parse_pipeline(recipe.pipeline).steps):
        return None
    # lazy: reports, verification and benchmarks load matplotlib/onnxruntime only when used
    from graphc.report.histograms import CalibrationSnapshots

    return CalibrationSnapshots()


def _reference(inputs: _Inputs) -> Model:
    """The input model, read again (the one in memory has been rewritten)."""
    return load(inputs.reference_source)


def _run_pipeline(recipe: Recipe, inputs: _Inputs, instruments: list[Any]) -> Any:
    verify_data = inputs.feeds() if recipe.verify.each else None
    return PassManager(recipe.pipeline, data=inputs.calibration, verify_each=recipe.verify.each,
                       tolerances=tolerances(recipe), input_shapes=inputs.shapes, seed=recipe.data.seed,
                       verify_data=verify_data, instruments=instruments,
                       max_seconds=recipe.limits.max_seconds, metric=inputs.metric,
                       evaluation=inputs.evaluation if recipe.data.evaluation else None,
                       evaluation_labels=inputs.metric_labels if recipe.data.evaluation else None).run(inputs.model)


def tolerances(recipe: Recipe) -> Any:
    # lazy: reports, verification and benchmarks load matplotlib/onnxruntime only when used
    from graphc.verify import Tolerances

    g = recipe.gates
    return Tolerances.from_options(rtol=recipe.verify.rtol, atol=recipe.verify.atol, min_sqnr=g.min_sqnr,
                                   min_cosine=g.min_cosine, min_top1=g.min_top1)


# -- measurements ---------------------------------------------------------------------------------

def _checks_outputs(recipe: Recipe, labels: Any) -> bool:
    g = recipe.gates
    return recipe.verify.enabled or any(v is not None for v in (g.min_sqnr, g.min_cosine, g.min_top1)) \
        or (g.max_top1_drop is not None and labels is None)


def _lossy_change(recipe: Recipe, run: Any) -> bool:
    steps = expand_preparation(parse_pipeline(recipe.pipeline)).steps
    # per instance: a pass may be exact under some options only (equalize{absorb-bias=data})
    return any(record.modified and not step.instantiate().exact for step, record in zip(steps, run.records))


def _measure(recipe: Recipe, inputs: _Inputs, candidate: Any, run: Any, snapshots: Any) -> Measurements:
    m = Measurements()
    if _checks_outputs(recipe, inputs.labels):
        m.verification = _verify(recipe, inputs, candidate, True)
    elif recipe.outputs.report or _lossy_change(recipe, run):
        m.verification = _unasked(_verify, recipe, inputs, candidate, False)
    if inputs.labels is not None:
        # lazy: reports, verification and benchmarks load matplotlib/onnxruntime only when used
        from graphc.verify.accuracy import task_accuracy

        if inputs.evaluation is None:
            raise DataError("labels need evaluation data (--eval-data or --data) in the same order")
        m.accuracy = task_accuracy(inputs.reference_source, candidate, inputs.evaluation, inputs.labels)
    if inputs.metric is not None:
        m.metric = _task_metric(inputs, candidate)
    if recipe.bench.enabled or recipe.gates.min_speedup is not None:
        m.latency = _latency(recipe, inputs, candidate)
    if recipe.outputs.report:
        m.layers = _layers(recipe, inputs, candidate, run)
        if snapshots is not None and inputs.calibration is not None:
            # lazy: reports, verification and benchmarks load matplotlib/onnxruntime only when used
            from graphc.report import pass_record
            from graphc.report.histograms import activation_histograms

            m.histograms = activation_histograms(snapshots, [pass_record(r) for r in run.records],
                                                 inputs.calibration, chosen=recipe.outputs.histograms)
    return m


def _verdict(recipe: Recipe, inputs: _Inputs, m: Measurements, gates: list[dict[str, Any]]) -> bool | None:
    """True/False from verification (when it checks, not just measures) and the gates; None when
    neither checked anything."""
    checked = _checks_outputs(recipe, inputs.labels) and m.verification is not None
    if not checked and not gates:
        return None
    return (not checked or m.verification.passed) and all(g["passed"] for g in gates)


def _unasked(measure: Any, *args: Any) -> Any:
    """A measurement nobody asked for (the report's, or the error of a lossy pass): skipped with a
    warning when the data for it is missing (a dynamic input and no --input-shape)."""
    try:
        return measure(*args)
    except DataError as exc:
        log.warning("error against the input model not measured: %s", exc)
        return None


def _verify(recipe: Recipe, inputs: _Inputs, candidate: Any, checked: bool) -> Any:
    # lazy: reports, verification and benchmarks load matplotlib/onnxruntime only when used
    from graphc.verify import Tolerances, compare_models

    tol = tolerances(recipe) if checked else Tolerances(exact=False)
    return compare_models(inputs.reference_source, candidate, data=inputs.evaluation, tolerances=tol,
                          input_shapes=inputs.shapes, seed=recipe.data.seed, samples=recipe.data.samples,
                          localize=recipe.verify.localize and checked)


def _task_metric(inputs: _Inputs, candidate: Any) -> Any:
    # lazy: reports, verification and benchmarks load matplotlib/onnxruntime only when used
    from graphc.verify.user_metric import measure_metric

    if inputs.evaluation is None:
        raise DataError("--metric needs evaluation data (--eval-data or --data)")
    return measure_metric(inputs.metric, inputs.reference_source, candidate, inputs.evaluation,
                          inputs.metric_labels)


def _latency(recipe: Recipe, inputs: _Inputs, candidate: Any) -> Any:
    # lazy: reports, verification and benchmarks load matplotlib/onnxruntime only when used
    from graphc.bench import bench_feeds, compare_latency

    feeds = bench_feeds(inputs.reference_source, inputs.evaluation, input_shapes=inputs.shapes, seed=recipe.data.seed)
    b = recipe.bench
    return compare_latency(inputs.reference_source, candidate, feeds, threads=b.threads, warmup=b.warmup, rounds=b.rounds)


def _layers(recipe: Recipe, inputs: _Inputs, candidate: Any, run: Any) -> list[dict[str, Any]]:
    # lazy: reports, verification and benchmarks load matplotlib/onnxruntime only when used
    from graphc.report import pass_record
    from graphc.report.layers import layer_table
    from graphc.verify.layers import layer_errors

    reference = _reference(inputs)
    errors = {}
    if recipe.outputs.layer_errors and run.modified:
        if isinstance(candidate, Model):
            def measure() -> dict[str, Any]:
                return layer_errors(reference, candidate, inputs.feeds(), input_shapes=inputs.shapes)

            errors = {name: metrics.to_dict() for name, metrics in (_unasked(measure) or {}).items()}
        else:
            log.info("per-layer error skipped: the model is too large to run from memory")
    return layer_table(reference, inputs.model, [pass_record(r) for r in run.records], errors)


# -- gates ----------------------------------------------------------------------------------------

def _gate(name: str, label: str, threshold: float, value: float | None, passed: bool, unit: str,
          detail: str) -> dict[str, Any]:
    return {"name": name, "label": label, "threshold": threshold, "value": value, "unit": unit,
            "passed": bool(passed), "detail": detail}


def evaluate_gates(gates: GateSettings, m: Measurements) -> list[dict[str, Any]]:
    """One entry per gate set: ``{name, label, threshold, value, unit, passed, detail}``."""
    out = []
    outputs = m.verification.outputs if m.verification is not None else []
    for name, label, unit, attr in (("min_sqnr", "min SQNR", "dB", "sqnr_db"),
                                    ("min_cosine", "min cosine", "cosine", "cosine"),
                                    ("min_top1", "min top-1 agreement", "fraction", "top1")):
        threshold = getattr(gates, name)
        if threshold is not None:
            out.append(_worst_output_gate(name, label, unit, attr, threshold, outputs))
    if gates.max_top1_drop is not None:
        out.append(_top1_drop_gate(gates.max_top1_drop, m, outputs))
    out += _metric_gates(gates, m.metric)
    if gates.min_speedup is not None:
        ratio = m.latency.ratio if m.latency is not None else None
        out.append(_gate("min_speedup", "min speedup", gates.min_speedup, ratio,
                         ratio is not None and ratio >= gates.min_speedup, "x",
                         "median latency of the input over the result"))
    for g in out:
        log.info("gate %s: %s (threshold %s, measured %s; %s)", g["name"], "pass" if g["passed"] else "FAIL",
                 g["threshold"], g["value"], g["detail"])
    return out


def _worst_output_gate(name: str, label: str, unit: str, attr: str, threshold: float,
                       outputs: list[Any]) -> dict[str, Any]:
    values = [(getattr(o, attr), o.name) for o in outputs if getattr(o, attr) is not None]
    if not values:
        return _gate(name, label, threshold, None, False, unit, f"no output has a {label.split()[-1]} to measure")
    value, output = min(values, key=lambda v: float("-inf") if v[0] != v[0] else v[0])
    return _gate(name, label, threshold, value, value >= threshold, unit, f"worst output '{output}'")


def _metric_gates(gates: GateSettings, result: Any) -> list[dict[str, Any]]:
    """--min-metric (a bound from above when lower is better) and --max-metric-drop."""
    out = []
    if result is None:
        return out
    detail = (f"{result.spec}: {result.reference:.6g} -> {result.candidate:.6g} on {result.samples} feed(s), "
              f"{'higher' if result.higher_is_better else 'lower'} is better")
    if gates.min_metric is not None:
        value, bound = result.candidate, gates.min_metric
        ok = value >= bound if result.higher_is_better else value <= bound
        out.append(_gate("min_metric", "min metric" if result.higher_is_better else "max metric", bound, value,
                         ok, "metric", detail))
    if gates.max_metric_drop is not None:
        out.append(_gate("max_metric_drop", "max metric drop", gates.max_metric_drop, result.drop,
                         result.drop <= gates.max_metric_drop, "metric", detail))
    return out


def _top1_drop_gate(threshold: float, m: Measurements, outputs: list[Any]) -> dict[str, Any]:
    label = "max top-1 drop"
    if m.accuracy is not None:
        drop = m.accuracy.drop
        return _gate("max_top1_drop", label, threshold, drop, drop <= threshold, "fraction",
                     f"accuracy {m.accuracy.reference:.4f} -> {m.accuracy.candidate:.4f} on "
                     f"{m.accuracy.samples} labelled samples")
    agreement = [o.top1 for o in outputs if o.top1 is not None]
    if not agreement:
        return _gate("max_top1_drop", label, threshold, None, False, "fraction",
                     "no labels and no output with a class axis")
    drop = 1.0 - min(agreement)
    return _gate("max_top1_drop", label, threshold, drop, drop <= threshold, "fraction",
                 "no labels: top-1 disagreement with the input model (an upper bound of the accuracy drop)")


# -- output and report ------------------------------------------------------------------------------

def weight_bytes(model: Model) -> int:
    return sum(t.values.nbytes for t in model.graph.tensors().values() if isinstance(t, gs.Constant))


class _PendingOutput:
    """The result until it has passed: in memory, or (too large for that) in a staging folder."""

    def __init__(self, model: Model, out: Path):
        self.model, self.out = model, out
        self.staging: Path | None = None
        if weight_bytes(model) > IN_MEMORY_LIMIT:
            self.staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.staging."))
            log.info("the result is too large to verify in memory; staged in %s", self.staging)
            try:
                save(model, self.staging / out.name)
            except BaseException:
                self.discard()
                raise

    def candidate(self) -> Model | Path:
        return self.model if self.staging is None else self.staging / self.out.name

    def commit(self) -> None:
        if self.staging is None:
            save(self.model, self.out)
            return
        for path in sorted(self.staging.iterdir(), key=lambda p: p.name == self.out.name):
            os.replace(path, self.out.parent / path.name)  # the model file last: data first

    def discard(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None


def _report(recipe: Recipe, inputs: _Inputs, run: Any, after: dict[str, Any], m: Measurements,
            gates: list[dict[str, Any]], written: bool, passed: bool | None) -> dict[str, Any]:
    # lazy: reports, verification and benchmarks load matplotlib/onnxruntime only when used
    from graphc.report import build_report

    return build_report(input_path=inputs.source, output_path=inputs.out, run=run, before=inputs.before,
                        after=after, verification=m.verification, output_written=written,
                        recipe=dataclasses.asdict(recipe), accuracy=m.accuracy, metric=m.metric, latency=m.latency,
                        gates=gates, layers=m.layers, histograms=m.histograms, passed=passed)
