"""The size/error scatter plot (graphc/report/scatter.py) and the sweep summary that shows it: one
point per result at the right coordinates (read back from the SVG through the axes it declares),
the Pareto front marked, results that cannot be drawn listed; and the plot in headless Chromium."""
from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import pytest

from graphc.report.scatter import BOX, ScatterPoint, pareto_front, size_error_svg
from graphc.sweep import summary_html
from test_html import CHROMIUM, probe_in_chromium  # the report's browser harness

SVG = "{http://www.w3.org/2000/svg}"

POINTS = [ScatterPoint("a", 100.0, 30.0), ScatterPoint("b", 200.0, 40.0), ScatterPoint("c", 150.0, 25.0),
          ScatterPoint("d", 300.0, 40.0), ScatterPoint("e", 50.0, 10.0), ScatterPoint("f", 200.0, 40.0)]
#: a < c in size and better; b dominates d (smaller, as good); b and f tie (neither dominates)
FRONT = [True, True, False, False, True, True]


def read_points(svg: str) -> list[dict]:
    """Every point of the plot, its data values recovered from its pixel position through the
    domains and plot box the <svg> element declares."""
    root = ET.fromstring(svg)
    x0, x1 = map(float, root.get("data-x-domain").split())
    y0, y1 = map(float, root.get("data-y-domain").split())
    left, top, width, height = map(float, root.get("data-plot-box").split())
    out = []
    for circle in root.iter(f"{SVG}circle"):
        if "point" not in (circle.get("class") or "").split():
            continue
        cx, cy = float(circle.get("cx")), float(circle.get("cy"))
        out.append({"x": x0 + (cx - left) / width * (x1 - x0), "y": y1 - (cy - top) / height * (y1 - y0),
                    "data_x": float(circle.get("data-x")), "data_y": float(circle.get("data-y")),
                    "front": "front" in circle.get("class").split(), "label": circle.find(f"{SVG}title").text,
                    "inside": left <= cx <= left + width and top <= cy <= top + height})
    return out


def test_pareto_front_by_hand():
    assert pareto_front(POINTS) == FRONT
    assert pareto_front([ScatterPoint("only", 1.0, 1.0)]) == [True]


def test_each_point_is_drawn_at_its_coordinates_and_the_front_is_marked():
    svg = size_error_svg(POINTS, xlabel="bytes", ylabel="dB", title="t")
    drawn = read_points(svg)
    assert len(drawn) == len(POINTS)
    for point, got, front in zip(POINTS, drawn, FRONT):
        assert got["x"] == pytest.approx(point.x, abs=1e-3) and got["y"] == pytest.approx(point.y, abs=1e-4)
        assert (got["data_x"], got["data_y"]) == (point.x, point.y)
        assert got["front"] == front and got["inside"] and got["label"].startswith(point.label + ":")
    # the declared axes are the data ranges padded by 6%: 50..300 bytes, 10..40 dB
    root = ET.fromstring(svg)
    assert [float(v) for v in root.get("data-x-domain").split()] == pytest.approx([35.0, 315.0])
    assert [float(v) for v in root.get("data-y-domain").split()] == pytest.approx([8.2, 41.8])
    assert [float(v) for v in root.get("data-plot-box").split()] == list(BOX)
    # higher quality is higher on the page, larger size further right
    by_label = {p["label"][0]: p for p in drawn}
    cy = {c.find(f"{SVG}title").text[0]: float(c.get("cy")) for c in root.iter(f"{SVG}circle") if c.get("class")}
    cx = {c.find(f"{SVG}title").text[0]: float(c.get("cx")) for c in root.iter(f"{SVG}circle") if c.get("class")}
    assert cy["b"] < cy["a"] < cy["e"] and cx["e"] < cx["a"] < cx["d"] and by_label["d"]["front"] is False
    # the front line visits the front's points left to right
    line = root.find(f"{SVG}polyline").get("points").split()
    assert len(line) == sum(FRONT)


def test_a_single_point_and_bad_points():
    drawn = read_points(size_error_svg([ScatterPoint("x", 10.0, 5.0)], xlabel="a", ylabel="b", title="c"))
    assert len(drawn) == 1 and drawn[0]["x"] == pytest.approx(10.0) and drawn[0]["front"]
    for bad in ([], [ScatterPoint("inf", 1.0, math.inf)]):
        with pytest.raises(ValueError):
            size_error_svg(bad, xlabel="a", ylabel="b", title="c")


def _rows():
    rows = []
    for model in ("m1.onnx", "m2.onnx"):
        for i, (size, sqnr) in enumerate([(4000, 30.0), (2000, 35.0), (1000, "inf"), (3000, 20.0)]):
            rows.append({"model": model, "recipe": f"r{i}.toml", "passed": True, "size_bytes": size * 4,
                         "entropy_coded_bytes": size if model == "m1.onnx" else size // 2,
                         "latency_ms": None, "speedup": None, "sqnr_db": sqnr, "pareto": False})
    return rows


def test_sweep_summary_plots_each_model_with_one_point_per_finite_row():
    page = summary_html(_rows())
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    assert len(svgs) == 2
    for svg, scale in zip(svgs, (1, 2)):
        drawn = read_points(svg)
        assert [(p["data_x"], p["data_y"]) for p in drawn] == [(4000 / scale, 30.0), (2000 / scale, 35.0),
                                                               (3000 / scale, 20.0)]
        assert [p["front"] for p in drawn] == [False, True, False]  # r1 is smaller and better than r0, r3
        for p in drawn:
            assert p["x"] == pytest.approx(p["data_x"], abs=1e-3) and p["y"] == pytest.approx(p["data_y"], abs=1e-4)
    assert page.count("Not drawn: r2.toml (SQNR inf)") == 2


SVG_PROBE = """<script>
window.addEventListener("load", function () {
  var out = [];
  document.querySelectorAll("svg").forEach(function (svg) {
    var r = svg.getBoundingClientRect(), s = getComputedStyle(svg);
    var points = Array.from(svg.querySelectorAll("circle.point")).map(function (c) {
      var b = c.getBoundingClientRect();
      return [b.left - r.left + b.width / 2, b.top - r.top + b.height / 2, b.width];
    });
    out.push({box: [r.width, r.height], visible: s.display !== "none" && s.visibility !== "hidden",
              points: points});
  });
  var pre = document.createElement("pre");
  pre.id = "graphc-svg-probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def test_sweep_plot_renders_in_headless_chromium(tmp_path):
    """The summary page in a real browser: no console message, both plots shown at their size, and
    every point rendered where the SVG puts it (the browser's layout, not our parser)."""
    assert CHROMIUM is not None, "headless Chromium is not installed (`make test` installs it)"
    page = summary_html(_rows())
    plots = probe_in_chromium(page, SVG_PROBE, "graphc-svg-probe", tmp_path)
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    assert len(plots) == len(svgs) == 2
    for plot, svg in zip(plots, svgs):
        assert plot["visible"] and plot["box"] == [640, 400]
        centres = [(float(c.get("cx")), float(c.get("cy"))) for c in ET.fromstring(svg).iter(f"{SVG}circle")
                   if "point" in (c.get("class") or "").split()]
        assert len(plot["points"]) == len(centres) == 3
        for (x, y, size), (cx, cy) in zip(plot["points"], centres):
            assert size >= 8  # a real marker (r = 5), drawn where the SVG puts it
            assert x == pytest.approx(cx, abs=1.0) and y == pytest.approx(cy, abs=1.0)
