"""Channel groups of a plain CNN, derived from the ONNX file alone (onnx protobuf and a union-find),
as an oracle for graphc's channel analysis - not graphc's code.

Definition used: a *channel space* starts at every 4-D graph input and at every weighted layer's
output (Conv with group 1, ConvTranspose, MatMul/Gemm with a constant weight); a depthwise Conv
(group == input channels, one input channel per group) keeps its input's space; BatchNormalization,
pooling, Resize, activations, Cast/Identity/Reshape-to-2-D and elementwise ops with a second
channel-space operand (Add/Mul/Sub/Div of two activations) join the spaces of their operands;
constants (initializers, Constant nodes, Shape and the arithmetic on it) have no space. Two spaces that meet are
one group; its size is the channel count of its layers. A group is blocked when it holds a graph
input, reaches a graph output, or reaches a Softmax (it normalises over the channels).
Concat along the channels keeps each operand's group (its output is a concatenation of groups and
may only feed a weighted layer). Anything else raises, so the oracle never guesses.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import numpy_helper

PASS_THROUGH = {"BatchNormalization", "Relu", "Clip", "HardSigmoid", "Sigmoid", "HardSwish", "Resize",
                "GlobalAveragePool", "MaxPool", "AveragePool", "Identity", "Cast", "Reshape", "Flatten",
                "Add", "Mul", "Sub", "Div"}


@dataclass
class Groups:
    sizes: list[int]     # channel count of every group
    blocked: int         # how many of them are blocked


class _Spaces:
    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.blocked: list[bool] = []

    def new(self, size: int, blocked: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.blocked.append(blocked)
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a != b:
            assert self.size[a] == self.size[b], f"joined spaces differ in size: {self.size[a]} vs {self.size[b]}"
            self.parent[b] = a
            self.blocked[a] |= self.blocked[b]
        return a


def derive_groups(model: onnx.ModelProto) -> Groups:
    graph = model.graph
    consts = {t.name: list(t.dims) for t in graph.initializer}
    consts.update({n.output[0]: list(a.t.dims) for n in graph.node if n.op_type == "Constant"
                   for a in n.attribute if a.name == "value"})
    spaces = _Spaces()
    space: dict[str, int] = {}           # tensor -> space id
    concat: dict[str, list[int]] = {}    # tensor -> the spaces it concatenates
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name not in consts and len(dims) == 4:
            space[value.name] = spaces.new(dims[1].dim_value, blocked=True)
    for node in graph.node:
        _visit(node, consts, spaces, space, concat)
    for value in graph.output:
        assert value.name not in concat, value.name
        if value.name in space:
            spaces.blocked[spaces.find(space[value.name])] = True
    roots = sorted({spaces.find(i) for i in range(len(spaces.parent))})
    return Groups(sorted(spaces.size[r] for r in roots), sum(spaces.blocked[r] for r in roots))


def _visit(node, consts, spaces: _Spaces, space: dict, concat: dict) -> None:
    op, ins = node.op_type, [i for i in node.input if i]
    live = [i for i in ins if i in space]
    assert not any(i in concat for i in ins) or op in ("Conv", "MatMul", "Gemm"), \
        f"{op} '{node.name}' reads a channel concatenation"
    if op in ("Constant", "Shape") or not live and not any(i in concat for i in ins):
        return  # shape arithmetic and constants carry no channels
    if op == "Conv":
        out_c, per_group = consts[node.input[1]][:2]
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if group == 1:
            space[node.output[0]] = spaces.new(out_c)
        else:
            assert per_group == 1 and group == out_c and node.input[0] in space, f"grouped Conv '{node.name}'"
            space[node.output[0]] = space[node.input[0]]
    elif op == "ConvTranspose":
        w = consts[node.input[1]]
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        space[node.output[0]] = spaces.new(w[1] * group)
    elif op in ("MatMul", "Gemm"):
        assert node.input[1] in consts, f"{op} '{node.name}' without a constant weight"
        space[node.output[0]] = spaces.new(consts[node.input[1]][-1])
    elif op == "Concat":
        axis = next(a.i for a in node.attribute if a.name == "axis")
        assert axis == 1 and len(live) == len(ins), f"Concat '{node.name}'"
        concat[node.output[0]] = [space[i] for i in live]
    elif op == "Softmax":
        spaces.blocked[spaces.find(space[live[0]])] = True
        space[node.output[0]] = space[live[0]]
    elif op in PASS_THROUGH:
        root = live[0]
        for other in live[1:]:
            spaces.union(space[root], space[other])
        space[node.output[0]] = space[root]
    else:
        raise AssertionError(f"no rule for {op} '{node.name}'")
