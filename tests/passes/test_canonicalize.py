"""canonicalize: every rule on tiny graphs (must / must not), idempotence, exactness, and the
whole pass on the PP-OCR models."""
import numpy as np
import onnx
import onnx.parser
import onnx_graphsurgeon as gs
import pytest
from onnx import numpy_helper

import graphc
from graphc.errors import OptionError
from graphc.passmanager import PassManager
from support import PPOCR_SHAPES, assert_same_outputs, assert_valid, op_count, ppocr_model, random_feeds

RTOL, ATOL = 1e-5, 1e-5


def _model(body: str, *, opset: int = 14, inputs: str = "float[1,4,5,5] x",
           outputs: str = "float[1,4,5,5] y", consts: str = "", **weights: np.ndarray) -> onnx.ModelProto:
    """A model from ONNX text; ``consts`` declares small initializers, ``weights`` adds arrays."""
    init = f"<{consts}>" if consts else ""
    text = f'<ir_version: 8, opset_import: ["" : {opset}]>\ng ({inputs}) => ({outputs}) {init} {{ {body} }}'
    proto = onnx.parser.parse_model(text)
    for name, value in weights.items():
        proto.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _run(proto, options: str = ""):
    model = graphc.load(proto)
    record = PassManager(f"canonicalize{{{options}}}" if options else "canonicalize").run(model).records[0]
    return model, record


def _ops(model) -> list[str]:
    return sorted(n.op for n in model.graph.nodes)


def _check(proto, model, tmp_path, options: str = "", feeds=None):
    """Valid, same outputs as the original in onnxruntime, and a second run changes nothing."""
    path = assert_valid(model, tmp_path)
    assert_same_outputs(proto, path, feeds or random_feeds(proto), rtol=RTOL, atol=ATOL)
    again = _run(onnx.load(str(path)), options)[1]
    assert not again.modified and again.stats == {}


def _node(model, op):
    return next(n for n in model.graph.nodes if n.op == op)


HSWISH_CONSTS = "float three = {3.0}, float six = {6.0}, float zero = {0.0}"


# -- hardswish ------------------------------------------------------------------------------------


@pytest.mark.parametrize("tail", [
    "m = Mul(x, c)\n y = Div(m, six)",                         # x * clip / 6
    "d = Div(c, six)\n y = Mul(x, d)",                         # x * (clip / 6)
    "m = Mul(c, x)\n y = Mul(m, sixth)",                       # Mul by 1/6
])
def test_hardswish_native_from_opset_14(tail, tmp_path):
    proto = _model(f"a = Add(x, three)\n c = Clip(a, zero, six)\n {tail}",
                   consts=HSWISH_CONSTS + ", float sixth = {0.16666667}")
    model, record = _run(proto)
    assert _ops(model) == ["HardSwish"]
    assert record.stats == {"hardswish": 1}
    _check(proto, model, tmp_path)


def test_hardswish_below_opset_14_is_x_times_hardsigmoid(tmp_path):
    proto = _model("a = Add(x, three)\n c = Clip(a, zero, six)\n m = Mul(x, c)\n y = Div(m, six)",
                   opset=12, consts=HSWISH_CONSTS)
    model, record = _run(proto)
    assert _ops(model) == ["HardSigmoid", "Mul"]
    hsig = _node(model, "HardSigmoid")
    assert hsig.attrs["alpha"] == pytest.approx(1 / 6) and hsig.attrs["beta"] == pytest.approx(0.5)
    assert model.opset == 12 and record.stats == {"hardswish": 1}
    _check(proto, model, tmp_path)


def test_hardswish_upgrade_opset(tmp_path):
    proto = _model("a = Add(x, three)\n c = Clip(a, zero, six)\n m = Mul(x, c)\n y = Div(m, six)",
                   opset=12, consts=HSWISH_CONSTS)
    model, record = _run(proto, "upgrade-opset=true")
    assert _ops(model) == ["HardSwish"] and model.opset == 14
    assert record.stats["opset_upgraded_to"] == 14
    _check(proto, model, tmp_path, "upgrade-opset=true")


def test_failed_opset_upgrade_falls_back_to_hardsigmoid(monkeypatch, tmp_path):
    from graphc.errors import ModelError
    from graphc.passmanager import Context

    def refuse(self, version):
        raise ModelError(f"cannot upgrade opset {self.opset} -> {version}: converter says no")

    monkeypatch.setattr(Context, "require_opset", refuse)
    proto = _model("a = Add(x, three)\n c = Clip(a, zero, six)\n m = Mul(x, c)\n y = Div(m, six)",
                   opset=12, consts=HSWISH_CONSTS)
    model, record = _run(proto, "upgrade-opset=true")
    assert _ops(model) == ["HardSigmoid", "Mul"] and model.opset == 12
    assert record.skipped == {"opset upgrade to 14 failed; native ops needing it not used": 1}
    _check(proto, model, tmp_path)


def test_x_times_hardsigmoid_becomes_hardswish_at_opset_14(tmp_path):
    proto = _model("h = HardSigmoid <alpha = 0.16666667, beta = 0.5> (x)\n y = Mul(x, h)")
    model, _ = _run(proto)
    assert _ops(model) == ["HardSwish"]
    _check(proto, model, tmp_path)


@pytest.mark.parametrize("consts", [
    "float three = {2.0}, float six = {6.0}, float zero = {0.0}, float top = {6.0}",   # x + 2
    "float three = {3.0}, float six = {6.0}, float zero = {0.0}, float top = {5.0}",   # clip 0..5
    "float three = {3.0}, float six = {5.0}, float zero = {0.0}, float top = {6.0}",   # / 5
    "float three = {3.0}, float six = {6.0}, float zero = {-1.0}, float top = {6.0}",  # clip -1..6
])
def test_hardswish_like_chain_with_other_constants_is_not_hardswish(consts, tmp_path):
    proto = _model("a = Add(x, three)\n c = Clip(a, zero, top)\n m = Mul(x, c)\n y = Div(m, six)", consts=consts)
    model, _ = _run(proto)
    assert op_count(model, "HardSwish") == 0 and op_count(model, "Clip") == 1
    _check(proto, model, tmp_path)


def test_hardswish_not_fused_when_intermediate_is_read_elsewhere(tmp_path):
    proto = _model("a = Add(x, three)\n c = Clip(a, zero, six)\n m = Mul(x, c)\n d = Div(m, six)\n y = Add(d, c)",
                   consts=HSWISH_CONSTS)
    model, _ = _run(proto)
    assert op_count(model, "HardSwish") == 0 and op_count(model, "Clip") == 1
    _check(proto, model, tmp_path)


