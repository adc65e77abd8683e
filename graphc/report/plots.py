"""Plots of report data, as PNG bytes: per-layer error, channels kept per layer, and activation
histograms with the calibrated range marked.

matplotlib draws on its Agg canvas through ``Figure`` objects (no pyplot: no global state, no
display needed). Each function takes report data (the dicts of :mod:`graphc.report`) and returns
None when there is nothing worth drawing (every layer exact, no channel removed).
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

#: bars labelled with layer names up to this many layers; beyond, with their index.
NAMED_LAYERS = 40


@dataclass(frozen=True)
class Plot:
    name: str      # file stem: "layer_error", "channels", "hist_<tensor>"
    title: str
    png: bytes


def report_plots(report: dict[str, Any]) -> list[Plot]:
    """Every plot the report's data supports, in the order the report shows them."""
    plots = []
    layers = report.get("layers") or []
    error = layer_error_png(layers)
    if error is not None:
        plots.append(Plot("layer_error", "Per-layer error (SQNR of each layer's output)", error))
    channels = channels_png(layers)
    if channels is not None:
        plots.append(Plot("channels", "Output channels kept per layer", channels))
    sparsity = sparsity_png(layers)
    if sparsity is not None:
        plots.append(Plot("sparsity", "Share of zero weights per layer", sparsity))
    for i, entry in enumerate(report.get("histograms") or []):
        plots.append(Plot(f"hist_{i}", f"Activation histogram of '{entry['tensor']}' ({entry['pass']})",
                          histogram_png(entry)))
    return plots


def _figure(width: float, height: float):
    # lazy: matplotlib is slow to import
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.add_subplot()


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _sqnr(value: Any) -> float | None:
    if value is None or value == "nan":
        return None
    if value == "inf":
        return math.inf
    return float(value) if value != "-inf" else -math.inf


def _layer_axis(ax, names: list[str]) -> None:
    ax.set_xlim(-0.6, len(names) - 0.4)
    if len(names) <= NAMED_LAYERS:
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    else:
        ax.set_xlabel("layer (graph order)")


def layer_error_png(layers: list[dict[str, Any]]) -> bytes | None:
    """SQNR in dB per measured layer; exact layers (infinite SQNR) drawn as hatched bars at the top."""
    measured = [(r["node"], _sqnr(r.get("sqnr_db"))) for r in layers]
    measured = [(n, v) for n, v in measured if v is not None]
    finite = [v for _, v in measured if math.isfinite(v)]
    if not finite:
        return None
    top = max(finite) + 10.0
    low = min(0.0, min(finite))
    fig, ax = _figure(min(16.0, max(6.0, 0.18 * len(measured) + 2)), 3.6)
    heights = [v if math.isfinite(v) else (top if v > 0 else low) for _, v in measured]
    colors = ["#4c72b0" if math.isfinite(v) else "#bbbbbb" for _, v in measured]
    bars = ax.bar(range(len(measured)), heights, color=colors)
    for bar, (_, v) in zip(bars, measured):
        if not math.isfinite(v):
            bar.set_hatch("//")
    ax.set_ylabel("SQNR (dB), higher is better")
    ax.set_ylim(low, top + 2)
    if len(finite) < len(measured):
        ax.text(0.99, 0.97, "grey: exact (infinite SQNR)", transform=ax.transAxes, ha="right", va="top", fontsize=8)
    _layer_axis(ax, [n for n, _ in measured])
    return _png(fig)


def channels_png(layers: list[dict[str, Any]]) -> bytes | None:
    """Output channels before and after per layer; None when no layer's channels changed."""
    rows = [r for r in layers if r.get("channels") is not None]
    if not any(r.get("channels_after") not in (None, r["channels"]) for r in rows):
        return None
    fig, ax = _figure(min(16.0, max(6.0, 0.18 * len(rows) + 2)), 3.6)
    x = range(len(rows))
    ax.bar(x, [r["channels"] for r in rows], color="#dddddd", label="before")
    ax.bar(x, [r["channels_after"] or 0 for r in rows], color="#55a868", label="kept")
    ax.set_ylabel("output channels")
    ax.legend(fontsize=8, loc="upper left")
    _layer_axis(ax, [r["node"] for r in rows])
    return _png(fig)


def sparsity_png(layers: list[dict[str, Any]]) -> bytes | None:
    """Share of zero weights per layer in the result; None when no layer has any."""
    rows = [r for r in layers if r.get("sparsity") is not None]
    if not any(r["sparsity"] > 0 for r in rows):
        return None
    fig, ax = _figure(min(16.0, max(6.0, 0.18 * len(rows) + 2)), 3.6)
    ax.bar(range(len(rows)), [100 * r["sparsity"] for r in rows], color="#8172b2")
    ax.set_ylabel("zero weights (%)")
    ax.set_ylim(0, 100)
    _layer_axis(ax, [r["node"] for r in rows])
    return _png(fig)


def size_accuracy_png(curves: dict[str, list[tuple[float, float]]], *, reference: float | None = None,
                      xlabel: str = "compression (x smaller, entropy-coded)", ylabel: str = "test accuracy (%)") -> bytes:
    """One line per named curve of (x, y) points, e.g. size ratio against accuracy; ``reference``
    draws the uncompressed accuracy as a dashed line."""
    fig, ax = _figure(6.4, 3.8)
    for i, (name, points) in enumerate(curves.items()):
        xs, ys = zip(*sorted(points)) if points else ((), ())
        ax.plot(xs, ys, marker="o", label=name, color=_PALETTE[i % len(_PALETTE)])
    if reference is not None:
        ax.axhline(reference, color="#333333", linestyle="--", linewidth=1, label="original")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


_PALETTE = ("#4c72b0", "#55a868", "#c44e52", "#8172b2", "#ccb974", "#64b5cd")


def histogram_png(entry: dict[str, Any]) -> bytes:
    """Histogram (log counts) of a tensor with the calibrated range and the observed extremes marked."""
    counts, width, start = entry["counts"], float(entry["bin_width"]), float(entry["start"])
    fig, ax = _figure(6.4, 3.2)
    edges = [start + i * width for i in range(len(counts) + 1)]
    ax.stairs(counts, edges, fill=True, color="#4c72b0")  # one patch: fast to draw
    ax.set_yscale("log")
    for i, bound in enumerate(sorted({float(v) for v in entry["range"]})):
        ax.axvline(bound, color="#c44e52", linewidth=1.5, label="calibrated range" if i == 0 else None)
    for i, seen in enumerate(sorted({float(v) for v in entry["observed"]})):
        ax.axvline(seen, color="#333333", linestyle=":", linewidth=1, label="observed min / max" if i == 0 else None)
    ax.set_xlabel("activation value" if entry.get("signed", True) else "|activation value|")
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    return _png(fig)
