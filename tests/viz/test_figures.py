"""Every figure of every viz module, drawn from small tables and checked from its plotly JSON.

A reviewer's checks, made mechanical: every axis that carries data has a title (or is
shared with one that has), integer data (layers, shots, log2 N_minor) get integer ticks, a
legend entry has the colour of every trace it stands for, no axis writes numbers with SI
prefixes ("250µ"), every bar shows its value, heatmaps name their colour scale, and 3-D
views are big enough for their axis titles. ``test_the_checks_can_fail`` plants each
defect once, so a check that passes everything is caught.
"""

from __future__ import annotations

import importlib
import itertools

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from tvlens.registry import figure_modules

RNG = np.random.default_rng(0)
LAYERS = [0, 1, 2, 3]
SPLITS = ["major", "minor", "ood"]


def grid(**levels) -> pd.DataFrame:
    """The cartesian product of the given levels, one row per combination."""
    keys = list(levels)
    return pd.DataFrame(list(itertools.product(*levels.values())), columns=keys)


def num(df: pd.DataFrame, lo: float = 0.0, hi: float = 1.0, **_) -> np.ndarray:
    return RNG.uniform(lo, hi, len(df))


def with_values(df: pd.DataFrame, **cols) -> pd.DataFrame:
    """``df`` with each column ``name=(lo, hi)`` drawn uniformly, or set to a given value."""
    out = df.copy()
    for name, spec in cols.items():
        out[name] = num(out, *spec) if isinstance(spec, tuple) else spec
    return out


def _attention() -> pd.DataFrame:
    rows = []
    tokens = ["BOS", "a", "b", "a", "c"]
    for layer, head in ((0, 0), (1, 1)):
        for q in range(5):
            for k in range(q + 1):
                rows.append((layer, head, q, k, 1 / (q + 1), tokens[q], tokens[k]))
    return pd.DataFrame(rows, columns=["layer", "head", "q", "k", "value", "q_token", "k_token"])


def _two_modes() -> pd.DataFrame:
    from tvlens.experiments.demo_modes import HEADLINES

    rows = []
    for h in HEADLINES:
        for model in ("k=-1 (retrieval)", "k=10 (learning)"):
            rows.append(
                {"metric": h.metric, "description": h.description, "unit": h.unit,
                 "model": model, "value": RNG.normal(), "value_sd": 0.01, "n_seeds": 3,
                 "baseline": RNG.normal() if h.baseline else np.nan, "baseline_sd": 0.01,
                 "baseline_name": h.baseline_name, "ceiling": 0.9 if h.ceiling else np.nan,
                 "best_layer": "1,1,1"}
            )  # fmt: skip
    return pd.DataFrame(rows)


