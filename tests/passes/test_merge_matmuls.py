"""merge-matmuls (graphc/rewrite/sibling_matmuls.py): sibling MatMuls of one activation with
constant weights become one MatMul over the concatenated weight (+ merged bias Add) and a Split.
Tiny graphs: what must merge (three siblings, with and without bias, opset 11 and 13), what must
not (different input, non-constant / transposed weight, a weight read elsewhere, a lone MatMul),
exactness in onnxruntime (rtol 1e-5, atol 1e-6), idempotence and the full checker."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_graphsurgeon as gs

import graphc
from graphc.passmanager import PassManager
from support import assert_same_outputs, assert_valid, make_model, op_count, random_feeds, run

RTOL, ATOL = 1e-5, 1e-6
K = 16


def _model(nodes, inits, outputs, opset=13, inputs=("x",)):
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 5, K]) for n in inputs]
    outs = [helper.make_empty_tensor_value_info(n) for n in outputs]
    return _typed_outputs(make_model(helper.make_graph(nodes, "g", ins, outs, inits), opset=opset))


def _typed_outputs(model):
    """The graph outputs declared with their inferred type and shape."""
    inferred = {vi.name: vi for vi in onnx.shape_inference.infer_shapes(model).graph.value_info}
    for out in model.graph.output:
        if out.name in inferred:
            out.CopyFrom(inferred[out.name])
    return model


def _siblings(n=(8, 12, 8), bias=True, opset=13, seed=0):
    """x -> MatMul(W_i) [-> Add(b_i)] -> Relu, i = q, k, v (the Relus are what reads the results)."""
    rng = np.random.default_rng(seed)
    nodes, inits, outs = [], [], []
    for name, cols in zip("qkv", n):
        inits.append(numpy_helper.from_array((rng.standard_normal((K, cols)) / 4).astype(np.float32), f"w{name}"))
        nodes.append(helper.make_node("MatMul", ["x", f"w{name}"], [f"{name}_mm"], name=f"{name}.MatMul"))
        y = f"{name}_mm"
        if bias:
            inits.append(numpy_helper.from_array(rng.standard_normal(cols).astype(np.float32), f"b{name}"))
            nodes.append(helper.make_node("Add", [f"b{name}", y] if name == "k" else [y, f"b{name}"],
                                          [f"{name}_b"], name=f"{name}.Add"))
            y = f"{name}_b"
        nodes.append(helper.make_node("Relu", [y], [f"{name}_out"], name=f"{name}.Relu"))
        outs.append(f"{name}_out")
    return _model(nodes, inits, outs, opset=opset)


def _merge(proto):
    model = graphc.load(proto)
    record = PassManager("merge-matmuls").run(model).records[0]
    return model, record


def _check_exact(proto, model, tmp_path):
    path = assert_valid(model, tmp_path)
    for seed in (0, 1):
        assert_same_outputs(proto, path, random_feeds(proto, {"x": (2, 5, K), "y": (2, 5, K)}, seed=seed),
                            rtol=RTOL, atol=ATOL)
    again = PassManager("merge-matmuls").run(model).records[0]
    assert not again.modified and again.stats == {}


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_three_siblings_with_bias_merge(tmp_path, opset):
    proto = _siblings(opset=opset)
    model, record = _merge(proto)
    assert record.stats == {"merged_matmuls": 3, "merged_groups": 1}
    assert [op_count(model, op) for op in ("MatMul", "Add", "Split", "Relu")] == [1, 1, 1, 3]
    matmul = next(n for n in model.graph.nodes if n.op == "MatMul")
    assert matmul.inputs[1].values.shape == (K, 28)
    assert {d["node"] for d in record.details} == {"q.MatMul", "k.MatMul", "v.MatMul"}
    assert all(d["into"] == matmul.name for d in record.details)
    _check_exact(proto, model, tmp_path)


def test_three_siblings_without_bias_merge(tmp_path):
    proto = _siblings(bias=False)
    model, record = _merge(proto)
    assert record.stats == {"merged_matmuls": 3, "merged_groups": 1}
    assert [op_count(model, op) for op in ("MatMul", "Add", "Split")] == [1, 0, 1]
    _check_exact(proto, model, tmp_path)


def test_siblings_whose_outputs_are_graph_outputs_merge(tmp_path):
    """No reader but the graph: the Split writes the graph outputs themselves, names kept."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((K, 4)).astype(np.float32), f"w{i}") for i in range(2)]
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"], name=f"mm{i}") for i in range(2)]
    proto = _model(nodes, inits, ["y0", "y1"])
    model, record = _merge(proto)
    assert record.stats["merged_matmuls"] == 2
    assert [t.name for t in model.graph.outputs] == ["y0", "y1"]
    assert op_count(model, "Split") == 1
    _check_exact(proto, model, tmp_path)


def test_partial_bias_keeps_the_adds_after_the_split(tmp_path):
    """One sibling without a bias Add: the weights merge, the two Adds stay on the Split's outputs."""
    proto = _siblings()
    nodes = [n for n in proto.graph.node if n.name != "v.Add"]
    for n in nodes:
        if n.name == "v.Relu":
            n.input[0] = "v_mm"
    proto = _model(nodes, [i for i in proto.graph.initializer if i.name != "bv"], ["q_out", "k_out", "v_out"])
    model, record = _merge(proto)
    assert record.stats["merged_matmuls"] == 3
    assert [op_count(model, op) for op in ("MatMul", "Add", "Split")] == [1, 2, 1]
    _check_exact(proto, model, tmp_path)