def test_hardswish_not_fused_when_intermediate_is_a_graph_output(tmp_path):
    proto = _model("a = Add(x, three)\n c = Clip(a, zero, six)\n m = Mul(x, c)\n y = Div(m, six)",
                   outputs="float[1,4,5,5] y, float[1,4,5,5] c", consts=HSWISH_CONSTS)
    model, _ = _run(proto)
    assert op_count(model, "HardSwish") == 0 and [t.name for t in model.graph.outputs] == ["y", "c"]
    _check(proto, model, tmp_path)


# -- hardsigmoid ------------------------------------------------------------------------------------


def test_hardsigmoid_from_clip_over_h(tmp_path):
    proto = _model("a = Add(x, three)\n c = Clip(a, zero, six)\n y = Div(c, six)", consts=HSWISH_CONSTS)
    model, record = _run(proto)
    assert _ops(model) == ["HardSigmoid"] and record.stats == {"hardsigmoid": 1}
    node = _node(model, "HardSigmoid")
    assert node.attrs["alpha"] == pytest.approx(1 / 6) and node.attrs["beta"] == pytest.approx(0.5)
    _check(proto, model, tmp_path)


def test_hardsigmoid_from_clip_of_affine(tmp_path):
    proto = _model("m = Mul(x, a)\n s = Add(m, b)\n y = Clip(s, zero, one)",
                   consts="float a = {0.2}, float b = {0.5}, float zero = {0.0}, float one = {1.0}")
    model, _ = _run(proto)
    assert _ops(model) == ["HardSigmoid"]
    node = _node(model, "HardSigmoid")
    assert node.attrs["alpha"] == pytest.approx(0.2) and node.attrs["beta"] == pytest.approx(0.5)
    _check(proto, model, tmp_path)


@pytest.mark.parametrize("body", [
    "a = Add(x, three)\n c = Clip(a, one, six)\n y = Div(c, six)",     # lower bound 1
    "a = Add(x, three)\n c = Clip(a, zero, six)\n y = Div(c, three)",  # divides by the wrong value
    "s = Add(x, three)\n y = Clip(s, zero, six)",                       # no division
])
def test_hardsigmoid_must_not_match(body, tmp_path):
    proto = _model(body, consts=HSWISH_CONSTS + ", float one = {1.0}")
    model, record = _run(proto)
    assert op_count(model, "HardSigmoid") == 0 and "hardsigmoid" not in record.stats
    _check(proto, model, tmp_path)


# -- silu / gelu / mish ------------------------------------------------------------------------------


def test_silu_to_swish_at_opset_24(tmp_path):
    proto = _model("s = Sigmoid(x)\n y = Mul(x, s)", opset=24)
    model, record = _run(proto)
    assert _ops(model) == ["Swish"] and record.stats == {"silu": 1}
    _check(proto, model, tmp_path)


def test_swish_with_beta(tmp_path):
    proto = _model("b = Mul(x, two)\n s = Sigmoid(b)\n y = Mul(s, x)", opset=24, consts="float two = {1.702}")
    model, _ = _run(proto)
    assert _ops(model) == ["Swish"] and _node(model, "Swish").attrs["alpha"] == pytest.approx(1.702)
    _check(proto, model, tmp_path)


def test_silu_left_alone_below_opset_24_with_reason():
    proto = _model("s = Sigmoid(x)\n y = Mul(x, s)", opset=17)
    model, record = _run(proto)
    assert _ops(model) == ["Mul", "Sigmoid"] and not record.modified
    assert any("Swish needs opset 24" in r for r in record.skipped)


def test_silu_must_not_match_other_operand():
    proto = _model("s = Sigmoid(x)\n y = Mul(z, s)", opset=24, inputs="float[1,4,5,5] x, float[1,4,5,5] z")
    model, _ = _run(proto)
    assert _ops(model) == ["Mul", "Sigmoid"]


GELU_ERF = {
    "div_last_half": "d = Div(x, sqrt2)\n e = Erf(d)\n a = Add(e, one)\n m = Mul(x, a)\n y = Mul(m, half)",
    "half_first": "h = Mul(x, half)\n d = Mul(x, isqrt2)\n e = Erf(d)\n a = Add(e, one)\n y = Mul(h, a)",
    "half_on_sum": "d = Div(x, sqrt2)\n e = Erf(d)\n a = Add(one, e)\n h = Mul(a, half)\n y = Mul(x, h)",
}
GELU_CONSTS = "float sqrt2 = {1.4142135}, float isqrt2 = {0.70710677}, float one = {1.0}, float half = {0.5}"


@pytest.mark.parametrize("body", GELU_ERF.values(), ids=GELU_ERF.keys())
def test_gelu_erf_forms_at_opset_20(body, tmp_path):
    proto = _model(body, opset=20, consts=GELU_CONSTS)
    model, record = _run(proto)
    assert _ops(model) == ["Gelu"] and record.stats == {"gelu": 1}
    assert _node(model, "Gelu").attrs["approximate"] == "none"
    _check(proto, model, tmp_path)


@pytest.mark.parametrize("cube", ["c = Pow(x, three)", "q = Mul(x, x)\n c = Mul(q, x)"], ids=["pow", "mul"])
def test_gelu_tanh_form_at_opset_20(cube, tmp_path):
    body = (f"{cube}\n k = Mul(c, coef)\n u = Add(x, k)\n v = Mul(u, s2pi)\n t = Tanh(v)\n"
            " a = Add(t, one)\n m = Mul(x, a)\n y = Mul(m, half)")
    proto = _model(body, opset=20, consts="float three = {3.0}, float coef = {0.044715}, "
                                           "float s2pi = {0.7978846}, float one = {1.0}, float half = {0.5}")
    model, _ = _run(proto)
    assert _ops(model) == ["Gelu"] and _node(model, "Gelu").attrs["approximate"] == "tanh"
    _check(proto, model, tmp_path)


def test_gelu_below_opset_20_left_alone_and_wrong_constant_not_matched():
    low = _model(GELU_ERF["div_last_half"], opset=17, consts=GELU_CONSTS)
    model, record = _run(low)
    assert op_count(model, "Erf") == 1 and any("Gelu needs opset 20" in r for r in record.skipped)
    wrong = _model(GELU_ERF["div_last_half"], opset=20, consts=GELU_CONSTS.replace("1.4142135", "2.0"))
    model, _ = _run(wrong)
    assert op_count(model, "Gelu") == 0 and op_count(model, "Erf") == 1