def tables() -> dict[str, pd.DataFrame]:
    """One small table per figure name, with the columns the analyses write."""
    t: dict[str, pd.DataFrame] = {}
    t["metrics"] = with_values(
        grid(step=[0, 5, 10, 15], split=["train", "major", "ood"], band=["0-12"]),
        loss=(1, 2), loss_retrieval=(1, 2), loss_learning=(1, 2), loss_true=(1, 2),
        div_retrieval=(1e-4, 1e-3), div_learning=(1e-3, 1e-2),
    )  # fmt: skip
    t["task_vectors"] = with_values(
        grid(layer=LAYERS, task=[0, 1, 2, 3, 4]), theta_norm=(0.5, 2)
    ).assign(major=lambda d: d["task"] < 3)
    t["anova_r2"] = with_values(grid(layer=LAYERS, split=SPLITS), r2_task=(0, 1),
                                r2_task_token=(0, 1))  # fmt: skip
    t["simplex_fit"] = with_values(grid(layer=LAYERS, split=SPLITS), r2_task=(-0.5, 1),
                                   r2_affine=(-0.5, 1))  # fmt: skip
    t["alignment"] = with_values(grid(layer=LAYERS, pos=list(range(1, 8))), corr=(0, 1), tv=(0, 1))
    t["alignment_summary"] = with_values(grid(layer=LAYERS), corr=(0, 1), tv=(0, 1))
    t["alignment_baselines"] = with_values(
        grid(layer=LAYERS), corr=(0, 1), corr_one_hot=(0, 1), corr_mixed=(0, 1),
        corr_one_hot_mixed=(0, 1),
    )  # fmt: skip
    t["subspace_share"] = with_values(
        grid(layer=LAYERS, split=SPLITS, subspace=["task", "minor"]),
        share=(0, 1), random_share=(0, 0.1), random_share_sd=(0, 0.01), top_share=(0.5, 1),
    )  # fmt: skip
    t["reference_gap"] = with_values(
        grid(split=["major", "ood"], band=["0-6", "6-12"]), loss=(1, 2), loss_se=(0, 0.01),
        loss_retrieval=(1, 2), loss_learning=(1, 2), ref_gap=(0, 0.2), gap_retrieval=(-0.1, 0.1),
        gap_learning=(-0.1, 0.1), margin_kl=(-0.1, 0.1),
    )  # fmt: skip
    t["beta_posterior"] = with_values(grid(task=[0, 1, 2], pos=list(range(8))), beta=(0, 1),
                                      posterior=(0, 1), layer=1)  # fmt: skip
    t["principal_angles"] = with_values(grid(layer=LAYERS, split=SPLITS, index=[0, 1]),
                                        angle_deg=(0, 90))  # fmt: skip
    t["geometry_points"] = pd.concat(
        [with_values(grid(split=SPLITS, i=range(10)), x=(-1, 1), y=(-1, 1), z=(-1, 1), task=0),
         with_values(grid(split=["vertex"], task=[0, 1, 2]), x=(-1, 1), y=(-1, 1), z=0.0)]
    ).assign(layer=2)  # fmt: skip
    t["ablation"] = with_values(
        grid(layer=[1, 3], split=SPLITS, subspace=["task", "random"], draw=[0, 1]), delta=(0, 1)
    )
    t["modes"] = with_values(grid(step=[0, 100, 200, 300], split=SPLITS), log_ratio=(-2, 2))
    t["geometry_training"] = with_values(grid(step=[0, 100, 200], layer=[1, 3], split=SPLITS),
                                         r2_affine=(-2, 1))  # fmt: skip
    t["mode_heatmap"] = with_values(
        grid(step=[0, 100, 200], log2_n_minor=[-1, 2, 4], split=SPLITS), log_ratio=(-2, 2)
    )
    t["ood_r2_vs_k"] = with_values(grid(log2_n_minor=[-1, 2, 4, 6], layer=[1, 3],
                                        split=["minor", "ood"]), r2_affine=(-1, 1))  # fmt: skip
    t["ablation_vs_k"] = with_values(
        grid(log2_n_minor=[-1, 2, 4], layer=[1, 3], split=SPLITS, subspace=["task", "random"]),
        delta=(0, 1),
    )
    t["results"] = with_values(
        grid(k=[-1, 2, 4, 6]), id_simplex_r2=(0, 1), beta_posterior_corr=(0, 1),
        ood_proj_r2=(-1, 1), ablate_id_over_ood=(0, 5), convex_kl=(0, 0.1),
        mode_log_ratio_ood=(-2, 2),
    )  # fmt: skip
    t["steering"] = pd.concat(
        [with_values(grid(layer=LAYERS, condition=["own", "to_task"], target=[0, 1]),
                     accuracy=(0, 1), div_target=(1e-4, 5e-4)),
         pd.DataFrame({"layer": [-1], "condition": ["unsteered"], "accuracy": [0.9],
                       "div_target": [2e-4]})]
    )  # fmt: skip
    t["convexity"] = with_values(
        grid(layer=LAYERS, alpha_max=[0.5, 0.7, 1.0]), div_mixture=(0, 0.1),
        div_mixture_vertex=(0, 0.5), div_geometric=(0, 0.1), div_vertex=(0, 0.5),
    )  # fmt: skip
    t["convexity_vs_k"] = with_values(grid(log2_n_minor=[-1, 2, 4], layer=[1, 3]),
                                      div_mixture=(0, 0.1), div_geometric=(0, 0.1))  # fmt: skip
    t["probes"] = with_values(grid(layer=LAYERS, split=["major", "ood"],
                                   view=["full", "task", "orth", "random"]), r2=(0, 1))  # fmt: skip
    t["probe_angles"] = with_values(
        grid(layer=LAYERS, split=["major", "ood"], index=[0, 1]), angle_deg=(0, 90),
        random_angle_mean=(80, 90), random_angle_p05=(70, 80),
    )  # fmt: skip
    t["demo_two_modes"] = _two_modes()
    t["paper_ood_r2"] = with_values(grid(layer=LAYERS, split=["minor", "ood"]), r2_paper=(0.3, 0.6),
                                    r2_paper_q25=(0.1, 0.3), r2_paper_q75=(0.6, 0.9))  # fmt: skip
    t["paper_anova"] = with_values(
        grid(layer=LAYERS, split=SPLITS), eta2_task=(0, 0.3), eta2_token=(0, 0.3),
        eta2_interaction=(0, 0.3),
    )  # fmt: skip
    t["paper_ood_r2_vs_k"] = with_values(
        grid(log2_n_minor=[-1, 2, 4], layer=[1, 3], split=["ood"]), r2_paper=(0, 1)
    )
    t["decodability"] = with_values(
        grid(method=["knn", "linear"], layer=LAYERS, n_examples=[1, 2, 4, 8], label=["task"],
             split=["major"]), td=(0, 1), chance=1 / 3,
    )  # fmt: skip
    t["decodability_dynamics"] = with_values(
        grid(step=[0, 100, 200], layer=LAYERS, n_examples=[4, 8], method=["knn"]),
        td=(0, 1), icl_loss=(1, 2), chance=1 / 3,
    )  # fmt: skip
    t["decodability_groups"] = with_values(grid(group=[0, 1, 2], n_examples=[1, 4, 8]),
                                           td=(0, 1), performance=(0, 1))  # fmt: skip
    t["decodability_correlation"] = pd.DataFrame(
        {"over": ["groups", "examples"], "r": [0.8, 0.5], "p": [0.01, 0.2], "n": [9, 9]}
    )
    t["decodability_finetune"] = with_values(
        grid(variant=["start", "early", "late"], layer=LAYERS, seed=[0, 1]), d_td=(-0.2, 0.2),
        d_icl_loss=(-0.1, 0.1), blocks="0-1",
    )  # fmt: skip
    t["decodability_emergence"] = with_values(grid(layer=LAYERS), td_half_step=(0, 500),
                                              loss_half_step=(0, 500))  # fmt: skip
    t["patching_resid_pre"] = with_values(grid(layer=LAYERS, pos=list(range(6))),
                                          recovered=(-0.2, 1))  # fmt: skip
    t["patching_heads"] = with_values(grid(layer=LAYERS, head=[0, 1]), recovered=(0, 1))
    t["attention"] = _attention()
    tasks = ["antonym", "capital"]
    t["llm_icl"] = with_values(grid(task=tasks, shots=[0, 1, 2, 4, 8]), accuracy=(0, 1),
                               baseline=(0, 0.3))  # fmt: skip
    t["llm_task_vectors"] = with_values(
        grid(task=tasks, layer=LAYERS, condition=["task_vector", "icl", "zero_shot"]),
        accuracy=(0, 1),
    )
    t["llm_function_vectors"] = with_values(
        grid(task=tasks, layer=LAYERS, condition=["function_vector", "icl", "zero_shot"]),
        accuracy=(0, 1),
    )
    t["llm_fv_heads"] = with_values(
        grid(task=tasks, layer=LAYERS, head=[0, 1, 2]), ie=(-0.1, 0.1)
    ).assign(selected=lambda d: d["ie"] > 0.05)
    t["llm_decodability"] = with_values(
        grid(group=["g1", "g2"], method=["knn"], layer=LAYERS, n_examples=[0, 1, 4]),
        td=(0, 1), chance=0.5,
    )  # fmt: skip
    t["llm_td_icl"] = with_values(grid(group=["g1"], task=tasks, shots=[1, 4], layer=LAYERS),
                                  td_task=(0, 1), accuracy=(0, 1))  # fmt: skip
    t["llm_td_correlation"] = with_values(grid(group=["g1", "g2"], layer=LAYERS), r=(-1, 1))
    t["llm_pca"] = with_values(
        grid(group=["g1"], layer=LAYERS, task=tasks, i=range(5)), pc1=(-1, 1), pc2=(-1, 1),
        explained1=0.4, explained2=0.2,
    )  # fmt: skip
    t["llm_mixture"] = with_values(
        grid(group=["g1"], layer=LAYERS, alpha=[0.0, 0.5, 1.0], vertex=tasks),
        beta_mean=(0, 1), beta_std=(0, 0.1), expected=(0, 1),
    )  # fmt: skip
    t["llm_simplex"] = with_values(grid(group=["g1"], layer=LAYERS,
                                        split=["pure", "mixture", "null"]),
                                   projection_r2=(0, 1))  # fmt: skip
    sets = ["heldout_known", "novel"]
    t["llm_modes_icl"] = with_values(grid(task=tasks, set=sets, shots=[0, 2, 8]),
                                     accuracy=(0, 1), baseline=(0, 0.3))  # fmt: skip
    t["llm_modes_share"] = with_values(grid(layer=LAYERS, set=sets, level=["states", "task_vectors"]),
                                       share=(0, 1), random_share=(0, 0.05))  # fmt: skip
    t["llm_modes_angles"] = with_values(grid(layer=LAYERS, set=sets), mean_angle=(10, 80),
                                        random_mean_angle=(80, 90))  # fmt: skip
    t["llm_modes_ablation"] = with_values(grid(layer=[2], condition=["known_subspace",
                                               "random_subspace"], set=sets, task=tasks),
                                          drop=(0, 0.5))  # fmt: skip
    t["llm_convex_steering"] = with_values(
        grid(condition=["task_vector_mix", "demo_mix", "output_mix"], alpha=[0.0, 0.5, 1.0]),
        p_a=(0, 1), p_b=(0, 1), p_neither=(0, 1), task_a="uppercase", task_b="first_letter",
    )  # fmt: skip
    t["llm_steering_layers"] = with_values(grid(layer=LAYERS), p_a_with_theta_a=(0, 1),
                                           p_b_with_theta_b=(0, 1))  # fmt: skip
    return t


