"""factorize: svd / tucker / dw on tiny graphs (exact at full rank, rank rules, costs, skips,
idempotence), and data-aware svd against plain svd on the trained zoo transformer."""
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.calib.data import open_data
from graphc.errors import DataError, OptionError
from graphc.passmanager import PassManager, parse_pipeline
from support import MODELS, assert_same_outputs, assert_valid, make_model, op_count, ppocr_model, random_feeds, run

RNG = np.random.default_rng(0)


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _weights(*shape, fan_in=None, seed=0):
    """Scaled like a trained layer (outputs of order 1), so float32 rounding stays ~1e-7."""
    rng = np.random.default_rng(seed)
    fan_in = fan_in or int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) / math.sqrt(fan_in)).astype(np.float32)


def _model(nodes, inputs, inits, out="y"):
    """A model whose output ``out`` gets the shape ONNX inference gives it."""
    graph = helper.make_graph(nodes, "g", inputs, [_vi(out, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return _declare_outputs(make_model(graph, opset=13))


def _declare_outputs(proto):
    inferred = onnx.shape_inference.infer_shapes(proto).graph
    types = {vi.name: vi.type for vi in list(inferred.value_info) + list(inferred.output)}
    for vi in proto.graph.output:
        if vi.name in types and types[vi.name].tensor_type.HasField("shape"):
            vi.type.CopyFrom(types[vi.name])
    return proto


def _matmul(w, x_shape, extra=()):
    return _model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm"), *extra],
                  [_vi("x", list(x_shape))], {"W": w})


def _gemm(w, x_shape, bias=None, **attrs):
    names = ["x", "W"] + (["C"] if bias is not None else [])
    inits = {"W": w, **({"C": bias} if bias is not None else {})}
    return _model([helper.make_node("Gemm", names, ["y"], name="fc", **attrs)], [_vi("x", list(x_shape))], inits)


def _conv(w, x_shape, bias=None, **attrs):
    names = ["x", "W"] + (["B"] if bias is not None else [])
    inits = {"W": w, **({"B": bias} if bias is not None else {})}
    return _model([helper.make_node("Conv", names, ["y"], name="conv", **attrs)], [_vi("x", list(x_shape))], inits)


def _data(proto, n=6, seed=1):
    feeds = [random_feeds(proto, seed=seed + i) for i in range(n)]
    return open_data(feeds, graphc.load(proto))


def _run(proto, pipeline, data=None):
    model = graphc.load(proto)
    record = PassManager(pipeline, data=data).run(model).records[0]
    return model, record


def _check_exact(proto, model, tmp_path, feeds=None):
    path = assert_valid(model, tmp_path)
    assert_same_outputs(proto, path, feeds or random_feeds(proto, seed=7), rtol=1e-5, atol=1e-6)


def _check_idempotent(model, pipeline, data=None):
    again = PassManager(pipeline, data=data).run(model).records[0]
    assert not again.modified and again.details == []
    assert again.skipped.get("already factored", 0) >= 1


def _measured_error(proto, model, data):
    """Relative output error over the data, measured in onnxruntime (single-layer models)."""
    num = den = 0.0
    for feed in data:
        ref, got = run(proto, feed)[0].astype(np.float64), run(model, feed)[0].astype(np.float64)
        num += float(np.sum((ref - got) ** 2))
        den += float(np.sum(ref ** 2))
    return math.sqrt(num / den)


def _spectrum_matrix(m, n, sigma, seed=0):
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, len(sigma))))
    v, _ = np.linalg.qr(rng.standard_normal((n, len(sigma))))
    return ((u * sigma) @ v.T).astype(np.float32)


# -- options ---------------------------------------------------------------------------------


def test_one_rank_rule_at_a_time():
    with pytest.raises(OptionError, match="one rank rule"):
        parse_pipeline("factorize{rank=0.5 energy=0.9}")
    text = "factorize{method=tucker max-error=0.05 min-saving=0.2}"
    assert parse_pipeline(text).text() == text
    with pytest.raises(OptionError):
        parse_pipeline("factorize{method=cp}")