def test_gelu_chain_below_opset_20_is_kept_as_the_exporter_spelled_it(tmp_path):
    """onnxruntime fuses the exporter's erf spelling itself; merging its 0.5 with a following
    scale or turning its Div into a Mul would hide it from that fusion."""
    body = GELU_ERF["div_last_half"].replace("y = Mul(m, half)", "g = Mul(m, half)\n y = Mul(g, three)")
    proto = _model(body, opset=17, consts=GELU_CONSTS + ", float three = {3.0}")
    model, record = _run(proto)
    assert _ops(model) == ["Add", "Div", "Erf", "Mul", "Mul", "Mul"] and not record.modified
    assert any("Gelu needs opset 20" in r for r in record.skipped)


@pytest.mark.parametrize("body", [
    "s = Softplus(x)\n t = Tanh(s)\n y = Mul(x, t)",
    "e = Exp(x)\n a = Add(e, one)\n l = Log(a)\n t = Tanh(l)\n y = Mul(t, x)",
], ids=["softplus", "log_exp"])
def test_mish_at_opset_18(body, tmp_path):
    proto = _model(body, opset=18, consts="float one = {1.0}")
    model, record = _run(proto)
    assert _ops(model) == ["Mish"] and record.stats == {"mish": 1}
    _check(proto, model, tmp_path)


def test_mish_below_opset_18_left_alone():
    model, record = _run(_model("s = Softplus(x)\n t = Tanh(s)\n y = Mul(x, t)", opset=17))
    assert _ops(model) == ["Mul", "Softplus", "Tanh"]
    assert any("Mish needs opset 18" in r for r in record.skipped)


# -- relu6 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    "a = Max(x, zero)\n y = Min(a, six)",
    "a = Min(x, six)\n y = Max(a, zero)",
    "a = Relu(x)\n y = Min(a, six)",
    "a = Relu(x)\n y = Clip(a, zero, six)",
])
def test_relu6_chains_become_clip(body, tmp_path):
    proto = _model(body, consts="float zero = {0.0}, float six = {6.0}")
    model, record = _run(proto)
    assert _ops(model) == ["Clip"] and record.stats == {"relu6": 1}
    _check(proto, model, tmp_path)


def test_relu6_with_clip_attributes_before_opset_11(tmp_path):
    proto = _model("a = Relu(x)\n y = Min(a, six)", opset=10, consts="float six = {6.0}")
    model, _ = _run(proto)
    clip = _node(model, "Clip")
    assert len(clip.inputs) == 1 and clip.attrs == {"min": 0.0, "max": 6.0}
    _check(proto, model, tmp_path)


def test_min_max_with_empty_range_is_not_a_clip(tmp_path):
    proto = _model("a = Max(x, six)\n y = Min(a, zero)", consts="float zero = {0.0}, float six = {6.0}")
    model, _ = _run(proto)
    assert _ops(model) == ["Max", "Min"]
    _check(proto, model, tmp_path)


# -- layernorm ----------------------------------------------------------------------------------------


def _layernorm_body(square="p = Pow(d, two)", affine=True, axes="[-1]"):
    body = (f"m = ReduceMean <axes = {axes}> (x)\n d = Sub(x, m)\n {square}\n"
            f" v = ReduceMean <axes = {axes}> (p)\n e = Add(v, eps)\n s = Sqrt(e)\n")
    return body + (" n = Div(d, s)\n g = Mul(n, gamma)\n y = Add(g, beta)" if affine else " y = Div(d, s)")


LN_IO = {"inputs": "float[2,5,8] x", "outputs": "float[2,5,8] y"}


@pytest.mark.parametrize("square,affine", [("p = Pow(d, two)", True), ("p = Mul(d, d)", True),
                                           ("p = Pow(d, two)", False)])
def test_layernorm_at_opset_17(square, affine, tmp_path):
    rng = np.random.default_rng(0)
    proto = _model(_layernorm_body(square, affine), opset=17, consts="float two = {2.0}, float eps = {1e-5}",
                   gamma=rng.uniform(0.5, 1.5, 8).astype(np.float32),
                   beta=rng.normal(size=8).astype(np.float32), **LN_IO)
    model, record = _run(proto)
    assert _ops(model) == ["LayerNormalization"] and record.stats == {"layernorm": 1}
    ln = _node(model, "LayerNormalization")
    assert ln.attrs["axis"] == 2 and ln.attrs["epsilon"] == pytest.approx(1e-5)
    _check(proto, model, tmp_path)


def test_layernorm_must_not_match_leading_axes_or_low_opset(tmp_path):
    consts = "float two = {2.0}, float eps = {1e-5}"
    gamma, beta = np.ones(8, np.float32), np.zeros(8, np.float32)
    leading = _model(_layernorm_body(axes="[1]"), opset=17, consts=consts, gamma=gamma, beta=beta, **LN_IO)
    model, _ = _run(leading)
    assert op_count(model, "LayerNormalization") == 0 and op_count(model, "ReduceMean") == 2
    _check(leading, model, tmp_path)
    low = _model(_layernorm_body(), opset=13, consts=consts, gamma=gamma, beta=beta, **LN_IO)
    model, record = _run(low)
    assert op_count(model, "ReduceMean") == 2
    assert any("LayerNormalization needs opset 17" in r for r in record.skipped)


def test_layernorm_below_opset_17_keeps_gamma_beta_for_the_runtime_fusion(tmp_path):
    """Below opset 17 the chain stays; its gamma/beta are not folded into the next MatMul, which
    would stop onnxruntime from fusing the chain into its LayerNormalization kernel."""
    rng = np.random.default_rng(6)
    proto = _model(_layernorm_body() + "\n o = MatMul(y, w)", opset=13, consts="float two = {2.0}, float eps = {1e-5}",
                   gamma=rng.uniform(0.5, 1.5, 8).astype(np.float32), beta=rng.normal(size=8).astype(np.float32),
                   w=rng.normal(size=(8, 3)).astype(np.float32), inputs="float[2,5,8] x", outputs="float[2,5,3] o")
    model, record = _run(proto)
    assert op_count(model, "ReduceMean") == 2 and op_count(model, "MatMul") == 1 and not record.modified
    assert any("LayerNormalization needs opset 17" in r for r in record.skipped)


# -- identity / div / sub -------------------------------------------------------------------------------


def test_identity_like_nodes_removed(tmp_path):
    body = ("a = Mul(x, one)\n b = Add(a, zero)\n c = Sub(b, zero)\n d = Div(c, one)\n e = Identity(d)\n"
            " f = Cast <to = 1> (e)\n g = Transpose <perm = [0, 1, 2, 3]> (f)\n y = Relu(g)")
    proto = _model(body, consts="float one = {1.0}, float zero = {0.0}")
    model, record = _run(proto)
    assert _ops(model) == ["Relu"] and record.stats == {"identity": 7}
    _check(proto, model, tmp_path)


