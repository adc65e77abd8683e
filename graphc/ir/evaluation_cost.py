"""What evaluating one node on constant inputs would cost, known before it is evaluated.

Constant folding runs ONNX's numpy reference evaluator, whose kernels range from one numpy call
(Add: ~1 ns an element) to a Python loop per output element (GridSample: ~600 us an element).
A fold is refused from this estimate, before any evaluation: a constant MatMul [40000,1] x
[1,40000] would allocate 6.4 GB for a result that is then discarded, a constant GridSample on an
8 MB input would run for minutes.

- **Output size**: ONNX shape inference on a one-node model whose small inputs (shape vectors,
  axes, scales) are initializers, so the shapes that depend on them are inferred; the others are
  typed inputs (no bytes copied). Ops whose output size depends on the data (NonZero, Compress,
  Unique) are bounded by their input. An output whose size stays unknown is not evaluated.
- **Work**, in units of roughly a nanosecond of the reference evaluator, from one-node timings
  on the 2-core build machine (onnx 1.x reference: GridSample 1x1x32x32 0.6 s, MaxPool 3x3 on
  1x4x64x64 0.35 s, ConvTranspose 16->16 3x3 on 32x32 1.1 s, Conv of the same 0.04 s, MatMul
  256^3 0.02 s, Relu of 1M elements 0.04 s): vectorised numpy ops ``ELEMENT_WORK`` x (input +
  output elements); contractions (MatMul, Gemm, Conv, ConvTranspose) a weight x multiply-accumulates;
  window ops (pools) a weight x output elements x window size; ops whose reference kernel loops in
  Python per output element (GridSample, Resize, ScatterND, ...) a weight x output elements.
  An op in none of these tables has no cost model: it is not evaluated (unknown means no).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphc.ir.evaluate import one_node_model

#: inputs with at most this many elements are given to shape inference as values (shape vectors)
_VALUE_LIMIT = 64
#: work per element read or written by a vectorised numpy kernel
ELEMENT_WORK = 4

#: ops the reference evaluator computes with a few whole-array numpy calls
VECTORISED = frozenset({
    # element-wise
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Ceil", "Cos", "Cosh", "Erf", "Exp",
    "Floor", "IsInf", "IsNaN", "Log", "Neg", "Not", "Reciprocal", "Round", "Sign", "Sin", "Sinh",
    "Sqrt", "Tan", "Tanh", "Sigmoid", "HardSigmoid", "HardSwish", "Relu", "LeakyRelu", "Elu", "Selu",
    "Celu", "Softplus", "Softsign", "ThresholdedRelu", "Gelu", "Mish", "PRelu", "Clip", "Identity",
    "Cast", "CastLike", "BitwiseNot", "Add", "Sub", "Mul", "Div", "Pow", "Mod", "BitShift", "And",
    "Or", "Xor", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Max", "Min", "Sum",
    "Mean", "Where", "BitwiseAnd", "BitwiseOr", "BitwiseXor",
    # layout and indexing
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split", "Slice", "Gather",
    "Expand", "Tile", "Pad", "Shape", "Size", "ConstantOfShape", "Range", "DepthToSpace",
    "SpaceToDepth", "Trilu", "EyeLike", "OneHot",
    # reductions and normalisations
    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin", "Softmax",
    "LogSoftmax", "Hardmax", "CumSum", "TopK", "LpNormalization", "MeanVarianceNormalization",
    "BatchNormalization", "InstanceNormalization", "LayerNormalization", "GlobalAveragePool",
    "GlobalMaxPool", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
})
#: ops whose output size depends on the values: an upper bound from the first input
DATA_DEPENDENT = {
    "NonZero": lambda x: x.size * max(x.ndim, 1),
    "Compress": lambda x: x.size,
    "Unique": lambda x: x.size,
}
#: work per multiply-accumulate (MatMul is one BLAS call; Conv builds columns; ConvTranspose loops)
CONTRACTION_WORK = {"MatMul": 2, "MatMulInteger": 2, "Gemm": 2, "Conv": 20, "ConvInteger": 20,
                    "ConvTranspose": 500}
#: work per output element and window element (the reference pools loop in Python)
WINDOW_WORK = {"MaxPool": 3000, "AveragePool": 3000, "LpPool": 3000}
#: work per output element of kernels that loop in Python per element or per index
PER_OUTPUT_WORK = {"GridSample": 600_000, "Resize": 500, "Upsample": 500, "ScatterND": 1000,
                   "GatherND": 1000, "ScatterElements": 1000, "GatherElements": 1000}


@dataclass(frozen=True)
class EvaluationCost:
    """Elements the outputs hold and the estimated work; ``unknown`` says why there is no estimate."""

    output_elements: int = 0
    work: int = 0
    unknown: str | None = None


def evaluation_cost(node: gs.Node, inputs: list[np.ndarray | None], opset: int) -> EvaluationCost:
    """Cost of evaluating ``node`` on ``inputs`` (None for an omitted optional input)."""
    op = node.op
    known = (op in VECTORISED or op in DATA_DEPENDENT or op in CONTRACTION_WORK or op in WINDOW_WORK
             or op in PER_OUTPUT_WORK)
    if not known:
        return EvaluationCost(unknown=f"{op}: no cost model for its evaluation")
    shapes = output_shapes(node, inputs, opset)
    if op in DATA_DEPENDENT and inputs and inputs[0] is not None:
        sizes = [DATA_DEPENDENT[op](inputs[0])] * len(node.outputs)
    elif shapes is None or any(s is None for s in shapes):
        return EvaluationCost(unknown=f"{op}: output size unknown before evaluation")
    else:
        sizes = [math.prod(s) for s in shapes]
    out = sum(sizes)
    read = sum(v.size for v in inputs if v is not None)
    if op in CONTRACTION_WORK:
        work = CONTRACTION_WORK[op] * _macs(node, inputs, sizes[0])
    elif op in WINDOW_WORK:
        window = math.prod(int(k) for k in node.attrs.get("kernel_shape", [1]))
        work = WINDOW_WORK[op] * sizes[0] * window
    elif op in PER_OUTPUT_WORK:
        work = PER_OUTPUT_WORK[op] * out
    else:
        work = 0
    return EvaluationCost(out, work + ELEMENT_WORK * (read + out))


def _macs(node: gs.Node, inputs: list, out_elements: int) -> int:
    """Multiply-accumulates: output elements x the reduced length of each."""
    a, b = inputs[0], inputs[1]
    if node.op in ("MatMul", "MatMulInteger"):
        return out_elements * (int(a.shape[-1]) if a.ndim else 1)
    if node.op == "Gemm":
        return out_elements * int(a.shape[0] if node.attrs.get("transA", 0) else a.shape[-1])
    if node.op == "ConvTranspose":  # every input element scatters into a window of each output channel
        return a.size * int(b.shape[1]) * math.prod(int(d) for d in b.shape[2:])
    return out_elements * math.prod(int(d) for d in b.shape[1:])  # Conv: C/group x kernel per output


def output_shapes(node: gs.Node, inputs: list[np.ndarray | None], opset: int) -> list[tuple[int, ...] | None] | None:
    """Static output shapes from ONNX shape inference (None where a dim is not known);
    None when inference fails."""
    try:
        model = one_node_model(node, inputs, opset, values_up_to=_VALUE_LIMIT)
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception:  # inference and proto conversion raise many types on odd nodes
        return None
    shapes: list[tuple[int, ...] | None] = []
    for vi in inferred.graph.output:
        ttype = vi.type.tensor_type
        if not ttype.HasField("shape"):
            shapes.append(None)
            continue
        dims = ttype.shape.dim
        static = all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims)
        shapes.append(tuple(int(d.dim_value) for d in dims) if static else None)
    return shapes
