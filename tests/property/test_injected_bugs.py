"""The property tests catch broken passes: each test here breaks a pass on purpose (a wrapper
around its ``run``, or a broken part monkeypatched in) and asserts that the property checks of
tests/property/test_pass_properties.py fail on the graphs drawn for that pass.

Bugs injected, for every registered pass:
- ``scaled``: after each rewrite, the largest float constant of the graph is scaled by 1.02 -
  caught by exactness (exact passes), the SQNR floor (factorize), the weight round-trip (quant)
  or the masked original (prune);
- ``idle``: the pass returns ``modified=False`` without doing anything - caught by the
  rewritten-share floor.
And pass-specific ones: sparsify zeroing the largest weights; cluster decoding to the next
centre; equalize scaling the second Conv's output channels (the wrong axis)
instead of its input channels; factorize dropping the last rank of every factored layer; smooth
leaving the readers' weights unscaled; quant's weight scales halved.
"""
from __future__ import annotations

import sys
from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from graphc.passmanager import PassResult, all_passes
from test_pass_properties import assert_share, check_pass, draw, examples_for

#: graphs per injected bug: a broken pass must fail on one of these.
GRAPHS = 12


def _pass(name: str):
    return next(c for c in all_passes() if c.name == name)


def _wrap(monkeypatch, cls, after: Callable[[gs.Graph], None]) -> None:
    """Replace ``cls.run`` with the real run followed by ``after(graph)`` on every rewrite."""
    original = cls.run

    def broken(self, graph, ctx):
        result = original(self, graph, ctx)
        if result.modified:
            after(graph)
        return result

    monkeypatch.setattr(cls, "run", broken)


def _float_constants(graph: gs.Graph) -> list[gs.Constant]:
    return [t for t in graph.tensors().values()
            if isinstance(t, gs.Constant) and np.dtype(t.dtype) in (np.float32, np.float16) and t.values.size]


def scale_largest_constant(graph: gs.Graph) -> None:
    largest = max(_float_constants(graph), key=lambda t: (t.values.size, float(np.abs(t.values).max())))
    largest.values = (largest.values * np.float32(1.02)).astype(largest.values.dtype)


def _fails(cls, graphs: int = GRAPHS) -> str:
    """Run the property checks on the pass's drawn graphs; return the failure message."""
    with pytest.raises(AssertionError) as caught:
        assert_share(cls.name, check_pass(cls, draw(cls.name, min(graphs, examples_for(cls)))))
    return str(caught.value)


@pytest.mark.parametrize("name", [c.name for c in all_passes()])
def test_scaling_the_largest_constant_is_caught(name, monkeypatch):
    cls = _pass(name)
    _wrap(monkeypatch, cls, scale_largest_constant)
    message = _fails(cls)
    assert name in message


@pytest.mark.parametrize("name", [c.name for c in all_passes()])
def test_a_pass_that_does_nothing_is_caught(name, monkeypatch):
    cls = _pass(name)
    monkeypatch.setattr(cls, "run", lambda self, graph, ctx: PassResult(modified=False))
    assert f"{name} rewrote 0 of" in _fails(cls)


def _module(cls, attribute: str):
    module = sys.modules[cls.__module__]
    assert hasattr(module, attribute), f"{cls.__module__}.{attribute} moved: update this bug injection"
    return module


def test_equalize_scaling_the_wrong_axis_is_caught(monkeypatch):
    cls = _pass("equalize")
    module = _module(cls, "_rescale")

    def wrong_axis(pair, s):
        w1 = pair.first.inputs[1]
        w1.values = (w1.values / s.reshape((-1,) + (1,) * (w1.values.ndim - 1))).astype(np.float32)
        w2 = pair.second.inputs[1]  # the bug: Conv2's output channels (axis 0), not its inputs
        factor = np.resize(s, w2.values.shape[0]).reshape((-1,) + (1,) * (w2.values.ndim - 1))
        w2.values = (w2.values * factor).astype(np.float32)

    monkeypatch.setattr(module, "_rescale", wrong_axis)
    assert "equalize changed output" in _fails(cls)


def test_factorize_dropping_a_rank_is_caught(monkeypatch):
    cls = _pass("factorize")

    def drop_last_rank(graph):
        for node in graph.nodes:
            if node.op == "MatMul" and ".svd.v" in (node.name or ""):
                v = node.inputs[1]
                values = v.values.copy()
                values[:, -1] = 0  # the last kept singular component
                v.values = values

    _wrap(monkeypatch, cls, drop_last_rank)
    assert "SQNR" in _fails(cls)


def test_smooth_leaving_the_readers_unscaled_is_caught(monkeypatch):
    cls = _pass("smooth")
    module = _module(cls, "_divide")

    def rescale_source_only(site, s):
        for t in site.params:  # the bug: 1/s folded into the producer, s never into the readers
            module._divide(t, s)

    monkeypatch.setattr(module, "_rescale", rescale_source_only)
    assert "smooth changed output" in _fails(cls)


def test_quant_with_halved_weight_scales_is_caught(monkeypatch):
    cls = _pass("quant")

    def halve_weight_scales(graph):
        for node in graph.nodes:
            if node.op == "DequantizeLinear" and isinstance(node.inputs[0], gs.Constant):
                scale = node.inputs[1]
                scale.values = (scale.values * np.float32(0.5)).astype(np.float32)

    _wrap(monkeypatch, cls, halve_weight_scales)
    message = _fails(cls)
    assert "half a step" in message or "SQNR" in message


def test_sparsify_zeroing_the_largest_weights_is_caught(monkeypatch):
    cls = _pass("sparsify")
    module = _module(cls, "magnitude_mask")

    def largest(w, rate):  # the bug: the mask of the negated magnitudes
        k = int(round(rate * w.size))
        mask = np.zeros(w.size, dtype=bool)
        mask[np.argsort(-np.abs(w).reshape(-1), kind="stable")[:k]] = True
        return mask.reshape(w.shape)

    monkeypatch.setattr(module, "magnitude_mask", largest)
    assert "larger than one it kept" in _fails(cls)


def test_cluster_decoding_to_the_neighbouring_centre_is_caught(monkeypatch):
    cls = _pass("cluster")
    module = _module(cls, "share_weights")
    original = module.share_weights

    def shifted(w, k, importance, seed):
        codebook, indices = original(w, k, importance, seed)
        top = codebook.size - 1
        moved = np.where((indices > 0) & (indices < top), indices + 1, indices)  # the bug: off by one
        return codebook, moved.astype(np.uint8)

    monkeypatch.setattr(module, "share_weights", shifted)
    message = _fails(cls)
    assert "nearest codebook value" in message or "SQNR" in message
