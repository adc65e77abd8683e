"""Size against error: an inline SVG scatter plot, one point per result, the Pareto front marked.

``x`` is a size to minimise (the entropy-coded bytes of :mod:`graphc.ir.compressed_size`), ``y`` a
quality to maximise (SQNR in dB, accuracy in %). A point is on the **Pareto front** when no other
point is at least as small and at least as good and strictly better in one of the two
(:func:`pareto_front`); the front's markers are filled and joined by a dashed line, left to
right.

Coordinates: the data ranges ``[x0, x1]`` and ``[y0, y1]`` are padded by 6% on each side (a
single value by +-1 or +-6% of itself) and mapped linearly onto the plot box
``(left, top, width, height)`` in SVG pixels, y upwards::

    px = left + (x - x0) / (x1 - x0) * width
    py = top + (y1 - y) / (y1 - y0) * height

The ``<svg>`` element states both (``data-x-domain="x0 x1"``, ``data-y-domain``,
``data-plot-box``), and every point is a ``<circle>`` with its ``data-x``/``data-y`` values, its
label in a ``<title>`` tooltip, and ``class="point front"`` on the front: a reader (or a test) can
map pixels back to data. Text is plain SVG (no scripts, no external fonts), so the plot renders
inline in any browser and in the self-contained HTML files graphc writes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 640, 400
#: plot box inside the SVG: room for tick labels on the left and the axis labels below
BOX = (78.0, 24.0, 532.0, 300.0)
PAD = 0.06
TICKS = 5
FRONT_COLOUR, OTHER_COLOUR = "#c44e52", "#4c72b0"


@dataclass(frozen=True)
class ScatterPoint:
    label: str
    x: float  # size: smaller is better
    y: float  # quality: higher is better


def pareto_front(points: list[ScatterPoint]) -> list[bool]:
    """For each point, whether no other point dominates it (module docstring)."""
    def dominates(a: ScatterPoint, b: ScatterPoint) -> bool:
        return a.x <= b.x and a.y >= b.y and (a.x < b.x or a.y > b.y)

    return [not any(dominates(other, p) for other in points if other is not p) for p in points]


def _domain(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi == lo:
        spread = abs(lo) * PAD or 1.0
        return lo - spread, hi + spread
    pad = (hi - lo) * PAD
    return lo - pad, hi + pad


@dataclass(frozen=True)
class Axes:
    x: tuple[float, float]
    y: tuple[float, float]

    def pixel(self, x: float, y: float) -> tuple[float, float]:
        left, top, width, height = BOX
        return (left + (x - self.x[0]) / (self.x[1] - self.x[0]) * width,
                top + (self.y[1] - y) / (self.y[1] - self.y[0]) * height)


def _ticks(lo: float, hi: float) -> list[float]:
    """About TICKS round values inside [lo, hi]."""
    raw = (hi - lo) / TICKS
    step = 10 ** math.floor(math.log10(raw))
    step *= min((1, 2, 5, 10), key=lambda m: abs(m * step - raw))
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _number(value: float) -> str:
    """Exact: ``float(text)`` gives the value back."""
    return repr(float(value))


def _axis_lines(axes: Axes, xlabel: str, ylabel: str) -> list[str]:
    left, top, width, height = BOX
    bottom = top + height
    out = [f'<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="none" stroke="#999"/>']
    for t in _ticks(*axes.x):
        px, _ = axes.pixel(t, axes.y[0])
        out.append(f'<line x1="{px:.2f}" y1="{bottom}" x2="{px:.2f}" y2="{bottom + 5}" stroke="#666"/>'
                   f'<text x="{px:.2f}" y="{bottom + 18}" text-anchor="middle" class="tick">{_tick_text(t)}</text>')
    for t in _ticks(*axes.y):
        _, py = axes.pixel(axes.x[0], t)
        out.append(f'<line x1="{left - 5}" y1="{py:.2f}" x2="{left + width}" y2="{py:.2f}" stroke="#eee"/>'
                   f'<text x="{left - 8}" y="{py + 4:.2f}" text-anchor="end" class="tick">{_tick_text(t)}</text>')
    out.append(f'<text x="{left + width / 2}" y="{HEIGHT - 30}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text transform="translate(16 {top + height / 2}) rotate(-90)" text-anchor="middle">'
               f"{escape(ylabel)}</text>")
    return out


def _tick_text(value: float) -> str:
    if abs(value) >= 1e4:
        return f"{value / 1e3:.0f}k" if abs(value) < 1e6 else f"{value / 1e6:.3g}M"
    return f"{value:.4g}"


def _legend() -> str:
    y = HEIGHT - 12
    return (f'<circle cx="90" cy="{y - 4}" r="5" fill="{FRONT_COLOUR}"/><text x="100" y="{y}">Pareto front</text>'
            f'<circle cx="210" cy="{y - 4}" r="5" fill="white" stroke="{OTHER_COLOUR}" stroke-width="2"/>'
            f'<text x="220" y="{y}">dominated</text>')


def size_error_svg(points: list[ScatterPoint], *, xlabel: str, ylabel: str, title: str) -> str:
    """The scatter plot of ``points`` as an ``<svg>`` element (module docstring); ``points`` must be
    finite and not empty."""
    if not points or not all(math.isfinite(p.x) and math.isfinite(p.y) for p in points):
        raise ValueError("a size/error plot needs finite points")
    axes = Axes(_domain([p.x for p in points]), _domain([p.y for p in points]))
    front = pareto_front(points)
    body = _axis_lines(axes, xlabel, ylabel)
    steps = sorted((p.x, p.y) for p, on in zip(points, front) if on)
    path = " ".join(f"{px:.2f},{py:.2f}" for px, py in (axes.pixel(x, y) for x, y in steps))
    body.append(f'<polyline class="front-line" points="{path}" fill="none" stroke="{FRONT_COLOUR}" '
                f'stroke-dasharray="4 3"/>')
    for p, on in zip(points, front):
        px, py = axes.pixel(p.x, p.y)
        fill = f'fill="{FRONT_COLOUR}"' if on else f'fill="white" stroke="{OTHER_COLOUR}" stroke-width="2"'
        body.append(f'<circle class="point{" front" if on else ""}" cx="{px:.3f}" cy="{py:.3f}" r="5" {fill} '
                    f'data-x="{_number(p.x)}" data-y="{_number(p.y)}"><title>{escape(p.label)}: '
                    f'{p.x:.6g}, {p.y:.6g}</title></circle>')
    body.append(_legend())
    left, top, width, height = BOX
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" class="size-error" '
            f'data-x-domain="{_number(axes.x[0])} {_number(axes.x[1])}" '
            f'data-y-domain="{_number(axes.y[0])} {_number(axes.y[1])}" '
            f'data-plot-box="{left} {top} {width} {height}" font-family="sans-serif" font-size="12">'
            f"<title>{escape(title)}</title>" + "".join(body) + "</svg>")
