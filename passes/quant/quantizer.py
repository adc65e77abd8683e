"""The quant API that the pass and its error budget both call: plan, calibrate, write.

``Quantizer(options)`` holds the pass's options (``Quantize.Options``) and nothing else:

- :meth:`Quantizer.plan` chooses the placement (the speed model's minimum cut with
  ``placement=auto``, or given node positions) and plans the Q/DQ pairs
  (:func:`graphc.passes.quant.placement.plan_quantization`);
- :meth:`Quantizer.calibrate` computes the planned activations' ranges on ``ctx.data``
  (:func:`graphc.calib.calibrate`), re-using ranges already known;
- :meth:`Quantizer.quantize` does both and writes the Q/DQ nodes
  (:func:`graphc.passes.quant.rewrite.write_plan`), then corrects biases if asked.

:meth:`Quantizer.keeping_float` is the same quantizer with some layers kept in float (what the
error budget evaluates).
"""
from __future__ import annotations

import dataclasses
import logging
from collections import Counter

import onnx_graphsurgeon as gs

from graphc.calib import calibrate
from graphc.ir import NameFactory, node_label
from graphc.passes.quant.bias_correction import correct_biases
from graphc.passes.quant.placement import PlacementConfig, candidate_nodes, plan_quantization
from graphc.passes.quant.rewrite import QuantFormat, write_plan
from graphc.passes.quant.speed_model import SpeedModel, cost_table, integer_nodes
from graphc.passes.quant.subgraphs import plan_bodies, unseen
from graphc.passmanager import Context, PassResult

log = logging.getLogger(__name__)

#: versions of QuantizeLinear/DequantizeLinear in the ONNX standard (opset they appeared in).
QDQ_VERSIONS = (10, 13, 19, 21, 23, 24, 25, 28)
#: the newest onnxruntime implements (1.32); a model at a later opset would not load quantized.
MAX_RUNTIME_QDQ_VERSION = 25


