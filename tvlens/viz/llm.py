"""Figures for the pretrained-LLM analyses (:mod:`tvlens.llm`).

Each function takes one tidy CSV written by :func:`tvlens.llm.run.run_llm` and returns a plotly
figure; ``FIGURES`` maps the CSV stems (``analyses/llm_*.csv``) to them for the report.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tvlens.viz.common import figure, require_columns
from tvlens.viz.decodability import td_heatmap_trace

SECTION = "Pretrained LLM: ICL, task vectors, function vectors, decodability"
_DASH = {"icl": "dash", "zero_shot": "dot", "mean_task_vector": "dashdot"}


def _require(df: pd.DataFrame, cols: tuple[str, ...], what: str) -> None:
    require_columns(df, cols, what)


def _colors(keys: list) -> dict:
    palette = px.colors.qualitative.Plotly
    return {k: palette[i % len(palette)] for i, k in enumerate(keys)}


def _mid_layer(df: pd.DataFrame) -> int:
    layers = sorted(df["layer"].unique())
    return int(layers[len(layers) // 2])


@figure
def icl_by_shots(df: pd.DataFrame) -> go.Figure:
    """ICL accuracy against the number of shots, one line per task; dotted: the majority
    baseline."""
    _require(df, ("task", "shots", "accuracy", "baseline"), "llm_icl")
    fig = go.Figure()
    colors = _colors(list(dict.fromkeys(df["task"])))
    for task, g in df.sort_values("shots").groupby("task", sort=False):
        c = colors[task]
        fig.add_scatter(
            x=g["shots"], y=g["accuracy"], mode="lines+markers", name=task, line={"color": c}
        )
        fig.add_scatter(
            x=g["shots"],
            y=g["baseline"],
            mode="lines",
            name=f"{task} baseline",
            line={"color": c, "dash": "dot"},
            showlegend=False,
        )
    fig.update_layout(
        title="ICL accuracy by number of shots (dotted: majority baseline)",
        xaxis_title="shots",
        yaxis_title="accuracy",
        yaxis_range=[0, 1.02],
        height=380,
    )
    return fig


def _intervention(df: pd.DataFrame, condition: str, title: str) -> go.Figure:
    _require(df, ("task", "layer", "condition", "accuracy"), title)
    fig = go.Figure()
    colors = _colors(list(dict.fromkeys(df["task"])))
    for (task, cond), g in df.sort_values("layer").groupby(["task", "condition"], sort=False):
        fig.add_scatter(
            x=g["layer"],
            y=g["accuracy"],
            mode="lines+markers" if cond == condition else "lines",
            name=f"{task}: {cond}",
            line={"color": colors[task], "dash": _DASH.get(cond, "solid")},
        )
    fig.update_layout(
        title=f"{title} (dashed: ICL, dotted: zero-shot, dash-dot: mean task vector)",
        xaxis_title="layer ℓ",
        yaxis_title="accuracy",
        yaxis_range=[0, 1.02],
        height=380,
    )
    return fig


@figure
def task_vector_by_layer(df: pd.DataFrame) -> go.Figure:
    """Zero-shot accuracy with the task vector patched in at layer ℓ."""
    return _intervention(df, "task_vector", "Task vectors patched at layer ℓ")


@figure
def function_vector_by_layer(df: pd.DataFrame) -> go.Figure:
    """Zero-shot accuracy with the function vector added at layer ℓ."""
    return _intervention(df, "function_vector", "Function vector added at layer ℓ")


@figure
def head_ie_heatmap(df: pd.DataFrame) -> go.Figure:
    """Indirect effect of every head (layer × head), one panel per task; ○ = selected."""
    _require(df, ("task", "layer", "head", "ie"), "llm_fv_heads")
    tasks = list(dict.fromkeys(df["task"]))
    fig = make_subplots(rows=1, cols=len(tasks), subplot_titles=tasks, shared_yaxes=True)
    vmax = float(df["ie"].abs().max()) or 1.0
    for i, task in enumerate(tasks, start=1):
        g = df[df["task"] == task]
        piv = g.pivot_table(index="layer", columns="head", values="ie", aggfunc="mean")
        fig.add_trace(
            go.Heatmap(
                z=piv.to_numpy(),
                x=[str(c) for c in piv.columns],
                y=[str(r) for r in piv.index],
                zmid=0,
                zmin=-vmax,
                zmax=vmax,
                colorscale="RdBu",
                reversescale=True,
                colorbar={"title": "IE"},
                showscale=i == 1,
                hovertemplate="layer %{y} head %{x}<br>IE %{z:.4f}<extra></extra>",
            ),
            row=1,
            col=i,
        )
        if "selected" in g.columns:
            sel = g[g["selected"].astype(bool)]
            fig.add_scatter(
                x=sel["head"].astype(str),
                y=sel["layer"].astype(str),
                mode="markers",
                marker={"symbol": "circle-open", "size": 10, "color": "black"},
                name="selected heads",
                showlegend=i == 1,
                row=1,
                col=i,
            )
        fig.update_xaxes(title_text="head", type="category", row=1, col=i)
    fig.update_yaxes(title_text="layer", type="category", row=1, col=1)
    fig.update_layout(title="Head indirect effect on shuffled-label prompts", height=420)
    return fig


@figure
def td_heatmap(df: pd.DataFrame) -> go.Figure:
    """Task decodability (kNN) by layer × shots, one panel per task group; chance in titles."""
    _require(df, ("group", "method", "layer", "n_examples", "td", "chance"), "llm_decodability")
    d = df[df["method"] == "knn"] if (df["method"] == "knn").any() else df
    groups = list(dict.fromkeys(d["group"]))
    titles = [f"{g} (chance {d[d['group'] == g]['chance'].mean():.2f})" for g in groups]
    fig = make_subplots(rows=1, cols=len(groups), subplot_titles=titles, shared_yaxes=True)
    for i, group in enumerate(groups, start=1):
        fig.add_trace(
            td_heatmap_trace(d[d["group"] == group], "shots", showscale=i == 1), row=1, col=i
        )
        fig.update_xaxes(title_text="shots", type="category", row=1, col=i)
    fig.update_yaxes(title_text="layer", row=1, col=1)
    fig.update_layout(
        title=f"Task decodability ({d['method'].iloc[0]}) by layer and shots", height=420
    )
    return fig


@figure
def td_vs_icl(df: pd.DataFrame) -> go.Figure:
    """Per-task TD against ICL accuracy at each group's layer of highest mean TD."""
    _require(df, ("group", "task", "shots", "layer", "td_task", "accuracy"), "llm_td_icl")
    best = df.groupby(["group", "layer"])["td_task"].mean().reset_index()
    best = best.loc[best.groupby("group")["td_task"].idxmax(), ["group", "layer"]]
    d = df.merge(best, on=["group", "layer"])
    fig = px.scatter(
        d,
        x="td_task",
        y="accuracy",
        color="task",
        symbol="group",
        size=d["shots"].astype(float) + 1.0,
        hover_data=["group", "task", "shots", "layer"],
    )
    fig.update_layout(
        title="Per-task decodability vs ICL accuracy (each group's peak-TD layer)",
        xaxis_title="task decodability (kNN recall of the task)",
        yaxis_title="ICL accuracy",
        height=420,
    )
    return fig


