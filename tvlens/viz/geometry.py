"""Figures for task-vector geometry and the two modes (tables of :mod:`tvlens.analyses`).

Each function takes the tidy table written as ``analyses/<name>.csv`` (see
:func:`tvlens.analyses.two_modes.analyse_two_modes` and the experiment's across-k tables) and
returns a plotly figure; ``FIGURES`` maps the CSV stem to its function for the report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tvlens.viz.common import LOSS_UNIT, PALETTE, SPLIT_COLOURS, figure, require_columns
from tvlens.viz.common import write_figures as _write_figures

SECTION = "Task-vector geometry and the two modes"


def _require(df: pd.DataFrame, cols: Iterable[str], what: str) -> None:
    require_columns(df, cols, what, "tvlens.analyses.geometry.analyse_geometry")


def _splits(df: pd.DataFrame) -> list[str]:
    order = ["major", "minor", "ood"]
    found = list(dict.fromkeys(df["split"].astype(str)))
    return [s for s in order if s in found] + [s for s in found if s not in order]


def _colour(split: str, i: int = 0) -> str:
    return SPLIT_COLOURS.get(split, PALETTE[i % len(PALETTE)])


def _clip_r2_axis(fig: go.Figure, values: pd.Series, floor: float = -1.0) -> go.Figure:
    """Keep an R² axis readable: values below ``floor`` (R² is unbounded below, e.g. for a
    split holding a single task, whose states barely vary around their own mean) are drawn
    off-axis and counted in a note."""
    low = int((values < floor).sum())
    if low:
        fig.update_yaxes(range=[floor - 0.05, 1.05])
        fig.add_annotation(
            text=f"{low} value(s) below {floor} off the axis (see the table)",
            xref="paper",
            yref="paper",
            x=0,
            y=-0.18,
            showarrow=False,
            xanchor="left",
        )
    return fig


@figure
def task_vector_norms(df: pd.DataFrame) -> go.Figure:
    """‖θ_k‖ per layer: major tasks as bars, minor tasks as their mean."""
    _require(df, ["layer", "task", "major", "theta_norm"], "task_vectors")
    fig = go.Figure()
    major = df[df["major"].astype(bool)]
    for i, (task, g) in enumerate(major.groupby("task")):
        fig.add_bar(
            x=g["layer"],
            y=g["theta_norm"],
            name=f"major task {task}",
            marker_color=PALETTE[i % len(PALETTE)],
        )
    minor = df[~df["major"].astype(bool)]
    if not minor.empty:
        m = minor.groupby("layer", as_index=False)["theta_norm"].mean()
        fig.add_scatter(
            x=m["layer"],
            y=m["theta_norm"],
            mode="lines+markers",
            name="minor tasks (mean)",
            line={"color": "#2ca02c"},
        )
    fig.update_layout(
        title="Task-vector norms ‖θ_k‖ by layer",
        xaxis_title="layer",
        yaxis_title="‖θ_k‖",
        barmode="group",
    )
    return fig


def _split_lines_by_layer(
    df: pd.DataFrame, solid: tuple[str, str], other: tuple[str, str], dash: str
) -> go.Figure:
    """Per split, column ``solid[0]`` as a solid line and ``other[0]`` in ``dash``, by layer."""
    fig = go.Figure()
    for i, split in enumerate(_splits(df)):
        g = df[df["split"] == split].sort_values("layer")
        c = _colour(split, i)
        for (col, label), style in ((solid, {}), (other, {"dash": dash})):
            fig.add_scatter(
                x=g["layer"],
                y=g[col],
                name=f"{split}: {label}",
                line={"color": c, **style},
                mode="lines+markers",
            )
    return fig


@figure
def anova_r2_by_layer(df: pd.DataFrame) -> go.Figure:
    """ANOVA R² by layer: task only (solid) and task + current token (dashed), per split."""
    _require(df, ["layer", "split", "r2_task", "r2_task_token"], "anova_r2")
    fig = _split_lines_by_layer(df, ("r2_task", "task"), ("r2_task_token", "task + token"), "dash")
    fig.update_layout(
        title="ANOVA R² of h ≈ μ + θ_task (+ ν_token), by layer",
        xaxis_title="layer",
        yaxis_title="R²",
        yaxis_range=[-0.05, 1.05],
    )
    return fig


@figure
def simplex_r2_by_layer(df: pd.DataFrame) -> go.Figure:
    """Simplex R² (solid) and affine-plane projection R² (dotted) per split, by layer."""
    _require(df, ["layer", "split", "r2_task", "r2_affine"], "simplex_fit")
    fig = _split_lines_by_layer(
        df, ("r2_task", "simplex R²"), ("r2_affine", "projection R²"), "dot"
    )
    fig.add_hline(y=0, line={"color": "grey", "width": 1})
    fig.update_layout(
        title="R² of the states on the major-task simplex / plane, by layer",
        xaxis_title="layer",
        yaxis_title="R²",
    )
    return _clip_r2_axis(fig, pd.concat([df["r2_task"], df["r2_affine"]]))


@figure
def alignment_by_position(df: pd.DataFrame) -> go.Figure:
    """Correlation (top) and total variation (bottom) of β_t with the exact posterior."""
    _require(df, ["layer", "pos", "corr", "tv"], "alignment")
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        subplot_titles=["corr(β_t, posterior)", "total variation"],
    )
    for i, (layer, g) in enumerate(df.groupby("layer")):
        c = PALETTE[i % len(PALETTE)]
        g = g.sort_values("pos")
        fig.add_scatter(
            x=g["pos"],
            y=g["corr"],
            name=f"layer {layer}",
            line={"color": c},
            legendgroup=str(layer),
            row=1,
            col=1,
        )
        fig.add_scatter(
            x=g["pos"],
            y=g["tv"],
            name=f"layer {layer}",
            line={"color": c},
            legendgroup=str(layer),
            showlegend=False,
            row=2,
            col=1,
        )
    fig.update_xaxes(title_text="position", row=2, col=1)
    fig.update_yaxes(title_text="correlation", row=1, col=1)
    fig.update_yaxes(title_text="total variation", row=2, col=1)
    fig.update_layout(title="Simplex weights β_t against the exact retrieval posterior")
    return fig


@figure
def alignment_summary(df: pd.DataFrame) -> go.Figure:
    """Pooled β–posterior correlation and total variation per layer."""
    _require(df, ["layer", "corr", "tv"], "alignment_summary")
    fig = go.Figure()
    fig.add_bar(x=df["layer"], y=df["corr"], name="correlation")
    fig.add_bar(x=df["layer"], y=df["tv"], name="total variation")
    fig.update_layout(
        title="β against the posterior, pooled over positions",
        xaxis_title="layer",
        yaxis_title="correlation / total variation",
        barmode="group",
    )
    return fig


@figure
def alignment_baselines(df: pd.DataFrame) -> go.Figure:
    """β–posterior correlation per layer beside the one-hot true-task baseline, on all
    positions and on the positions where the posterior is still mixed."""
    _require(df, ["layer", "corr", "corr_one_hot", "corr_mixed", "corr_one_hot_mixed"],
             "alignment_baselines")  # fmt: skip
    d = df.sort_values("layer")
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True,
                        subplot_titles=["all positions", "mixed-posterior positions"])  # fmt: skip
    for j, suffix in enumerate(("", "_mixed"), start=1):
        fig.add_scatter(x=d["layer"], y=d[f"corr{suffix}"], mode="lines+markers",
                        name="model β", legendgroup="m", showlegend=j == 1,
                        line={"color": PALETTE[0]}, row=1, col=j)  # fmt: skip
        fig.add_scatter(x=d["layer"], y=d[f"corr_one_hot{suffix}"], mode="lines",
                        name="baseline: one-hot true task", legendgroup="b", showlegend=j == 1,
                        line={"color": "#7f7f7f", "dash": "dash"}, row=1, col=j)  # fmt: skip
    fig.update_xaxes(title_text="layer", dtick=1)
    fig.update_yaxes(title_text="correlation with the exact posterior", row=1, col=1)
    fig.update_layout(title="β–posterior alignment against a state-blind baseline")
    return fig


@figure
def subspace_share(df: pd.DataFrame) -> go.Figure:
    """Variance share of each split's states in the major-task subspace and the minor-task
    span, per layer, beside a random subspace of the same rank (band: mean ± sd) and the
    split's own top principal components (dotted: the ceiling)."""
    _require(df, ["layer", "split", "subspace", "share", "random_share", "top_share"],
             "subspace_share")  # fmt: skip
    spaces = list(dict.fromkeys(df["subspace"].astype(str)))
    fig = make_subplots(rows=1, cols=len(spaces), shared_yaxes=True,
                        subplot_titles=[f"{s} subspace" for s in spaces])  # fmt: skip
    for j, space in enumerate(spaces, start=1):
        d = df[df["subspace"] == space]
        for i, split in enumerate(_splits(d)):
            g = d[d["split"] == split].sort_values("layer")
            c = _colour(split, i)
            fig.add_scatter(x=g["layer"], y=g["share"], mode="lines+markers", name=split,
                            legendgroup=split, showlegend=j == 1, line={"color": c},
                            row=1, col=j)  # fmt: skip
            fig.add_scatter(x=g["layer"], y=g["top_share"], mode="lines", showlegend=False,
                            line={"color": c, "dash": "dot", "width": 1},
                            hovertemplate=f"{split} ceiling (top PCs): %{{y:.3f}}",
                            row=1, col=j)  # fmt: skip
        g = d.groupby("layer", as_index=False)[["random_share", "random_share_sd"]].mean()
        fig.add_scatter(x=g["layer"], y=g["random_share"], mode="lines",
                        name="baseline: random subspace", legendgroup="rand",
                        showlegend=j == 1, line={"color": "#7f7f7f", "dash": "dash"},
                        error_y={"type": "data", "array": g["random_share_sd"]},
                        row=1, col=j)  # fmt: skip
    fig.update_xaxes(title_text="layer", dtick=1)
    fig.update_yaxes(title_text="share of variance", range=[0, 1.02], row=1, col=1)
    fig.update_layout(title="Where each split varies: task subspaces vs random subspaces "
                      "(dotted: top-PC ceiling)")  # fmt: skip
    return fig


