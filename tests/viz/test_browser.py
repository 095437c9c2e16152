"""The report in a real browser: headless Chromium, no JavaScript errors, every plot drawn.

Chromium is Debian's ``chromium`` package (``apt-get install -y chromium``); without it the
tests are skipped with that message. No driver library is used: ``--dump-dom`` returns the
DOM after the page's scripts ran, and the report's own recorder (``tvlens/viz/assets/
report.js``) has written every JavaScript error into ``<html data-js-errors=...>``, every
non-local resource the page fetched into ``data-external-requests`` and the laid-out height
into ``data-page-height``. ``--screenshot`` then saves a PNG of the whole page into the run
directory.

The run checked here is a tiny dice run on which the demo's own ``analyse(run)`` wrote its
tables, so the browser sees every section the demo's report has, plus planted 3-D (WebGL),
bar and table figures. Set ``TVLENS_BROWSER_RUN=RUN_DIR`` to check that run's report instead
(for example ``runs/demo`` after ``tvlens demo``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from tvlens.models import RunConfig, load_run, train
from tvlens.viz import report

# This module doubles as a viz module with a WebGL (3-D), an SVG and a table figure, so the
# browser check covers each renderer whatever analyses the run holds.
SECTION = "Browser check: 3-D, 2-D and table"
HERE = __name__


def _scatter3d(df: pd.DataFrame) -> go.Figure:
    return go.Figure(go.Scatter3d(x=df["x"], y=df["y"], z=df["z"], mode="markers"))


def _bars(df: pd.DataFrame) -> go.Figure:
    return go.Figure(go.Bar(x=df["x"], y=df["z"]))


def _table(df: pd.DataFrame) -> go.Figure:
    return go.Figure(go.Table(header={"values": list(df.columns)}, cells={"values": df.T.values}))


FIGURES = {"points3d": [_scatter3d, _table], "bars": _bars}

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # the tests may run as root
    "--disable-gpu",
    "--enable-unsafe-swiftshader",  # software WebGL for the 3-D views
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # no calls home: the machine may have no network
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]
INSTALL_HINT = "apt-get install -y chromium"
TIME_BUDGET_MS = 20_000  # virtual time for scripts and rendering before the DOM is read


def find_chromium() -> str | None:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium(url: str, args: list[str], tmp: Path, timeout: float = 180) -> str:
    """Run headless Chromium once on ``url`` with a fresh profile; return its stdout."""
    exe = find_chromium()
    assert exe is not None
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc.stdout


@dataclass
class Plot:
    """What one plotly container holds after rendering."""

    id: str
    marks: int = 0  # trace groups, heatmap images, table cells
    canvases: list[tuple[int, int]] = field(default_factory=list)
    no_webgl: bool = False  # plotly's "WebGL is not supported" placeholder

    @property
    def rendered(self) -> bool:
        drew_canvas = any(w > 0 and h > 0 for w, h in self.canvases)
        return not self.no_webgl and (self.marks > 0 or drew_canvas)


class DomScan(HTMLParser):
    """The recorder's attributes and, per plot container, its drawn SVG marks and canvases."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta"}
    VOID |= {"source", "track", "wbr"}
    MARKS = {"trace", "hm", "column-cell", "slice"}  # data-bearing plotly SVG groups

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.errors: list[str] | None = None
        self.external: list[str] | None = None
        self.page_height = 0
        self.plots: list[Plot] = []
        self._stack: list[str] = []
        self._plot_depth: int | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        cls = set(a.get("class", "").split())
        if tag == "html" and "data-js-errors" in a:
            self.errors = json.loads(a["data-js-errors"])
            self.external = json.loads(a.get("data-external-requests", "null"))
            self.page_height = int(a.get("data-page-height", 0) or 0)
        if tag == "div" and "plotly-graph-div" in cls:
            self.plots.append(Plot(a.get("id", "?")))
            self._plot_depth = len(self._stack)
        elif self._plot_depth is not None:
            plot = self.plots[-1]
            if tag == "g" and cls & self.MARKS:
                plot.marks += 1
            elif tag == "image" and len(a.get("href", a.get("xlink:href", ""))) > 100:
                plot.marks += 1  # a heatmap drawn as an embedded bitmap
            elif tag == "canvas":
                plot.canvases.append((int(a.get("width", 0) or 0), int(a.get("height", 0) or 0)))
            elif tag == "div" and "no-webgl" in cls:
                plot.no_webgl = True
        if tag not in self.VOID:
            self._stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID or tag not in self._stack:
            return
        while self._stack:
            if self._stack.pop() == tag:
                break
        if self._plot_depth is not None and len(self._stack) <= self._plot_depth:
            self._plot_depth = None


def scan_dom(dom: str) -> DomScan:
    scan = DomScan()
    scan.feed(dom)
    return scan


