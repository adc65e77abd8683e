"""One build of the conv net through every kind of step the report shows (calibration, pruning,
a lossy change, gates, task metric, latency), shared by the report tests of this folder."""
from __future__ import annotations

import pytest

from graphc.build import build
from graphc.recipe import Recipe
from report_passes import registered, write_labelled_data, write_net

PIPELINE = "test-calibrate,test-prune,test-scale{node=c2 factor=1.05}"


def build_report(folder, report_name: str):
    net = write_net(folder)
    data = write_labelled_data(folder)
    recipe = Recipe().updated({
        "pipeline": PIPELINE, "data.calibration": str(data), "data.samples": 4,
        "gates.min_cosine": 0.5, "gates.max_top1_drop": 0.5, "bench.enabled": True, "bench.rounds": 3,
        "bench.warmup": 1, "outputs.model": str(folder / "net.opt.onnx"),
        "outputs.report": str(folder / report_name)})
    with registered():
        return build(net, recipe)


@pytest.fixture(scope="session")
def html_build(tmp_path_factory):
    folder = tmp_path_factory.mktemp("html")
    return folder, build_report(folder, "report.html")


@pytest.fixture(scope="session")
def markdown_build(tmp_path_factory):
    folder = tmp_path_factory.mktemp("md")
    return folder, build_report(folder, "report.md")
