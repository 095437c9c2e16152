"""What every figure module shares: colours, the table check and writing figure pages."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

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