TABLES = tables()


def every_figure() -> list[tuple[str, str, int]]:
    out = []
    for module in figure_modules():
        figures = importlib.import_module(module).FIGURES
        for name, fns in figures.items():
            n = len(fns) if isinstance(fns, list | tuple) else 1
            out += [(module, name, i) for i in range(n)]
    return out


FIGURES = every_figure()


def draw(module: str, name: str, index: int) -> go.Figure:
    fns = importlib.import_module(module).FIGURES[name]
    fn = fns[index] if isinstance(fns, list | tuple) else fns
    return fn(TABLES[name])


# ------------------------------------------------------------------------------ checks
def _ref(trace, letter: str) -> str:
    ref = getattr(trace, f"{letter}axis", None) or letter
    return f"{letter}axis{ref[1:]}"


def _colour(trace) -> str | None:
    for part in ("line", "marker"):
        c = getattr(getattr(trace, part, None), "color", None)
        if isinstance(c, str):
            return c
    return None


def _axis(layout, name: str):
    try:
        return layout[name]
    except (KeyError, ValueError):  # a trace on an axis the layout never defines
        return None


def _title(axis) -> str:
    return (axis.title.text or "") if axis is not None and axis.title is not None else ""


def defects(fig: go.Figure) -> list[str]:
    """Every reviewer's defect found in ``fig`` (empty: fit for a paper)."""
    out: list[str] = []
    layout = fig.layout
    used: dict[str, list] = {}
    for trace in fig.data:
        if trace.type in ("table",):
            continue
        if trace.type == "scatter3d":
            scene = layout[trace.scene or "scene"]
            for a in ("xaxis", "yaxis", "zaxis"):
                if not _title(scene[a]):
                    out.append(f"3-D {a} has no title")
            if (layout.height or 450) < 600:
                out.append(f"3-D view is only {layout.height or 450} px high")
            continue
        for letter in ("x", "y"):
            if getattr(trace, letter, None) is not None:
                used.setdefault(_ref(trace, letter), []).append(getattr(trace, letter))
    for name, arrays in used.items():
        axis = _axis(layout, name) or go.layout.XAxis()  # undefined: plotly's defaults
        if not _title(axis):
            shared = axis.matches
            if not (shared and _title(_axis(layout, f"{name[0]}axis{shared[1:]}"))):
                out.append(f"{name} carries data but has no title")
        values = [np.asarray(a) for a in arrays]
        ints = all(v.dtype.kind in "iu" and v.size for v in values)
        if ints and axis.type != "category":
            listed = axis.tickvals is not None and all(float(t).is_integer() for t in axis.tickvals)
            step = axis.dtick is not None and float(axis.dtick).is_integer()
            step = step and (axis.tick0 is None or float(axis.tick0).is_integer())
            if not (listed or step):
                out.append(f"{name} holds integers ({_title(axis)!r}) but may tick at 0.5")
        if (axis.exponentformat or "B") in ("B", "SI"):
            out.append(f"{name} writes small numbers with SI prefixes (250µ)")
    # a legend entry stands for every trace of its group (or of its name): same colour
    groups: dict[str, list] = {}
    for trace in fig.data:
        if trace.type in ("table", "heatmap"):
            continue
        key = trace.legendgroup or trace.name
        if key:
            groups.setdefault(key, []).append(trace)
    for key, traces in groups.items():
        shown = [t for t in traces if t.showlegend is not False]
        if not shown or len(traces) == 1:
            continue
        colours = {_colour(t) for t in traces}
        if None in colours or len(colours) > 1:
            out.append(f"legend entry {key!r} stands for traces of colours {colours}")
    for trace in fig.data:
        if trace.type == "bar" and trace.text is None and trace.texttemplate is None:
            out.append(f"bar trace {trace.name!r} shows no numbers")
        if trace.type == "heatmap":
            bar = trace.colorbar if trace.coloraxis is None else layout.coloraxis.colorbar
            if not (bar and bar.title and bar.title.text):
                out.append(f"heatmap {trace.name!r} has no colour-bar title")
    if not (layout.title and layout.title.text):
        out.append("the figure has no title")
    return out


