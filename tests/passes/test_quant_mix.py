"""The error budget's per-layer mix of static int8, dynamic int8 and float (passes/quant/mix.py).

The graph: ``x[16, 1024]`` read by two MatMuls with constant ``[1024, 128]`` weights, and a Gram
MatMul ``z z^T`` of a second input (two activations: static QDQ can take it, the dynamic mode
cannot). Each calibration feed scales ``x`` by a factor log-uniform in [1/30, 30], so a static
range fixed at calibration time crushes the small samples (``good`` is accurate dynamic, not
static); ``bad``'s weight has one row of 30s, so every column's int8 step (0.24) rounds its other
weights (~0.03) to zero, static or dynamic: it must stay float. ``z`` does not change range, so
the Gram MatMul is accurate static. Measured: all static 3 dB of output SQNR, all dynamic (the
dynamic mode, Gram float) 3 dB, the mix (good dynamic, bad float, Gram static) 41 dB.
"""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.calib.data import open_data
from graphc.executor import LocalExecutor, using
from graphc.ir import node_macs
from graphc.passes.quant import Quantize
from graphc.passes.quant import mix as MX
from graphc.passes.quant.dynamic import MIN_MACS
from graphc.passes.quant.error_budget import Target, candidate_units
from graphc.passes.quant.evaluations import Score
from graphc.passes.quant.quantizer import Quantizer
from graphc.passmanager import Context, PassResult
from support import assert_valid, make_model, op_count, run, sqnr_over

K, N, M, J = 1024, 128, 16, 64