def test_identity_keeps_broadcasting_and_real_constants(tmp_path):
    proto = _model("a = Mul(x, ones)\n y = Mul(a, two)", inputs="float[3] x", outputs="float[2,3] y",
                   consts="float two = {2.0}", ones=np.ones((2, 3), np.float32))
    model, record = _run(proto)
    assert "identity" not in record.stats and op_count(model, "Mul") >= 1
    assert model.graph.outputs[0].name == "y"
    _check(proto, model, tmp_path)


def test_div_by_constant_becomes_mul_by_reciprocal(tmp_path):
    proto = _model("a = Div(x, c)\n y = Relu(a)", inputs="float[2,4] x", outputs="float[2,4] y",
                   c=np.array([2.0, 4.0, 0.5, 3.0], np.float32))
    model, record = _run(proto)
    assert _ops(model) == ["Mul", "Relu"] and record.stats == {"div_to_mul": 1}
    np.testing.assert_allclose(_node(model, "Mul").inputs[1].values, [0.5, 0.25, 2.0, 1 / 3], rtol=1e-7)
    _check(proto, model, tmp_path)


def test_div_must_not_change_integer_zero_or_constant_numerator(tmp_path):
    ints = _model("y = Div(x, c)", inputs="int64[4] x", outputs="int64[4] y", c=np.array([2, 3, 4, 5]))
    assert _ops(_run(ints)[0]) == ["Div"]
    zero = _model("y = Div(x, c)", inputs="float[2] x", outputs="float[2] y", c=np.array([2.0, 0.0], np.float32))
    model, record = _run(zero)
    assert _ops(model) == ["Div"] and any("zeros" in r for r in record.skipped)
    numerator = _model("y = Div(c, x)", inputs="float[2] x", outputs="float[2] y", c=np.array([2.0, 1.0], np.float32))
    assert _ops(_run(numerator)[0]) == ["Div"]


def test_sub_of_constant_becomes_add(tmp_path):
    proto = _model("a = Sub(x, c)\n y = Relu(a)", consts="float c = {1.5}")
    model, record = _run(proto)
    assert _ops(model) == ["Add", "Relu"] and record.stats == {"sub_to_add": 1}
    assert _node(model, "Add").inputs[1].values.item() == -1.5
    _check(proto, model, tmp_path)
    reverse = _model("a = Sub(c, x)\n y = Relu(a)", consts="float c = {1.5}")
    assert _ops(_run(reverse)[0]) == ["Relu", "Sub"]


# -- affine chains --------------------------------------------------------------------------------------


def test_affine_chain_merged_into_one_mul_and_one_add(tmp_path):
    body = "a = Mul(x, s1)\n b = Add(a, b1)\n c = Mul(b, s2)\n d = Sub(c, b2)\n e = Div(d, s3)\n y = Relu(e)"
    proto = _model(body, consts="float s1 = {2.0}, float b1 = {1.0}, float s2 = {3.0}, float b2 = {0.5}",
                   s3=np.array([1.0, 2.0, 4.0, 8.0], np.float32).reshape(1, 4, 1, 1))
    model, record = _run(proto)
    assert _ops(model) == ["Add", "Mul", "Relu"]
    assert record.stats["affine_chain"] == 1
    mul, add = _node(model, "Mul"), _node(model, "Add")
    assert add.inputs[0] is mul.outputs[0]                            # Mul first, then Add
    s3 = np.array([1.0, 2.0, 4.0, 8.0]).reshape(1, 4, 1, 1)
    np.testing.assert_allclose(mul.inputs[1].values, 6.0 / s3, rtol=1e-6)
    np.testing.assert_allclose(add.inputs[1].values, (1.0 * 3.0 - 0.5) / s3, rtol=1e-6)
    _check(proto, model, tmp_path)


def test_add_then_mul_becomes_mul_then_add(tmp_path):
    proto = _model("a = Add(x, b)\n y = Mul(a, s)", consts="float b = {1.0}, float s = {3.0}")
    model, _ = _run(proto)
    mul, add = _node(model, "Mul"), _node(model, "Add")
    assert add.inputs[0] is mul.outputs[0] and add.inputs[1].values.item() == 3.0
    assert model.graph.outputs[0].name == "y"
    _check(proto, model, tmp_path)


def test_affine_chain_that_cancels_is_removed(tmp_path):
    proto = _model("a = Mul(x, half)\n b = Mul(a, two)\n y = Relu(b)", consts="float half = {0.5}, float two = {2.0}")
    model, _ = _run(proto)
    assert _ops(model) == ["Relu"]
    _check(proto, model, tmp_path)


def test_affine_chain_must_not_merge_across_a_shared_tensor(tmp_path):
    proto = _model("a = Mul(x, s)\n b = Add(a, c)\n y = Add(b, a)", consts="float s = {2.0}, float c = {1.0}")
    model, record = _run(proto)
    assert _ops(model) == ["Add", "Add", "Mul"] and not record.modified
    canonical = _model("a = Mul(x, s)\n y = Add(a, c)", consts="float s = {2.0}, float c = {1.0}")
    assert not _run(canonical)[1].modified


def test_affine_chain_cancelling_between_graph_input_and_output_keeps_the_names(tmp_path):
    proto = _model("a = Mul(x, half)\n y = Mul(a, two)", consts="float half = {0.5}, float two = {2.0}")
    model, record = _run(proto)   # y cannot become x: one Mul by 1 stays, and the pass terminates
    assert _ops(model) == ["Mul"] and record.stats == {"affine_chain": 1}
    assert record.skipped == {"no-op Mul writes a graph output that its input cannot take over": 1}
    assert [t.name for t in model.graph.inputs] == ["x"] and [t.name for t in model.graph.outputs] == ["y"]
    _check(proto, model, tmp_path)


# -- affine folding ------------------------------------------------------------------------------------