@figure
def reference_gap(df: pd.DataFrame) -> go.Figure:
    """The model's loss beside the retrieval and learning references per split and
    position band (± standard error over sequences): the references' own gap is the room
    in which a mode can be read."""
    _require(df, ["split", "band", "loss", "loss_retrieval", "loss_learning"], "reference_gap")
    splits = _splits(df)
    fig = make_subplots(rows=1, cols=len(splits), subplot_titles=splits)
    series = [("loss", "model", PALETTE[0]), ("loss_retrieval", "retrieval reference", "#9467bd"),
              ("loss_learning", "learning reference", "#ff7f0e")]  # fmt: skip
    for j, split in enumerate(splits, start=1):
        g = df[df["split"] == split]
        for col, name, c in series:
            se = g.get(f"{col}_se")
            fig.add_bar(x=g["band"].astype(str), y=g[col], name=name, legendgroup=name,
                        showlegend=j == 1, marker={"color": c},
                        error_y=None if se is None else {"type": "data", "array": se},
                        row=1, col=j)  # fmt: skip
    fig.update_xaxes(title_text="positions")
    fig.update_yaxes(title_text="loss per token (nats)")
    fig.update_yaxes(title_text=f"loss per token ({LOSS_UNIT})", row=1, col=1)
    fig.update_layout(title="Model vs the two references, per position band", barmode="group")
    return fig


