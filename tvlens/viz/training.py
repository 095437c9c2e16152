"""Training curves: the model's loss beside the retrieval, learning and true-task references.

``metrics.csv`` (written by :func:`tvlens.models.train`) holds one row per evaluation step,
split and position band with the model's loss, each reference's loss and the divergence
(KL in nats, or squared error for regression) from the model to the retrieval and the
learning reference. The report always renders it when a run directory has one.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tvlens.viz.common import LOSS_UNIT, figure

SECTION = "Training curves"

#: reference column -> (legend name, line dash, colour)
REFERENCES: dict[str, tuple[str, str, str]] = {
    "loss_retrieval": ("retrieval reference", "dash", "#d62728"),
    "loss_learning": ("learning reference", "dot", "#2ca02c"),
    "loss_true": ("true task", "dashdot", "#7f7f7f"),
}
DIVERGENCES: dict[str, tuple[str, str]] = {
    "div_retrieval": ("to retrieval", "#d62728"),
    "div_learning": ("to learning", "#2ca02c"),
}
REQUIRED = ("step", "split", "loss")
SPLIT_ORDER = ("train", "major", "minor", "ood")


def check_metrics(df: pd.DataFrame) -> None:
    """Raise a clear error when ``df`` is not a tvlens ``metrics.csv`` table."""
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(
            f"metrics table lacks column(s) {missing}; expected the metrics.csv written by "
            "tvlens.models.train (step, split, loss, loss_retrieval, ...)."
        )
    if df.empty:
        raise ValueError("metrics table is empty; train the run for at least one evaluation.")


def widest_band(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of the band covering most positions (training evaluates one band, ``0-T``)."""
    if "band" not in df.columns or df["band"].nunique() <= 1:
        return df

    def span(band: str) -> int:
        lo, _, hi = str(band).partition("-")
        try:
            return int(hi) - int(lo)
        except ValueError:
            return 0

    best = max(df["band"].unique(), key=span)
    return df[df["band"] == best]


def ordered_splits(df: pd.DataFrame) -> list[str]:
    found = list(dict.fromkeys(df["split"].astype(str)))
    return [s for s in SPLIT_ORDER if s in found] + [s for s in found if s not in SPLIT_ORDER]


@figure
def training_curves(df: pd.DataFrame) -> go.Figure:
    """Loss vs step per split with the reference losses (top), divergence to each (bottom)."""
    check_metrics(df)
    df = widest_band(df).sort_values("step")
    splits = ordered_splits(df)
    has_div = any(c in df.columns for c in DIVERGENCES)
    rows = 2 if has_div else 1
    fig = make_subplots(
        rows=rows,
        cols=len(splits),
        shared_xaxes=True,
        subplot_titles=[f"{s}" for s in splits],
        vertical_spacing=0.12,
        horizontal_spacing=0.06,
    )
    for j, split in enumerate(splits, start=1):
        d = df[df["split"].astype(str) == split]
        first = j == 1
        fig.add_trace(
            go.Scatter(
                x=d["step"],
                y=d["loss"],
                mode="lines+markers",
                name="model",
                legendgroup="model",
                showlegend=first,
                line={"color": "#1f77b4", "width": 2.5},
                marker={"size": 4},
            ),
            row=1,
            col=j,
        )
        for col, (name, dash, colour) in REFERENCES.items():
            if col in d.columns and d[col].notna().any():
                fig.add_trace(
                    go.Scatter(
                        x=d["step"],
                        y=d[col],
                        mode="lines",
                        name=name,
                        legendgroup=name,
                        showlegend=first,
                        line={"color": colour, "dash": dash, "width": 1.5},
                    ),
                    row=1,
                    col=j,
                )
        if has_div:
            for col, (name, colour) in DIVERGENCES.items():
                if col in d.columns and d[col].notna().any():
                    fig.add_trace(
                        go.Scatter(
                            x=d["step"],
                            y=d[col],
                            mode="lines+markers",
                            name=f"divergence {name}",
                            legendgroup=f"div {name}",
                            showlegend=first,
                            line={"color": colour, "width": 2},
                            marker={"size": 4},
                        ),
                        row=2,
                        col=j,
                    )
            fig.update_yaxes(type="log", row=2, col=j)
            fig.update_xaxes(title_text="step", row=2, col=j)
        else:
            fig.update_xaxes(title_text="step", row=1, col=j)
    fig.update_yaxes(title_text="loss (nats)", row=1)
    fig.update_yaxes(title_text=f"loss ({LOSS_UNIT})", row=1, col=1)
    if has_div:
        fig.update_yaxes(title_text="divergence (log)", row=2)
        fig.update_yaxes(title_text="KL (nats; MSE for regression), log scale", row=2, col=1)
    fig.update_layout(
        title="Model loss vs the retrieval, learning and true-task references",
        height=320 * rows + 80,
        legend={"orientation": "h", "y": -0.15},
        margin={"t": 80, "b": 40},
    )
    return fig


def final_metrics(df: pd.DataFrame) -> pd.DataFrame:
    """The rows at the last evaluated step: one per split and band (for the summary)."""
    check_metrics(df)
    last = df[df["step"] == df["step"].max()]
    cols = [
        c
        for c in (
            "step",
            "split",
            "band",
            "loss",
            "loss_retrieval",
            "loss_learning",
            "loss_true",
            "gap_retrieval",
            "gap_learning",
            "div_retrieval",
            "div_learning",
        )
        if c in last.columns
    ]
    order = {s: i for i, s in enumerate(ordered_splits(last))}
    return last[cols].sort_values("split", key=lambda s: s.map(order)).reset_index(drop=True)


#: ``metrics`` is the run directory's own ``metrics.csv`` (not under ``analyses/``).
FIGURES: dict[str, Callable[[pd.DataFrame], go.Figure]] = {"metrics": training_curves}