def test_max_error_without_data_is_refused():
    proto = _matmul(_weights(16, 12), (4, 16))
    with pytest.raises(DataError, match="max-error"):
        _run(proto, "factorize{max-error=0.1}")


# -- svd ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("x_shape", [(5, 16), (2, 5, 16)])
@pytest.mark.parametrize("with_data", [False, True])
def test_svd_matmul_exact_at_full_rank(tmp_path, x_shape, with_data):
    proto = _matmul(_weights(16, 12), x_shape, [])
    data = _data(proto) if with_data else None
    pipeline = "factorize{rank=1.0 force=true}"
    model, record = _run(proto, pipeline, data)
    assert op_count(model, "MatMul") == 2 and len(model.graph.nodes) == 2
    assert model.graph.outputs[0].name == "y"
    (detail,) = record.details
    assert detail["ranks"] == detail["full_ranks"] == [12]
    assert detail["macs_before"] == math.prod(x_shape[:-1]) * 16 * 12
    assert detail["macs_after"] == math.prod(x_shape[:-1]) * 12 * 28
    assert detail["params_after"] == 12 * 28 and detail["est_error"] < 1e-9
    assert detail["data_aware"] is with_data
    assert detail["error_basis"] == ("calibration data" if with_data else "weights")
    _check_exact(proto, model, tmp_path)
    _check_idempotent(model, pipeline, data)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias_shape", [None, (6,), (1, 6), (4, 6)])
def test_svd_gemm_exact_at_full_rank(tmp_path, trans_b, bias_shape):
    w = _weights(6, 10) if trans_b else _weights(10, 6)
    bias = None if bias_shape is None else RNG.standard_normal(bias_shape).astype(np.float32)
    proto = _gemm(w, (4, 10), bias, transB=trans_b, alpha=0.7, beta=1.3)
    model, record = _run(proto, "factorize{rank=1.0 force=true}")
    assert len(model.graph.nodes) == 2 and op_count(model, "MatMul") == (2 if bias is None else 1)
    if bias is not None:
        (gemm,) = [n for n in model.graph.nodes if n.op == "Gemm"]
        assert gemm.name == "fc.svd.u" and gemm.inputs[2].name == "C"
        assert gemm.attrs["beta"] == pytest.approx(1.3)
    assert record.details[0]["ranks"] == [6]
    _check_exact(proto, model, tmp_path)


def test_svd_rank_fraction_rounds_up_and_saves(tmp_path):
    proto = _matmul(_weights(64, 48), (3, 64))
    model, record = _run(proto, "factorize{rank=0.25}")
    (detail,) = record.details
    assert detail["ranks"] == [12] and detail["full_ranks"] == [48]
    assert detail["macs_after"] == 3 * 12 * (64 + 48) < detail["macs_before"]
    w = numpy_helper.to_array(proto.graph.initializer[0]).astype(np.float64)
    sigma = np.linalg.svd(w, compute_uv=False)
    assert detail["est_error"] == pytest.approx(math.sqrt(np.sum(sigma[12:] ** 2) / np.sum(sigma ** 2)))
    assert_valid(model, tmp_path)


def test_svd_energy_rule_keeps_the_smallest_sufficient_rank():
    sigma = np.array([10, 6, 4, 3, 2, 1, 0.5, 0.25] + [0.0] * 8)
    proto = _matmul(_spectrum_matrix(32, 16, sigma), (2, 32))
    energy = np.cumsum(sigma ** 2) / np.sum(sigma ** 2)
    for kept in (0.5, 0.9, 0.99):
        _, record = _run(proto, f"factorize{{energy={kept}}}")
        (r,) = record.details[0]["ranks"]
        assert energy[r - 1] >= kept and (r == 1 or energy[r - 2] < kept)