def literal_pattern(name: str) -> str:
    """An fnmatch pattern that matches ``name`` only."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


class Quantizer:
    """Plans, calibrates and writes static QDQ quantization with the quant pass's options."""

    def __init__(self, options):
        self.options = options

    def without_budget(self) -> "Quantizer":
        """The same options with no error budget (the plain pass)."""
        return Quantizer(dataclasses.replace(self.options, min_sqnr=None, max_top1_drop=None,
                                                     min_cosine=None, max_metric_drop=None))

    def keeping_float(self, layers) -> "Quantizer":
        """No error budget, and the named ``layers`` kept float (excluded by literal patterns)."""
        opts = self.without_budget().options
        return Quantizer(dataclasses.replace(
            opts, exclude=tuple(opts.exclude) + tuple(literal_pattern(n) for n in layers)))

    def unsupported_opset(self, ctx: Context) -> str | None:
        version = max(v for v in QDQ_VERSIONS if v <= max(ctx.opset, 13))
        if version > MAX_RUNTIME_QDQ_VERSION:
            return f"opset {ctx.opset}: onnxruntime has no QuantizeLinear-{version} kernel"
        return None

    def quantize(self, graph: gs.Graph, ctx: Context, result: PassResult,
                 known_ranges: dict | None = None, positions: frozenset[int] | None = None) -> PassResult:
        """Plan, calibrate and write (no budget). ``known_ranges``: activation ranges already
        calibrated on ``ctx.data`` with these options (the budget's evaluations re-use one
        calibration of the float model); only tensors missing from it are calibrated, and added
        to it.
        ``positions``: indices into ``graph.nodes`` that may run on integers, in place of the
        speed model's choice (the budget fixes the placement; the graph must be at opset 13 or
        later already, so that the indices do not move)."""
        reason = self.unsupported_opset(ctx)
        if reason is not None:
            result.skip(reason)
            return result
        opts = self.options
        if not self.plan(graph, ctx, result, positions).quantized and not plan_bodies(self, graph, ctx, result):
            return result
        if ctx.require_opset(13):
            result.count("opset_upgraded_to", 13)
            graph = ctx.graph
        result.skipped.clear()
        plan = self.plan(graph, ctx, result, positions)
        body_plans = plan_bodies(self, graph, ctx, result)  # If/Loop/Scan bodies (passes/quant/subgraphs.py)
        ranges = self.calibrate(ctx, activation_names(plan) + [n for b in body_plans for n in activation_names(b.plan)],
                                known_ranges)
        fmt = QuantFormat(activations=opts.activations, weights=opts.weights, bits=opts.bits,
                          symmetric_activations=opts.symmetric_activations)
        reference = ctx.model.copy() if opts.bias_correction else None
        names = NameFactory(graph)  # names are unique across the graph and its bodies
        writer = write_plan(graph, plan, ranges, fmt, names)
        if reference is not None:
            correct_biases(graph, ctx, plan, reference, result, opts.samples)
        for body in body_plans:
            if unseen(body.plan, ranges):
                result.skip("body never ran on the calibration data (kept float)")
                log.info("quant: %s never ran on the calibration data; kept float", body.path)
                continue
            body_writer = write_plan(body.graph, body.plan, ranges, fmt, names)
            self._record(body.plan, body_writer, ranges, result, body.path)
            result.count("quantized_bodies")
        self._record(plan, writer, ranges, result)
        result.modified = bool(plan.quantized) or "quantized_bodies" in result.stats
        return result

    @staticmethod
    def _record(plan, writer, ranges: dict, result: PassResult, path: str = "") -> None:
        for op, n in Counter(node.op for node in plan.quantized).items():
            result.count(f"quantized_{op}", n)
        result.count("qdq_pairs", writer.inserted)
        result.count("weights", len(plan.weights))
        result.details.extend(_details(plan, writer, ranges, path))

    def _config(self) -> PlacementConfig:
        opts = self.options
        return PlacementConfig(ops=frozenset(opts.ops), exclude=tuple(opts.exclude), per_channel=opts.per_channel,
                               absorb_activations=not opts.symmetric_activations, full_range=opts.bits == 8)

    def plan(self, graph: gs.Graph, ctx: Context, result: PassResult,
             positions: frozenset[int] | None = None):
        """The placement plan; ``positions`` (indices into ``graph.nodes``) replace the speed
        model's choice. Skip reasons are added to ``result``."""
        config = self._config()
        if positions is not None:
            config = dataclasses.replace(config, allowed=frozenset(
                id(node) for i, node in enumerate(graph.nodes) if i in positions))
        elif self.options.placement == "auto":
            chosen, estimate = self._speed_choice(graph, ctx, config)
            config = dataclasses.replace(config, allowed=frozenset(chosen))
            result.stats["speed_model_float_us"] = round(estimate["estimated_float_us"], 1)
            result.stats["speed_model_chosen_us"] = round(estimate["estimated_cut_us"], 1)
            result.stats["speed_model"] = estimate["table"]
        plan = plan_quantization(graph, config, ctx.shapes())
        for reason, n in plan.skipped.items():
            result.skipped[reason] = result.skipped.get(reason, 0) + n
        return plan

    def speed_positions(self, graph: gs.Graph, ctx: Context) -> frozenset[int] | None:
        """Indices into ``graph.nodes`` the speed model puts on integers (None: placement=all)."""
        if self.options.placement != "auto":
            return None
        chosen, _ = self._speed_choice(graph, ctx, self._config())
        return frozenset(i for i, node in enumerate(graph.nodes) if id(node) in chosen)

    def _speed_choice(self, graph: gs.Graph, ctx: Context, config: PlacementConfig) -> tuple[set[int], dict]:
        """The speed model's minimum cut: ids of the nodes worth running on integers (the
        estimate names the cost table under ``"table"``)."""
        table = cost_table(self.options.speed_model)
        log.info("quant: speed model: %s", table.source)
        chosen, estimate = integer_nodes(graph, candidate_nodes(graph, config), SpeedModel(ctx.cost_shapes(), table))
        return chosen, {**estimate, "table": table.source}

    def calibrate(self, ctx: Context, names: list[str], known: dict | None = None) -> dict:
        """Ranges of ``names`` on ``ctx.data``; those in ``known`` are taken from it, the others
        calibrated and added to it."""
        have = {name: known[name] for name in names if name in known} if known else {}
        missing = [name for name in names if name not in have]
        if not missing:
            return have
        log.info("quant: calibrating %d tensors (%s)", len(missing), self.options.calib)
        new = calibrate(ctx.model, ctx.data, missing, self.options.calib, percentile=self.options.percentile,
                        symmetric=self.options.symmetric_activations, bits=self.options.bits,
                        max_samples=self.options.samples)
        if known is not None:
            known.update(new)  # the budget's later evaluations find them
        return have | new


def activation_names(plan) -> list[str]:
    """The planned activations that are tensors computed at run time (calibrated)."""
    return [name for name, aq in plan.activations.items() if isinstance(aq.tensor, gs.Variable)]


def _details(plan, writer, ranges, path: str = "") -> list[dict]:
    """Records of the calibrated tensors and the layers kept float; a body's layers are named by
    their path (``If_0/then_branch/conv``), as the report's layer table names them."""
    rows = []
    for name, aq in plan.activations.items():
        params = writer.params.get(name)
        rng = ranges.get(name)
        rows.append({
            "tensor": name,
            "scale": float(params.scale) if params is not None else None,
            "zero_point": int(params.zero_point) if params is not None else None,
            "range": [rng.lo, rng.hi] if rng is not None else None,
            "observed": [rng.observed_min, rng.observed_max] if rng is not None else None,
            "absorbed": node_label(aq.absorbed, path) if aq.absorbed is not None else None,
        })
    quantized = {node.name for node in plan.quantized}
    for name, (op, reason) in plan.kept_float.items():
        if name not in quantized:
            rows.append({"node": f"{path}/{name}" if path else name, "op": op, "precision": "float",
                         "reason": reason})
    return rows