# ------------------------------------------------------------------------------- tests
def test_every_figure_name_has_a_table():
    assert {name for _, name, _ in FIGURES} <= set(TABLES)
    assert len(FIGURES) >= 40  # every viz module of the registry, not a handful


@pytest.mark.parametrize("module, name, index", FIGURES, ids=lambda v: str(v))
def test_figure_is_fit_for_a_paper(module, name, index):
    fig = draw(module, name, index)
    assert isinstance(fig, go.Figure)
    assert defects(fig) == []
    fig.to_json()  # serialises, as the report needs


def test_steering_divergence_panel_has_legend_colours_units_and_integer_layers():
    from tvlens.viz.steering import steering_accuracy

    fig = steering_accuracy(TABLES["steering"])
    acc = [t for t in fig.data if t.xaxis in (None, "x") and t.type == "scatter"]
    div = [t for t in fig.data if t.xaxis == "x2"]
    assert [_colour(t) for t in acc] == [_colour(t) for t in div]
    assert "nats" in fig.layout.yaxis2.title.text
    assert fig.layout.xaxis.tickvals == tuple(LAYERS)


def test_attention_heatmaps_label_their_tokens():
    from tvlens.viz.attention import attention_figure

    fig = attention_figure(TABLES["attention"])
    assert fig.layout.xaxis.showticklabels is not False
    assert list(fig.data[0].x) == ["0:BOS", "1:a", "2:b", "3:a", "4:c"]


def test_the_checks_can_fail():
    layers = np.array([0, 1, 2, 3])
    bad = go.Figure()
    bad.add_scatter(x=layers, y=[0.1, 0.2, 0.3, 0.4], name="a", legendgroup="a")
    bad.add_scatter(x=layers, y=[1e-4, 2e-4, 3e-4, 4e-4], name="a", legendgroup="a",
                    showlegend=False, xaxis="x2", yaxis="y2")  # fmt: skip
    bad.add_bar(x=layers, y=[1, 2, 3, 4], name="bars")
    bad.add_heatmap(z=[[1, 2], [3, 4]])
    found = "\n".join(defects(bad))
    for words in ("has no title", "may tick at 0.5", "SI prefixes", "legend entry 'a'",
                  "shows no numbers", "colour-bar title", "figure has no title"):  # fmt: skip
        assert words in found, words
    small3d = go.Figure(go.Scatter3d(x=[0], y=[0], z=[0]))
    assert any("3-D" in d for d in defects(small3d))
