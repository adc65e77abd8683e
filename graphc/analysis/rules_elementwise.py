"""Channel rules for element-wise ops: numpy broadcasting aligns axes from the right; an input
whose dim is 1 (or missing) on the channel axis broadcasts and is not coupled."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from graphc.analysis.channel_rules import block_at


UNARY = (
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Softsign", "Gelu", "Erf", "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs", "Sin",
    "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Floor", "Ceil",
    "Round", "Sign", "Clip", "Cast", "CastLike", "Identity", "Dropout", "Mish", "ThresholdedRelu",
    "Shrink", "IsNaN", "IsInf", "Not", "Swish",
)


BINARY = (
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "Where", "PRelu", "Mod",
    "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor", "BitShift",
)


def elementwise(b, node: gs.Node, entry) -> None:
    """Inputs and outputs broadcast against each other, aligned from the right."""
    if entry is None:
        return
    et = b.tensor(entry[0])
    size = b.size(entry)
    offset = entry[1] - b.rank(et)          # negative: position from the right
    outputs = [t for t in node.outputs if t.name]
    if node.op == "Clip" or node.op == "CastLike":
        inputs = [node.inputs[0]]
    elif node.op == "Dropout":
        inputs, outputs = [node.inputs[0]], outputs[:2]
    else:
        inputs = [t for t in node.inputs if t.name]
    if node.op in ("Clip", "CastLike", "Dropout") and entry[0] not in {t.name for t in inputs + outputs}:
        block_at(b, node, entry, f"reads '{entry[0]}' as a parameter")
        return
    for t in inputs + outputs:
        if t.name == entry[0]:
            continue
        rank = b.rank(t)
        if rank is None:
            block_at(b, node, entry, f"has '{t.name}' of unknown rank")
            return
        axis = rank + offset
        if axis < 0:
            continue
        d = b.dim(t, axis)
        if d == size:
            b.link(node, entry, b.slot(t, axis))
        elif d == 1 or size == 1:
            continue                        # t broadcasts along the channel axis (or the entry does)
        elif d is None and any(t is o for o in outputs):
            b.link(node, entry, b.slot(t, axis, size=size))
        else:
            block_at(b, node, entry, f"broadcasts '{t.name}' (dim {d}) against {size} channels")
            return
    for t in inputs:
        if isinstance(t, gs.Constant) and (t.name, (b.rank(t) + offset)) in b.a.slot_size:
            role = "param"
            b.role(node, role, (t.name, b.rank(t) + offset))
