"""PassManager: analyses cache, structural checks, errors that name passes, metadata, records."""
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

import graphc
from graphc.errors import DataError, PassError, StructureError
from graphc.passmanager import Context, Instrument, Pass, PassManager, PassResult, option
from graphc.passmanager import registry
from support import make_model


def _model():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="r1"),
             helper.make_node("Identity", ["a"], ["b"], name="id"),
             helper.make_node("Relu", ["b"], ["y"], name="r2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return graphc.load(make_model(graph))


class Counter:
    name = "counter"
    computed = 0

    @classmethod
    def compute(cls, ctx):
        cls.computed += 1
        return len(ctx.graph.nodes)


class _Reads(Pass):
    name = "t-reads"

    def run(self, graph, ctx):
        ctx.analysis(Counter)
        return PassResult(False)


class _Modifies(Pass):
    name = "t-modifies"

    def run(self, graph, ctx):
        ctx.analysis(Counter)
        return PassResult(True, stats={"x": 1})


class _Preserves(Pass):
    name = "t-preserves"

    def run(self, graph, ctx):
        return PassResult(True, preserved=frozenset({"counter"}))


class _Breaks(Pass):
    name = "t-breaks"

    def run(self, graph, ctx):
        graph.nodes[0].inputs[0] = gs.Variable("nowhere", dtype=np.float32)
        return PassResult(True)


class _Crashes(Pass):
    name = "t-crashes"

    def run(self, graph, ctx):
        raise ZeroDivisionError("boom")


class _NeedsData(Pass):
    name = "t-needs-data"
    needs_data = True

    def run(self, graph, ctx):
        return PassResult(False)


class _DataOptional(Pass):
    """May read data (class-level ``needs_data``), but only needs it when ``calibrate`` is on."""

    name = "t-data-optional"
    needs_data = True

    @dataclass(frozen=True)
    class Options:
        calibrate: bool = option(True, "read ctx.data")

    def requires_data(self):
        return self.options.calibrate

    def run(self, graph, ctx):
        return PassResult(False, stats={"had_data": ctx.data is not None})


@pytest.fixture(autouse=True)
def test_passes(monkeypatch):
    registry._load_builtins()
    for cls in (_Reads, _Modifies, _Preserves, _Breaks, _Crashes, _NeedsData, _DataOptional):
        monkeypatch.setitem(registry._REGISTRY, cls.name, cls)
    Counter.computed = 0


def test_analysis_cached_until_a_pass_modifies():
    PassManager("t-reads,t-reads").run(_model())
    assert Counter.computed == 1
    PassManager("t-modifies,t-reads").run(_model())
    assert Counter.computed == 3  # recomputed after the modifying pass


def test_preserved_analysis_survives():
    PassManager("t-reads,t-preserves,t-reads").run(_model())
    assert Counter.computed == 1


def test_structure_check_names_the_pass_and_previous_ones():
    with pytest.raises(StructureError, match=r"pass 't-breaks' left an invalid graph \(after cleanup\).*nowhere"):
        PassManager("cleanup,t-breaks").run(_model())


def test_crash_is_wrapped_with_pass_name():
    with pytest.raises(PassError, match="pass 't-crashes' failed.*ZeroDivisionError: boom"):
        PassManager("t-crashes").run(_model())


def test_needs_data_fails_before_any_pass():
    model = _model()
    with pytest.raises(DataError, match="t-needs-data"):
        PassManager("cleanup,t-needs-data").run(model)
    assert len(model.graph.nodes) == 3  # cleanup did not run


class _Originals(Instrument):
    """Records, per pass, whether the manager kept ``ctx.original``."""

    def __init__(self):
        self.kept = []

    def before_pass(self, step, ctx):
        self.kept.append(ctx.original is not None)


def test_requires_data_is_asked_per_instance():
    """``needs_data`` says a pass may read data; ``requires_data()`` decides for its options."""
    from graphc.report.passes import pass_catalog

    model = _model()
    with pytest.raises(DataError, match="pass 't-data-optional' needs calibration data"):
        PassManager("cleanup,t-data-optional").run(model)
    assert len(model.graph.nodes) == 3  # refused before cleanup ran
    spy = _Originals()
    report = PassManager("cleanup,t-data-optional{calibrate=false}", instruments=[spy]).run(model)
    assert report.records[1].stats == {"had_data": False} and spy.kept == [False, False]
    spy = _Originals()
    report = PassManager("t-data-optional", data=[{"x": np.ones((1, 4), np.float32)}], instruments=[spy]).run(_model())
    assert report.records[0].stats == {"had_data": True} and spy.kept == [True]
    assert Pass().requires_data() is False and _NeedsData().requires_data() is True
    assert next(p for p in pass_catalog() if p["name"] == "t-data-optional")["needs_data"] is True


def test_records_and_metadata(tmp_path):
    model = _model()
    report = PassManager("cleanup, t-reads").run(model)
    first = report.records[0]
    assert first.name == "cleanup" and first.modified
    assert first.nodes_before == 3 and first.nodes_after == 2
    assert first.stats == {"identity_removed": 1}
    assert first.wall_s >= 0 and (first.peak_rss_bytes or 0) > 0
    assert not report.records[1].modified
    assert model.metadata["graphc.pipeline"] == "cleanup,t-reads"
    graphc.save(model, tmp_path / "m.onnx")
    assert graphc.load(tmp_path / "m.onnx").metadata["graphc.pipeline"] == "cleanup,t-reads"


def test_pass_instances_and_instruments():
    seen = []

    class Spy(graphc.passmanager.Instrument):
        def before_pass(self, step, ctx):
            seen.append(("before", step.name))

        def after_pass(self, step, ctx, record):
            seen.append(("after", record.name, record.modified))

    cleanup = registry.get_pass("cleanup")(registry.get_pass("cleanup").Options(keep_inputs=True))
    report = PassManager([cleanup], instruments=[Spy()]).run(_model())
    assert report.pipeline == "cleanup{keep-inputs=true}"
    assert seen == [("before", "cleanup"), ("after", "cleanup", True)]


def test_context_require_opset_upgrades_and_invalidates():
    model = _model()
    ctx = Context(model)
    ctx.analysis(Counter)
    assert ctx.require_opset(14) is True
    assert model.opset == 14 and not ctx.cached("counter")
    assert ctx.require_opset(13) is False


def test_input_shapes_never_specialize_rewrites(tmp_path):
    """--input-shape is for cost estimates: folding must not bake it into a dynamic model."""
    import onnx

    from support import assert_same_outputs

    idx = onnx.numpy_helper.from_array(np.array([0], np.int64), "idx")
    minus1 = onnx.numpy_helper.from_array(np.array([-1], np.int64), "minus1")
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "idx"], ["n"], axis=0),
             helper.make_node("Concat", ["n", "minus1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 12])], [idx, minus1])
    proto = make_model(graph)
    model = graphc.load(proto)
    manager = PassManager("fold-constants,cleanup", input_shapes={"x": (1, 4, 3)})
    manager.run(model)
    assert any(n.op == "Shape" for n in model.graph.nodes)  # batch dim stays computed
    out = graphc.save(model, tmp_path / "m.onnx")
    feeds = {"x": np.ones((5, 4, 3), np.float32)}
    assert_same_outputs(proto, out, feeds, rtol=0, atol=0)
    ctx = Context(model, input_shapes={"x": (2, 4, 3)})
    assert ctx.cost_shapes()["x"].shape == (2, 4, 3)
    assert ctx.shapes()["x"].shape == ("N", 4, 3)