def _graph(table=False):
    """``table``: an embedding lookup ``e = Gather(T, ids)`` as a fourth output."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((K, N)) / K ** 0.5).astype(np.float32)
    w2 = (rng.standard_normal((K, N)) / K ** 0.5).astype(np.float32)
    w2[0, :] = 30.0  # one huge row: every column's int8 step rounds the others to zero
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"], name="good"),
             helper.make_node("MatMul", ["x", "w2"], ["b"], name="bad"),
             helper.make_node("Transpose", ["z"], ["zt"], name="zt", perm=[1, 0]),
             helper.make_node("MatMul", ["z", "zt"], ["c"], name="gram")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [M, K]),
                                           helper.make_tensor_value_info("z", TensorProto.FLOAT, [M, J])],
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [M, N]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, [M, N]),
                               helper.make_tensor_value_info("c", TensorProto.FLOAT, [M, M])], inits)
    if table:
        graph.initializer.append(numpy_helper.from_array(rng.standard_normal((2048, J)).astype(np.float32), "T"))
        graph.node.append(helper.make_node("Gather", ["T", "ids"], ["e"], name="embed", axis=0))
        graph.input.append(helper.make_tensor_value_info("ids", TensorProto.INT64, [M]))
        graph.output.append(helper.make_tensor_value_info("e", TensorProto.FLOAT, [M, J]))
    return graphc.load(make_model(graph, opset=13))


def _feeds(n=8, seed=0):
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(n):
        x = rng.standard_normal((M, K)).astype(np.float32) * np.float32(30.0 ** rng.uniform(-1, 1))
        x[:, 0] *= 1e-3  # bad's huge row meets a small channel: its output is not that row alone
        feeds.append({"x": x, "z": (rng.standard_normal((M, J)) / J ** 0.25).astype(np.float32)})
    return feeds


def _quant(model, text, feeds):
    model = model.copy()
    record = graphc.PassManager(text, data=open_data(feeds, model), prepare=False).run(model).records[-1]
    return model, record


def _states(record) -> dict[str, str]:
    return {d["node"]: d["budget_state"] for d in record.details if "budget_state" in d}


def _cosine(reference, candidate, feeds) -> float:
    """Mean over outputs and their rows of the row cosine (the budget's min-cosine measure)."""
    values = []
    for feed in feeds:
        for r, q in zip(run(reference, feed), run(candidate, feed)):
            r, q = r.reshape(r.shape[0], -1).astype(np.float64), q.reshape(q.shape[0], -1).astype(np.float64)
            values.append(np.mean(np.sum(r * q, 1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(q, axis=1))))
    return float(np.mean(values))


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("budget", ["min-sqnr=30", "min-cosine=0.9999"])
def test_a_mix_meets_a_budget_neither_all_static_nor_all_dynamic_meets(budget, tmp_path):
    model, feeds = _graph(), _feeds()
    static, _ = _quant(model, "quant{placement=all activations=u8}", feeds)
    dynamic, _ = _quant(model, "quant{placement=all activations=dynamic}", feeds)
    out, record = _quant(model, f"quant{{placement=all {budget}}}", feeds)
    assert record.stats["activations_auto"].startswith(f"mix: dynamic int8 misses the error budget {budget}")
    assert _states(record) == {"good": "dynamic", "bad": "float", "gram": "static"}
    assert record.stats["budget_static_layers"] == record.stats["budget_dynamic_layers"] == 1
    assert record.stats["budget_float_layers"] == 1
    # both kinds in one graph, each as its rewrite writes it
    assert op_count(out, "MatMulInteger") == 1 and op_count(out, "DynamicQuantizeLinear") == 1
    assert op_count(out, "QuantizeLinear") == 2  # gram's two activation inputs
    # measured independently in onnxruntime on the calibration feeds
    if budget.startswith("min-sqnr"):
        assert sqnr_over(model, static, feeds) < 30 and sqnr_over(model, dynamic, feeds) < 30
        assert sqnr_over(model, out, feeds) >= 30
        assert abs(sqnr_over(model, out, feeds) - record.stats["budget_sqnr"]) < 0.05
    else:
        assert _cosine(model, static, feeds) < 0.9999 and _cosine(model, dynamic, feeds) < 0.9999
        assert _cosine(model, out, feeds) >= 0.9999
        assert abs(_cosine(model, out, feeds) - record.stats["budget_cosine"]) < 1e-5
    assert_valid(out, tmp_path)
    # idempotent: the result holds Q/DQ, so a second run leaves it as it is
    again, second = _quant(out, f"quant{{placement=all {budget}}}", feeds)
    assert second.modified is False
    assert [(n.op, n.name) for n in again.graph.nodes] == [(n.op, n.name) for n in out.graph.nodes]
    assert all(np.array_equal(a, b) for a, b in zip(run(again, feeds[0]), run(out, feeds[0])))


def test_a_start_that_meets_the_budget_keeps_every_layer_quantized():
    """The mix search alone: a budget the start (every layer on its fastest rung) meets keeps
    nothing float, after the sensitivity sweep (one evaluation per layer and quantized state)
    and one evaluation of the start."""
    model, feeds = _graph(), _feeds()
    ctx = Context(model.copy(), data=open_data(feeds, model))
    ctx.require_opset(13)
    result = PassResult(modified=False)
    quantizer = Quantizer(Quantize.Options(placement="all", activations="u8", min_sqnr=0.5))
    search, states, score, trimmed = MX.search(quantizer, ctx.graph, ctx, result)
    assert states == {"good": "dynamic", "bad": "dynamic", "gram": "static"}
    assert score.sqnr >= 0.5 and trimmed == ()
    assert search.ladders["gram"] == ("static", "float")
    assert search.ladders["bad"][0] == "dynamic" and search.ladders["bad"][-1] == "float"
    solo = 2 + 2 + 1  # good and bad: static and dynamic; gram: static
    assert result.stats["budget_evaluations_run"] == solo + 1
    assert result.stats["budget_float_layers"] == 0


def test_an_impossible_budget_leaves_every_layer_float_and_the_model_alone():
    model, feeds = _graph(), _feeds()
    out, record = _quant(model, "quant{placement=all min-sqnr=150}", feeds)
    assert record.modified is False and set(_states(record).values()) == {"float"}
    assert record.skipped == {"min-sqnr=150: every layer stays float": 1}
    assert [n.op for n in out.graph.nodes] == [n.op for n in model.graph.nodes]
    assert op_count(out, "MatMulInteger") == 0 and op_count(out, "QuantizeLinear") == 0


def test_a_layer_alone_that_meets_the_budget_is_never_left_float():
    """Never all float when a mix meets the budget: a budget only ``gram`` static meets (41 dB
    with good dynamic too; here above that)."""
    model, feeds = _graph(), _feeds()
    full, record = _quant(model, "quant{placement=all min-sqnr=30}", feeds)
    mix_db = record.stats["budget_sqnr"]
    out, record = _quant(model, f"quant{{placement=all min-sqnr={mix_db + 3:.2f}}}", feeds)
    states = _states(record)
    assert "float" in states.values() and set(states.values()) != {"float"}, states
    assert sqnr_over(model, out, feeds) >= mix_db + 3


def test_the_mix_is_the_same_with_one_worker_and_with_two(tmp_path, monkeypatch):
    """Determinism across executors: evaluations run in this process or in two spawned workers
    give the same model bytes and stats (tests/executor compares Ray with the local executor)."""
    model, feeds = _graph(), _feeds(4)
    outputs = []
    for workers in (1, 2):
        monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path / f"cache{workers}"))
        with using(LocalExecutor(workers)):
            out, record = _quant(model, "quant{placement=all min-sqnr=30}", feeds)
        assert record.stats["budget_evaluations_run"] > 2
        outputs.append((graphc.save(out, tmp_path / f"{workers}.onnx").read_bytes(),
                        {k: v for k, v in record.stats.items() if k != "budget_evaluations_cached"}))
    assert outputs[0] == outputs[1]