def _pair(second_input="x", second_weight="w1", transpose_second=False):
    """Two MatMuls: mm0 = x W0, mm1 = second_input (Transpose(W1) if transpose_second, else W1)."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal((K, 4)).astype(np.float32), "w0"),
             numpy_helper.from_array(rng.standard_normal((4, K) if transpose_second else (K, 4)).astype(np.float32),
                                     "w1")]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["y0"], name="mm0")]
    w = second_weight
    if transpose_second:
        nodes.append(helper.make_node("Transpose", ["w1"], ["w1t"], name="t", perm=[1, 0]))
        w = "w1t"
    nodes.append(helper.make_node("MatMul", [second_input, w], ["y1"], name="mm1"))
    return nodes, inits


@pytest.mark.parametrize("case", ["different input", "transposed weight", "shared weight", "run-time weight"])
def test_what_must_not_merge(tmp_path, case):
    if case == "different input":
        nodes, inits = _pair(second_input="y")
        proto = _model(nodes, inits, ["y0", "y1"], inputs=("x", "y"))
    elif case == "transposed weight":
        nodes, inits = _pair(transpose_second=True)
        proto = _model(nodes, inits, ["y0", "y1"])
    elif case == "shared weight":  # both read w0: merging would store it twice
        nodes, inits = _pair(second_weight="w0")
        proto = _model(nodes, inits[:1], ["y0", "y1"])
    else:  # the second weight is a graph input
        nodes, inits = _pair(second_weight="w")
        proto = _typed_outputs(make_model(helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5, K]),
                         helper.make_tensor_value_info("w", TensorProto.FLOAT, [K, 4])],
            [helper.make_empty_tensor_value_info(n) for n in ("y0", "y1")], inits[:1])))
    model, record = _merge(proto)
    assert not record.modified and record.stats == {}
    assert op_count(model, "Split") == 0
    assert_valid(model, tmp_path)


def test_different_k_inputs_do_not_merge():
    """Weights of different K cannot read one x; a lone MatMul per input is left as it is."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((K, 4)).astype(np.float32), "w0"),
             numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w1")]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["y0"], name="mm0"),
             helper.make_node("Slice", ["x", "s0", "s1", "ax"], ["xs"], name="slice"),
             helper.make_node("MatMul", ["xs", "w1"], ["y1"], name="mm1")]
    inits += [numpy_helper.from_array(np.asarray(v, np.int64), n)
              for n, v in (("s0", [0]), ("s1", [8]), ("ax", [-1]))]
    model, record = _merge(_model(nodes, inits, ["y0", "y1"]))
    assert not record.modified and op_count(model, "MatMul") == 2


# -- with quant{activations=dynamic}: the merged weight keeps each column's scale -------------------


def _outlier_feeds(n, seed, outliers=(3, 11), factor=30.0):
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(n):
        x = rng.standard_normal((2, 5, K)).astype(np.float32)
        x[..., list(outliers)] *= factor
        feeds.append({"x": x})
    return feeds


def _dynamic(model, pipeline, data):
    from graphc.calib.data import open_data

    model = model.copy()
    report = PassManager(pipeline, data=open_data(data, model) if data is not None else None,
                         prepare=False).run(model)
    return model, report.records[-1]


def _scales(model):
    return {t.name: t.values for t in model.graph.tensors().values()
            if isinstance(t, gs.Constant) and t.name.endswith("_weight_scale")}


@pytest.mark.parametrize("factor", [1.0, 5.0, 30.0])  # no outliers, mild ones (moved into W), strong
def test_merged_then_dynamic_equals_dynamic_per_sibling(tmp_path, factor):
    """Per-column int8 scales of the merged weight are the siblings' scales side by side, the
    outlier channels found on x are the same, and the quantized outputs agree with quantizing each
    sibling alone (the same integer sums, rescaled the same way). Widening siblings (``N_i >= K``,
    as attention's Q/K/V): strong outliers move into the weights either way (outliers.py splits
    only for narrowing readers, and the merged reader is judged by its merged width)."""
    proto = _siblings(n=(16, 24, 16))
    base = graphc.load(proto)
    data = _outlier_feeds(6, 0, factor=factor)
    dyn = "quant{activations=dynamic placement=all}"
    alone, rec_alone = _dynamic(base, dyn.replace("}", " merge-siblings=false}"), data)
    merged, rec_merged = _dynamic(base, f"merge-matmuls,{dyn}", data)
    assert op_count(alone, "MatMulInteger") == 3 and op_count(merged, "MatMulInteger") == 1
    assert op_count(merged, "Split") == 1
    outlier_keys = ("outlier_channels_float", "outlier_channels_scaled")
    assert {k: rec_alone.stats.get(k) for k in outlier_keys} == {k: rec_merged.stats.get(k) for k in outlier_keys}
    per_sibling = [v for name, v in sorted(_scales(alone).items(), key=lambda kv: "qkv".index(kv[0][0]))]
    (merged_scale,) = _scales(merged).values()
    np.testing.assert_array_equal(merged_scale, np.concatenate(per_sibling))
    path = assert_valid(merged, tmp_path)
    for feed in _outlier_feeds(2, 9, factor=factor):
        for a, b in zip(run(alone, feed), run(path, feed)):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max())
