"""demos/static_figures.py: the static PNG copies of the notebooks' plotly figures.

Every figure of every viz module (drawn from tests/viz/test_figures.py's small tables) gets a
PNG, and the renderer puts it beside the interactive figure in the same output and in a
numbered file. One figure is checked for what it draws: its subplots, axis titles, legend.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import plotly.express as px
import plotly.io as pio
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


static_figures = _load("static_figures", ROOT / "demos" / "static_figures.py")
viz_tables = _load("tvlens_test_figures_tables", ROOT / "tests" / "viz" / "test_figures.py")


@pytest.mark.parametrize("module, name, index", viz_tables.FIGURES, ids=lambda v: str(v))
def test_every_tvlens_figure_gets_a_png(module, name, index):
    if name not in viz_tables.TABLES:  # tests/viz/test_figures.py fails for it already
        pytest.skip(f"no small table for {name} in tests/viz/test_figures.py")
    fig = viz_tables.draw(module, name, index)
    data = static_figures.png(fig.to_dict())
    assert data.startswith(b"\x89PNG") and len(data) > 5000  # drawn, not an empty canvas


def test_the_drawing_follows_the_figure():
    """Subplots, axis titles, legend entries and subplot titles come from the plotly JSON."""
    tables = viz_tables.TABLES
    fig = viz_tables.draw("tvlens.viz.training", "metrics", 0)  # training_curves
    drawn = static_figures.draw(fig.to_dict())
    try:
        plotly_axes = [k for k in fig.layout.to_plotly_json() if k.startswith("xaxis")]
        axes = [a for a in drawn.axes if a.get_label() != "<colorbar>"]
        assert len(axes) == len(plotly_axes)
        titles = {a.get_xlabel() for a in axes} | {a.get_ylabel() for a in axes}
        assert "step" in titles
        legend = [t.get_text() for t in drawn.legends[0].get_texts()]
        assert legend and set(legend) <= {t.name for t in fig.data}
        texts = {t.get_text() for t in drawn.texts}
        assert {a.text for a in fig.layout.annotations} <= texts  # subplot titles
    finally:
        import matplotlib.pyplot as plt

        plt.close(drawn)
    assert tables  # the shared small tables were built


def test_renderer_adds_a_png_beside_the_figure_and_a_file(tmp_path):
    default = pio.renderers.default
    try:
        static_figures.enable(tmp_path / "figures")
        fig = px.bar(x=["a", "b"], y=[1, 2], title="Two bars")
        bundle = pio.renderers._build_mime_bundle(fig.to_dict())
        assert {"application/vnd.plotly.v1+json", "image/png"} <= set(bundle)
        pio.renderers._build_mime_bundle(px.line(x=[0, 1], y=[1, 0]).to_dict())
        names = sorted(p.name for p in (tmp_path / "figures").iterdir())
        assert names == ["01-two-bars.png", "02-figure.png"]  # numbered in display order
    finally:
        pio.renderers.default = default