def _conv_weights(cout=4, cin=4, k=1, group=1, seed=0):
    rng = np.random.default_rng(seed)
    return {"w": rng.normal(size=(cout, cin // group, k, k)).astype(np.float32),
            "bias": rng.normal(size=cout).astype(np.float32)}


def test_affine_after_conv_folds_into_its_weights(tmp_path):
    proto = _model("c = Conv <pads = [1, 1, 1, 1]> (x, w, bias)\n m = Mul(c, s)\n y = Add(m, b)",
                   consts="float[1] s = {0.7}, float[1] b = {0.3}", **_conv_weights(k=3))
    model, record = _run(proto)
    assert _ops(model) == ["Conv"] and record.stats == {"fold_into_producer": 2}
    _check(proto, model, tmp_path)


def test_affine_after_conv_with_other_readers_not_folded_into_it(tmp_path):
    proto = _model("c = Conv <pads = [1, 1, 1, 1]> (x, w, bias)\n m = Mul(c, s)\n a = Add(m, b)\n y = Add(a, c)",
                   consts="float[1] s = {0.7}, float[1] b = {0.3}", **_conv_weights(k=3))
    model, record = _run(proto)
    assert _ops(model) == ["Add", "Add", "Conv", "Mul"] and "fold_into_producer" not in record.stats
    assert any("other consumers" in r for r in record.skipped)
    _check(proto, model, tmp_path)


@pytest.mark.parametrize("k,group,pads", [(1, 1, [0, 0, 0, 0]), (3, 1, [0, 0, 0, 0]), (3, 4, [0, 0, 0, 0])],
                         ids=["1x1", "3x3-valid", "depthwise-valid"])
def test_affine_before_unpadded_conv_folds_fully(k, group, pads, tmp_path):
    out = 5 - k + 1
    conv = f"Conv <group = {group}, pads = {pads}> (a, w, bias)"
    proto = _model(f"r = Relu(x)\n m = Mul(r, s)\n a = Add(m, b)\n y = {conv}", outputs=f"float[1,4,{out},{out}] y",
                   s=np.array([0.5, 2.0, -1.0, 3.0], np.float32).reshape(1, 4, 1, 1),
                   b=np.array([0.1, -0.2, 0.3, 1.0], np.float32).reshape(4, 1, 1), **_conv_weights(k=k, group=group))
    model, record = _run(proto)
    assert _ops(model) == ["Conv", "Relu"] and record.stats == {"fold_into_consumer": 1}
    _check(proto, model, tmp_path)


def test_affine_before_padded_conv_folds_only_the_scale(tmp_path):
    proto = _model("r = Relu(x)\n m = Mul(r, s)\n a = Add(m, b)\n y = Conv <pads = [1, 1, 1, 1]> (a, w, bias)",
                   consts="float[1] s = {0.5}, float[1] b = {0.25}", **_conv_weights(k=3))
    model, record = _run(proto)
    assert _ops(model) == ["Add", "Conv", "Relu"] and record.stats == {"fold_scale_into_consumer": 1}
    assert _node(model, "Add").inputs[1].values.item() == pytest.approx(0.5)   # B / S
    assert any("zero padding" in r for r in record.skipped)
    _check(proto, model, tmp_path)


def test_shift_before_padded_conv_is_left_alone(tmp_path):
    proto = _model("r = Relu(x)\n a = Add(r, b)\n y = Conv <pads = [1, 1, 1, 1]> (a, w, bias)",
                   consts="float[1] b = {0.25}", **_conv_weights(k=3))
    model, record = _run(proto)
    assert _ops(model) == ["Add", "Conv", "Relu"] and not record.modified
    assert record.skipped == {"the shift would pass through the zero padding of the Conv it feeds": 1}


@pytest.mark.parametrize("inputs, reason", [
    ("float[1,4,5,5] x, float[4,4,1,1] w", "affine feeds a Conv whose weight is not a float constant"),
    ("float[1,4,5,5] x, float[4] bias", "affine feeds a Conv whose bias is not constant"),
])
def test_affine_before_a_conv_with_a_non_constant_operand_is_left_alone(inputs, reason):
    """The reader's operands come from graphc.rewrite.affine.linear_operands, as fold-bn's do."""
    weights = {k: v for k, v in _conv_weights().items() if f" {k}" not in inputs}
    proto = _model("r = Relu(x)\n m = Mul(r, s)\n y = Conv (m, w, bias)", inputs=inputs,
                   consts="float[1] s = {0.5}", **weights)
    model, record = _run(proto)
    assert _ops(model) == ["Conv", "Mul", "Relu"] and not record.modified
    assert record.skipped == {reason: 1}


def test_scale_only_folds_into_padded_conv(tmp_path):
    proto = _model("r = Relu(x)\n m = Mul(r, s)\n y = Conv <pads = [1, 1, 1, 1]> (m, w, bias)",
                   consts="float[1] s = {-1.5}", **_conv_weights(k=3))
    model, _ = _run(proto)
    assert _ops(model) == ["Conv", "Relu"]
    _check(proto, model, tmp_path)


def test_affine_with_padded_and_unpadded_readers_keeps_one_add(tmp_path):
    body = ("r = Relu(x)\n m = Mul(r, s)\n a = Add(m, b)\n p = Conv <pads = [1, 1, 1, 1]> (a, w3, bias)\n"
            " q = Conv (a, w1, bias)\n y = Add(p, q)")
    proto = _model(body, consts="float[1] s = {2.0}, float[1] b = {-0.5}",
                   w3=_conv_weights(k=3)["w"], w1=_conv_weights(k=1)["w"], bias=_conv_weights()["bias"])
    model, record = _run(proto)
    assert _ops(model) == ["Add", "Add", "Conv", "Conv", "Relu"]
    assert record.stats == {"fold_scale_into_consumer": 1}
    _check(proto, model, tmp_path)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_affine_before_gemm_folds(trans_b, tmp_path):
    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 6) if trans_b else (6, 3)).astype(np.float32)
    proto = _model(f"m = Mul(x, s)\n a = Add(m, b)\n y = Gemm <alpha = 0.5, beta = 2.0, transB = {trans_b}> (a, w, c)",
                   inputs="float[2,6] x", outputs="float[2,3] y", w=w, c=rng.normal(size=3).astype(np.float32),
                   s=rng.uniform(0.5, 2, 6).astype(np.float32), b=rng.normal(size=6).astype(np.float32))
    model, record = _run(proto)
    assert _ops(model) == ["Gemm"] and record.stats == {"fold_into_consumer": 1}
    _check(proto, model, tmp_path)


def test_affine_before_matmul_leaves_one_add_after_it(tmp_path):
    rng = np.random.default_rng(2)
    proto = _model("m = Mul(x, s)\n a = Add(m, b)\n y = MatMul(a, w)", inputs="float[2,5,6] x",
                   outputs="float[2,5,3] y", w=rng.normal(size=(6, 3)).astype(np.float32),
                   consts="float[1] s = {0.5}", b=rng.normal(size=6).astype(np.float32))
    model, record = _run(proto)
    assert _ops(model) == ["Add", "MatMul"] and record.stats == {"fold_into_consumer": 1}
    assert _node(model, "Add").inputs[0] is _node(model, "MatMul").outputs[0]
    _check(proto, model, tmp_path)


