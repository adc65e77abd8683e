"""A Conv's padding written out: ``auto_pad`` resolved to explicit ``pads`` (all begins, then all ends).

ONNX ``auto_pad=SAME_UPPER``/``SAME_LOWER`` pads so that ``out = ceil(in / stride)``: the total per
spatial axis is ``max(0, (out - 1) * stride + (k - 1) * dilation + 1 - in)``, split evenly with the
odd one at the end (``SAME_UPPER``) or at the beginning (``SAME_LOWER``). ``VALID`` pads nothing;
``NOTSET`` uses the ``pads`` attribute (zeros when absent).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx_graphsurgeon as gs


def explicit_pads(node: gs.Node, kernel: Sequence[int], in_spatial: Sequence | None) -> list[int] | str:
    """The pads ``node`` applies to an input of spatial size ``in_spatial`` (None if unknown), or why
    they cannot be known (SAME padding depends on the input size)."""
    nd = len(kernel)
    auto = node.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto == "VALID":
        return [0] * (2 * nd)
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        return list(node.attrs.get("pads") or [0] * (2 * nd))
    if in_spatial is None or not all(isinstance(d, int) and d > 0 for d in in_spatial):
        return "auto_pad SAME with an unknown spatial size"
    strides = node.attrs.get("strides") or [1] * nd
    dilations = node.attrs.get("dilations") or [1] * nd
    begins, ends = [], []
    for size, k, stride, dilation in zip(in_spatial, kernel, strides, dilations):
        total = max(0, (-(-size // stride) - 1) * stride + (k - 1) * dilation + 1 - size)
        small, large = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else large)
        ends.append(large if auto == "SAME_UPPER" else small)
    return begins + ends

def conv_pads(conv: gs.Node, weight: np.ndarray) -> bool:
    """True if the Conv may pad its input."""
    auto_pad = conv.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad == "VALID":
        return False
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        dilations = conv.attrs.get("dilations") or [1] * (weight.ndim - 2)
        return any((k - 1) * d + 1 > 1 for k, d in zip(weight.shape[2:], dilations))
    return any(int(p) != 0 for p in conv.attrs.get("pads", []) or [])