def test_auto_placement_mix_is_not_slower_than_float_by_its_guards():
    """placement=auto: every dynamic layer reaches the dynamic break-even (MIN_MACS at the cost
    shapes) and the static part is the speed model's own cut with the other layers float (the
    speed trim finds nothing more to move)."""
    model, feeds = _graph(), _feeds()
    ctx = Context(model.copy(), data=open_data(feeds, model))
    ctx.require_opset(13)
    quantizer = Quantizer(Quantize.Options(activations="u8", min_sqnr=30, speed_model="builtin"))
    search, states, score, trimmed = MX.search(quantizer, ctx.graph, ctx, PassResult(modified=False))
    shapes = ctx.cost_shapes()
    macs = {n.name: node_macs(n, shapes) for n in ctx.graph.nodes}
    assert all(macs[n] >= MIN_MACS for n, s in states.items() if s == "dynamic")
    mix = search.mix(states)
    assert search.budget.speed_trim(mix.float_ops + trimmed) == []
    assert score.sqnr >= 30 and "dynamic" in states.values()


# -- the procedure on synthetic scores: each layer's state adds a known noise power ---------


class _Budget:
    """Stands in for evaluations.Budget: the score of a mix is ``-10 log10`` of the summed noise
    of each layer's state (float: 0)."""

    def __init__(self, noise: dict[str, dict[str, float]], static=(), dynamic=()):
        self.noise, self.units, self.dynamic = noise, {u: (u,) for u in static}, tuple(dynamic)
        self.runs, self.asked = 0, []
        self.cache = type("Cache", (), {"hits": 0})()

    def state(self, mix, name):
        if name in mix.dynamic:
            return "dynamic"
        return "static" if name in self.units and name not in mix.float_ops else "float"

    def score_mix(self, mixes, desc=""):
        self.runs += len(mixes)
        self.asked += [{n: self.state(m, n) for n in self.noise} for m in mixes]
        noise = [sum(self.noise[n].get(self.state(m, n), 0.0) for n in self.noise) for m in mixes]
        return [Score(-10 * np.log10(v) if v else float("inf"), None) for v in noise]

    def speed_trim(self, float_ops):
        return []

    def expand(self, units):
        return tuple(op for u in units for op in self.units.get(u, (u,)))


def _search(budget, min_sqnr, monkeypatch, costs=None):
    monkeypatch.setattr(MX, "layer_costs", lambda graph, ctx, names: costs or {})
    return MX.run_search(budget, Target(min_sqnr, None), None, None, PassResult(modified=False))


def test_bisection_demotes_the_most_damaging_layers_first(monkeypatch):
    """Noise 0.8 + 0.3 + 0.3 against a limit of 0.7: demoting p alone meets it (one float layer);
    a wrong order (q, r first) needs all three float."""
    budget = _Budget({"p": {"dynamic": 0.8}, "q": {"dynamic": 0.3}, "r": {"dynamic": 0.3}}, dynamic="pqr")
    s, states, score, _ = _search(budget, -10 * np.log10(0.7), monkeypatch)
    assert states == {"p": "float", "q": "dynamic", "r": "dynamic"}
    # 3 solo, the start, one bisection step (p float: met), p tried dynamic again (refused)
    assert budget.runs == 6 and budget.asked[4] == states
    assert budget.runs <= 4 * 3 + int(np.ceil(np.log2(6))) + 2  # the documented bound


