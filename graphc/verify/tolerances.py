"""How close is close enough: the pass/fail rule of a comparison.

Two modes, chosen by what the user asks for:

- **exact** (the default, and whenever no ``min_*`` threshold is given): every element must satisfy
  ``|got - ref| <= atol + rtol * |ref|`` (``numpy.isclose``; NaN only matches NaN), and any
  ``min_*`` threshold given as well must hold. This is the check for rewrites that must not change
  the result (fold-bn, cleanup, fold-constants) up to float rounding.
- **lossy** (when at least one of ``min_sqnr`` / ``min_cosine`` / ``min_top1`` is given and
  ``exact`` is not forced): only those thresholds decide; rtol/atol are still measured and reported
  (how many elements fall outside them) but do not fail the comparison. This is the check for
  quantization, pruning and factorization, whose outputs are expected to move.

Without explicit rtol/atol the CLI's and recipes' exact mode measures its atol per output
(``noise_factor``): the reference's own spread between onnxruntime's optimization levels on the
same data, times :data:`NOISE_FACTOR`, never below ``atol`` (:mod:`graphc.verify.noise`).

``exact=True`` forces both checks; ``exact=False`` forces the lossy rule (with no threshold given
the comparison then always passes and is only a measurement).

Thresholds apply per output: SQNR in dB and cosine over all samples of that output, top-1 to
outputs that have it (float, [N, C] or [N, T, C], C >= 2). For intermediate tensors (localization)
top-1 means nothing, so :meth:`Tolerances.for_intermediates` keeps only the element-wise rule
(exact mode) or the SQNR / cosine thresholds (lossy mode).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

#: the ``noise_factor`` of the defaults the CLI and recipes use (see :mod:`graphc.verify.noise`).
NOISE_FACTOR = 4.0


@dataclass(frozen=True)
class Tolerances:
    rtol: float = 1e-5
    atol: float = 1e-6
    min_sqnr: float | None = None
    min_cosine: float | None = None
    min_top1: float | None = None
    #: None: exact unless a ``min_*`` threshold is given; True/False force the mode.
    exact: bool | None = None
    #: exact mode: widen each output's atol to this many times the reference's own spread
    #: between onnxruntime's optimization levels (:mod:`graphc.verify.noise`); None: atol as is.
    noise_factor: float | None = None

    @classmethod
    def from_options(cls, *, rtol: float | None = None, atol: float | None = None,
                     min_sqnr: float | None = None, min_cosine: float | None = None,
                     min_top1: float | None = None) -> "Tolerances":
        """Tolerances from optional user settings (the CLI flags): defaults fill what is not
        given, and rtol/atol given explicitly together with a threshold make both apply."""
        explicit = rtol is not None or atol is not None
        thresholds = any(v is not None for v in (min_sqnr, min_cosine, min_top1))
        return cls(rtol=cls.rtol if rtol is None else rtol, atol=cls.atol if atol is None else atol,
                   min_sqnr=min_sqnr, min_cosine=min_cosine, min_top1=min_top1,
                   exact=True if explicit and thresholds else None,
                   noise_factor=None if explicit or thresholds else NOISE_FACTOR)

    def __post_init__(self) -> None:
        if self.rtol < 0 or self.atol < 0:
            raise ValueError("rtol and atol must be >= 0")
        for name in ("min_cosine", "min_top1"):
            value = getattr(self, name)
            if value is not None and not -1.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [-1, 1] (a fraction), got {value}")

    @property
    def thresholds(self) -> dict[str, float]:
        """The ``min_*`` thresholds that were given."""
        names = ("min_sqnr", "min_cosine", "min_top1")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    @property
    def elementwise(self) -> bool:
        """True when rtol/atol decide (exact mode)."""
        return self.exact if self.exact is not None else not self.thresholds

    @property
    def measures_noise(self) -> bool:
        """True when each output's atol is measured (exact mode with a ``noise_factor``)."""
        return self.elementwise and self.noise_factor is not None

    def for_intermediates(self) -> "Tolerances":
        """The budget for intermediate tensors (no top-1; see the module docstring)."""
        return dataclasses.replace(self, min_top1=None, exact=self.elementwise)

    def describe(self) -> str:
        atol = f"max({self.atol:g}, {self.noise_factor:g} x ORT noise)" if self.measures_noise else f"{self.atol:g}"
        parts = [f"rtol={self.rtol:g} atol={atol}"] if self.elementwise else []
        labels = {"min_sqnr": "SQNR >= {:g} dB", "min_cosine": "cosine >= {:g}", "min_top1": "top-1 >= {:g}"}
        parts += [labels[k].format(v) for k, v in self.thresholds.items()]
        return ", ".join(parts) if parts else "no thresholds (measurement only)"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["mode"] = "exact" if self.elementwise else "lossy"
        return data