def test_affine_before_gemm_without_bias_gets_one(tmp_path):
    rng = np.random.default_rng(4)
    proto = _model("m = Mul(x, s)\n a = Add(m, b)\n y = Gemm(a, w)", inputs="float[2,6] x", outputs="float[2,3] y",
                   w=rng.normal(size=(6, 3)).astype(np.float32), consts="float[1] s = {2.0}, float[1] b = {0.5}")
    model, _ = _run(proto)
    assert _ops(model) == ["Gemm"] and len(_node(model, "Gemm").inputs) == 3
    _check(proto, model, tmp_path)


def test_affine_before_matmul_behind_a_computed_reshape(tmp_path):
    """ONNX shape inference stops at a Reshape whose target is computed; the target's length
    (Shape -> Slice -> Concat) still fixes the rank, which the MatMul fold needs."""
    rng = np.random.default_rng(5)
    body = ("s = Shape(x)\n n = Slice(s, start, end)\n t = Concat <axis = 0> (n, tail)\n r = Reshape(x, t)\n"
            " m = Mul(r, k)\n a = Add(m, b)\n y = MatMul(a, w)")
    proto = _model(body, inputs="float[N,4,6] x", outputs="float[N,2,3] y", start=np.array([0], np.int64),
                   end=np.array([1], np.int64), tail=np.array([2, 12], np.int64), consts="float[1] k = {0.5}",
                   b=rng.normal(size=12).astype(np.float32), w=rng.normal(size=(12, 3)).astype(np.float32))
    model, record = _run(proto)
    assert record.stats.get("fold_into_consumer") == 1 and op_count(model, "Mul") == 0
    _check(proto, model, tmp_path, feeds={"x": rng.normal(size=(3, 4, 6)).astype(np.float32)})


def test_affine_before_convtranspose_folds_the_scale(tmp_path):
    rng = np.random.default_rng(3)
    proto = _model("m = Mul(x, s)\n a = Add(m, b)\n y = ConvTranspose <strides = [2, 2]> (a, w)",
                   outputs="float[1,2,11,11] y", w=rng.normal(size=(4, 2, 3, 3)).astype(np.float32),
                   consts="float[1] s = {0.5}, float[1] b = {1.0}")
    model, record = _run(proto)
    assert _ops(model) == ["Add", "ConvTranspose"] and record.stats == {"fold_scale_into_consumer": 1}
    _check(proto, model, tmp_path)


def test_affine_that_broadcasts_x_up_to_the_channels_is_not_folded(tmp_path):
    proto = _model("r = Relu(x)\n m = Mul(r, s)\n y = Conv(m, w, bias)", inputs="float[1,1,5,5] x",
                   s=np.array([0.5, 2.0, -1.0, 3.0], np.float32).reshape(1, 4, 1, 1), **_conv_weights())
    model, record = _run(proto)
    assert _ops(model) == ["Conv", "Mul", "Relu"] and not record.modified
    _check(proto, model, tmp_path)


def test_affine_feeding_a_non_linear_op_stays_one_mul_one_add(tmp_path):
    proto = _model("r = Relu(x)\n m = Mul(r, s)\n a = Add(m, b)\n y = GlobalAveragePool(a)", outputs="float[1,4,1,1] y",
                   consts="float[1] s = {0.5}, float[1] b = {1.0}")
    model, record = _run(proto)
    assert _ops(model) == ["Add", "GlobalAveragePool", "Mul", "Relu"] and not record.modified
    assert any("GlobalAveragePool" in r for r in record.skipped)


# -- layout ---------------------------------------------------------------------------------------------


def test_transpose_pair_composes_and_cancels(tmp_path):
    composed = _model("a = Transpose <perm = [0, 2, 3, 1]> (x)\n y = Transpose <perm = [0, 2, 1, 3]> (a)",
                      inputs="float[1,4,5,6] x", outputs="float[1,6,5,4] y")
    model, record = _run(composed)
    assert _ops(model) == ["Transpose"] and record.stats == {"transpose_pair": 1}
    assert list(_node(model, "Transpose").attrs["perm"]) == [0, 3, 2, 1]
    _check(composed, model, tmp_path)
    cancel = _model("a = Transpose <perm = [0, 2, 3, 1]> (x)\n b = Transpose <perm = [0, 3, 1, 2]> (a)\n y = Relu(b)")
    model, record = _run(cancel)
    assert _ops(model) == ["Relu"] and record.stats == {"transpose_pair": 1}
    _check(cancel, model, tmp_path)


def test_reshape_chain_merged_and_cancelled(tmp_path):
    proto = _model("a = Reshape(x, s1)\n b = Reshape(a, s2)\n y = Relu(b)", inputs="float[2,3,4] x",
                   outputs="float[6,4] y", s1=np.array([6, 2, 2], np.int64), s2=np.array([0, -1], np.int64))
    model, record = _run(proto)
    assert _ops(model) == ["Relu", "Reshape"] and record.stats["reshape_chain"] == 1
    assert list(_node(model, "Reshape").inputs[1].values) == [6, -1]
    _check(proto, model, tmp_path)
    back = _model("a = Reshape(x, s1)\n b = Reshape(a, s2)\n y = Relu(b)", inputs="float[2,3,4] x",
                  outputs="float[2,3,4] y", s1=np.array([6, 4], np.int64), s2=np.array([2, 3, 4], np.int64))
    model, _ = _run(back)
    assert _ops(model) == ["Relu"]
    _check(back, model, tmp_path)


def test_transpose_of_unit_axes_becomes_reshape_and_cancels(tmp_path):
    proto = _model("a = Transpose <perm = [0, 2, 1, 3]> (x)\n b = Reshape(a, s)\n y = Relu(b)",
                   inputs="float[2,1,3,4] x", outputs="float[2,1,3,4] y", s=np.array([2, 1, 3, 4], np.int64))
    model, record = _run(proto)
    assert _ops(model) == ["Relu"] and record.stats["transpose_to_reshape"] == 1
    _check(proto, model, tmp_path)


def test_transpose_moving_real_axes_is_kept(tmp_path):
    proto = _model("y = Transpose <perm = [0, 2, 1, 3]> (x)", inputs="float[2,3,5,4] x", outputs="float[2,5,3,4] y")
    model, record = _run(proto)
    assert _ops(model) == ["Transpose"] and not record.modified


def _same_for_shapes(proto, model, tmp_path, shapes):
    """Same outputs as the original for each input shape in ``shapes`` (dynamic dims), and a
    second run changes nothing."""
    for i, shape in enumerate(shapes):
        _check(proto, model, tmp_path, feeds=random_feeds(proto, {"x": shape}, seed=i))


TORCH_VIEW = ("s0 = Shape(x)\n d0 = Gather <axis = 0> (s0, zero)\n u0 = Unsqueeze(d0, axes)\n"
              " s1 = Shape(x)\n d1 = Gather <axis = 0> (s1, one)\n u1 = Unsqueeze(d1, axes)\n"
              " t = Concat <axis = 0> (u0, u1, heads)\n r = Reshape(x, t)\n y = Relu(r)")
