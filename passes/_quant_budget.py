"""Error budget for ``quant{min-sqnr=...}``: which layers stay in float so that the quantized
model meets a minimum SQNR on the calibration data, chosen from measured per-layer sensitivity.

Procedure (each step measures the SQNR of all model outputs against the float model, summed over
the calibration feeds; an *evaluation* is one quantization of the model with a given set of
layers kept in float):

1. Candidates: the anchors (Conv, Gemm, MatMul) that the plain pass would quantize.
2. Sensitivity: each candidate quantized alone (every other candidate float). These evaluations
   are independent and run in a ``ProcessPoolExecutor`` (``workers`` processes, spawned, each
   given the model bytes and the feeds), under a progress bar.
3. Everything quantized; if the budget is met, nothing stays float.
4. Greedy keep: add candidates to the float set, most sensitive (lowest solo SQNR) first, until
   the budget is met.
5. Greedy leave-out: try quantizing each float layer again, least sensitive first, and keep it
   quantized when the budget still holds - interactions (two layers whose errors cancel or
   add) are accounted for by measuring, not by summing.

A layer is *sensitive* when quantizing it alone already spends a quarter of the noise budget
(solo SQNR below ``min_sqnr + 6 dB``); the result keeps in float only the layers step 5 leaves,
usually strictly fewer.

Cache. Every evaluation is stored in a JSON file keyed by the digest of the model bytes, the
feeds and the quant options (other than the budget), under ``$GRAPHC_CACHE_DIR`` or
``~/.cache/graphc`` (``quant-budget/<digest>.json``): a second run with another budget re-uses
the sensitivity sweep and every set already measured.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from graphc.ir import is_standard_op
from graphc.passmanager import Context, PassResult

log = logging.getLogger(__name__)

ANCHORS = ("Conv", "Gemm", "MatMul")
#: solo SQNR below min_sqnr + this many dB: the layer alone spends a quarter of the noise budget.
SENSITIVE_MARGIN_DB = 6.0
WORKERS = 2
MAX_FEEDS = 32


def cache_dir() -> Path:
    return Path(os.environ.get("GRAPHC_CACHE_DIR") or Path.home() / ".cache" / "graphc")


def literal_pattern(name: str) -> str:
    """An fnmatch pattern that matches ``name`` only."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


class EvaluationCache:
    """``{sorted float layers: SQNR}`` in a JSON file, written after each batch of evaluations."""

    def __init__(self, key: str):
        self.path = cache_dir() / "quant-budget" / f"{key}.json"
        self.values: dict[str, float] = {}
        self.hits = 0
        try:
            self.values = json.loads(self.path.read_text())["evaluations"]
        except (OSError, ValueError, KeyError):
            pass

    @staticmethod
    def key_of(float_layers) -> str:
        return "\n".join(sorted(float_layers))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"evaluations": self.values}, f)
        os.replace(tmp, self.path)


def evaluate(model_bytes: bytes, feeds: list[dict], options, float_layers: tuple[str, ...]) -> float:
    """SQNR (dB) of the model quantized with ``options``, ``float_layers`` kept float."""
    import graphc
    from graphc.calib.data import open_data
    from graphc.passes.quant import Quantize
    from graphc.runtime import create_session, run_session
    from graphc.verify.metrics import sqnr_from_sums

    model = graphc.load(model_bytes)
    reference = create_session(model, label="float model (budget)", spin=False)
    opts = dataclasses.replace(options, min_sqnr=None,
                               exclude=tuple(options.exclude) + tuple(literal_pattern(n) for n in float_layers))
    graphc.PassManager([Quantize(opts)], data=open_data(feeds, model)).run(model)
    candidate = create_session(model, label="quantized model (budget)", spin=False)
    signal = noise = 0.0
    for feed in feeds:
        for r, c in zip(run_session(reference, feed), run_session(candidate, feed)):
            r64 = np.asarray(r, np.float64)
            signal += float(np.sum(r64 ** 2))
            noise += float(np.sum((r64 - np.asarray(c, np.float64)) ** 2))
    return sqnr_from_sums(signal, noise)


