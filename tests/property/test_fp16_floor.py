"""The fp16 floor of the property checks: relative floors where the output is as large as the
values computed on the way to it, the float16 forward-error bound where it is much smaller."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import pass_checks
from graphc.passmanager import all_passes
from support import run


def _bn_relu(beta: float) -> onnx.ModelProto:
    """x [1,3,6,1] in [-2, 2] -> BatchNormalization (scale 1, shift ``beta``) -> Relu: with beta near
    -2 the output is a few hundredths while the BN output is ~2 (cancellation)."""
    c = 3
    inits = [numpy_helper.from_array(np.full(c, v, np.float32), n)
             for n, v in (("g", 1.0), ("b", beta), ("m", 0.0), ("v", 1.0))]
    nodes = [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["bn"]),
             helper.make_node("Relu", ["bn"], ["y"])]
    graph = helper.make_graph(nodes, "bn_relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 6, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 6, 1])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _feeds() -> dict[str, np.ndarray]:
    x = np.linspace(-2.0, 2.0, 18, dtype=np.float32).reshape(1, 3, 6, 1)
    return {"x": x}


FP16 = next(c for c in all_passes() if c.name == "fp16")


def test_cancelling_output_meets_the_half_bound_not_the_floor():
    proto, feeds = _bn_relu(-1.97), _feeds()
    reference = run(proto, feeds)
    assert pass_checks.check_pass_on(FP16, proto, feeds, reference)  # rewrote it, and every check held


def test_a_wrong_small_output_fails_the_half_bound():
    proto, feeds = _bn_relu(-1.97), _feeds()
    (ref,) = run(proto, feeds)
    wrong = ref + 0.05  # off by 2.5% of the largest activation: far beyond float16 rounding
    with pytest.raises(AssertionError, match="forward-error bound"):
        pass_checks._check_floor("fp16", [ref], [wrong], proto, feeds)


def test_a_large_output_is_held_to_the_relative_floor():
    proto, feeds = _bn_relu(0.0), _feeds()
    (ref,) = run(proto, feeds)
    noisy = ref * 1.001  # 60 dB: above the floor
    pass_checks._check_floor("fp16", [ref], [noisy], proto, feeds)
    with pytest.raises(AssertionError, match="SQNR"):
        pass_checks._check_floor("fp16", [ref], [ref * 1.01], proto, feeds)  # 40 dB < 45
