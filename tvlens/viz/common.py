"""What every figure module shares: colours, the table check and writing figure pages."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

SPLIT_COLOURS = {"major": "#1f77b4", "minor": "#2ca02c", "ood": "#d62728", "vertex": "#000000"}
PALETTE = qualitative.Plotly

FigureFn = Callable[[pd.DataFrame], go.Figure]


def require_columns(
    df: pd.DataFrame, cols: Iterable[str], what: str, source: str | None = None
) -> None:
    """Raise a ValueError naming the missing columns (and where the table comes from)."""
    missing = [c for c in cols if c not in df.columns]
    if missing:
        hint = f"pass the analyses/{what}.csv written by {source}." if source else ""
        raise ValueError(
            f"{what} table lacks column(s) {missing}; " + (hint or f"has {list(df.columns)}.")
        )
    if df.empty:
        raise ValueError(f"the {what} table is empty; nothing to draw.")


def write_figures(
    tables: Mapping[str, pd.DataFrame],
    fig_dir: Path | str,
    figures: Mapping[str, FigureFn],
    prefix: str = "",
) -> list[Path]:
    """Write ``fig_dir/<prefix><name>.html`` for every non-empty table with a figure in
    ``figures``; plotly.js is written once beside them, so the pages open offline."""
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, df in tables.items():
        if name in figures and not df.empty:
            path = fig_dir / f"{prefix}{name}.html"
            figures[name](df).write_html(path, include_plotlyjs="directory")
            paths.append(path)
    return paths


def screenshot(page: Path | str, png: Path | str, width: int, height: int) -> Path:
    """A PNG of an offline figure page drawn by headless Chromium (for README figures); a
    clear error when Chromium is not installed."""
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise RuntimeError("drawing a PNG needs chromium on PATH (apt-get install chromium).")
    png = Path(png).resolve()
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--screenshot={png}", f"--window-size={width},{height}",
           "--virtual-time-budget=8000", Path(page).resolve().as_uri()]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return png


#: the unit of a loss or divergence axis: per-token nats for the discrete families, squared
#: error for regression (the tables do not say which family wrote them)
LOSS_UNIT = "nats; MSE for regression"
#: at most this many distinct integer values get one tick each; more get an integer step
MAX_INT_TICKS = 12


def _axis_values(fig: go.Figure) -> dict[str, list]:
    """Layout axis name (``xaxis``, ``yaxis2``, …) -> the arrays its 2-D traces put on it."""
    found: dict[str, list] = {}
    for trace in fig.data:
        if trace.type in ("table", "scatter3d", "pie", "parcoords"):
            continue
        for letter in ("x", "y"):
            ref = getattr(trace, f"{letter}axis", None) or letter
            values = getattr(trace, letter, None)
            if values is not None:
                found.setdefault(f"{letter}axis{ref[1:]}", []).append(values)
    return found


def _nice_step(span: float) -> int:
    raw = max(1.0, span / 8)
    scale = 10 ** int(np.floor(np.log10(raw)))
    return int(next(m * scale for m in (1, 2, 5, 10) if m * scale >= raw))


def integer_ticks(fig: go.Figure) -> go.Figure:
    """Ticks on whole numbers for every numeric axis whose data are all integers (layers,
    shots, log2 N_minor, steps): one tick per value when there are few, else an integer
    step, so an axis never reads 0.5 layers. Axes with ticks set explicitly are kept."""
    for name, arrays in _axis_values(fig).items():
        try:
            axis = fig.layout[name]
        except (KeyError, ValueError):  # a trace on an axis the layout never defines
            continue
        if axis is None or axis.type == "category" or axis.tickvals is not None:
            continue
        if axis.dtick is not None:
            continue
        arrs = [np.asarray(a) for a in arrays]
        if not arrs or not all(a.dtype.kind in "iu" and a.size for a in arrs):
            continue
        values = np.unique(np.concatenate(arrs))
        if len(values) <= MAX_INT_TICKS:
            axis.update(tickmode="array", tickvals=values.tolist())
        else:
            axis.update(tickmode="linear", tick0=int(values.min()),
                        dtick=_nice_step(float(values.max() - values.min())))  # fmt: skip
    return fig


def polish(fig: go.Figure) -> go.Figure:
    """The finishing every tvlens figure gets: integer ticks on integer axes
    (:func:`integer_ticks`), numbers written as 2.5×10⁻⁴ rather than SI prefixes (plotly's
    default reads "250µ", which looks like a unit), the value on every bar (hidden where it
    does not fit) and axis titles that push the margins instead of being clipped."""
    integer_ticks(fig)
    fig.update_xaxes(exponentformat="power", automargin=True)
    fig.update_yaxes(exponentformat="power", automargin=True)
    fig.update_scenes(
        xaxis_exponentformat="power", yaxis_exponentformat="power", zaxis_exponentformat="power"
    )
    bars = False
    for trace in fig.data:
        if trace.type == "bar" and trace.text is None and trace.texttemplate is None:
            value = "%{x:.3g}" if trace.orientation == "h" else "%{y:.3g}"
            trace.update(texttemplate=value, textposition="auto", textfont={"size": 10})
        bars |= trace.type == "bar"
    if bars:
        fig.update_layout(uniformtext={"minsize": 8, "mode": "hide"})
    return fig


def figure(fn: FigureFn) -> FigureFn:
    """Decorator of the figure functions: the figure, :func:`polish`-ed."""

    @functools.wraps(fn)
    def wrapper(df: pd.DataFrame, *args, **kwargs) -> go.Figure:
        return polish(fn(df, *args, **kwargs))

    return wrapper