@figure
def td_correlation_by_layer(df: pd.DataFrame) -> go.Figure:
    """Correlation (Pearson r) of per-task TD with ICL accuracy, by layer, per group."""
    _require(df, ("group", "layer", "r"), "llm_td_correlation")
    fig = go.Figure()
    for group, g in df.sort_values("layer").groupby("group"):
        fig.add_scatter(x=g["layer"], y=g["r"], mode="lines+markers", name=group)
    fig.update_layout(
        title="TD–ICL accuracy correlation by layer (gaps: undefined, a constant side)",
        xaxis_title="layer",
        yaxis_title="Pearson r",
        yaxis_range=[-1.05, 1.05],
        height=360,
    )
    return fig


@figure
def pca_scatter(df: pd.DataFrame) -> go.Figure:
    """Last-token states on their top two principal components, coloured by task, at the
    middle layer of each group."""
    _require(df, ("group", "layer", "task", "pc1", "pc2"), "llm_pca")
    groups = list(dict.fromkeys(df["group"]))
    fig = make_subplots(rows=1, cols=len(groups), subplot_titles=groups)
    colors = _colors(list(dict.fromkeys(df["task"])))
    for i, group in enumerate(groups, start=1):
        g = df[df["group"] == group]
        layer = _mid_layer(g)
        g = g[g["layer"] == layer]
        for task, t in g.groupby("task", sort=False):
            fig.add_scatter(
                x=t["pc1"],
                y=t["pc2"],
                mode="markers",
                name=task,
                marker={"color": colors[task], "size": 5, "opacity": 0.75},
                row=1,
                col=i,
            )
        ev = [g[c].iloc[0] for c in ("explained1", "explained2") if c in g.columns]
        label = f" ({ev[0]:.0%}, {ev[1]:.0%} of variance)" if len(ev) == 2 else ""
        fig.update_xaxes(title_text=f"PC1, layer {layer}{label}", row=1, col=i)
        fig.update_yaxes(title_text="PC2", row=1, col=i)
    fig.update_layout(title="PCA of last-token states by task", height=440)
    return fig


