"""explicit_pads: ONNX auto_pad resolved to explicit pads (begins, then ends)."""
import onnx_graphsurgeon as gs
import pytest

from graphc.ir.padding import explicit_pads


def _conv(**attrs) -> gs.Node:
    return gs.Node("Conv", attrs=attrs)


@pytest.mark.parametrize("attrs, spatial, expected", [
    pytest.param({}, (8, 8), [0, 0, 0, 0], id="notset-no-pads"),
    pytest.param({"pads": [1, 2, 3, 4]}, None, [1, 2, 3, 4], id="notset-pads"),
    pytest.param({"auto_pad": "VALID", "pads": [1, 1, 1, 1]}, None, [0, 0, 0, 0], id="valid"),
    # in 9, stride 2 -> out 5: total (5 - 1) * 2 + 3 - 9 = 2 on both axes
    pytest.param({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (9, 9), [1, 1, 1, 1], id="same-even"),
    # in 8, stride 2 -> out 4: total (4 - 1) * 2 + 3 - 8 = 1, the odd pad at the end (UPPER) ...
    pytest.param({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (8, 8), [0, 0, 1, 1], id="same-upper"),
    # ... or at the beginning (LOWER)
    pytest.param({"auto_pad": b"SAME_LOWER", "strides": [2, 2]}, (8, 8), [1, 1, 0, 0], id="same-lower"),
    # dilation 2 widens the 3-tap kernel to 5: total 4
    pytest.param({"auto_pad": "SAME_UPPER", "dilations": [2, 2]}, (6, 6), [2, 2, 2, 2], id="same-dilated"),
])
def test_explicit_pads(attrs, spatial, expected):
    assert explicit_pads(_conv(**attrs), (3, 3), spatial) == expected


@pytest.mark.parametrize("spatial", [None, ("H", 8), (0, 8)])
def test_same_padding_needs_a_known_input_size(spatial):
    assert explicit_pads(_conv(auto_pad="SAME_UPPER"), (3, 3), spatial) == "auto_pad SAME with an unknown spatial size"
