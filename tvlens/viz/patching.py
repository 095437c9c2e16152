"""Heatmaps of activation-patching sweeps (tidy frames from ``patch_sweep``)."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import plotly.graph_objects as go

from tvlens.viz.common import figure

SECTION = "Activation patching"


def patching_heatmap(
    df: pd.DataFrame, title: str | None = None, value: str | None = None
) -> go.Figure:
    """Layer × position (or × head) heatmap of a patching frame; one row per layer.

    Frames with both ``pos`` and ``head`` get one row per (layer, head). ``value`` names the
    column to draw (default: ``recovered`` when the frame has it, else ``value``).
    """
    value = value or ("recovered" if "recovered" in df.columns else "value")
    missing = {"layer", value} - set(df.columns)
    if missing or not ({"pos", "head"} & set(df.columns)):
        raise ValueError(
            f"expected columns layer, pos and/or head, and {value!r} (from patch_sweep); got "
            f"{list(df.columns)}."
        )
    if {"pos", "head"} <= set(df.columns):
        frame = df.assign(row=[f"L{a}H{b}" for a, b in zip(df["layer"], df["head"], strict=True)])
        grid = frame.pivot_table(index="row", columns="pos", values=value, sort=False)
        x_title, y_title = "position", "layer, head"
    else:
        col = "pos" if "pos" in df.columns else "head"
        grid = df.pivot_table(index="layer", columns=col, values=value)
        x_title, y_title = ("position" if col == "pos" else "head"), "layer"
    values = grid.to_numpy()
    finite = values[~pd.isna(values)]
    diverging = bool(finite.size) and finite.min() < 0 < finite.max()
    label = "fraction recovered" if value == "recovered" else "metric"
    fig = go.Figure(
        go.Heatmap(
            z=values,
            x=[str(c) for c in grid.columns],
            y=[str(i) for i in grid.index],
            colorscale="RdBu" if diverging else "Blues",
            zmid=0.0 if diverging else None,
            colorbar={"title": label},
            hovertemplate=(
                f"{y_title} %{{y}}<br>{x_title} %{{x}}<br>{label} %{{z:.4f}}<extra></extra>"
            ),
        )
    )
    fig.update_layout(
        title=title or "Activation patching",
        xaxis_title=x_title,
        yaxis_title=y_title,
        yaxis={"autorange": "reversed"},
    )
    return fig


@figure
def _resid_pre(df: pd.DataFrame) -> go.Figure:
    return patching_heatmap(
        df, "Denoising blocks.{l}.hook_resid_pre: clean task restored (layer × position)"
    )


@figure
def _heads(df: pd.DataFrame) -> go.Figure:
    return patching_heatmap(
        df, "Denoising head outputs blocks.{l}.attn.hook_z: clean task restored (layer × head)"
    )


FIGURES: dict[str, Callable[[pd.DataFrame], go.Figure]] = {
    "patching_resid_pre": _resid_pre,
    "patching_heads": _heads,
}
