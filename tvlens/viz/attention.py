"""Attention patterns for chosen heads, drawn offline (computed by :mod:`tvlens.analyses.attention`).

The table is ``analyses/attention.csv`` (layer, head, q, k, value and the token at each
position), written by :func:`tvlens.analyses.attention.analyse_attention`; this module only
draws it and never runs a model. Two views:

* :func:`attention_figure` draws them as **plotly heatmaps**, which the HTML report embeds.
  We draw with plotly rather than circuitsvis on purpose: a circuitsvis widget loads its
  JavaScript from a CDN (unpkg) whenever it thinks the machine is online, which fails offline
  and behind firewalls, and its offline fallback inlines a 1.3 MB React bundle into *every*
  widget. plotly's JavaScript is inlined once per report, so this view works anywhere.
* :func:`attention_view` returns the circuitsvis widget (``attention_heads``) for notebook
  users who want its hover-by-token view.

The computing functions that used to live here (``attention_patterns``, ``bridge_attention``,
``write_attention``, …) are deprecated aliases of :mod:`tvlens.analyses.attention`.
"""

from __future__ import annotations

import importlib
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tvlens.analyses.attention import COLUMNS as COLUMNS
from tvlens.analyses.attention import CSV_NAME, check_table
from tvlens.viz.common import figure

log = logging.getLogger(__name__)

#: deprecated names: they compute, so they live in tvlens.analyses.attention now
_MOVED = (
    "MAX_DEFAULT_HEADS",
    "attention_patterns",
    "bridge_attention",
    "mean_entropy",
    "parse_heads",
    "pattern_frame",
    "prompt_attention",
    "save_attention",
    "select_heads",
    "token_labels",
    "write_attention",
)


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        warnings.warn(
            f"tvlens.viz.attention.{name} moved to tvlens.analyses.attention.{name}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module("tvlens.analyses.attention"), name)
    raise AttributeError(f"module 'tvlens.viz.attention' has no attribute {name!r}")


SECTION = "Attention patterns"
MAX_COLS = 4


def _check(df: pd.DataFrame) -> None:
    check_table(df)


def _matrix(d: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """``[q, k]`` matrix (NaN above the diagonal) and the position labels of one head."""
    t = int(max(d["q"].max(), d["k"].max())) + 1
    z = np.full((t, t), np.nan)
    z[d["q"].to_numpy(int), d["k"].to_numpy(int)] = d["value"].to_numpy(float)
    labels = [str(i) for i in range(t)]
    if "q_token" in d.columns:
        tok = dict(zip(d["q"].astype(int), d["q_token"].astype(str), strict=False))
        labels = [f"{i}:{tok.get(i, '?')}" for i in range(t)]
    return z, labels


@figure
def attention_figure(df: pd.DataFrame) -> go.Figure:
    """One heatmap per chosen head (query down, key across), on a shared 0–1 colour scale."""
    _check(df)
    keys = sorted({(int(a), int(b)) for a, b in zip(df["layer"], df["head"], strict=True)})
    cols = min(MAX_COLS, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[f"L{layer}H{head}" for layer, head in keys],
        horizontal_spacing=0.04,
        vertical_spacing=0.08 if rows > 1 else 0.1,
    )
    for i, (layer, head) in enumerate(keys):
        d = df[(df["layer"] == layer) & (df["head"] == head)]
        z, labels = _matrix(d)
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=labels,
                y=labels,
                coloraxis="coloraxis",
                hovertemplate=f"L{layer}H{head}<br>query %{{y}}<br>key %{{x}}"
                "<br>attention %{z:.3f}<extra></extra>",
            ),
            row=i // cols + 1,
            col=i % cols + 1,
        )
    # token labels on both axes while they stay legible; positions only beyond that
    small = {"tickfont": {"size": 9}, "showticklabels": True}
    if int(max(df["q"].max(), df["k"].max())) + 1 > 48:
        small = {"showticklabels": False}
    fig.update_yaxes(autorange="reversed", title_text="query token", **small)
    fig.update_xaxes(title_text="key token", tickangle=-60, **small)
    fig.update_layout(
        title="Attention patterns on one sample sequence (rows: query, columns: key)",
        coloraxis={"colorscale": "Blues", "cmin": 0, "cmax": 1, "colorbar": {"title": "attn"}},
        height=max(320, 260 * rows + 100),
        margin={"t": 90},
    )
    return fig


def attention_view(df: pd.DataFrame, layer: int, heads: Sequence[int] | None = None) -> Any:
    """A circuitsvis attention widget for one layer (for notebooks; it loads JS from a CDN)."""
    import circuitsvis as cv
    import torch

    _check(df)
    d = df[df["layer"] == layer]
    if d.empty:
        raise ValueError(
            f"no attention rows for layer {layer}; layers present: "
            f"{sorted(df['layer'].unique().tolist())}."
        )
    heads = sorted(d["head"].unique().tolist()) if heads is None else list(heads)
    mats, labels = [], None
    for head in heads:
        h = d[d["head"] == head]
        if h.empty:
            raise ValueError(f"no attention rows for layer {layer} head {head}.")
        z, lab = _matrix(h)
        mats.append(np.nan_to_num(z, nan=0.0))
        labels = labels or [s.partition(":")[2] or s for s in lab]
    return cv.attention.attention_heads(
        attention=torch.tensor(np.stack(mats)),
        tokens=labels,
        attention_head_names=[f"L{layer}H{h}" for h in heads],
    )


FIGURES: dict[str, Callable[[pd.DataFrame], go.Figure]] = {CSV_NAME: attention_figure}
