"""Figures for task decodability: the layer × examples heatmap, coupled emergence over
training, TD against ICL performance, and early- vs late-layer fine-tuning.

Each function takes the tidy CSV written by :mod:`tvlens.analyses.decodability`,
:mod:`tvlens.analyses.dynamics` or :mod:`tvlens.analyses.finetune` and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tvlens.viz.common import figure, require_columns

SECTION = "Task decodability"


def td_heatmap_trace(df: pd.DataFrame, x_label: str, showscale: bool = True) -> go.Heatmap:
    """A layer × n_examples heatmap trace of mean TD on the [0, 1] scale (shared by LLM views)."""
    piv = df.pivot_table(index="layer", columns="n_examples", values="td", aggfunc="mean")
    return go.Heatmap(
        z=piv.to_numpy(),
        x=[str(v) for v in piv.columns],
        y=[str(v) for v in piv.index],
        zmin=0,
        zmax=1,
        colorscale="Viridis",
        colorbar={"title": "TD"},
        showscale=showscale,
        hovertemplate=f"{x_label} %{{x}}<br>layer %{{y}}<br>TD %{{z:.3f}}<extra></extra>",
    )


def _require(df: pd.DataFrame, cols: tuple[str, ...], what: str) -> None:
    require_columns(df, cols, what)


@figure
def decodability_heatmap(df: pd.DataFrame) -> go.Figure:
    """TD per layer × number of in-context examples: one panel per method (columns) and per
    decoding target ``label:split`` (rows, when the table has several); chance in titles."""
    _require(df, ("method", "layer", "n_examples", "td", "chance"), "decodability")
    if {"label", "split"} <= set(df.columns):
        df = df.assign(target=df["label"].astype(str) + ":" + df["split"].astype(str))
    else:
        df = df.assign(target="")
    methods = list(dict.fromkeys(df["method"]))
    targets = list(dict.fromkeys(df["target"]))
    titles = []
    for t in targets:
        for m in methods:
            cell = df[(df["method"] == m) & (df["target"] == t)]
            titles.append(f"{m}{' ' + t if t else ''} (chance {cell['chance'].mean():.2f})")
    fig = make_subplots(
        rows=len(targets),
        cols=len(methods),
        subplot_titles=titles,
        shared_yaxes=True,
        vertical_spacing=0.12 if len(targets) > 1 else 0.0,
    )
    for r, target in enumerate(targets, start=1):
        for c, method in enumerate(methods, start=1):
            d = df[(df["method"] == method) & (df["target"] == target)]
            fig.add_trace(
                td_heatmap_trace(d, "examples", showscale=r == 1 and c == 1), row=r, col=c
            )
            fig.update_xaxes(title_text="in-context examples", type="category", row=r, col=c)
        fig.update_yaxes(title_text="layer", row=r, col=1)
    fig.update_layout(
        title="Task decodability by layer and number of examples", height=340 * len(targets) + 40
    )
    return fig


@figure
def emergence_plot(df: pd.DataFrame) -> go.Figure:
    """TD per layer against training step (left) beside the ICL loss (right)."""
    _require(df, ("step", "layer", "n_examples", "td", "icl_loss"), "dynamics")
    if "method" in df:
        df = df[df["method"] == ("knn" if "knn" in set(df["method"]) else df["method"].iloc[0])]
    n_ex = df["n_examples"].max()
    d = df[df["n_examples"] == n_ex].sort_values("step")
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=[f"TD per layer ({n_ex} examples)", "ICL loss"],
        horizontal_spacing=0.1,
    )
    colors = px.colors.sample_colorscale("Viridis", max(2, d["layer"].nunique()))
    for color, (layer, g) in zip(colors, d.groupby("layer"), strict=False):
        fig.add_trace(
            go.Scatter(
                x=g["step"],
                y=g["td"],
                mode="lines+markers",
                name=f"layer {layer}",
                line={"color": color},
            ),
            row=1,
            col=1,
        )
    chance = d.groupby("step")["chance"].mean()
    fig.add_trace(
        go.Scatter(
            x=chance.index,
            y=chance.to_numpy(),
            mode="lines",
            name="chance",
            line={"dash": "dot", "color": "grey"},
        ),
        row=1,
        col=1,
    )
    loss = d.groupby("step")["icl_loss"].mean()
    fig.add_trace(
        go.Scatter(
            x=loss.index,
            y=loss.to_numpy(),
            mode="lines+markers",
            name="ICL loss",
            line={"color": "#d62728"},
        ),
        row=1,
        col=2,
    )
    for col in (1, 2):
        fig.update_xaxes(title_text="training step", row=1, col=col)
    fig.update_yaxes(title_text="TD (LOO kNN)", range=[0, 1.02], row=1, col=1)
    fig.update_yaxes(title_text="loss", row=1, col=2)
    fig.update_layout(title="Coupled emergence: encoding (TD) and decoding (loss)", height=400)
    return fig


@figure
def td_performance_scatter(df: pd.DataFrame) -> go.Figure:
    """Per class × number of examples: TD against ICL performance."""
    _require(df, ("group", "n_examples", "td", "performance"), "TD-performance")
    d = df.assign(group=df["group"].astype(str))
    fig = px.scatter(
        d,
        x="td",
        y="performance",
        color="n_examples",
        symbol="group",
        hover_data=[c for c in ("layer", "loss", "n") if c in d.columns],
        labels={"td": "TD (class recall, LOO kNN)", "performance": "ICL performance"},
        color_continuous_scale="Viridis",
    )
    fig.update_layout(title="Task decodability predicts ICL performance", height=420)
    return fig


@figure
def correlation_table(df: pd.DataFrame) -> go.Figure:
    """The TD–performance correlations (r, p-value, number of points) as a table."""
    _require(df, ("over", "r", "p", "n"), "correlation")
    cols = [c for c in ("y", "over", "layer", "n_examples", "method", "r", "p", "n") if c in df]
    cells = [[f"{v:.3g}" if isinstance(v, float) else str(v) for v in df[c]] for c in cols]
    fig = go.Figure(go.Table(header={"values": cols}, cells={"values": cells}))
    fig.update_layout(title="Correlation of TD with ICL performance", height=300)
    return fig


@figure
def finetune_bars(df: pd.DataFrame) -> go.Figure:
    """Change in TD per layer (left) and in ICL loss (right) after early vs late tuning,
    averaged over fine-tuning seeds (error bars: standard deviation over seeds)."""
    _require(df, ("variant", "layer", "d_td", "d_icl_loss"), "fine-tuning")
    d = df[df["variant"] != "start"]
    if "n_examples" in d:
        d = d[d["n_examples"] == d["n_examples"].max()]
    if "method" in d:
        d = d[d["method"] == d["method"].iloc[0]]
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=["ΔTD per layer", "Δ ICL loss"], horizontal_spacing=0.12
    )
    palette = {"early": "#1f77b4", "late": "#ff7f0e"}
    for variant, g in d.groupby("variant", sort=False):
        blocks = g["blocks"].iloc[0] if "blocks" in g else ""
        name = f"{variant} (blocks {blocks})"
        color = palette.get(str(variant))
        per_layer = g.groupby("layer")["d_td"].agg(["mean", "std"]).fillna(0.0)
        per_seed = g.groupby("seed")["d_icl_loss"].first() if "seed" in g else g["d_icl_loss"]
        fig.add_trace(
            go.Bar(
                x=per_layer.index.astype(str),
                y=per_layer["mean"],
                error_y={"type": "data", "array": per_layer["std"]},
                name=name,
                marker_color=color,
                legendgroup=str(variant),
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Bar(
                x=[name],
                y=[per_seed.mean()],
                error_y={"type": "data", "array": [per_seed.std() if len(per_seed) > 1 else 0]},
                name=name,
                marker_color=color,
                legendgroup=str(variant),
                showlegend=False,
            ),
            row=1,
            col=2,
        )
    fig.update_xaxes(title_text="layer", row=1, col=1)
    fig.update_xaxes(title_text="fine-tuned blocks", row=1, col=2)
    fig.update_yaxes(title_text="TD after − before", row=1, col=1)
    fig.update_yaxes(title_text="loss after − before", row=1, col=2)
    fig.update_layout(
        title="Fine-tuning early vs late layers (same budget)", barmode="group", height=400
    )
    return fig


@figure
def emergence_steps_plot(df: pd.DataFrame) -> go.Figure:
    """Per layer: the step at which TD has risen half-way, beside the loss's half-way step."""
    _require(df, ("layer", "td_half_step", "loss_half_step"), "emergence")
    fig = go.Figure()
    fig.add_trace(go.Bar(x=df["layer"].astype(str), y=df["td_half_step"], name="TD half-way step"))
    fig.add_trace(
        go.Scatter(
            x=df["layer"].astype(str),
            y=df["loss_half_step"],
            mode="lines",
            name="ICL loss half-way step",
            line={"dash": "dash", "color": "#d62728"},
        )
    )
    fig.update_layout(
        title="When encoding (TD) and decoding (loss) emerge",
        xaxis_title="layer",
        yaxis_title="training step",
        height=360,
    )
    return fig


FIGURES: dict[str, Callable[[pd.DataFrame], go.Figure]] = {
    "decodability": decodability_heatmap,
    "decodability_dynamics": emergence_plot,
    "decodability_groups": td_performance_scatter,
    "decodability_correlation": correlation_table,
    "decodability_finetune": finetune_bars,
    "decodability_emergence": emergence_steps_plot,
}
