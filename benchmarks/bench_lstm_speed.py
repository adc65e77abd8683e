"""quant's LSTM decision: the measured speed model against the kernels' own times.

``placement=auto`` rewrites an LSTM into onnxruntime's ``DynamicQuantizeLSTM`` where the measured
cost table (``graphc/bench/cost_probe.py``: float LSTM vs DynamicQuantizeLSTM per step, 1 thread)
says the integer form is faster at the LSTM's sizes (``passes/quant/recurrent.py``); the builtin
table keeps a fixed rule, hidden size >= 64. Here, for bidirectional LSTMs of several sizes
(T = 40 steps, batch 1): what ``-p quant{activations=dynamic}`` chose with the measured table, and
the float / result latency ratio, alternated, at 1 and 2 threads (median of per-round ratios,
25-75% spread). A choice is right when it keeps float where the ratio is below 1 and rewrites
where it is above; "close" where the 1-thread spread straddles 1.
"""
from __future__ import annotations

import time

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.bench import compare_all, pair
from graphc.bench.cost_table import measured_table

TITLE = "quant: LSTM int8 decision by the measured speed model (DynamicQuantizeLSTM vs float)"
#: (hidden, input) of the LSTMs; T = STEPS, batch 1, bidirectional
SIZES = ((16, 16), (32, 32), (48, 48), (64, 64), (96, 96), (128, 128), (32, 256), (128, 256), (256, 256))
STEPS = 40
ROUNDS = 40


def lstm_model(hidden: int, inputs: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    inits = {"W": rng.standard_normal((2, 4 * hidden, inputs)) / inputs ** 0.5,
             "R": rng.standard_normal((2, 4 * hidden, hidden)) / hidden ** 0.5,
             "B": rng.standard_normal((2, 8 * hidden)) * 0.1}
    node = helper.make_node("LSTM", ["x", "W", "R", "B"], ["y"], hidden_size=hidden, direction="bidirectional",
                            name="lstm")
    graph = helper.make_graph([node], "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [STEPS, 1, inputs])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [STEPS, 2, 1, hidden])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return graphc.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8))


def _row(hidden: int, inputs: int) -> tuple[str, tuple[bool, bool] | None]:
    fp32 = lstm_model(hidden, inputs)
    result = fp32.copy()
    graphc.PassManager("quant{activations=dynamic}").run(result)
    chosen = any(n.op == "DynamicQuantizeLSTM" for n in result.graph.nodes)
    forced = fp32.copy()
    graphc.PassManager("quant{activations=dynamic placement=all}").run(forced)
    feeds = {"x": np.random.default_rng(1).standard_normal((STEPS, 1, inputs)).astype(np.float32)}
    cells, spreads = [], []
    for threads in (1, 2):
        stats = compare_all({"fp32": fp32, "int8": forced}, feeds, threads=threads, warmup=5, rounds=ROUNDS)
        comparison = pair(stats, "fp32", "int8", threads=threads)
        low, high = comparison.ratio_spread()
        cells.append(f"{comparison.ratio:.2f}x ({low:.2f}-{high:.2f})")
        spreads.append((low, high, comparison.ratio))
    rule = hidden >= 64
    verdict, right = judge(chosen, rule, *spreads[0])
    line = (f"| {hidden} | {inputs} | {'int8' if chosen else 'float'} | {'int8' if rule else 'float'} | "
            f"{cells[0]} | {cells[1]} | {verdict} |")
    return line, right


def judge(chosen: bool, rule: bool, low: float, high: float, ratio: float) -> tuple[str, tuple[bool, bool] | None]:
    """The choice column and (measured table right, builtin rule right), from the 1-thread ratio
    (float / int8) and its 25-75% spread; None where the spread straddles 1 (too close to call)."""
    if low <= 1.0 <= high:
        return "close", None
    pays = ratio > 1.0
    right = (chosen == pays, rule == pays)
    return ("right" if right[0] else "WRONG"), right


def tally(results: list[tuple[bool, bool] | None]) -> str:
    """The sentence under the table: how many clear cases each way chose right."""
    decided = [r for r in results if r is not None]
    return (f"Measured table: {sum(r[0] for r in decided)} of {len(decided)} clear cases chosen right, builtin "
            f"rule: {sum(r[1] for r in decided)} of {len(decided)} ({len(results) - len(decided)} within the "
            "1-thread timing spread, not counted)")


def run() -> str:
    start = time.perf_counter()
    table = measured_table()
    lstm = table.table.get("lstm")
    lines = [f"Measured table: {table.key.describe()} ({'measured in this run' if table.fresh else 'from the cache'}); "
             f"lstm per step and direction, ns: float {_coef(lstm, 'float')}, int {_coef(lstm, 'int')} "
             "(fixed, per MAC, per output element).", "",
             "| hidden | input | measured table chose | builtin rule (H >= 64) | int8 speed, 1 thread | "
             "int8 speed, 2 threads | choice |",
             "|---|---|---|---|---|---|---|"]
    results = []
    for hidden, inputs in SIZES:
        line, right = _row(hidden, inputs)
        lines.append(line)
        results.append(right)
    lines += ["", f"{tally(results)}; int8 speed = median of the per-round ratios float / DynamicQuantizeLSTM "
              f"time of the same LSTM (`placement=all`), 25-75% spread in brackets, T = {STEPS}, batch 1, "
              f"{ROUNDS} alternated rounds. _{time.perf_counter() - start:.0f} s_"]
    return "\n".join(lines)


def _coef(sides: dict | None, side: str) -> str:
    if sides is None:
        return "(none: a table without LSTM costs)"
    return "[" + ", ".join(f"{v:.4g}" for v in sides[side]) + "]"
