"""The HTML and Markdown reports: valid HTML whose embedded plots decode and are not blank, Markdown
whose linked plot files exist and decode, escaping, and the report in headless Chromium (no console messages, every plot shown, a screenshot)."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from PIL import Image

from graphc.report import build_report, render
from graphc.report.plots import report_plots

VOID = {"meta", "img", "br", "hr", "link", "input", "col", "area", "base", "embed", "source", "wbr"}


class StrictHTML(HTMLParser):
    """Well-formedness: every non-void tag closed in order; collects images, headings and titles."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.images, self.headings, self.counts = [], [], [], [], {}
        self.doctype, self._heading, self.title = None, None, ""

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        self.counts[tag] = self.counts.get(tag, 0) + 1
        if tag == "img":
            self.images.append(dict(attrs))
        if tag in ("h1", "h2", "title"):
            self._heading = tag
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            self.errors.append(f"end tag for void element <{tag}>")
        elif not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else 'nothing'}>")
        else:
            self.stack.pop()
        self._heading = None

    def handle_data(self, data):
        if self._heading == "title":
            self.title += data
        elif self._heading:
            self.headings.append(data.strip())


def parse(text: str) -> StrictHTML:
    parser = StrictHTML()
    parser.feed(text)
    parser.close()
    return parser


def assert_real_picture(png: bytes) -> Image.Image:
    """Decodes as PNG, has a sensible size, and is not blank: many colours, dark ink on light."""
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    image.load()
    pixels = np.asarray(image.convert("RGB"), dtype=np.int64)
    assert image.width >= 200 and image.height >= 150
    colours = pixels[..., 0] * 65536 + pixels[..., 1] * 256 + pixels[..., 2]
    assert pixels.std() > 10 and len(np.unique(colours)) > 20
    assert (pixels.mean(axis=2) < 128).mean() > 0.005  # axes, bars and text
    return image


def test_html_report_is_valid_and_embeds_every_plot(html_build):
    folder, outcome = html_build
    text = (folder / "report.html").read_text(encoding="utf-8")
    html = parse(text)
    assert html.doctype == "DOCTYPE html" and html.errors == [] and html.stack == []
    assert html.counts["html"] == html.counts["head"] == html.counts["body"] == html.counts["title"] == 1
    assert html.title.startswith("graphc report: ")
    assert html.headings[:1] == ["graphc opt report"]
    for section in ("Summary", "Gates", "Plots", "Passes", "Layers", "Model", "Verification", "Latency"):
        assert section in html.headings
    titles = ["Per-layer error (SQNR of each layer's output)", "Output channels kept per layer",
              "Activation histogram of 'r1' (test-calibrate)", "Activation histogram of 'r2' (test-calibrate)"]
    assert [img["alt"] for img in html.images] == titles
    for img in html.images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        assert_real_picture(base64.b64decode(img["src"][len(prefix):]))


def test_markdown_report_links_plot_files_that_decode(markdown_build):
    folder, outcome = markdown_build
    text = (folder / "report.md").read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links == [f"report_plots/{name}.png" for name in ("layer_error", "channels", "hist_0", "hist_1")]
    for link in links:
        assert_real_picture((folder / link).read_bytes())
    assert "## Layers" in text and "| c1 | Conv | pruned | 4 -> 3 |" in text


def test_json_report_has_the_data_of_every_plot(html_build, tmp_path):
    _, outcome = html_build
    report = outcome.report
    assert len(report["layers"]) == 3 and len(report["histograms"]) == 2
    assert render(report, "json").startswith("{\n  \"schema\": \"graphc.report/2\"")


def test_everything_from_the_data_is_escaped(html_build):
    _, outcome = html_build
    report = dict(outcome.report, input="<script>alert(1)</script>&", pipeline='a"b<c>')
    text = render(report, "html", plots=[])
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;&amp;" in text
    assert "a&quot;b&lt;c&gt;" in text and parse(text).errors == []


def test_report_without_plots_or_checks_is_still_valid(tmp_path):
    from graphc.passmanager import RunReport

    summary = {"nodes": 1, "params": 0, "file_bytes": None, "macs": 0, "macs_unknown": [], "mac_nodes": 0}
    report = build_report(input_path="m.onnx", output_path="o.onnx", run=RunReport("cleanup", []),
                          before=summary, after=summary)
    assert report_plots(report) == [] and report["passed"] is None
    html = parse(render(report, "html"))
    assert html.errors == [] and html.images == [] and "Plots" not in html.headings


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
#: flags that run headless Chromium as root in a container with no network use, GPU or D-Bus session
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0"]
#: appended to a copy of the report: after the load event, every image's state goes into the DOM
IMAGE_PROBE = """<script>
window.addEventListener("load", function () {
  var out = [];
  document.querySelectorAll("img").forEach(function (img) {
    var r = img.getBoundingClientRect(), s = getComputedStyle(img);
    out.push({alt: img.alt, complete: img.complete, natural: [img.naturalWidth, img.naturalHeight],
              box: [r.width, r.height],
              visible: s.display !== "none" && s.visibility !== "hidden" && s.opacity !== "0"});
  });
  var pre = document.createElement("pre");
  pre.id = "graphc-image-probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def run_chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()],
                          check=True, capture_output=True, text=True, timeout=120)


def probe_in_chromium(text: str, probe: str, probe_id: str, folder: Path) -> list:
    """``text`` (a page) with ``probe`` (a script writing JSON into ``<pre id=probe_id>`` on load)
    loaded in headless Chromium: the JSON, after checking the page logged nothing to the console."""
    probed = folder / "probed.html"
    probed.write_text(text.replace("</body>", probe + "</body>"), encoding="utf-8")
    done = run_chromium(probed, folder / "profile-dom", "--dump-dom")
    assert console_messages(done.stderr) == []
    found = re.search(rf'<pre id="{probe_id}">(.*?)</pre>', done.stdout, re.S)
    assert found, "the page did not finish loading"
    return json.loads(unescape(found.group(1)))


def console_messages(stderr: str) -> list[str]:
    """What the page wrote to the console (and uncaught exceptions): Chromium logs them as CONSOLE."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_html_report_renders_in_headless_chromium(html_build, tmp_path):
    """The report in a real browser: no console message, every plot loaded and shown at a real size,
    and a screenshot that is a picture (kept under test-artifacts/). `make test` installs Chromium
    (Debian's package); without it this test fails rather than skips."""
    assert CHROMIUM is not None, ("headless Chromium is not installed: `make test` installs Debian's "
                                  "'chromium' (apt-get install -y --no-install-recommends chromium)")
    folder, _ = html_build
    report = folder / "report.html"
    text = report.read_text(encoding="utf-8")
    images = probe_in_chromium(text, IMAGE_PROBE, "graphc-image-probe", tmp_path)
    assert [img["alt"] for img in images] == [img["alt"] for img in parse(text).images] and len(images) == 4
    for img in images:
        assert img["complete"] and img["visible"], img
        assert min(img["natural"]) >= 150 and min(img["box"]) >= 100, img
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report_html_chromium.png"
    shot.unlink(missing_ok=True)
    done = run_chromium(report, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,2400")
    assert console_messages(done.stderr) == []
    assert_real_picture(shot.read_bytes())
