"""The context a pass runs in: the model, calibration data, and cached analyses.

Analyses (shapes, channel dependencies, MACs...) are computed on first use and cached under their
name. After a pass reports ``modified=True`` the pass manager drops every cached analysis the pass
did not list in ``PassResult.preserved``.

An analysis is any class with a ``name`` and a ``compute(ctx)`` classmethod::

    class ChannelDependencies:
        name = "channel-deps"
        @classmethod
        def compute(cls, ctx): ...
"""
from __future__ import annotations

import logging
from typing import Any, Protocol

import onnx_graphsurgeon as gs

from graphc.ir.model import Model
from graphc.ir.opset import upgrade_opset
from graphc.ir.shapes import TensorInfo, infer_shapes
from graphc.stats import CostShapes, cost_shapes

log = logging.getLogger(__name__)


class Analysis(Protocol):
    name: str

    @classmethod
    def compute(cls, ctx: "Context") -> Any: ...


class ShapeAnalysis:
    """Inferred dtype and shape of every tensor from the model's declared input shapes.

    These shapes hold for every input the model accepts, so rewrites may rely on them.
    """

    name = "shapes"

    @classmethod
    def compute(cls, ctx: "Context") -> dict[str, TensorInfo]:
        return infer_shapes(ctx.model)


class CostShapeAnalysis:
    """Shapes for cost estimates only (MACs, speed models, budgets), by the one policy of
    :func:`graphc.stats.cost_shapes`: ``input_shapes`` (``--input-shape``), else batch 1, else the
    first calibration sample's shapes. A rewrite must never depend on them - the saved model keeps
    its dynamic inputs and must stay correct for every shape."""

    name = "shapes-for-cost"
    measure = False

    @classmethod
    def compute(cls, ctx: "Context") -> CostShapes:
        return cost_shapes(ctx.model, ctx.input_shapes, ctx.data, measure=cls.measure)


class MeasuredCostShapeAnalysis(CostShapeAnalysis):
    """:class:`CostShapeAnalysis` with the MAC layers static inference lost measured by one
    onnxruntime run on zeros (what MAC counts need)."""

    name = "measured-shapes-for-cost"
    measure = True


class Context:
    """Per-run state shared by passes. ``data`` is a re-iterable calibration source
    (:class:`graphc.calib.data.DataSource`) or None."""

    def __init__(self, model: Model, *, data: Any = None,
                 input_shapes: dict[str, tuple[int, ...]] | None = None, seed: int = 0, metric: Any = None,
                 evaluation: Any = None, evaluation_labels: Any = None):
        self.model = model
        self.data = data
        #: evaluation data apart from the calibration data (--eval-data) or None: what a metric
        #: budget scores on when given
        self.evaluation = evaluation
        #: the labels of ``evaluation`` (any dtype, as the metric takes them) or None
        self.evaluation_labels = evaluation_labels
        #: the user's task metric (graphc.verify.user_metric.UserMetric, --metric) or None: what
        #: error budgets such as quant{max-metric-drop=...} measure
        self.metric = metric
        self.input_shapes = dict(input_shapes or {})
        self.seed = seed
        self._cache: dict[str, Any] = {}
        self.original: Model | None = None  # set by the pass manager: the model before the pipeline
        #: what passes decided on their own that the user should know (shapes assumed for
        #: dynamic inputs): logged once each, listed in the run's notes and the report
        self.notes: list[str] = []

    @property
    def graph(self) -> gs.Graph:
        return self.model.graph

    @property
    def opset(self) -> int:
        return self.model.opset

    def analysis(self, cls: type[Analysis]) -> Any:
        if cls.name not in self._cache:
            log.debug("computing analysis %s", cls.name)
            self._cache[cls.name] = cls.compute(self)
        return self._cache[cls.name]

    def cached(self, name: str) -> bool:
        return name in self._cache

    def shapes(self) -> dict[str, TensorInfo]:
        """Shapes valid for every input (declared dims); safe to base rewrites on."""
        return self.analysis(ShapeAnalysis)

    def cost_shapes(self, *, measured: bool = False) -> dict[str, TensorInfo]:
        """Shapes for MAC/budget estimates (:class:`CostShapeAnalysis`; ``measured``:
        :class:`MeasuredCostShapeAnalysis`), never for rewrites."""
        return self.analysis(MeasuredCostShapeAnalysis if measured else CostShapeAnalysis).shapes

    def note(self, text: str) -> None:
        """Say ``text`` once per run: a warning line now, and a line of the report's notes."""
        if text not in self.notes:
            self.notes.append(text)
            log.warning("%s", text)

    def invalidate(self, preserved: frozenset[str] = frozenset()) -> None:
        for key in [k for k in self._cache if k not in preserved]:
            del self._cache[key]

    def require_opset(self, version: int) -> bool:
        """Upgrade the model's opset to at least ``version`` (drops every cached analysis)."""
        changed = upgrade_opset(self.model, version)
        if changed:
            self.invalidate()
        return changed