class Budget:
    """Runs the evaluations (cached, in parallel where independent) for one quant pass run."""

    def __init__(self, ctx: Context, options):
        from graphc.ir import model_bytes

        self.options = options
        self.model_bytes = model_bytes(ctx.model)
        self.feeds = [dict(f) for _, f in zip(range(options.samples or MAX_FEEDS), ctx.data)]
        self.cache = EvaluationCache(self._digest())
        self.runs = 0

    def _digest(self) -> str:
        h = hashlib.sha256(self.model_bytes)
        for feed in self.feeds:
            for name in sorted(feed):
                h.update(name.encode())
                h.update(np.ascontiguousarray(feed[name]).tobytes())
        opts = dataclasses.replace(self.options, min_sqnr=None)
        h.update(repr(opts).encode())
        return h.hexdigest()[:32]

    def sqnr(self, float_sets: list[tuple[str, ...]], desc: str = "") -> list[float]:
        todo = [s for s in dict.fromkeys(map(tuple, float_sets))
                if EvaluationCache.key_of(s) not in self.cache.values]
        self.cache.hits += len(set(map(tuple, float_sets))) - len(todo)
        if len(todo) > 1 and WORKERS > 1:
            try:
                self._parallel(todo, desc)
            except BrokenProcessPool as exc:  # e.g. a __main__ that spawned workers cannot import
                log.warning("quant budget: worker processes failed (%s); evaluating in this process", exc)
        for s in todo:
            if EvaluationCache.key_of(s) not in self.cache.values:
                self.cache.values[EvaluationCache.key_of(s)] = evaluate(self.model_bytes, self.feeds, self.options, s)
        self.runs += len(todo)
        if todo:
            self.cache.save()
        return [self.cache.values[EvaluationCache.key_of(s)] for s in float_sets]

    def _parallel(self, todo: list[tuple[str, ...]], desc: str) -> None:
        from graphc.progress import progress

        with ProcessPoolExecutor(WORKERS, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(evaluate, self.model_bytes, self.feeds, self.options, s): s for s in todo}
            for future in progress(as_completed(futures), total=len(futures), desc=desc, unit="layer"):
                self.cache.values[EvaluationCache.key_of(futures[future])] = future.result()


def candidate_layers(quant_pass, graph, ctx: Context) -> list[str]:
    plan = quant_pass._plan(graph, ctx, PassResult(modified=False))
    return [n.name for n in plan.quantized if is_standard_op(n, *ANCHORS) and n.name]


def choose_float_layers(quant_pass, graph, ctx: Context, result: PassResult) -> list[dict]:
    """The layers to keep float, each as a details record with its reason."""
    target = quant_pass.options.min_sqnr
    budget = Budget(ctx, quant_pass.options)
    layers = candidate_layers(quant_pass, graph, ctx)
    solo = dict(zip(layers, budget.sqnr([tuple(x for x in layers if x != name) for name in layers],
                                        desc="quant sensitivity")))
    kept: list[str] = []
    current = budget.sqnr([()])[0]
    all_quantized = current
    for name in sorted(layers, key=lambda n: solo[n]):  # most sensitive first
        if current >= target:
            break
        kept.append(name)
        current = budget.sqnr([tuple(kept)])[0]
    for name in sorted(kept, key=lambda n: -solo[n]):  # leave-out, least sensitive first
        trial = tuple(x for x in kept if x != name)
        value = budget.sqnr([trial])[0]
        if value >= target:
            kept, current = list(trial), value
    sensitive = [n for n in layers if solo[n] < target + SENSITIVE_MARGIN_DB]
    result.stats.update({"budget_min_sqnr": target, "budget_sqnr_all_quantized": round(all_quantized, 2),
                         "budget_sqnr": round(current, 2), "budget_layers": len(layers),
                         "budget_sensitive_layers": len(sensitive), "budget_float_layers": len(kept),
                         "budget_evaluations_run": budget.runs, "budget_evaluations_cached": budget.cache.hits})
    if current < target:
        result.skip(f"min-sqnr={target}: not met even with {len(kept)} layers float ({current:.1f} dB)")
    return [{"node": name, "precision": "float",
             "reason": f"min-sqnr={target:g}: quantized alone {solo[name]:.1f} dB; all quantized "
                       f"{all_quantized:.1f} dB, with it float {current:.1f} dB",
             "solo_sqnr": round(solo[name], 2)} for name in kept]


def run_with_budget(quant_pass, graph, ctx: Context) -> PassResult:
    """The quant pass with ``min_sqnr``: choose the float layers, then quantize the rest."""
    scratch = PassResult(modified=False)
    records = choose_float_layers(quant_pass, graph, ctx, scratch)
    opts = dataclasses.replace(quant_pass.options, min_sqnr=None,
                               exclude=tuple(quant_pass.options.exclude)
                               + tuple(literal_pattern(r["node"]) for r in records))
    result = type(quant_pass)(opts).run(graph, ctx)
    result.stats.update(scratch.stats)
    for reason, n in scratch.skipped.items():
        result.skipped[reason] = result.skipped.get(reason, 0) + n
    # the budget's own record (with the measured sensitivity) replaces the generic
    # "excluded by pattern" one the inner run wrote for the same layer
    budget = {r["node"] for r in records}
    result.details[:] = [d for d in result.details
                         if not (d.get("precision") == "float" and d.get("node") in budget)]
    result.details.extend(records)
    return result