def test_svd_max_error_rule_measured_in_onnxruntime(tmp_path):
    # Anisotropic inputs: a few input directions carry most of the activation energy.
    w = _weights(32, 24)
    mix = np.diag(np.geomspace(3.0, 0.05, 32)).astype(np.float32)
    proto = _model([helper.make_node("MatMul", ["x", "M"], ["a"], name="mix"),
                    helper.make_node("MatMul", ["a", "W"], ["y"], name="mm")],
                   [_vi("x", [8, 32])], {"M": mix, "W": w})
    data = _data(proto, n=8)
    for whiten in ("true", "false"):
        model, record = _run(proto, f"factorize{{max-error=0.1 whiten={whiten} ignore=mix force=true}}", data)
        (detail,) = record.details
        assert detail["est_error"] <= 0.1
        assert _measured_error(proto, model, data) == pytest.approx(detail["est_error"], rel=1e-3)
    # one rank less would exceed the budget
    r = detail["ranks"][0]
    _, smaller = _run(proto, f"factorize{{rank={(r - 1) / 24} whiten=false ignore=mix force=true}}", data)
    assert smaller.details[0]["ranks"] == [r - 1] and smaller.details[0]["est_error"] > 0.1


def test_svd_data_aware_beats_plain_on_anisotropic_inputs():
    w = _weights(32, 24)
    mix = _weights(32, 32, seed=3) * np.geomspace(4.0, 0.02, 32).astype(np.float32)
    proto = _model([helper.make_node("MatMul", ["x", "M"], ["a"], name="mix"),
                    helper.make_node("MatMul", ["a", "W"], ["y"], name="mm")],
                   [_vi("x", [8, 32])], {"M": mix, "W": w})
    data = _data(proto, n=8)
    errors = {}
    for whiten in ("true", "false"):
        model, record = _run(proto, f"factorize{{rank=0.25 whiten={whiten} ignore=mix force=true}}", data)
        errors[whiten] = (record.details[0]["est_error"], _measured_error(proto, model, data))
    assert errors["true"][0] < 0.5 * errors["false"][0]
    assert errors["true"][1] < 0.5 * errors["false"][1]


def test_svd_min_saving_and_no_layer_made_more_expensive():
    proto = _matmul(_weights(16, 16), (4, 16))
    # r (m + n) < m n  <=>  r < 8 for a 16x16 weight
    _, full = _run(proto, "factorize{rank=1.0}")
    assert not full.modified and full.skipped == {"factoring would not reduce MACs at the chosen rank": 1}
    _, half = _run(proto, "factorize{rank=0.5}")
    assert not half.modified
    _, cheaper = _run(proto, "factorize{rank=0.4375}")  # r = 7: 224 < 256, saving 12.5%
    assert cheaper.details[0]["macs_after"] == 4 * 7 * 32
    _, strict = _run(proto, "factorize{rank=0.4375 min-saving=0.2}")
    assert strict.skipped == {"MAC saving below min-saving at the chosen rank": 1}
    for rule in ("rank=0.3", "rank=0.9", "energy=0.5", "energy=0.999"):
        _, record = _run(proto, f"factorize{{{rule} min-saving=0.0}}")
        for detail in record.details:
            assert detail["macs_after"] < detail["macs_before"]


def test_svd_leaves_non_candidates_alone():
    nodes = [
        helper.make_node("MatMul", ["x", "x2"], ["a"], name="two_inputs"),
        helper.make_node("MatMul", ["a", "W3"], ["b"], name="batched_weight"),
        helper.make_node("Gemm", ["v", "G"], ["c"], name="trans_a", transA=1),
        helper.make_node("MatMul", ["b", "W"], ["y1"], name="ignored"),
        helper.make_node("Gemm", ["c", "Wi"], ["y2"], name="integer", transB=1),
    ]
    w3 = _weights(2, 8, 8)
    graph = helper.make_graph(nodes, "g", [_vi("x", [2, 4, 8]), _vi("x2", [2, 8, 8]), _vi("v", [8, 4])],
                              [_vi("y1", None), helper.make_tensor_value_info("y2", TensorProto.INT32, None)],
                              [numpy_helper.from_array(w3, "W3"), numpy_helper.from_array(_weights(8, 8), "G"),
                               numpy_helper.from_array(_weights(8, 2), "W"),
                               numpy_helper.from_array(np.ones((3, 8), np.int32), "Wi")])
    proto = _declare_outputs(make_model(graph))
    model, record = _run(proto, "factorize{rank=0.1 force=true ignore=ign*}")
    assert not record.modified and len(model.graph.nodes) == 5
    assert record.skipped == {"weight is not constant": 1, "weight is not 2-D": 1, "Gemm with transA": 1,
                              "ignored by pattern": 1, "weight dtype int32 is not floating point": 1}


