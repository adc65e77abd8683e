"""Per-op channel rules: which channel positions of an op's inputs and outputs are the same.

A rule is called with the node and the *entry* slot it was reached from (None for seeds: Conv,
ConvTranspose, Gemm and MatMul with a constant operand are visited once up front). It links the
slots of the node's other tensors (:meth:`Builder.link`, :meth:`Builder.link_map`), records
members (roles) and fixups, or blocks the entry with a reason. Every rule handles an entry on any
of the node's tensors, so coupling propagates forward and backward alike.

Ops without a rule, and ops of other domains, block every slot they touch: nothing is passed
through on trust. The rules live by op family: ``rules_elementwise``, ``rules_layers`` (weights
and norms), ``rules_layout``, ``rules_reshape``, ``rules_reductions``.
"""
from __future__ import annotations

import onnx_graphsurgeon as gs

from graphc.ir import is_standard_op, node_label

WEIGHTED = ("Conv", "ConvTranspose", "Gemm")
_TABLE: dict | None = None


def is_seed(b, node: gs.Node) -> bool:
    if not is_standard_op(node):
        return False
    if node.op in WEIGHTED:
        return True
    return node.op == "MatMul" and len(node.inputs) == 2 and any(
        isinstance(t, gs.Constant) for t in node.inputs)


def apply(b, node: gs.Node, entry, decide: bool = False) -> None:
    """Run the rule of ``node`` from ``entry``; block when there is none or shapes are unknown."""
    if not is_standard_op(node):
        b.block_node(node, entry, f"unknown op '{node.op}' (domain {node.domain}) at {node_label(node)}")
        return
    rule = rules().get(node.op)
    if rule is None:
        b.block_node(node, entry, f"{node_label(node)}: no channel rule for op '{node.op}'")
        return
    if entry is not None and b.rank(b.tensor(entry[0])) is None and node.op not in WEIGHTED:
        b.block(entry, f"{node_label(node)}: the shape of '{entry[0]}' is unknown")
        return
    if node.op == "Reshape":
        rule(b, node, entry, decide)
    else:
        rule(b, node, entry)


def rules() -> dict:
    """op type -> rule (built on first use: the family modules import the helpers below)."""
    global _TABLE
    if _TABLE is None:
        # here, not at the top: the rules_* modules import this one
        from graphc.analysis import (rules_elementwise as ew, rules_layers as ly, rules_layout as lo,
                                     rules_reductions as rd, rules_reshape as rs)
        table = {op: ew.elementwise for op in ew.UNARY + ew.BINARY}
        table.update({
            "Conv": ly.conv, "ConvTranspose": ly.conv_transpose, "Gemm": ly.gemm, "MatMul": ly.matmul,
            "BatchNormalization": ly.batchnorm, "InstanceNormalization": ly.instance_norm,
            "GroupNormalization": ly.group_norm, "LayerNormalization": ly.layer_norm,
            "QuantizeLinear": ly.quant, "DequantizeLinear": ly.quant,
            "MaxPool": lo.pool, "AveragePool": lo.pool, "LpPool": lo.pool, "GlobalAveragePool": lo.pool,
            "GlobalMaxPool": lo.pool, "GlobalLpPool": lo.pool, "Resize": lo.resize, "Upsample": lo.resize,
            "Pad": lo.pad, "Transpose": lo.transpose, "Concat": lo.concat, "Split": lo.split_rule,
            "Slice": lo.slice_rule, "Gather": lo.gather, "Tile": lo.tile, "Expand": lo.expand,
            "Reshape": rs.reshape, "Flatten": rs.flatten, "Squeeze": rs.squeeze, "Unsqueeze": rs.squeeze,
            "ArgMax": rd.argmax, "ArgMin": rd.argmax, "Softmax": rd.softmax, "LogSoftmax": rd.softmax,
            "Hardmax": rd.softmax, "TopK": rd.topk, "CumSum": rd.cumsum, "LpNormalization": rd.lp_norm,
            "MeanVarianceNormalization": rd.mvn, "LRN": rd.mixes_channels, "DepthToSpace": rd.mixes_channels,
            "SpaceToDepth": rd.mixes_channels, "Shape": rd.shape, "Size": rd.size,
        })
        table.update({op: rd.reduce for op in (
            "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
            "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")})
        _TABLE = table
    return _TABLE


# ---------------------------------------------------------------------------------------------
# helpers shared by the rule families


def attr(node: gs.Node, name: str, default=None):
    return node.attrs.get(name, default)


def optional_input(node: gs.Node, i: int) -> gs.Tensor | None:
    return node.inputs[i] if len(node.inputs) > i and node.inputs[i].name else None


def block_at(b, node: gs.Node, entry, what: str) -> None:
    """Block ``entry`` with the reason ``<node> <what>`` (``Softmax 'sm' normalizes over ...``)."""
    b.block(entry, f"{node_label(node)} {what}")


def data_entry(b, node: gs.Node, entry, x: gs.Tensor, y: gs.Tensor) -> bool:
    """True when ``entry`` is the data input ``x`` or output ``y``; else blocks (a parameter)."""
    if entry is None:
        return False
    if entry[0] not in (x.name, y.name):
        block_at(b, node, entry, f"reads '{entry[0]}' as a parameter")
        return False
    return True