@figure
def beta_vs_posterior(df: pd.DataFrame) -> go.Figure:
    """Scatter of β_k against P(task = k | context), one colour per task k."""
    _require(df, ["beta", "posterior", "task"], "beta_posterior")
    fig = go.Figure()
    for i, (task, g) in enumerate(df.groupby("task")):
        fig.add_scatter(
            x=g["posterior"],
            y=g["beta"],
            mode="markers",
            name=f"task {task}",
            marker={"size": 4, "opacity": 0.5, "color": PALETTE[i % len(PALETTE)]},
            customdata=g[["pos"]].to_numpy() if "pos" in g else None,
            hovertemplate="posterior %{x:.3f}<br>β %{y:.3f}<br>pos %{customdata[0]}",
        )
    fig.add_scatter(
        x=[0, 1],
        y=[0, 1],
        mode="lines",
        name="β = posterior",
        line={"color": "grey", "dash": "dash"},
    )
    layer = f" (layer {int(df['layer'].iloc[0])})" if "layer" in df else ""
    fig.update_layout(
        title=f"β against the exact posterior{layer}",
        xaxis_title="P(task = k | x≤t)",
        yaxis_title="β_k",
    )
    return fig


@figure
def principal_angles_by_layer(df: pd.DataFrame) -> go.Figure:
    """Mean principal angle between the task subspace and each split's top PCs."""
    _require(df, ["layer", "split", "angle_deg"], "principal_angles")
    m = df.groupby(["split", "layer"], as_index=False)["angle_deg"].mean()
    fig = go.Figure()
    for i, split in enumerate(_splits(m)):
        g = m[m["split"] == split].sort_values("layer")
        fig.add_scatter(
            x=g["layer"],
            y=g["angle_deg"],
            name=split,
            mode="lines+markers",
            line={"color": _colour(split, i)},
        )
    fig.update_layout(
        title="Principal angles: task subspace vs each split's top PCs",
        xaxis_title="layer",
        yaxis_title="mean angle (degrees)",
        yaxis_range=[0, 90],
    )
    return fig