def test_svd_shared_weight_and_intermediate_output(tmp_path):
    w = _weights(16, 12)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["a"], name="first"),
             helper.make_node("MatMul", ["x", "W"], ["b"], name="second"),
             helper.make_node("Add", ["a", "b"], ["y"])]
    proto = _model(nodes, [_vi("x", [3, 16])], {"W": w})
    model, record = _run(proto, "factorize{rank=1.0 force=true}")
    assert [d["node"] for d in record.details] == ["first", "second"]
    assert op_count(model, "MatMul") == 4 and op_count(model, "Add") == 1
    _check_exact(proto, model, tmp_path)


# -- tucker and dw: geometry ---------------------------------------------------------------------

GEOMETRIES = [
    pytest.param(dict(), (2, 6, 9, 9), id="plain"),
    pytest.param(dict(strides=[2, 2], pads=[1, 1, 1, 1]), (2, 6, 10, 9), id="stride2-pad1"),
    pytest.param(dict(strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2]), (1, 6, 11, 10), id="asymmetric"),
    pytest.param(dict(auto_pad="SAME_UPPER", strides=[2, 2]), (1, 6, 9, 8), id="same-upper"),
]


@pytest.mark.parametrize("method", ["tucker", "dw"])
@pytest.mark.parametrize("attrs,x_shape", GEOMETRIES)
@pytest.mark.parametrize("with_data", [False, True])
def test_conv_exact_at_full_rank(tmp_path, method, attrs, x_shape, with_data):
    w, b = _weights(8, 6, 3, 3), RNG.standard_normal(8).astype(np.float32)
    proto = _conv(w, x_shape, b, **attrs)
    data = _data(proto, n=3) if with_data else None
    pipeline = f"factorize{{method={method} rank=1.0 force=true}}"
    model, record = _run(proto, pipeline, data)
    (detail,) = record.details
    assert detail["ranks"] == detail["full_ranks"] == ([6, 8] if method == "tucker" else [8])
    assert detail["est_error"] < 1e-9 and detail["data_aware"] is with_data
    convs = [n for n in model.graph.nodes if n.op == "Conv"]
    assert len(convs) == len(model.graph.nodes) == (3 if method == "tucker" else 2)
    assert convs[-1].inputs[2].name == "B" and convs[-1].outputs[0].name == "y"
    spatial = convs[1] if method == "tucker" else convs[0]
    for key in ("strides", "pads", "dilations", "auto_pad"):
        assert spatial.attrs.get(key) == attrs.get(key)
    assert spatial.attrs["group"] == (1 if method == "tucker" else 6)
    _check_exact(proto, model, tmp_path)
    _check_idempotent(model, pipeline, data)


@pytest.mark.parametrize("method", ["tucker", "dw"])
def test_conv_1d_and_no_bias_exact(tmp_path, method):
    proto = _conv(_weights(5, 4, 5), (2, 4, 20), strides=[3], pads=[2, 1])
    model, record = _run(proto, f"factorize{{method={method} rank=1.0 force=true}}")
    assert record.details[0]["full_ranks"] == ([4, 5] if method == "tucker" else [5])
    assert all(len(n.inputs) == 2 for n in model.graph.nodes)
    _check_exact(proto, model, tmp_path)


def test_dw_full_rank_is_min_of_kernel_and_outputs(tmp_path):
    proto = _conv(_weights(4, 3, 3, 3), (1, 3, 7, 7), pads=[1, 1, 1, 1])  # Cout 4 < K^2 9
    model, record = _run(proto, "factorize{method=dw rank=1.0 force=true}")
    assert record.details[0]["full_ranks"] == [4]
    depthwise = next(n for n in model.graph.nodes if n.name == "conv.dw.depthwise")
    assert depthwise.inputs[1].shape == (12, 1, 3, 3)
    _check_exact(proto, model, tmp_path)


