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

from tvlens.viz.common import PALETTE, SPLIT_COLOURS, figure, require_columns

SECTION = "The reference code's metrics"


def _require(df: pd.DataFrame, cols: list[str], what: str) -> None:
    require_columns(df, cols, what, "tvlens.analyses.paper_metrics")


@figure
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


@figure
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


@figure
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


@figure
def demo_two_modes(df: pd.DataFrame) -> go.Figure:
    """The demo's two models side by side: one panel per headline number (each in its own
    unit), a bar per model with its seed interval (± sd) as an error bar, the named null
    baseline of the same run as a grey diamond and, where one exists, the ceiling as a
    black line."""
    _require(df, ["metric", "description", "unit", "model", "value", "baseline"],
             "demo_two_modes")  # fmt: skip
    metrics = list(dict.fromkeys(df["metric"]))
    cols = 3
    rows = -(-len(metrics) // cols)
    titles = [
        f"{g['description'].iloc[0]} ({g['unit'].iloc[0]})"
        for _, g in df.groupby("metric", sort=False)
    ]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, vertical_spacing=0.32 / rows,
                        horizontal_spacing=0.08)  # fmt: skip
    models = list(dict.fromkeys(df["model"].astype(str)))
    colour = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)}
    shown: set[str] = set()
    for i, metric in enumerate(metrics):
        r, c = i // cols + 1, i % cols + 1
        g = df[df["metric"] == metric]
        fig.update_yaxes(title_text=str(g["unit"].iloc[0]), title_font_size=11, row=r, col=c)
        fig.update_xaxes(title_text="model", title_font_size=10, showticklabels=False, row=r, col=c)
        for _, row in g.iterrows():
            m = str(row["model"])
            sd = row.get("value_sd", float("nan"))
            fig.add_bar(
                x=[m], y=[row["value"]], name=m, legendgroup=m, showlegend=m not in shown,
                marker={"color": colour[m]},
                error_y={"type": "data", "array": [sd if sd == sd else 0], "visible": sd == sd},
                text=[f"{row['value']:.3f}"], textposition="outside", row=r, col=c,
            )  # fmt: skip
            shown.add(m)
        base = g.dropna(subset=["baseline"])
        if len(base) and str(base["baseline_name"].iloc[0]):
            name = f"baseline: {base['baseline_name'].iloc[0]}"
            fig.add_scatter(
                x=base["model"].astype(str), y=base["baseline"], mode="markers", name=name,
                marker={"symbol": "diamond", "size": 11, "color": "#7f7f7f"},
                error_y={"type": "data", "array": base.get("baseline_sd", base["baseline"] * 0)
                         .fillna(0)}, showlegend=False, hovertemplate=name + ": %{y:.3f}",
                row=r, col=c,
            )  # fmt: skip
        ceil = g.dropna(subset=["ceiling"]) if "ceiling" in g else g.iloc[:0]
        if len(ceil):
            fig.add_scatter(
                x=ceil["model"].astype(str), y=ceil["ceiling"], mode="markers",
                name="ceiling: top principal components", showlegend=False,
                marker={"symbol": "line-ew-open", "size": 26, "color": "black"},
                hovertemplate="ceiling (top PCs): %{y:.3f}", row=r, col=c,
            )  # fmt: skip
    fig.update_annotations(font_size=11)
    fig.update_layout(
        title="Retrieval and learning side by side (bars: model, mean ± sd over seeds; "
        "◆ grey: null baseline; — black: ceiling)",
        height=260 * rows + 80,
        bargap=0.35,
        legend={"orientation": "h", "y": -0.03},
        margin={"t": 90},
    )
    return fig


@figure
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


@figure
def probe_angles_by_layer(df: pd.DataFrame) -> go.Figure:
    """Mean principal angle between the probe's read-out subspace and the task subspace."""
    require_columns(df, ["layer", "split", "angle_deg"], "probe_angles", "tvlens.analyses.probes")
    cols = [c for c in ("angle_deg", "random_angle_mean", "random_angle_p05") if c in df]
    mean = df.groupby(["split", "layer"], as_index=False)[cols].mean()
    fig = go.Figure()
    for i, (split, g) in enumerate(mean.groupby("split", sort=False)):
        fig.add_scatter(
            x=g["layer"],
            y=g["angle_deg"],
            mode="lines+markers",
            name=str(split),
            line={"color": SPLIT_COLOURS.get(str(split), PALETTE[i % len(PALETTE)])},
        )
    if "random_angle_mean" in mean:  # the chance reference: random planes of that dimension
        ref = mean.groupby("layer", as_index=False)[["random_angle_mean", "random_angle_p05"]]
        ref = ref.mean()
        fig.add_scatter(x=ref["layer"], y=ref["random_angle_mean"], mode="lines",
                        name="baseline: random planes (mean)",
                        line={"color": "#7f7f7f", "dash": "dash"})  # fmt: skip
        fig.add_scatter(x=ref["layer"], y=ref["random_angle_p05"], mode="lines",
                        name="random planes (5th percentile)",
                        line={"color": "#7f7f7f", "dash": "dot"})  # fmt: skip
    fig.update_layout(
        title="Probe read-out vs task subspace (90°: read off the plane)",
        xaxis={"title": "layer", "dtick": 1},
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