SHAPE_CONSTS = dict(zero=np.array(0, np.int64), one=np.array(1, np.int64), axes=np.array([0], np.int64),
                    heads=np.array([2, 4], np.int64), start=np.array([0], np.int64), end=np.array([2], np.int64),
                    minus1=np.array([-1], np.int64))


def test_reshape_target_from_the_inputs_own_shape_becomes_a_constant(tmp_path):
    """torch's x.view(x.size(0), x.size(1), 2, 4): Gather/Unsqueeze/Concat of Shape(x) -> [0, 0, 2, 4]."""
    proto = _model(TORCH_VIEW, opset=13, inputs="float[N,T,8] x", outputs="float[N,T,2,4] y", **SHAPE_CONSTS)
    model, record = _run(proto)
    assert _ops(model) == ["Relu", "Reshape"] and record.stats == {"reshape_own_shape": 1}
    assert list(_node(model, "Reshape").inputs[1].values) == [0, 0, 2, 4]
    _same_for_shapes(proto, model, tmp_path, [(3, 5, 8), (1, 1, 8), (2, 0, 8)])


@pytest.mark.parametrize("shape_op, opset", [("s = Shape(x)\n n = Slice(s, start, end)", 13),
                                              ("n = Shape <start = 0, end = 2> (x)", 15),
                                              ("s = Shape(x)\n n = Slice(s, start, end)\n c = Cast <to = 7> (n)", 13)])
def test_reshape_target_from_a_slice_of_the_shape_keeps_minus_one(shape_op, opset, tmp_path):
    """Merging heads back, x.reshape(*x.shape[:2], -1): [0, 0, -1]."""
    tail = "c" if "Cast" in shape_op else "n"
    body = f"{shape_op}\n t = Concat <axis = 0> ({tail}, minus1)\n r = Reshape(x, t)\n y = Relu(r)"
    proto = _model(body, opset=opset, inputs="float[N,T,2,4] x", outputs="float[N,T,8] y", **SHAPE_CONSTS)
    model, record = _run(proto)
    assert _ops(model) == ["Relu", "Reshape"] and record.stats["reshape_own_shape"] == 1  # (+ the no-op Cast)
    assert list(_node(model, "Reshape").inputs[1].values) == [0, 0, -1]
    _same_for_shapes(proto, model, tmp_path, [(3, 5, 2, 4), (1, 7, 2, 4)])


@pytest.mark.parametrize("body, reason", [
    # x.view(x.size(1), x.size(0), 2, 4): a dimension at another position
    (TORCH_VIEW.replace("(u0, u1, heads)", "(u1, u0, heads)"), "entry 0 is input dimension 1"),
    # the target comes from the shape of another tensor
    (TORCH_VIEW.replace("s1 = Shape(x)", "s1 = Shape(z)"), "entry 1 is another tensor"),
    # allowzero=1: 0 would be an empty dimension, not a copy
    (TORCH_VIEW.replace("Reshape(x, t)", "Reshape <allowzero = 1> (x, t)"), "allowzero=1"),
])
def test_reshape_target_that_is_not_the_inputs_own_dims_is_left_alone(body, reason, tmp_path):
    proto = _model(body, opset=14, inputs="float[N,T,8] x, float[N,T,8] z", outputs="float[N,T,2,4] y",
                   **SHAPE_CONSTS)
    model, record = _run(proto)
    assert "reshape_own_shape" not in record.stats and op_count(model, "Shape") == 2
    assert any(reason in r for r in record.skipped), record.skipped


def test_reshape_target_from_arithmetic_on_dims_is_not_matched():
    """x.view(x.size(0) * x.size(1), 8): a product of dims is not a copy of one."""
    body = ("s = Shape(x)\n d0 = Gather <axis = 0> (s, zero)\n d1 = Gather <axis = 0> (s, one)\n"
            " p = Mul(d0, d1)\n u = Unsqueeze(p, axes)\n e = Constant <value = int64[1] {8}> ()\n"
            " t = Concat <axis = 0> (u, e)\n r = Reshape(x, t)\n y = Relu(r)")
    proto = _model(body, opset=13, inputs="float[N,T,8] x", outputs="float[M,8] y", **SHAPE_CONSTS)
    model, record = _run(proto)
    assert "reshape_own_shape" not in record.stats and op_count(model, "Shape") == 1
    assert not any("Reshape target" in r for r in record.skipped)


def test_static_shape_arithmetic_is_folded(tmp_path):
    body = ("s = Shape(x)\n n = Slice(s, start, end)\n t = Concat <axis = 0> (n, minus1)\n a = Reshape(x, t)\n"
            " b = Reshape(a, t)\n y = Relu(b)")
    proto = _model(body, outputs="float[1,100] y", start=np.array([0], np.int64), end=np.array([1], np.int64),
                   minus1=np.array([-1], np.int64))
    model, record = _run(proto)
    assert _ops(model) == ["Relu", "Reshape"]
    assert record.stats == {"fold_constants.folded_shapes": 1, "fold_constants.folded_nodes": 2,
                            "identity": 1}   # the second Reshape, to [1, 100] again, is a no-op
    _check(proto, model, tmp_path)


# -- the pass -----------------------------------------------------------------------------------------


def test_graph_output_name_kept_when_the_fused_chain_writes_it(tmp_path):
    proto = _model("a = Add(x, three)\n c = Clip(a, zero, six)\n m = Mul(x, c)\n y = Div(m, six)", consts=HSWISH_CONSTS)
    model, _ = _run(proto)
    assert model.graph.outputs[0].name == "y" and _node(model, "HardSwish").outputs[0].name == "y"


def test_disable_option_and_unknown_rule():
    proto = _model("a = Add(x, three)\n c = Clip(a, zero, six)\n m = Mul(x, c)\n y = Div(m, six)", consts=HSWISH_CONSTS)
    model, record = _run(proto, "disable=hardswish,div_to_mul,hardsigmoid")
    assert op_count(model, "HardSwish") == 0 and op_count(model, "Div") == 1
    with pytest.raises(OptionError, match="did you mean 'hardswish'"):
        PassManager("canonicalize{disable=hardswsh}")


def test_other_domains_are_counted_and_left_alone():
    text = ('<ir_version: 8, opset_import: ["" : 14, "com.example" : 1]>\n'
            'g (float[4] x) => (float[4] y) { a = com.example.Thing(x)\n y = Relu(a) }')
    model, record = _run(onnx.parser.parse_model(text))
    assert _ops(model) == ["Relu", "Thing"] and record.skipped == {"node of another domain left untouched": 1}