@pytest.mark.parametrize("method", ["tucker", "dw"])
def test_conv_skips(method):
    nodes = [
        helper.make_node("Conv", ["x", "P"], ["a"], name="pointwise"),
        helper.make_node("Conv", ["a", "D"], ["b"], name="grouped", group=4, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["b", "x"], ["y"], name="dynamic_weight"),
    ]
    proto = _model(nodes, [_vi("x", [4, 4, 3, 3])], {"P": _weights(4, 4, 1, 1), "D": _weights(4, 1, 3, 3)})
    model, record = _run(proto, f"factorize{{method={method} rank=0.1 force=true}}")
    assert not record.modified and len(model.graph.nodes) == 3
    assert record.skipped == {"1x1 kernel: no spatial mode to factor": 1, "grouped Conv (groups=1 only)": 1,
                              "weight is not constant": 1}


@pytest.mark.parametrize("attrs", [dict(pads=[1, 1, 1, 1]), dict(auto_pad="SAME_UPPER", strides=[2, 2])],
                         ids=["pad1", "same-upper-stride2"])
def test_dynamic_spatial_conv_is_costed_at_a_nominal_shape_and_exact_at_every_size(tmp_path, attrs):
    """Dynamic H/W: MACs at the nominal 224x224 (said in one note), and the rewrite (which keeps
    pads/auto_pad) is exact at input sizes other than the nominal one."""
    proto = _conv(_weights(8, 6, 3, 3), ("n", 6, "h", "w"), **attrs)
    model = graphc.load(proto)
    report = PassManager("factorize{method=tucker rank=1.0 force=true}").run(model)
    (record,) = report.records
    (detail,) = record.details
    side = 224 if "pads" in attrs else 112
    assert detail["macs_before"] == side * side * 8 * 6 * 9
    assert report.notes == ["factorize counts Conv MACs at a nominal shape (x:1x6x224x224; --input-shape "
                            "to choose)"]
    path = assert_valid(model, tmp_path)
    for shape in [(1, 6, 9, 13), (2, 6, 16, 16)]:
        feeds = {"x": RNG.standard_normal(shape).astype(np.float32)}
        assert_same_outputs(proto, path, feeds, rtol=1e-5, atol=1e-6)


def test_dynamic_spatial_conv_is_costed_at_the_given_shape_or_the_first_sample():
    proto = _conv(_weights(8, 6, 3, 3), ("n", 6, "h", "w"), pads=[1, 1, 1, 1])
    given = PassManager("factorize{method=tucker rank=0.5}", input_shapes={"x": (1, 6, 10, 12)})
    report = given.run(graphc.load(proto))
    assert report.records[0].details[0]["macs_before"] == 120 * 8 * 6 * 9 and report.notes == []
    samples = [{"x": RNG.standard_normal((1, 6, 5, 7)).astype(np.float32)} for _ in range(2)]
    model = graphc.load(proto)
    report = PassManager("factorize{method=tucker rank=0.5}", data=open_data(samples, model)).run(model)
    assert report.records[0].details[0]["macs_before"] == 35 * 8 * 6 * 9
    assert report.notes == ["factorize counts Conv MACs at the first calibration sample's shape"]


# -- tucker and dw: rank rules and costs ---------------------------------------------------------


def _low_rank_kernel(cout, cin, k, r_out, r_in, seed=0):
    rng = np.random.default_rng(seed)
    core = rng.standard_normal((r_out, r_in, k, k))
    u, _ = np.linalg.qr(rng.standard_normal((cout, r_out)))
    v, _ = np.linalg.qr(rng.standard_normal((cin, r_in)))
    w = np.einsum("oa,abij,cb->ocij", u, core, v)
    return (w / np.sqrt(cin * k * k) * 4).astype(np.float32)