def check_in_browser(
    page: Path, tmp: Path, screenshot: Path | None = None, extra_flags: tuple[str, ...] = ()
) -> DomScan:
    """Load ``page`` in headless Chromium; return the scan of its rendered DOM.

    With ``screenshot``, a second run saves a PNG of the whole laid-out page there.
    """
    url = page.resolve().as_uri()
    budget = f"--virtual-time-budget={TIME_BUDGET_MS}"
    scan = scan_dom(chromium(url, [*extra_flags, budget, "--dump-dom"], tmp))
    if screenshot is not None:
        height = min(20_000, max(900, scan.page_height + 40))
        size = f"--window-size=1400,{height}"
        chromium(url, [*extra_flags, budget, size, f"--screenshot={screenshot}"], tmp)
    return scan


needs_chromium = pytest.mark.skipif(
    find_chromium() is None,
    reason=f"headless Chromium not found (Debian: `{INSTALL_HINT}`); browser check skipped",
)


@pytest.fixture(scope="module")
def browser_run(tmp_path_factory) -> Path:
    given = os.environ.get("TVLENS_BROWSER_RUN")
    if given:
        return Path(given)
    from tvlens.experiments.demo import analyse

    cfg = RunConfig.for_family(
        "dice",
        family={"seq_len": 32},
        model={"n_layers": 2, "d_model": 16, "n_heads": 2, "d_mlp": 32},
        train={"steps": 20, "batch_size": 8, "eval_every": 5, "eval_size": 16, "n_checkpoints": 2},
    )
    run_dir = tmp_path_factory.mktemp("browser") / "run"
    train(cfg, run_dir, progress=False)
    analyse(load_run(run_dir))  # the demo's analyses, at tiny size
    rng = np.random.default_rng(0)
    pts = pd.DataFrame(rng.normal(size=(30, 3)), columns=["x", "y", "z"])
    (run_dir / "analyses").mkdir(exist_ok=True)
    pts.to_csv(run_dir / "analyses" / "points3d.csv", index=False)
    pts.to_csv(run_dir / "analyses" / "bars.csv", index=False)
    return run_dir


@needs_chromium
def test_report_renders_in_headless_chromium_without_js_errors(browser_run, tmp_path):
    modules = (*report.VIZ_MODULES, HERE)
    page = report.write_report(browser_run, modules=modules)
    shot = browser_run / "report.png"
    scan = check_in_browser(page, tmp_path, screenshot=shot)
    assert scan.errors is not None, "the report's JavaScript error recorder did not run"
    assert scan.errors == [], f"JavaScript errors in the report: {scan.errors}"
    assert scan.external == [], f"the report fetched from the network: {scan.external}"
    text = page.read_text()
    assert len(scan.plots) == text.count('class="plotly-graph-div"') >= 1
    empty = [p.id for p in scan.plots if not p.rendered]
    assert empty == [], f"plot containers that rendered no SVG marks or canvas: {empty}"
    assert 'class="error-box"><strong>' not in text, "a figure failed to draw (error box)"
    if (browser_run / "analyses" / "points3d.csv").exists():  # the run built here
        ids = {p.id for p in scan.plots}
        assert {"fig-training-metrics", "fig-attention-attention"} <= ids
        assert {"fig-test_browser-points3d", "fig-test_browser-points3d-1"} <= ids
        webgl = next(p for p in scan.plots if p.id == "fig-test_browser-points3d")
        assert any(w > 0 for w, _ in webgl.canvases), "the 3-D scatter drew no WebGL canvas"
    assert scan.page_height > 900
    assert shot.exists() and shot.stat().st_size > 10_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_chromium
def test_the_browser_check_catches_errors_empty_plots_and_network(tmp_path):
    """The checker can fail: a thrown error, an undrawn container and a CDN script are seen."""
    page = tmp_path / "bad.html"
    good = report.render_page(tmp_path, {}, [], {}, "bad page")
    bad = good.replace(
        "</main>",
        '<div id="empty" class="plotly-graph-div"></div>'
        "<script>undefinedFunction();</script>"
        '<script src="https://cdn.example.invalid/plotly.min.js"></script></main>',
    )
    page.write_text(bad)
    scan = check_in_browser(page, tmp_path)
    assert scan.errors is not None
    assert any("undefinedFunction" in e for e in scan.errors)
    assert any("cdn.example.invalid" in e for e in scan.errors)  # the failed load
    assert [p.id for p in scan.plots if not p.rendered] == ["empty"]


@needs_chromium
def test_the_browser_check_sees_a_3d_view_without_webgl(tmp_path):
    """With WebGL off, plotly shows its placeholder instead of the 3-D view: not rendered.

    (The same view with WebGL on is checked as rendered in the report test above.)
    """
    fig = _scatter3d(pd.DataFrame({"x": [0, 1], "y": [1, 0], "z": [0, 1]}))
    page = tmp_path / "3d.html"
    body = fig.to_html(full_html=False, include_plotlyjs=False, div_id="fig-3d")
    page.write_text(
        report.render_page(tmp_path, {}, [], {}, "3d").replace("</main>", body + "</main>")
    )
    scan = check_in_browser(page, tmp_path, extra_flags=("--disable-webgl",))
    assert [p.rendered for p in scan.plots] == [False]
