"""Figures for the reference code's metrics (:mod:`tvlens.analyses.paper_metrics`) and the
sufficient-statistic probes (:mod:`tvlens.analyses.probes`).

Each function takes the tidy table written as ``analyses/<name>.csv`` and returns a plotly
figure; ``FIGURES`` maps the CSV stem to its function.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tvlens.viz.common import PALETTE, SPLIT_COLOURS, require_columns

SECTION = "The reference code's metrics"


def _require(df: pd.DataFrame, cols: list[str], what: str) -> None:
    require_columns(df, cols, what, "tvlens.analyses.paper_metrics")


def paper_ood_r2_by_layer(df: pd.DataFrame) -> go.Figure:
    """The paper-style R² of per-task mean states on the major plane, by layer (OOD and
    minor tasks), with the interquartile band over tasks."""
    _require(df, ["layer", "split", "r2_paper", "r2_paper_q25", "r2_paper_q75"], "paper_ood_r2")
    fig = go.Figure()
    for i, (split, g) in enumerate(df.groupby("split", sort=False)):
        g = g.sort_values("layer")
        c = SPLIT_COLOURS.get(str(split), PALETTE[i % len(PALETTE)])
        fig.add_scatter(
            x=g["layer"],
            y=g["r2_paper"],
            mode="lines+markers",
            name=str(split),
            line={"color": c},
            error_y={
                "type": "data",
                "symmetric": False,
                "array": g["r2_paper_q75"] - g["r2_paper"],
                "arrayminus": g["r2_paper"] - g["r2_paper_q25"],
            },
        )
    fig.update_layout(
        title="Paper-style R² of per-task means on the major plane (clamped to [0, 1])",
        xaxis_title="layer",
        yaxis_title="R² (paper definition)",
        yaxis_range=[-0.02, 1.02],
    )
    return fig


def paper_anova_by_layer(df: pd.DataFrame) -> go.Figure:
    """η² of task, token and interaction (stacked) per layer; one panel per split."""
    _require(df, ["layer", "split", "eta2_task", "eta2_token", "eta2_interaction"], "paper_anova")
    splits = list(dict.fromkeys(df["split"].astype(str)))
    fig = make_subplots(rows=1, cols=len(splits), shared_yaxes=True, subplot_titles=splits)
    parts = (("eta2_task", "task"), ("eta2_token", "token"), ("eta2_interaction", "interaction"))
    for j, split in enumerate(splits, start=1):
        g = df[df["split"].astype(str) == split].sort_values("layer")
        for i, (col, name) in enumerate(parts):
            fig.add_bar(
                x=g["layer"],
                y=g[col],
                name=name,
                legendgroup=name,
                showlegend=j == 1,
                marker={"color": PALETTE[i % len(PALETTE)]},
                row=1,
                col=j,
            )
    fig.update_layout(
        barmode="stack",
        title="Token-conditioned two-way ANOVA: η² of task, token and interaction",
        yaxis_title="η²",
    )
    fig.update_xaxes(title_text="layer")
    return fig


def paper_ood_r2_vs_k(df: pd.DataFrame) -> go.Figure:
    """The paper-style OOD R² against log2 N_minor, one line per layer."""
    _require(df, ["log2_n_minor", "layer", "split", "r2_paper"], "paper_ood_r2_vs_k")
    fig = go.Figure()
    ood = df[df["split"] == "ood"]
    for i, (layer, g) in enumerate(ood.groupby("layer")):
        g = g.sort_values("log2_n_minor")
        fig.add_scatter(
            x=g["log2_n_minor"],
            y=g["r2_paper"],
            mode="lines+markers",
            name=f"layer {layer}",
            line={"color": PALETTE[i % len(PALETTE)]},
        )
    fig.update_layout(
        title="Paper-style OOD R² vs task diversity",
        xaxis_title="log2 N_minor (−1: none)",
        yaxis_title="R² (paper definition)",
        yaxis_range=[-0.02, 1.02],
    )
    return fig


def demo_two_modes(df: pd.DataFrame) -> go.Figure:
    """The demo's two models side by side: one bar per headline number and model."""
    _require(df, ["metric", "description"], "demo_two_modes")
    runs = [c for c in df.columns if c not in ("metric", "description")]
    d = df[df["metric"] != "best_layer"]
    fig = go.Figure()
    for i, run in enumerate(runs):
        fig.add_bar(
            y=d["description"],
            x=pd.to_numeric(d[run], errors="coerce"),
            name=str(run),
            orientation="h",
            marker={"color": PALETTE[i % len(PALETTE)]},
        )
    fig.update_layout(
        barmode="group",
        title="Retrieval (k = −1) and learning (many minor tasks) side by side",
        height=120 + 45 * len(d),
        yaxis={"autorange": "reversed"},
        margin={"l": 360},
    )
    return fig


def probes_by_layer(df: pd.DataFrame) -> go.Figure:
    """Held-out R² of the sufficient-statistic probes by layer: one line per view (full
    state, task subspace, its orthogonal complement, random control); one panel per split."""
    require_columns(df, ["layer", "split", "view", "r2"], "probes", "tvlens.analyses.probes")
    splits = list(dict.fromkeys(df["split"].astype(str)))
    fig = make_subplots(rows=1, cols=len(splits), shared_yaxes=True, subplot_titles=splits)
    dash = {"full": "solid", "task": "dash", "orth": "dot", "random": "dashdot"}
    for j, split in enumerate(splits, start=1):
        d = df[df["split"].astype(str) == split]
        for i, (view, g) in enumerate(d.groupby("view", sort=False)):
            g = g.sort_values("layer")
            fig.add_scatter(
                x=g["layer"],
                y=g["r2"],
                mode="lines+markers",
                name=str(view),
                legendgroup=str(view),
                showlegend=j == 1,
                line={"color": PALETTE[i % len(PALETTE)], "dash": dash.get(str(view), "solid")},
                row=1,
                col=j,
            )
    fig.update_xaxes(title_text="layer")
    fig.update_layout(title="Probes for the learning reference's statistics", yaxis_title="R²")
    return fig


def probe_angles_by_layer(df: pd.DataFrame) -> go.Figure:
    """Mean principal angle between the probe's read-out subspace and the task subspace."""
    require_columns(df, ["layer", "split", "angle_deg"], "probe_angles", "tvlens.analyses.probes")
    mean = df.groupby(["split", "layer"], as_index=False)["angle_deg"].mean()
    fig = go.Figure()
    for i, (split, g) in enumerate(mean.groupby("split", sort=False)):
        fig.add_scatter(
            x=g["layer"],
            y=g["angle_deg"],
            mode="lines+markers",
            name=str(split),
            line={"color": SPLIT_COLOURS.get(str(split), PALETTE[i % len(PALETTE)])},
        )
    fig.update_layout(
        title="Probe read-out vs task subspace (90°: read off the plane)",
        xaxis_title="layer",
        yaxis_title="mean principal angle (°)",
        yaxis_range=[0, 91],
    )
    return fig


FIGURES: dict[str, Callable[[pd.DataFrame], go.Figure]] = {
    "probes": probes_by_layer,
    "probe_angles": probe_angles_by_layer,
    "demo_two_modes": demo_two_modes,
    "paper_ood_r2": paper_ood_r2_by_layer,
    "paper_anova": paper_anova_by_layer,
    "paper_ood_r2_vs_k": paper_ood_r2_vs_k,
}