def test_tucker_rank_fraction_and_macs(tmp_path):
    proto = _conv(_weights(32, 24, 3, 3), (1, 24, 8, 8), pads=[1, 1, 1, 1], strides=[2, 2])
    model, record = _run(proto, "factorize{method=tucker rank=0.25}")
    (detail,) = record.details
    assert detail["ranks"] == [6, 8] and detail["full_ranks"] == [24, 32]
    assert detail["macs_before"] == 16 * 32 * 24 * 9
    assert detail["macs_after"] == 64 * 24 * 6 + 16 * (8 * 6 * 9 + 32 * 8)
    assert detail["params_after"] == 24 * 6 + 8 * 6 * 9 + 32 * 8
    shapes = {n.name: n.inputs[1].shape for n in model.graph.nodes}
    assert shapes == {"conv.tucker.in": (6, 24, 1, 1), "conv.tucker.core": (8, 6, 3, 3),
                      "conv.tucker.out": (32, 8, 1, 1)}
    assert_valid(model, tmp_path)


def test_tucker_energy_recovers_exact_low_rank(tmp_path):
    proto = _conv(_low_rank_kernel(32, 24, 3, r_out=5, r_in=4), (2, 24, 8, 8), pads=[1, 1, 1, 1])
    model, record = _run(proto, "factorize{method=tucker energy=0.999999}")
    assert record.details[0]["ranks"] == [4, 5] and record.details[0]["est_error"] < 1e-6
    _check_exact(proto, model, tmp_path)


def test_tucker_max_error_measured_in_onnxruntime():
    proto = _conv(_weights(16, 12, 3, 3), (2, 12, 8, 8), pads=[1, 1, 1, 1])
    data = _data(proto, n=4)
    for whiten in ("true", "false"):
        model, record = _run(proto, f"factorize{{method=tucker max-error=0.6 whiten={whiten} force=true}}", data)
        (detail,) = record.details
        assert detail["est_error"] <= 0.6 and detail["ranks"] != detail["full_ranks"]
        assert _measured_error(proto, model, data) == pytest.approx(detail["est_error"], rel=1e-3)


def test_dw_used_only_where_cheaper(tmp_path):
    # Cout 4, K 3: T (9 + 4) < 4 * 9 only for T <= 2
    proto = _conv(_weights(4, 6, 3, 3), (1, 6, 8, 8), pads=[1, 1, 1, 1])
    _, full = _run(proto, "factorize{method=dw rank=1.0}")
    assert not full.modified
    model, half = _run(proto, "factorize{method=dw rank=0.5 min-saving=0.0}")
    (detail,) = half.details
    assert detail["ranks"] == [2] and detail["macs_after"] == 64 * 6 * 2 * 13 < detail["macs_before"]
    assert_valid(model, tmp_path)


def test_dw_energy_and_max_error(tmp_path):
    # Every input channel's 3x3 slices span 2 filters: exact at T = 2.
    rng = np.random.default_rng(2)
    filters = rng.standard_normal((6, 2, 9))
    mix = rng.standard_normal((16, 6, 2))
    w = (np.einsum("oct,ctk->ock", mix, filters).reshape(16, 6, 3, 3) / 8).astype(np.float32)
    proto = _conv(w, (1, 6, 8, 8), pads=[1, 1, 1, 1])
    model, record = _run(proto, "factorize{method=dw energy=0.999999}")
    assert record.details[0]["ranks"] == [2]
    _check_exact(proto, model, tmp_path)
    data = _data(proto, n=3)
    model, record = _run(proto, "factorize{method=dw max-error=0.01}", data)
    assert record.details[0]["ranks"] == [2] and record.details[0]["est_error"] < 1e-6


@pytest.mark.parametrize("method", ["tucker", "dw"])
@pytest.mark.parametrize("rule", ["rank=1.0", "rank=0.6", "rank=0.3", "energy=0.95", "energy=0.5"])
def test_conv_never_made_more_expensive(method, rule):
    proto = _conv(_weights(16, 12, 3, 3), (1, 12, 8, 8), pads=[1, 1, 1, 1])
    _, record = _run(proto, f"factorize{{method={method} {rule} min-saving=0.25}}")
    for detail in record.details:
        assert detail["macs_after"] <= 0.75 * detail["macs_before"]
    if not record.modified:
        assert sum(record.skipped.values()) == 1 and "MAC" in next(iter(record.skipped))