@figure
def mixture_weights(df: pd.DataFrame) -> go.Figure:
    """Simplex weight β of each task mean against the share α of task-A demonstrations, at
    the middle layer; dashed: the proportions (β = α for A, 1 − α for B)."""
    _require(df, ("group", "layer", "alpha", "vertex", "beta_mean", "expected"), "llm_mixture")
    groups = list(dict.fromkeys(df["group"]))
    fig = make_subplots(rows=1, cols=len(groups), subplot_titles=groups, shared_yaxes=True)
    colors = _colors(list(dict.fromkeys(df["vertex"])))
    for i, group in enumerate(groups, start=1):
        g = df[df["group"] == group]
        g = g[g["layer"] == _mid_layer(g)].sort_values("alpha")
        for vertex, v in g.groupby("vertex", sort=False):
            fig.add_scatter(
                x=v["alpha"],
                y=v["beta_mean"],
                error_y={"array": v.get("beta_std")},
                mode="lines+markers",
                name=vertex,
                line={"color": colors[vertex]},
                row=1,
                col=i,
            )
            if v["expected"].abs().sum() > 0:
                fig.add_scatter(
                    x=v["alpha"],
                    y=v["expected"],
                    mode="lines",
                    line={"color": colors[vertex], "dash": "dash"},
                    showlegend=False,
                    row=1,
                    col=i,
                )
        fig.update_xaxes(
            title_text=f"α (share of task-A demos), layer {_mid_layer(g)}", row=1, col=i
        )
    fig.update_yaxes(title_text="β (simplex weight)", row=1, col=1)
    fig.update_layout(title="Mixed-task prompts on the simplex of task means", height=420)
    return fig


@figure
def simplex_by_layer(df: pd.DataFrame) -> go.Figure:
    """R² of the projection onto the affine span of the task means, by layer and split."""
    _require(df, ("group", "layer", "split", "projection_r2"), "llm_simplex")
    groups = list(dict.fromkeys(df["group"]))
    fig = make_subplots(rows=1, cols=len(groups), subplot_titles=groups, shared_yaxes=True)
    colors = _colors(["pure", "mixture", "null"])
    for i, group in enumerate(groups, start=1):
        g = df[df["group"] == group].sort_values("layer")
        for split, s in g.groupby("split", sort=False):
            fig.add_scatter(
                x=s["layer"],
                y=s["projection_r2"],
                mode="lines+markers",
                name=split,
                line={"color": colors.get(split)},
                showlegend=i == 1,
                row=1,
                col=i,
            )
        fig.update_xaxes(title_text="layer", row=1, col=i)
    fig.update_yaxes(title_text="projection R² on the task-mean span", row=1, col=1)
    fig.update_layout(title="How much of each split lies in the task subspace", height=400)
    return fig


