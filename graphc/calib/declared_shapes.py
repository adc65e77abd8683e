"""Declared shapes checked against what onnxruntime actually computes, when there is data.

Load repairs the declarations shape inference contradicts (:mod:`graphc.ir.declarations`). Some
wrong declarations only show when the model runs: an output declared ``[1, seqlen]`` behind a
Reshape whose target is computed at run time really is ``(T, 1, 40)``; an intermediate
value-info ``[2]`` is really ``[3]``; an input declared with a literal ``0`` dim (an empty
tensor, which onnxruntime then insists on) is fed ``[1, 576]``. Passes must not trust those
declarations (``ctx.shapes()`` falls back to them where inference says nothing), so with data,
before any pass runs, :func:`repair_declarations_by_run`:

1. opens (makes dynamic) every literal ``0`` dim of a graph input that the first data sample
   contradicts - the only change to the model's interface, and one that only widens it;
2. runs the first sample once, with every top-level tensor whose declared shape inference
   alone does not confirm exposed as an output (:func:`graphc.ir.outputs.with_outputs`), and
   compares: a graph output whose declaration contradicts the measured shape (another rank, or a
   static dim that differs) keeps its rank and loses the contradicting dims (all of them when the
   rank differs); an intermediate declaration that contradicts is dropped.

One warning line per kind of repair, like load's. A declaration "contradicts" as in
:func:`graphc.ir.declarations.contradicts`: symbolic and unknown dims agree with anything. A
declaration inference already confirms (same static dims) needs no run, so a model whose
declarations inference can check costs nothing here. A model onnxruntime cannot run on the
sample is left as it is (the passes that need the run report that themselves).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir.declarations import contradicts
from graphc.ir.model import Model
from graphc.ir.outputs import with_outputs
from graphc.ir.shapes import TensorInfo, infer_shapes
from graphc.runtime import create_session, run_session

log = logging.getLogger(__name__)


@dataclass
class RunRepairs:
    """Which declarations the run corrected, by tensor name."""

    opened_inputs: list[str] = field(default_factory=list)
    replaced_outputs: list[str] = field(default_factory=list)
    dropped_info: list[str] = field(default_factory=list)

    def log(self) -> None:
        for names, what in ((self.opened_inputs, "graph input(s) declare a literal 0 dim the data contradicts; "
                                                  "made dynamic"),
                            (self.replaced_outputs, "graph output shape(s) contradict what onnxruntime computes "
                                                    "on the data; contradicting dims dropped"),
                            (self.dropped_info, "value-info shape(s) contradict what onnxruntime computes on "
                                                "the data; dropped")):
            if names:
                log.warning("input: %d %s: %s", len(names), what, _listed(names))

    def __bool__(self) -> bool:
        return bool(self.opened_inputs or self.replaced_outputs or self.dropped_info)


def _listed(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def repair_declarations_by_run(model: Model, data: Any) -> RunRepairs:
    """Correct ``model``'s declarations from one run on the first sample of ``data`` (module
    docstring); returns what was corrected (already logged)."""
    repairs = RunRepairs()
    first = next(iter(data), None) if data is not None else None
    if not isinstance(first, dict):
        return repairs
    _open_inputs(model, first, repairs)
    tensors = _unconfirmed(model)
    if tensors:
        measured = _measure(model, first, [t.name for t in tensors])
        outputs = {id(t) for t in model.graph.outputs}
        for tensor in tensors:
            shape = measured.get(tensor.name)
            if shape is None or not contradicts(list(tensor.shape), list(shape)):
                continue
            if id(tensor) in outputs:
                tensor.shape = _agreeing_dims(list(tensor.shape), shape)
                repairs.replaced_outputs.append(tensor.name)
            else:
                tensor.shape = None
                repairs.dropped_info.append(tensor.name)
    repairs.log()
    return repairs


def _open_inputs(model: Model, first: dict[str, np.ndarray], repairs: RunRepairs) -> None:
    for tensor in model.graph.inputs:
        if not isinstance(tensor, gs.Variable) or tensor.shape is None or tensor.name not in first:
            continue
        fed = np.shape(first[tensor.name])
        dims = list(tensor.shape)
        if len(fed) != len(dims):
            continue  # a wrong rank is the data's problem: reported where the data is checked
        opened = [None if d == 0 and f != 0 else d for d, f in zip(dims, fed)]
        if opened != dims:
            tensor.shape = opened
            repairs.opened_inputs.append(tensor.name)


def _unconfirmed(model: Model) -> list[gs.Variable]:
    """Top-level computed tensors with a declared shape that inference alone does not confirm."""
    inferred = infer_shapes(model, declared=False)
    found = []
    seen: set[int] = set()
    for node in model.graph.nodes:
        for tensor in node.outputs:
            if id(tensor) in seen or not isinstance(tensor, gs.Variable) or tensor.shape is None:
                continue
            seen.add(id(tensor))
            if not _confirmed(list(tensor.shape), inferred.get(tensor.name)):
                found.append(tensor)
    return found


def _confirmed(declared: list, info: TensorInfo | None) -> bool:
    """True if inference gives the same rank and every static declared dim."""
    if info is None or info.shape is None or len(info.shape) != len(declared):
        return False
    return all(not isinstance(d, int) or d == i for d, i in zip(declared, info.shape))


def _measure(model: Model, feed: dict[str, np.ndarray], names: list[str]) -> dict[str, tuple[int, ...]]:
    try:
        session = create_session(with_outputs(model, names), optimize=False, label="model (declared shapes)")
        values = run_session(session, feed, names, label="model (declared shapes)")
    except Exception as exc:  # a model onnxruntime cannot run on the sample: nothing measured
        log.info("declared shapes not checked by a run: %s", exc)
        return {}
    return {name: tuple(int(d) for d in np.shape(value)) for name, value in zip(names, values)}


def _agreeing_dims(declared: list, measured: tuple[int, ...]) -> list:
    """The declaration with the dims the measurement contradicts dropped (None); every dim
    unknown when the rank itself is wrong."""
    if len(declared) != len(measured):
        return [None] * len(measured)
    return [None if isinstance(d, int) and d != m else d for d, m in zip(declared, measured)]