@figure
def geometry_scatter(df: pd.DataFrame) -> go.Figure:
    """3-D view: the task plane (x, y) with the major vertices, and the main off-plane
    direction (z). ID states sit in the simplex; OOD states that leave it rise along z."""
    _require(df, ["split", "x", "y", "z"], "geometry_points")
    fig = go.Figure()
    for i, split in enumerate(_splits(df[df["split"] != "vertex"])):
        g = df[df["split"] == split]
        fig.add_scatter3d(
            x=g["x"],
            y=g["y"],
            z=g["z"],
            mode="markers",
            name=split,
            marker={"size": 2.5, "opacity": 0.6, "color": _colour(split, i)},
        )
    v = df[df["split"] == "vertex"]
    if not v.empty:
        loop = pd.concat([v, v.iloc[:1]])
        fig.add_scatter3d(
            x=loop["x"],
            y=loop["y"],
            z=loop["z"],
            mode="lines+markers+text",
            text=[f"task {t}" for t in loop["task"]],
            name="major task means",
            marker={"size": 6, "color": "black"},
            line={"color": "black"},
        )
    layer = f" (layer {int(df['layer'].iloc[0])})" if "layer" in df else ""
    fig.update_layout(
        title=f"Hidden states on the task simplex{layer}",
        height=680,
        margin={"l": 10, "r": 10, "t": 60, "b": 10},
        legend={"orientation": "h", "y": 0.02},
        scene={
            "xaxis_title": "task plane 1",
            "yaxis_title": "task plane 2",
            "zaxis_title": "off-plane",
            "aspectmode": "cube",
            "camera": {"eye": {"x": 1.6, "y": 1.6, "z": 1.0}},
        },
    )
    return fig


@figure
def ablation_bars(df: pd.DataFrame) -> go.Figure:
    """Loss increase from ablating the task subspace vs random subspaces (mean ± sd)."""
    _require(df, ["layer", "split", "subspace", "delta"], "ablation")
    layers = sorted(df["layer"].unique())
    fig = make_subplots(
        rows=1, cols=len(layers), shared_yaxes=True, subplot_titles=[f"layer {x}" for x in layers]
    )
    for j, layer in enumerate(layers, start=1):
        d = df[df["layer"] == layer]
        for sub, pattern in (("task", ""), ("random", "/")):
            g = d[d["subspace"] == sub].groupby("split", as_index=False)["delta"]
            g = g.agg(["mean", "std"]).fillna(0.0)
            splits = [s for s in _splits(d) if s in set(g["split"])]
            g = g.set_index("split").loc[splits]
            fig.add_bar(
                x=splits,
                y=g["mean"],
                error_y={"array": g["std"]},
                name=f"{sub} subspace",
                legendgroup=sub,
                showlegend=j == 1,
                marker={
                    "pattern_shape": pattern,
                    "color": "#9467bd" if sub == "task" else "#bbbbbb",
                },
                row=1,
                col=j,
            )
    fig.update_xaxes(title_text="split")
    fig.update_layout(
        title="Loss increase from ablating h' = h − P_S h",
        yaxis_title=f"Δ loss ({LOSS_UNIT})",
        barmode="group",
    )
    return fig