@figure
def modes_icl(df: pd.DataFrame) -> go.Figure:
    """Accuracy by shots of the held-out known and the in-context-only tasks (one panel
    each), with their majority baselines dotted."""
    _require(df, ("task", "set", "shots", "accuracy", "baseline"), "llm_modes_icl")
    sets = [s for s in ("heldout_known", "novel") if s in set(df["set"])]
    fig = make_subplots(rows=1, cols=len(sets), subplot_titles=sets, shared_yaxes=True)
    colors = _colors(list(dict.fromkeys(df["task"])))
    for i, set_ in enumerate(sets, start=1):
        for task, g in df[df["set"] == set_].sort_values("shots").groupby("task", sort=False):
            c = colors[task]
            fig.add_scatter(x=g["shots"], y=g["accuracy"], mode="lines+markers", name=task,
                            line={"color": c}, row=1, col=i)  # fmt: skip
            fig.add_scatter(x=g["shots"], y=g["baseline"], mode="lines", name=f"{task} majority",
                            line={"color": c, "dash": "dot"}, showlegend=False, row=1, col=i)  # fmt: skip
        fig.update_xaxes(title_text="shots", row=1, col=i)
    fig.update_yaxes(title_text="accuracy (first answer token)", row=1, col=1)
    fig.update_layout(title="Are the tasks learnt in context? (dotted: majority baseline)")
    return fig


@figure
def modes_share(df: pd.DataFrame) -> go.Figure:
    """Share of each set's variance inside the known-task subspace by layer (states and task
    vectors), beside a random subspace of the same rank (dotted)."""
    _require(df, ("layer", "set", "level", "share", "random_share"), "llm_modes_share")
    levels = list(dict.fromkeys(df["level"]))
    fig = make_subplots(rows=1, cols=len(levels), subplot_titles=levels, shared_yaxes=True)
    colors = _colors(["heldout_known", "novel"])
    for i, level in enumerate(levels, start=1):
        for set_, g in df[df["level"] == level].sort_values("layer").groupby("set", sort=False):
            c = colors.get(set_)
            fig.add_scatter(x=g["layer"], y=g["share"], mode="lines+markers", name=set_,
                            line={"color": c}, showlegend=i == 1, row=1, col=i)  # fmt: skip
            fig.add_scatter(x=g["layer"], y=g["random_share"], mode="lines",
                            name=f"{set_}: random subspace", line={"color": c, "dash": "dot"},
                            showlegend=i == 1, row=1, col=i)  # fmt: skip
        fig.update_xaxes(title_text="layer", row=1, col=i)
    fig.update_yaxes(title_text="variance share in the known-task subspace", row=1, col=1)
    fig.update_layout(title="Held-out known vs in-context-only tasks in the known-task subspace")
    return fig


@figure
def modes_angles(df: pd.DataFrame) -> go.Figure:
    """Mean principal angle between the known subspace and each set's task-vector span,
    beside a random span of the same rank (dotted)."""
    _require(df, ("layer", "set", "mean_angle", "random_mean_angle"), "llm_modes_angles")
    fig = go.Figure()
    colors = _colors(["heldout_known", "novel"])
    for set_, g in df.sort_values("layer").groupby("set", sort=False):
        c = colors.get(set_)
        fig.add_scatter(x=g["layer"], y=g["mean_angle"], mode="lines+markers", name=set_,
                        line={"color": c})  # fmt: skip
        fig.add_scatter(x=g["layer"], y=g["random_mean_angle"], mode="lines",
                        name=f"{set_}: random span", line={"color": c, "dash": "dot"})  # fmt: skip
    fig.update_layout(title="Principal angles to the known-task subspace", xaxis_title="layer",
                      yaxis_title="mean principal angle (degrees)")  # fmt: skip
    return fig