def text_page(shape, seed=0) -> np.ndarray:
    """A normalized page of dark text on a light background: PP-OCR inputs that the detector
    responds to (random noise gives an all-zero probability map)."""
    from PIL import Image, ImageDraw, ImageFont
    _, _, h, w = shape
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (w, h), (235, 232, 228))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(10, h // 4) if h < 64 else 14)
    for i in range(max(1, h // 20)):
        text = "".join(rng.choice(list("ABCDEFGH abcdefgh 0123456789"), 24))
        draw.text((4, 2 + i * 20), text, fill=(20, 20, 20), font=font)
    pixels = np.asarray(img, np.float32) / 255.0
    return ((pixels - 0.5) / 0.5).transpose(2, 0, 1)[None].astype(np.float32)


def _noise_floor(path, feeds) -> float:
    """How far onnxruntime's own graph optimizations (fusions that count as exact) move the
    outputs: the float rounding noise of the model on these inputs."""
    from graphc.runtime import create_session
    plain = create_session(path, optimize=False).run(None, feeds)
    fused = create_session(path, optimize=True).run(None, feeds)
    return max(float(np.abs(a - b).max()) for a, b in zip(plain, fused))


def _constants(graph) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    values.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"})
    return values


class RawPatterns:
    """Patterns counted on the exported (raw) ONNX graph, by their definition, without graphc:
    HardSwish spelled ``x * Clip(x + 3, 0, 6) / 6``, and scalar ``Mul -> Add`` pairs (a Mul by a
    one-element constant whose only reader adds a one-element constant) by what produces the Mul's input."""

    def __init__(self, path):
        graph = onnx.load(str(path)).graph
        self.const = _constants(graph)
        self.producer = {o: n for n in graph.node for o in n.output}
        readers: dict[str, list] = {}
        for n in graph.node:
            for name in n.input:
                readers.setdefault(name, []).append(n)
        hardswish = [n for n in graph.node if n.op_type == "Div" and self._is_hardswish(n)]
        self.hardswish = len(hardswish)
        outputs = {n.output[0] for n in hardswish}
        self.pairs = {"conv": 0, "hardswish": 0, "other": 0}
        for mul in graph.node:
            x, scale = self._split(mul) if mul.op_type == "Mul" else (None, None)
            after = readers.get(mul.output[0], []) if x is not None and scale.size == 1 else []
            if len(after) != 1 or after[0].op_type != "Add" or self._split(after[0])[1] is None \
                    or self._split(after[0])[1].size != 1:
                continue
            source = self.producer.get(x)
            kind = "conv" if source is not None and source.op_type == "Conv" else "hardswish" if x in outputs else "other"
            self.pairs[kind] += 1

    def _split(self, node):
        """(data input, constant value) of a binary node with exactly one constant input."""
        consts = [i for i in node.input if i in self.const]
        data = [i for i in node.input if i not in self.const]
        return (data[0], self.const[consts[0]]) if len(consts) == 1 and len(data) == 1 else (None, None)

    def _scalar(self, value, want: float) -> bool:
        return value is not None and value.size == 1 and float(value.reshape(-1)[0]) == want

    def _is_hardswish(self, div) -> bool:
        x, six = self._split(div)
        mul = self.producer.get(x) if self._scalar(six, 6.0) else None
        if mul is None or mul.op_type != "Mul" or len(mul.input) != 2:
            return False
        for a, b in (tuple(mul.input), tuple(mul.input[::-1])):
            clip = self.producer.get(b)
            add = self.producer.get(clip.input[0]) if clip is not None and clip.op_type == "Clip" else None
            if add is not None and add.op_type == "Add":
                d, three = self._split(add)
                if d == a and self._scalar(three, 3.0):
                    return True
        return False


@pytest.mark.real
@pytest.mark.parametrize("options", ["", "upgrade-opset=true"])
def test_ppocr_models_exact_and_idempotent(ppocr, options, tmp_path):
    """rtol 1e-5 / atol 1e-5 on rendered text; det is a deep sigmoid map whose rounding noise
    (measured as onnxruntime's own fusions) reaches 1.8e-5, so its atol is twice that floor."""
    kind, path = ppocr
    model, record = _run(str(path), options)
    saved = assert_valid(model, tmp_path)
    for seed in (0, 1):
        feeds = {"x": text_page(PPOCR_SHAPES[kind], seed)}
        atol = max(ATOL, 2 * _noise_floor(path, feeds)) if kind == "det" else ATOL
        assert_same_outputs(path, saved, feeds, rtol=RTOL, atol=atol)
    raw = RawPatterns(path)
    assert raw.hardswish == {"det": 24, "rec": 28, "cls": 18}[kind]  # the definition's count, as documented
    assert record.stats["hardswish"] == raw.hardswish
    assert record.stats["fold_into_producer"] >= 2 * raw.pairs["conv"]
    layernorm_divs = 5 if kind == "rec" and not options else 0
    assert op_count(model, "Div") == layernorm_divs and op_count(model, "Clip") == 0
    again = _run(onnx.load(str(saved)), options)[1]
    assert not again.modified


@pytest.mark.real
def test_ppocr_det_learnable_affine_blocks_folded():
    """The 52 scalar Mul->Add pairs of PP-OCRv4 det: 28 follow a Conv (folded into it), 24 sit
    between HardSwish and the next Conv (folded fully into 1x1 Convs, scale only into padded
    depthwise Convs); the one before a GlobalAveragePool stays one Mul + one Add."""
    path = ppocr_model("det")
    if path is None:
        pytest.skip("rapidocr-onnxruntime is not installed")
    model, record = _run(str(path))
    raw = RawPatterns(path)
    assert raw.pairs == {"conv": 28, "hardswish": 24, "other": 0}  # counted on the exported graph
    # each pair after a Conv folds as one Mul and one Add (+2 Conv bias Adds)
    assert record.stats["fold_into_producer"] == 2 * raw.pairs["conv"] + 2
    # of the pairs after a HardSwish, all but the one before the GlobalAveragePool fold forwards
    assert record.stats["fold_into_consumer"] + record.stats.get("fold_scale_into_consumer", 0) == raw.pairs["hardswish"] - 1
    assert record.stats["hardswish"] == raw.hardswish
    assert record.skipped["the shift would pass through the zero padding of the Conv it feeds"] == 13
    affine_muls = [n for n in model.graph.nodes if n.op == "Mul" and any(isinstance(t, gs.Constant) for t in n.inputs)]
    assert affine_muls
    for mul in affine_muls:
        readers = list(mul.outputs[0].outputs)
        assert len(readers) == 1 and readers[0].op == "Add"

