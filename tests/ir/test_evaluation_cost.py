"""evaluation_cost: output size and work of one node, known before it is evaluated."""
import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir.evaluation_cost import ELEMENT_WORK, PER_OUTPUT_WORK, evaluation_cost, output_shapes


def _node(op, inputs, n_outputs=1, **attrs):
    tensors = [gs.Constant(f"in{i}", v) if v is not None else gs.Variable("") for i, v in enumerate(inputs)]
    return gs.Node(op=op, attrs=attrs, inputs=tensors, outputs=[gs.Variable(f"out{i}") for i in range(n_outputs)])


def _cost(op, inputs, n_outputs=1, **attrs):
    return evaluation_cost(_node(op, inputs, n_outputs, **attrs), inputs, 17)


def test_matmul_outer_product_sized_without_evaluating():
    # [40000,1] x [1,40000]: 1.6e9 elements; only shapes are looked at (the inputs are 320 KB)
    a = np.zeros((40000, 1), np.float32)
    cost = _cost("MatMul", [a, a.T.copy()])
    assert cost.unknown is None
    assert cost.output_elements == 40000 * 40000
    assert cost.work >= 2 * 40000 * 40000  # one multiply-accumulate per output element


def test_shape_from_small_input_values():
    x = np.zeros((4, 6), np.float32)
    assert output_shapes(_node("Reshape", [x, np.array([3, -1])]), [x, np.array([3, -1])], 17) == [(3, 8)]
    cost = _cost("Tile", [x, np.array([100, 1000])])
    assert cost.output_elements == 400 * 6000
    assert _cost("ConstantOfShape", [np.array([1 << 20, 1 << 20])]).output_elements == 1 << 40
    assert _cost("Range", [np.array(0), np.array(10), np.array(3)]).output_elements == 4


def test_elementwise_work_counts_elements_touched():
    x = np.zeros((10, 10), np.float32)
    cost = _cost("Add", [x, x])
    assert cost.output_elements == 100 and cost.work == ELEMENT_WORK * 300


def test_python_loop_kernels_weighted_per_output():
    x = np.zeros((1, 1, 8, 8), np.float32)
    grid = np.zeros((1, 8, 8, 2), np.float32)
    cost = _cost("GridSample", [x, grid])
    assert cost.output_elements == 64
    assert cost.work >= PER_OUTPUT_WORK["GridSample"] * 64


def test_conv_and_conv_transpose_macs():
    x = np.zeros((1, 4, 8, 8), np.float32)
    w = np.zeros((6, 4, 3, 3), np.float32)
    conv = _cost("Conv", [x, w])
    assert conv.output_elements == 6 * 6 * 6
    assert conv.work >= 20 * 6 * 36 * 4 * 9
    wt = np.zeros((4, 6, 3, 3), np.float32)
    deconv = _cost("ConvTranspose", [x, wt])
    assert deconv.output_elements == 6 * 10 * 10
    assert deconv.work >= 500 * x.size * 6 * 9


def test_data_dependent_size_bounded_by_input():
    x = np.ones((5, 7), np.float32)
    assert _cost("NonZero", [x]).output_elements == 2 * 35
    assert _cost("Unique", [x.reshape(-1)], n_outputs=4).output_elements == 4 * 35


def test_unknown_op_or_size_has_no_estimate():
    x = np.zeros((3, 3), np.float32)
    assert "no cost model" in _cost("Einsum", [x, x], equation="ij,jk->ik").unknown
    # a node shape inference rejects (inner dims 3 and 4 differ): no size, so not evaluated
    assert "output size unknown" in _cost("MatMul", [x, np.zeros((4, 4), np.float32)]).unknown
