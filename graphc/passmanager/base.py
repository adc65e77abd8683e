"""The pass contract: a named class with typed Options and ``run(graph, ctx) -> PassResult``.

Passes hold no state between runs: everything a run needs comes from its options, the graph and
the context (calibration data, cached analyses, model-level fields).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import onnx_graphsurgeon as gs

from graphc.passmanager.options import NoOptions


@dataclass
class PassResult:
    """What a pass did. ``stats`` are counters shown in reports (``folded: 35``); ``skipped``
    maps a reason to how often it applied (``"bias is not constant": 2``); ``preserved`` names the
    analyses still valid although the graph changed; ``details`` holds per-layer records."""

    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    preserved: frozenset[str] = frozenset()
    details: list[dict[str, Any]] = field(default_factory=list)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n


class Pass:
    """Base class. Subclasses set ``name``, ``summary``, optionally ``Options`` and ``exact``."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    #: exact passes must preserve outputs (checked by --verify-each at rtol 1e-5 / atol 1e-6).
    exact: ClassVar[bool] = True
    #: True if the pass may read calibration data (ctx.data): ``graphc passes`` and the docs say
    #: so. Whether one configured instance cannot run without it is :meth:`requires_data`.
    needs_data: ClassVar[bool] = False
    #: passes that put the graph in the form this pass is built for (quant: fold-bn,canonicalize,
    #: whose canonical form is what integer kernels fuse on). The pass manager inserts those not
    #: already earlier in the pipeline, just before this pass; :meth:`preparation` may opt out
    #: (by convention through a boolean option ``prepare``).
    prepares: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: Any = None):
        self.options = options if options is not None else self.Options()

    def run(self, graph: gs.Graph, ctx: "Context") -> PassResult:  # noqa: F821
        raise NotImplementedError

    def requires_data(self) -> bool:
        """True if this run cannot start without calibration data: the pass manager then refuses
        the pipeline before any pass runs. Default: ``needs_data``. A pass whose options make the
        data optional overrides it (``quant{weights-only=true}`` calibrates nothing)."""
        return self.needs_data

    def preparation(self) -> tuple[str, ...]:
        """The passes of :attr:`prepares` this configured instance wants run before it (an
        option such as ``quant{prepare=false}`` turns them off)."""
        return self.prepares

    def without_data(self) -> "Pass | None":
        """What to run instead when :meth:`requires_data` is True and there is no data: a pass
        that needs none (``quant`` becomes dynamic quantization), or None to refuse the pipeline
        (the default). It logs the substitution itself, in one line."""
        return None

    def wants_original(self) -> bool:
        """True if this run reads ``ctx.original`` (the model before the pipeline), so the pass
        manager keeps a copy even without :meth:`requires_data` or ``verify_each``."""
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r})"