@figure
def mode_curves(df: pd.DataFrame) -> go.Figure:
    """log(KL to retrieval / KL to learning) over training, per split (one run)."""
    _require(df, ["step", "split", "log_ratio"], "modes")
    fig = go.Figure()
    for i, split in enumerate(_splits(df)):
        g = df[df["split"] == split].sort_values("step")
        fig.add_scatter(
            x=g["step"],
            y=g["log_ratio"],
            name=split,
            mode="lines+markers",
            line={"color": _colour(split, i)},
        )
    fig.add_hline(y=0, line={"color": "grey", "dash": "dash"})
    fig.update_layout(
        title="Mode diagnostic: log(KL to retrieval / KL to learning)",
        xaxis_title="training step",
        yaxis_title="log ratio (<0: retrieval)",
    )
    return fig


@figure
def mode_heatmap(df: pd.DataFrame) -> go.Figure:
    """Heatmap of the mode diagnostic over training step × log2 N_minor, one per split."""
    _require(df, ["step", "log2_n_minor", "split", "log_ratio"], "mode_heatmap")
    splits = _splits(df)
    fig = make_subplots(rows=1, cols=len(splits), shared_yaxes=True, subplot_titles=splits)
    lim = float(df["log_ratio"].abs().quantile(0.98)) or 1.0
    for j, split in enumerate(splits, start=1):
        piv = df[df["split"] == split].pivot_table(
            index="log2_n_minor", columns="step", values="log_ratio"
        )
        fig.add_heatmap(
            z=piv.to_numpy(),
            x=[str(s) for s in piv.columns],
            y=[("none" if k < 0 else f"2^{k}") for k in piv.index],
            zmin=-lim,
            zmax=lim,
            colorscale="RdBu_r",
            showscale=j == len(splits),
            colorbar={"title": "log ratio"},
            row=1,
            col=j,
        )
    fig.update_xaxes(title_text="training step", type="category")
    fig.update_yaxes(title_text="N_minor", type="category", col=1)
    fig.update_layout(title="Mode diagnostic: blue = retrieval, red = learning")
    return fig


@figure
def geometry_over_training(df: pd.DataFrame) -> go.Figure:
    """Projection R² on the major-task plane over training, per split (one panel per layer)."""
    _require(df, ["step", "layer", "split", "r2_affine"], "geometry_training")
    layers = sorted(df["layer"].unique())
    fig = make_subplots(
        rows=1, cols=len(layers), shared_yaxes=True, subplot_titles=[f"layer {x}" for x in layers]
    )
    for j, layer in enumerate(layers, start=1):
        d = df[df["layer"] == layer]
        for i, split in enumerate(_splits(d)):
            g = d[d["split"] == split].sort_values("step")
            fig.add_scatter(
                x=g["step"],
                y=g["r2_affine"],
                mode="lines+markers",
                name=split,
                legendgroup=split,
                showlegend=j == 1,
                line={"color": _colour(split, i)},
                row=1,
                col=j,
            )
    fig.update_xaxes(title_text="training step")
    fig.update_layout(
        title="States on the major-task plane over training", yaxis_title="projection R²"
    )
    return _clip_r2_axis(fig, df["r2_affine"])


@figure
def ood_r2_vs_k(df: pd.DataFrame) -> go.Figure:
    """Projection R² on the major-task plane against log2 N_minor: OOD (solid) and minor
    (dashed) states, one line per layer."""
    _require(df, ["log2_n_minor", "layer", "split", "r2_affine"], "ood_r2_vs_k")
    fig = go.Figure()
    for i, (layer, g) in enumerate(df.groupby("layer")):
        c = PALETTE[i % len(PALETTE)]
        for split, dash in (("ood", "solid"), ("minor", "dash")):
            s = g[g["split"] == split].sort_values("log2_n_minor")
            if not s.empty:
                fig.add_scatter(
                    x=s["log2_n_minor"],
                    y=s["r2_affine"],
                    mode="lines+markers",
                    name=f"{split}, layer {layer}",
                    line={"color": c, "dash": dash},
                )
    fig.add_hline(y=0, line={"color": "grey", "width": 1})
    fig.update_layout(
        title="States on the major-task plane vs task diversity",
        xaxis_title="log2 N_minor (−1: none)",
        yaxis_title="projection R²",
    )
    return _clip_r2_axis(fig, df["r2_affine"])


