"""Run a reference and a candidate model on the same inputs and compare their outputs.

Outputs are matched by name when every reference output name is also a candidate output;
otherwise, when both have the same number of outputs, by position (reported as
``matched_by="position"``); otherwise the candidate is not a drop-in replacement and the
comparison fails. Each output's metrics are accumulated over the samples (see
:mod:`graphc.verify.running`) and judged against :class:`Tolerances`. Both models run in
onnxruntime with the same session options (``graphc.runtime``); extra inputs one model does not
declare (an unused input removed by cleanup) are simply not fed to it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from graphc.errors import DataError, VerificationError
from graphc.calib.declared_shapes import repair_declarations_by_run
from graphc.ir.model import Model, model_bytes
from graphc.progress import progress
from graphc.runtime import create_session, run_session
from graphc.verify.feeds import InputShapes, ModelInput, evaluation_data, open_model
from graphc.verify.localize import Localization, localize_divergence
from graphc.verify.noise import measure_noise, noise_note, widened
from graphc.verify.running import RunningMetrics, TensorMetrics, json_number
from graphc.verify.tolerances import Tolerances

log = logging.getLogger(__name__)


@dataclass
class VerifyReport:
    """The outcome of :func:`compare_models`."""

    passed: bool
    outputs: list[TensorMetrics]
    samples: int
    tolerances: Tolerances
    data: str = ""
    matched_by: str = "name"
    localization: Localization | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        return [f"output '{o.name}': {reason}" for o in self.outputs for reason in o.failures]

    def worst(self) -> TensorMetrics | None:
        """The output with the lowest SQNR (NaN counts as lowest)."""
        if not self.outputs:
            return None
        return min(self.outputs, key=lambda o: o.sqnr_db if o.sqnr_db == o.sqnr_db else float("-inf"))

    def summary(self) -> str:
        """One line: verdict, the reason or the worst output, samples and tolerances."""
        scope = f"{len(self.outputs)} output(s), {self.samples} sample(s), {self.tolerances.describe()}"
        if self.passed:
            worst = self.worst()
            detail = f"; worst '{worst.name}': {_metrics_text(worst)}" if worst else ""
            return f"PASS ({scope}){detail}"
        failures = self.failures
        more = f" (+{len(failures) - 1} more)" if len(failures) > 1 else ""
        where = f"; {self.localization.summary()}" if self.localization is not None else ""
        return f"FAIL: {failures[0] if failures else 'no outputs compared'}{more} ({scope}){where}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "samples": self.samples,
            "data": self.data,
            "matched_by": self.matched_by,
            "tolerances": {k: json_number(v) if isinstance(v, float) else v
                           for k, v in self.tolerances.to_dict().items()},
            "outputs": [o.to_dict() for o in self.outputs],
            "failures": self.failures,
            "localization": self.localization.to_dict() if self.localization is not None else None,
            "notes": list(self.notes),
        }


def _metrics_text(m: TensorMetrics) -> str:
    text = f"max abs {m.max_abs:.3g}, SQNR {m.sqnr_db:.1f} dB, cosine {m.cosine:.6f}"
    return text + (f", top-1 {m.top1:.2%}" if m.top1 is not None else "")


def match_outputs(reference: Model, candidate: Model) -> tuple[list[tuple[str, str]], str]:
    """Pairs (reference output name, candidate output name) and how they were matched."""
    ref_names = [t.name for t in reference.graph.outputs]
    cand_names = [t.name for t in candidate.graph.outputs]
    if set(ref_names) <= set(cand_names):
        return [(n, n) for n in ref_names], "name"
    if len(ref_names) == len(cand_names):
        log.info("output names differ (%s vs %s); matching by position", ref_names, cand_names)
        return list(zip(ref_names, cand_names)), "position"
    raise VerificationError(
        f"the candidate's outputs ({', '.join(cand_names)}) do not match the reference's "
        f"({', '.join(ref_names)}) by name or by count"
    )


def compare_models(
    reference: ModelInput,
    candidate: ModelInput,
    *,
    data: Any = None,
    tolerances: Tolerances = Tolerances(),
    input_shapes: InputShapes | None = None,
    seed: int = 0,
    samples: int | None = 8,
    localize: bool = False,
    optimize: bool = True,
    chunk_size: int = 256,
) -> VerifyReport:
    """Compare ``candidate`` with ``reference`` on ``data`` (None: seeded random feeds).

    At most ``samples`` feeds are used (None: all of ``data``). With ``localize`` and a failed
    comparison, the first shared intermediate tensor over budget is searched for
    (:func:`graphc.verify.localize.localize_divergence`, ``chunk_size`` tensors at a time).
    ``optimize`` sets onnxruntime's graph optimizations for both models alike.
    """
    ref_model, ref_src = open_model(reference)
    cand_model, cand_src = open_model(candidate)
    source = evaluation_data(ref_model, data, input_shapes=input_shapes, samples=samples, seed=seed)
    ref_src = runnable_on(ref_model, ref_src, source)
    cand_src = runnable_on(cand_model, cand_src, source)
    pairs, matched_by = match_outputs(ref_model, cand_model)
    per_output, note = _output_tolerances(ref_src, pairs, source, tolerances)
    running = _run_outputs(ref_src, cand_src, pairs, source, per_output, optimize)
    outputs = [r.result() for r in running]
    report = VerifyReport(passed=all(o.passed for o in outputs), outputs=outputs,
                          samples=running[0].samples if running else 0, tolerances=tolerances,
                          data=source.description, matched_by=matched_by)
    if note:
        report.notes.append(note)
    if matched_by == "position":
        report.notes.append("output names differ; outputs matched by position")
    if localize and not report.passed:
        widest = max(per_output, key=lambda t: t.atol, default=tolerances)
        report.localization = localize_divergence(ref_model, cand_model, source, widest,
                                                  input_shapes=input_shapes, chunk_size=chunk_size,
                                                  optimize=optimize)
    log.info("verify: %s", report.summary())
    return report


def runnable_on(model: Model, src: Any, data: Any) -> Any:
    """What onnxruntime should load to run ``model`` on ``data``: ``src``, or the model with the
    literal 0 input dims the data contradicts opened (:mod:`graphc.calib.declared_shapes`; the
    file as written refuses any non-empty batch there)."""
    if not any(isinstance(t.shape, (list, tuple)) and 0 in t.shape for t in model.graph.inputs):
        return src
    if repair_declarations_by_run(model, data).opened_inputs:
        return model_bytes(model)
    return src


def _output_tolerances(ref_src, pairs, source, tolerances: Tolerances) -> tuple[list[Tolerances], str]:
    """One Tolerances per output pair: as given, or with the atol measured from the reference's
    own noise (:mod:`graphc.verify.noise`), and the note that says so."""
    if not tolerances.measures_noise:
        return [tolerances] * len(pairs), ""
    noise = measure_noise(ref_src, [r for r, _ in pairs], source)
    note = noise_note(tolerances, noise)
    log.info("verify: %s", note)
    return [widened(tolerances, noise[r]) for r, _ in pairs], note


def _run_outputs(ref_src, cand_src, pairs, source, per_output: list[Tolerances], optimize) -> list[RunningMetrics]:
    ref_session = create_session(ref_src, optimize=optimize, label="reference", spin=False)
    cand_session = create_session(cand_src, optimize=optimize, label="candidate", spin=False)
    running = [RunningMetrics(r, c, tol) for (r, c), tol in zip(pairs, per_output)]
    count = 0
    for feed in progress(source, desc="verifying", unit="sample"):
        ref_values = run_session(ref_session, feed, [r for r, _ in pairs], label="reference")
        cand_values = run_session(cand_session, feed, [c for _, c in pairs], label="candidate")
        for metrics, ref, got in zip(running, ref_values, cand_values):
            metrics.update(ref, got)
        count += 1
    if count == 0:
        raise DataError(f"{source.description}: no samples to compare on")
    return running
