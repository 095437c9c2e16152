"""Figures for steering along the task simplex (:mod:`tvlens.analyses.steering`).

``steering``: task-ID accuracy when the task part of h is replaced by θ_k, per layer, beside
the unsteered model. ``convexity``: the steered prediction against the α-mixture of the
tasks' predictive distributions (and against the logit-space mixture and the nearest
vertex, for scale).
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tvlens.viz.common import PALETTE, figure, require_columns

#: steering divergences: KL for the discrete families, squared error for regression
DIV_UNIT = "KL in nats; squared error for regression"

SECTION = "Steering along the task simplex"


def _require(df: pd.DataFrame, cols: list[str], what: str) -> None:
    require_columns(df, cols, what, "tvlens.analyses.steering.analyse_steering")


@figure
def steering_accuracy(df: pd.DataFrame) -> go.Figure:
    """Task-ID accuracy (left) and divergence to the target task (right) by layer."""
    _require(df, ["layer", "condition", "accuracy", "div_target"], "steering")
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=["task-ID accuracy", "divergence to the target task"]
    )
    steered = df[df["condition"] != "unsteered"]
    names = {"own": "steer to own task", "to_task": "steer to task k (mean over k)"}
    for i, (cond, g) in enumerate(steered.groupby("condition")):
        m = g.groupby("layer", as_index=False)[["accuracy", "div_target"]].mean()
        colour = PALETTE[i % len(PALETTE)]  # one colour per condition, in both panels
        for col, y in ((1, "accuracy"), (2, "div_target")):
            fig.add_scatter(
                x=m["layer"],
                y=m[y],
                mode="lines+markers",
                name=names.get(cond, cond),
                legendgroup=cond,
                showlegend=col == 1,
                line={"color": colour},
                row=1,
                col=col,
            )
    base = df[df["condition"] == "unsteered"]
    if not base.empty:
        fig.add_hline(
            y=float(base["accuracy"].iloc[0]),
            line={"dash": "dash", "color": "grey"},
            annotation_text="unsteered",
            row=1,
            col=1,
        )
        fig.add_hline(
            y=float(base["div_target"].iloc[0]),
            line={"dash": "dash", "color": "grey"},
            row=1,
            col=2,
        )
    fig.update_xaxes(title_text="steered layer")
    fig.update_yaxes(title_text="task-ID accuracy", range=[0, 1.05], row=1, col=1)
    fig.update_yaxes(title_text=f"divergence to the target task ({DIV_UNIT})", row=1, col=2)
    fig.update_layout(title="Steering the task subspace to θ_k")
    return fig


@figure
def convexity_check(df: pd.DataFrame) -> go.Figure:
    """Mean divergence of the α-steered prediction from the α-mixture Σ α_k p_k, the
    geometric mixture and the nearest vertex, per layer (mixed α only)."""
    _require(df, ["layer", "alpha_max", "div_mixture", "div_mixture_vertex"], "convexity")
    mixed = df[df["alpha_max"] < 0.999]
    if mixed.empty:
        mixed = df
    cols = {
        "div_mixture": "steered vs Σ α_k p_k",
        "div_geometric": "steered vs geometric mixture",
        "div_vertex": "steered vs nearest vertex",
        "div_mixture_vertex": "Σ α_k p_k vs nearest vertex (scale)",
    }
    m = mixed.groupby("layer", as_index=False)[[c for c in cols if c in mixed]].mean()
    fig = go.Figure()
    for col, name in cols.items():
        if col in m and m[col].notna().any():
            fig.add_bar(x=m["layer"], y=m[col], name=name)
    fig.update_layout(
        title="Convexity check: steering to Σ α_k θ_k",
        xaxis_title="steered layer",
        yaxis_title=f"divergence ({DIV_UNIT})",
        barmode="group",
    )
    return fig


@figure
def convexity_vs_k(df: pd.DataFrame) -> go.Figure:
    """Mean KL of the α-steered prediction to Σ α_k p_k (solid) and to the geometric
    mixture (dotted) against log2 N_minor, one colour per steered layer."""
    _require(df, ["log2_n_minor", "layer", "div_mixture"], "convexity_vs_k")
    fig = go.Figure()
    for i, (layer, g) in enumerate(df.groupby("layer")):
        g = g.sort_values("log2_n_minor")
        c = PALETTE[i % len(PALETTE)]
        fig.add_scatter(
            x=g["log2_n_minor"],
            y=g["div_mixture"],
            mode="lines+markers",
            name=f"layer {layer}: vs Σ α_k p_k",
            line={"color": c},
        )
        if "div_geometric" in g and g["div_geometric"].notna().any():
            fig.add_scatter(
                x=g["log2_n_minor"],
                y=g["div_geometric"],
                mode="lines+markers",
                name=f"layer {layer}: vs geometric",
                line={"color": c, "dash": "dot"},
            )
    fig.update_layout(
        title="Convexity check against task diversity (mixed α)",
        xaxis_title="log2 N_minor",
        yaxis_title=f"divergence ({DIV_UNIT})",
    )
    return fig


FIGURES: dict[str, Callable[[pd.DataFrame], go.Figure]] = {
    "steering": steering_accuracy,
    "convexity": convexity_check,
    "convexity_vs_k": convexity_vs_k,
}