@figure
def ablation_vs_k(df: pd.DataFrame) -> go.Figure:
    """Loss increase from the task-subspace ablation (solid) and random ablations (dotted)
    against log2 N_minor, per split; one panel per layer."""
    _require(df, ["log2_n_minor", "layer", "split", "subspace", "delta"], "ablation_vs_k")
    layers = sorted(df["layer"].unique())
    fig = make_subplots(
        rows=1, cols=len(layers), shared_yaxes=True, subplot_titles=[f"layer {x}" for x in layers]
    )
    for j, layer in enumerate(layers, start=1):
        d = df[df["layer"] == layer]
        for i, split in enumerate(_splits(d)):
            for sub, dash in (("task", "solid"), ("random", "dot")):
                s = d[(d["split"] == split) & (d["subspace"] == sub)].sort_values("log2_n_minor")
                fig.add_scatter(
                    x=s["log2_n_minor"],
                    y=s["delta"],
                    mode="lines+markers",
                    name=f"{split}, {sub}",
                    legendgroup=f"{split}{sub}",
                    showlegend=j == 1,
                    line={"color": _colour(split, i), "dash": dash},
                    row=1,
                    col=j,
                )
    fig.update_xaxes(title_text="log2 N_minor")
    fig.update_layout(
        title="Subspace ablation vs task diversity", yaxis_title=f"Δ loss ({LOSS_UNIT})"
    )
    return fig


@figure
def results_vs_k(df: pd.DataFrame) -> go.Figure:
    """The experiment's headline numbers against log2 N_minor (``results.csv``)."""
    _require(df, ["k"], "results")
    panels = [
        ("id_simplex_r2", "ID simplex R²", "R²"),
        ("beta_posterior_corr", "β–posterior corr", "correlation"),
        ("ood_proj_r2", "OOD projection R²", "R²"),
        ("ablate_id_over_ood", "ablation Δ ID / Δ OOD", "ratio"),
        ("convex_kl", "convex steering KL", "KL (nats)"),
        ("mode_log_ratio_ood", "OOD mode log ratio", "log ratio"),
    ]
    panels = [p for p in panels if p[0] in df.columns]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[1] for p in panels])
    d = df.sort_values("k")
    for j, (col, _, unit) in enumerate(panels, start=1):
        fig.add_scatter(x=d["k"], y=d[col], mode="lines+markers", showlegend=False, row=1, col=j)
        fig.update_yaxes(title_text=unit, row=1, col=j)
    fig.update_xaxes(title_text="log2 N_minor")
    fig.update_layout(title="Two modes: headline numbers against task diversity")
    return fig


FIGURES: dict[str, Callable[[pd.DataFrame], go.Figure]] = {
    "task_vectors": task_vector_norms,
    "anova_r2": anova_r2_by_layer,
    "simplex_fit": simplex_r2_by_layer,
    "alignment": alignment_by_position,
    "alignment_summary": alignment_summary,
    "alignment_baselines": alignment_baselines,
    "subspace_share": subspace_share,
    "reference_gap": reference_gap,
    "beta_posterior": beta_vs_posterior,
    "principal_angles": principal_angles_by_layer,
    "geometry_points": geometry_scatter,
    "ablation": ablation_bars,
    "modes": mode_curves,
    "geometry_training": geometry_over_training,
    "mode_heatmap": mode_heatmap,
    "ood_r2_vs_k": ood_r2_vs_k,
    "ablation_vs_k": ablation_vs_k,
    "results": results_vs_k,
}


def write_figures(
    tables: dict[str, pd.DataFrame], fig_dir: Path | str, prefix: str = ""
) -> list[Path]:
    """Write ``fig_dir/<prefix><name>.html`` for every table with a figure registered here.

    Deprecated: use :func:`tvlens.viz.common.write_figures` with the figures you want
    (steering's are in :mod:`tvlens.viz.steering`).
    """
    return _write_figures(tables, fig_dir, FIGURES, prefix)