def test_re_promotion_moves_a_layer_back_to_its_fastest_rung(monkeypatch):
    """a: dynamic 0.9, static 0.5 (static measured more accurate: ladder dynamic, static, float);
    b: dynamic 0.6; limit 1.0. Bisection stops at a static, b float (0.5); re-promotion (b is
    the dearer, tried first and refused: 1.1) puts a back on dynamic (0.9)."""
    budget = _Budget({"a": {"dynamic": 0.9, "static": 0.5}, "b": {"dynamic": 0.6}}, static="a", dynamic="ab")
    s, states, score, _ = _search(budget, -10 * np.log10(1.0), monkeypatch, costs={"a": 1, "b": 2})
    assert s.ladders == {"a": ("dynamic", "static", "float"), "b": ("dynamic", "float")}
    assert states == {"a": "dynamic", "b": "float"}
    assert score.sqnr == pytest.approx(-10 * np.log10(0.9))
    assert {"a": "dynamic", "b": "dynamic"} in budget.asked  # b was tried first (dearer)


def test_static_is_on_the_ladder_only_where_it_measured_more_accurate(monkeypatch):
    budget = _Budget({"a": {"dynamic": 0.1, "static": 0.5}}, static="a", dynamic="a")
    s, states, score, _ = _search(budget, 5.0, monkeypatch)
    assert s.ladders == {"a": ("dynamic", "float")} and states == {"a": "dynamic"}


def test_a_matmul_s_bias_add_goes_float_or_dynamic_with_it():
    """The speed model's placement holds a MatMul's bias Add, which the plan folds into the
    MatMul: it is part of the MatMul's unit, so with the MatMul float or dynamic it is not
    quantized alone (a Q/DQ pair on the MatMul's output: on all-MiniLM-L6-v2 that alone took the
    embedding cosine to 0.987 with every layer float)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((256, 256)) / 16).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(256).astype(np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Add", ["h", "b"], ["y"], name="bias")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 256])], inits)
    model = graphc.load(make_model(graph, opset=13))
    feeds = [{"x": rng.standard_normal((64, 256)).astype(np.float32)} for _ in range(4)]
    ctx = Context(model, data=open_data(feeds, model))
    quantizer = Quantizer(Quantize.Options(activations="u8", min_sqnr=30, speed_model="builtin"))
    assert quantizer.speed_positions(ctx.graph, ctx) == frozenset({0, 1})
    assert candidate_units(quantizer, ctx.graph, ctx) == {"mm": ("mm", "bias")}


def test_a_static_layer_the_speed_trim_moves_whole_is_reported_float(monkeypatch):
    """The speed trim moves every op of static layer ``g`` to float (an int8 island between
    dynamic layers): ``g`` is float in the states, the stats and the written float set."""
    budget = _Budget({"a": {"dynamic": 0.1}, "g": {"static": 0.1}}, static="g", dynamic="a")
    budget.speed_trim = lambda float_ops: ["g"] if "g" not in float_ops else []
    s, states, score, trimmed = _search(budget, 5.0, monkeypatch)
    assert states == {"a": "dynamic", "g": "float"} and trimmed == ()
    assert score.sqnr == pytest.approx(10.0)


def test_embedding_tables_go_int8_when_the_budget_still_holds(tmp_path):
    """The embedding tables are one more layer of the search (int8 rows, then float): int8 here,
    the file shrinks with them, measured within the budget."""
    model = _graph(table=True)
    feeds = [dict(f, ids=np.arange(M, dtype=np.int64) * 97 % 2048) for f in _feeds()]
    out, record = _quant(model, "quant{placement=all min-sqnr=30}", feeds)
    assert record.stats["budget_embedding_tables_int8"] == record.stats["quantized_Gather"] == 1
    assert _states(record) == {"good": "dynamic", "bad": "float", "gram": "static", "(embedding tables)": "int8 rows"}
    assert sqnr_over(model, out, feeds) >= 30
    assert abs(sqnr_over(model, out, feeds) - record.stats["budget_sqnr"]) < 0.05
    assert len(graphc.save(out, tmp_path / "q.onnx").read_bytes()) < \
        len(graphc.save(model, tmp_path / "f.onnx").read_bytes()) - 2048 * J * 2
