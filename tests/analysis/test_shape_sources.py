"""Helpers of the channel analysis: reshape axis blocks, shape-tensor tracing, shape completion."""
from __future__ import annotations

import numpy as np
import pytest

from graphc.analysis.rules_reshape import factor_blocks
from graphc.analysis.shape_completion import complete_shapes
from graphc.analysis.shape_sources import ConstElement, DimElement, shape_elements
from graphc.ir import infer_shapes
from graphc.ir.structure import find_cycle_free_order
from support import node_named
from nets import Net, image


@pytest.mark.parametrize("ins,outs,blocks", [
    ((1, 8, 4, 4), (1, 128), [([1, 2, 3], [1])]),                 # unit dims are left out
    (("n", 8, 1, 1), ("n", 8), [([0], [0]), ([1], [1])]),
    (("b", "t", 360), ("b", "t", 3, 8, 15), [([0], [0]), ([1], [1]), ([2], [2, 3, 4])]),
    ((2, 6, 4), (2, 4, 6), [([0], [0]), ([1, 2], [1, 2])]),
    ((None, 8, "h"), ("x", 8, "h"), [([0], [0]), ([1], [1]), ([2], [2])]),
    ((4, 2, 3), (4, 3, 2), [([0], [0]), ([1, 2], [1, 2])]),
])
def test_factor_blocks(ins, outs, blocks):
    assert factor_blocks(ins, outs) == blocks


def paddle_flatten():
    n = Net(1)
    x = image(n)
    h = n.node("GlobalAveragePool", [n.conv(x, 3, 8, name="c1")])
    batch = n.node("Cast", [n.node("Slice", [n.node("Cast", [n.node("Shape", [h])], to=6), n.const(np.array([0])),
                                             n.const(np.array([1])), n.const(np.array([0]))])], to=7)
    chan = n.node("Cast", [n.const(np.array([8], np.int32))], to=7, name="chan")
    f = n.node("Reshape", [h, n.node("Concat", [batch, chan], axis=0)], name="flat")
    return n.model(n.node("MatMul", [f, n.weight(8, 3)], name="fc"), shapes={"fc": (1, 3)})


def test_shape_elements_trace_paddle_plumbing():
    m = paddle_flatten()
    flat = node_named(m, "flat")
    elems = shape_elements(flat.inputs[1], flat, lambda t: 4 if t.name.startswith("globalaveragepool") else None)
    assert isinstance(elems[0], DimElement) and elems[0].axis == 0
    assert isinstance(elems[1], ConstElement) and elems[1].value == 8 and elems[1].exclusive
    assert elems[1].reader.name == "chan" and elems[1].slot == 0


def test_shape_elements_report_shared_shape_tensors():
    n = Net(1)
    x = image(n)
    shape = n.node("Concat", [n.const(np.array([1])), n.const(np.array([-1]))], axis=0)
    a = n.node("Reshape", [n.conv(x, 3, 2, name="ca"), shape], name="ra")
    b = n.node("Reshape", [n.conv(x, 3, 2, name="cb"), shape], name="rb")
    m = n.model([a, b])
    ra = node_named(m, "ra")
    elems = shape_elements(ra.inputs[1], ra, lambda t: None)
    assert [e.value for e in elems] == [1, -1] and not any(e.exclusive for e in elems)


def test_complete_shapes_fills_what_onnx_inference_leaves_unknown():
    m = paddle_flatten()
    shapes = infer_shapes(m)
    flat_out = node_named(m, "flat").outputs[0].name
    assert shapes[flat_out].shape is None
    done = complete_shapes(m.graph, shapes, find_cycle_free_order(m.graph))
    assert done[flat_out].shape == (1, 8)
    assert done["fc"].shape == (1, 3)