@pytest.mark.parametrize("pipeline,proto", [
    ("factorize{rank=0.25}", _matmul(_weights(64, 48), (3, 5, 64))),
    ("factorize{rank=0.5 force=true}", _gemm(_weights(10, 6), (4, 10), np.zeros(6, np.float32))),
    ("factorize{method=tucker rank=0.5}", _conv(_weights(16, 12, 3, 3), (1, 12, 9, 9), strides=[2, 2])),
    ("factorize{method=dw rank=0.2}", _conv(_weights(32, 8, 3, 3), (1, 8, 8, 8), pads=[1, 1, 1, 1])),
])
def test_recorded_costs_match_model_stats(pipeline, proto):
    from graphc.stats import model_stats

    model, record = _run(proto, pipeline)
    (detail,) = record.details
    before, after = model_stats(graphc.load(proto)), model_stats(model)
    assert (detail["macs_before"], detail["macs_after"]) == (before.macs, after.macs)
    bias = sum(i.dims[0] if len(i.dims) == 1 else int(np.prod(i.dims)) for i in proto.graph.initializer
               if i.name in ("B", "C"))
    assert (detail["params_before"], detail["params_after"]) == (before.params - bias, after.params - bias)


# -- the zoo: data-aware svd against plain svd ---------------------------------------------------


def _zoo(name):
    path = MODELS / name
    if not path.exists() or not (MODELS / "digits_calib.npz").exists():
        pytest.skip(f"models/{name} not built (python models/build.py)")
    return path


def test_data_aware_svd_beats_plain_svd_on_the_trained_transformer():
    path = _zoo("transformer_digits.onnx")
    reference = graphc.load(path)
    calib = open_data(MODELS / "digits_calib.npz", reference, batch=16)
    test = np.load(MODELS / "digits_test.npz")
    feeds, labels = {"input": test["input"][:200]}, test["labels"][:200]
    ref_out = run(path, feeds)[0].astype(np.float64)
    results = {}
    for whiten in ("true", "false"):
        model = graphc.load(path)
        record = PassManager(f"factorize{{rank=0.5 whiten={whiten} force=true}}", data=calib).run(model).records[0]
        out = run(model, feeds)[0]
        results[whiten] = ({d["node"]: d for d in record.details}, float(np.sum((out - ref_out) ** 2)),
                           float(np.mean(out.argmax(1) == labels)))
    aware, plain = results["true"], results["false"]
    assert aware[0].keys() == plain[0].keys() and len(aware[0]) == 14  # 13 MatMuls and the Gemm
    for node, detail in aware[0].items():  # equal ranks, lower output error on every layer
        assert detail["ranks"] == plain[0][node]["ranks"]
        assert detail["est_error"] < plain[0][node]["est_error"], node
    assert aware[1] < 0.5 * plain[1]  # and at the model's output, on held-out data
    assert aware[2] > plain[2] + 0.2


def test_ppocr_det_with_dynamic_hw_factors_without_flags(tmp_path):
    """PP-OCRv4 det declares [N, 3, H, W]: its 3x3 Convs are costed at the nominal shape, none is
    skipped as "spatial shape unknown", and the full-rank rewrite matches at two input sizes."""
    src = ppocr_model("det")
    if src is None:
        pytest.skip("rapidocr-onnxruntime (PP-OCR models) not installed")
    model = graphc.load(src)
    report = PassManager("factorize{method=tucker rank=1.0 force=true}").run(model)
    (record,) = report.records
    assert record.stats == {"factored": 6}
    assert record.skipped == {"grouped Conv (groups=1 only)": 14, "1x1 kernel: no spatial mode to factor": 42}
    assert report.notes == ["factorize counts Conv MACs at a nominal shape (x:1x3x224x224; --input-shape to choose)"]
    path = assert_valid(model, tmp_path)
    for shape in [(1, 3, 96, 128), (1, 3, 64, 64)]:
        feeds = {"x": np.random.default_rng(0).random(shape).astype(np.float32)}
        assert_same_outputs(src, path, feeds, rtol=1e-4, atol=1e-5)