@figure
def modes_ablation(df: pd.DataFrame) -> go.Figure:
    """Accuracy drop when the known subspace (or a random one of equal rank) is projected
    out, per set and ablated layer."""
    _require(df, ("layer", "condition", "set", "drop"), "llm_modes_ablation")
    g = df.groupby(["layer", "condition", "set"], as_index=False)["drop"].mean()
    g["label"] = g["set"] + " / " + g["condition"]
    fig = px.bar(g, x="layer", y="drop", color="label", barmode="group",
                 title="Accuracy drop with the known-task subspace ablated (vs random subspace)")  # fmt: skip
    fig.update_layout(xaxis_title="ablated layer", yaxis_title="accuracy drop (clean − ablated)")
    return fig


@figure
def convex_steering(df: pd.DataFrame) -> go.Figure:
    """P(A's answer), P(B's answer) and P(neither) against α for task-vector mixtures, mixed
    demonstrations and the output mixture."""
    _require(df, ("condition", "alpha", "p_a", "p_b", "p_neither"), "llm_convex_steering")
    conds = list(dict.fromkeys(df["condition"]))
    fig = make_subplots(rows=1, cols=len(conds), subplot_titles=conds, shared_yaxes=True)
    colors = _colors(["p_a", "p_b", "p_neither"])
    a, b = (df["task_a"].iloc[0], df["task_b"].iloc[0]) if "task_a" in df else ("A", "B")
    names = {"p_a": f"P({a})", "p_b": f"P({b})", "p_neither": "P(neither)"}
    for i, cond in enumerate(conds, start=1):
        g = df[df["condition"] == cond].sort_values("alpha")
        for col in ("p_a", "p_b", "p_neither"):
            fig.add_scatter(x=g["alpha"], y=g[col], mode="lines+markers", name=names[col],
                            line={"color": colors[col]}, showlegend=i == 1, row=1, col=i)  # fmt: skip
        fig.update_xaxes(title_text=f"α (weight of {a})", row=1, col=i)
    fig.update_yaxes(title_text="probability of the first answer token", row=1, col=1)
    fig.update_layout(title="Convex steering: a mixture or a switch?")
    return fig


@figure
def steering_layers(df: pd.DataFrame) -> go.Figure:
    """P(answer) of zero-shot queries with θ_A or θ_B patched in, by layer (the steering
    layer is the best of their sum)."""
    _require(df, ("layer", "p_a_with_theta_a", "p_b_with_theta_b"), "llm_steering_layers")
    fig = go.Figure()
    for col, name in (("p_a_with_theta_a", "P(A) with θ_A"), ("p_b_with_theta_b", "P(B) with θ_B")):
        fig.add_scatter(x=df["layer"], y=df[col], mode="lines+markers", name=name)
    fig.update_layout(title="Single task vectors by layer", xaxis_title="layer",
                      yaxis_title="probability of the first answer token")  # fmt: skip
    return fig


FIGURES: dict[str, Callable[[pd.DataFrame], go.Figure]] = {
    "llm_icl": icl_by_shots,
    "llm_task_vectors": task_vector_by_layer,
    "llm_function_vectors": function_vector_by_layer,
    "llm_fv_heads": head_ie_heatmap,
    "llm_decodability": td_heatmap,
    "llm_td_icl": td_vs_icl,
    "llm_td_correlation": td_correlation_by_layer,
    "llm_pca": pca_scatter,
    "llm_mixture": mixture_weights,
    "llm_simplex": simplex_by_layer,
    "llm_modes_icl": modes_icl,
    "llm_modes_share": modes_share,
    "llm_modes_angles": modes_angles,
    "llm_modes_ablation": modes_ablation,
    "llm_convex_steering": convex_steering,
    "llm_steering_layers": steering_layers,
}
