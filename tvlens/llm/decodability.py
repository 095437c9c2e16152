"""Task decodability (TD) of a pretrained LM by layer and number of shots, and its link to
ICL accuracy (Han et al., arXiv 2412.12276; docs/concepts.md section B).

For one *group* of tasks (e.g. the six POS tasks plus Null, see
:func:`tvlens.llm.tasks.task_groups`), ``n_per_task`` prompts per task are drawn *nested*
(:func:`tvlens.llm.prompts.nested_prompts`): prompt ``i`` at ``s`` shots is the first ``s``
demonstrations of prompt ``i`` at the largest shot count plus the next input, so one causal
pass over the longest prompts gives the residual at the query token of every layer and the
scored answer for every shot count (:func:`tvlens.llm.prompts.run_nested`, checked equal to
separate passes). TD and ICL accuracy come from the same forward passes.

Each task's prompts are drawn with their own seed (derived from ``seed`` and the task name),
as in the paper's independent N prompts per task. The shot counts of one prompt share its
demonstrations, so TD across shots compares the same contexts cut at different lengths. The
default shot grid starts at 1: at 0 shots tasks sharing inputs (POS, bitwise) see the same
kind of bare query, and leave-one-out kNN on identical points scores below chance.

Per-task TD (the fraction of a task's prompts that kNN assigns to it) is correlated with
ICL accuracy across the group's tasks × shot counts, per layer (Null is left out: it has no
rule to learn, so its "accuracy" only measures guessing).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tvlens.analyses.decodability import DEFAULT_K, Method, decodability_table, knn_loo_predict
from tvlens.hooks.core import check_layers, hook_name
from tvlens.llm.config import (
    DEFAULT_PER_TASK,
    DEFAULT_TD_SHOTS,
    DEFAULT_TEMPLATE,
    DecodabilityOptions,
)
from tvlens.llm.icl import icl_row
from tvlens.llm.prompts import (
    ScoreMode,
    Template,
    encode,
    nested_prompts,
    run_nested,
    tokenizer_of,
)
from tvlens.llm.tasks import NLTask, load_tasks, task_groups
from tvlens.registry import driver
from tvlens.tasks.base import derive_seed

log = logging.getLogger(__name__)

DEFAULT_SHOTS = DEFAULT_TD_SHOTS


@dataclass
class DecodabilityResult:
    """TD by layer × shots, per-task TD, ICL accuracy, and the states kept for geometry."""

    td: pd.DataFrame
    per_task: pd.DataFrame
    icl: pd.DataFrame
    labels: Int[Tensor, " n"]
    tasks: list[NLTask]
    layers: list[int]
    states: dict[int, Float[Tensor, "n layer d"]] = field(default_factory=dict)


def per_task_td(
    x: Float[Tensor, "n d"], labels: Int[Tensor, " n"], k: int = DEFAULT_K
) -> Float[Tensor, " classes"]:
    """Leave-one-out kNN recall of each class: the share of its points assigned to it."""
    labels = torch.as_tensor(labels).long()
    pred = knn_loo_predict(x, labels, k)
    n_classes = int(labels.max()) + 1
    hit = torch.zeros(n_classes, dtype=torch.float64).index_add_(
        0, labels, (pred == labels).double()
    )
    return hit / torch.bincount(labels, minlength=n_classes).double()


@torch.no_grad()
def decodability_by_shots(
    model: Any,
    tasks: Sequence[NLTask],
    shots: Sequence[int] = DEFAULT_SHOTS,
    n_per_task: int = DEFAULT_PER_TASK,
    layers: Sequence[int] | None = None,
    template: str | Template = DEFAULT_TEMPLATE,
    seed: int = 0,
    point: str = "resid_post",
    methods: Sequence[Method] = ("knn", "probe"),
    k: int = DEFAULT_K,
    mode: ScoreMode = "first_token",
    batch_size: int = 16,
    keep_states: Sequence[int] = (),
    group: str = "tasks",
    progress: bool = False,
) -> DecodabilityResult:
    """TD of ``tasks`` (the classes) at every layer × shot count, with ICL accuracy.

    Returns tables ``td`` (group, method, layer, n_examples = shots, td, chance, ...),
    ``per_task`` (group, task, family, shots, layer, td_task) and ``icl`` (group, task,
    shots, accuracy, ...); ``states[s]`` holds the ``[N, L, d]`` states for each shot count
    in ``keep_states`` (rows grouped by task, in ``tasks`` order).
    """
    tasks = list(tasks)
    if len(tasks) < 2:
        raise ValueError(f"decodability needs at least two tasks (classes); got {len(tasks)}.")
    if len({t.name for t in tasks}) != len(tasks):
        raise ValueError(f"task names repeat in {[t.name for t in tasks]}; pass each once.")
    tok = tokenizer_of(model)
    layers = check_layers(model, layers)
    names = [hook_name(layer, point) for layer in layers]
    labels = torch.arange(len(tasks)).repeat_interleave(n_per_task)
    td_frames, per_rows, icl_rows = [], [], []
    kept: dict[int, Tensor] = {}
    shots = sorted({int(s) for s in shots})
    reps: dict[int, list[Tensor]] = {s: [] for s in shots}
    for task in tqdm(tasks, desc=f"TD {group}", disable=None if progress else True):
        task_seed = derive_seed("llm-decodability", seed, task.name)
        prompts = nested_prompts(task, n_per_task, shots, template, task_seed)
        encs = {s: encode(tok, p) for s, p in prompts.items()}
        scored = run_nested(model, encs, capture=names, mode=mode, batch_size=batch_size)
        for s in shots:
            reps[s].append(torch.stack([scored[s].states[n] for n in names], dim=1))
            icl_rows.append({"group": group, **icl_row(task, s, encs[s], scored[s])})
    for s in shots:
        x = torch.cat(reps[s])  # [N, L, d]
        td = decodability_table(
            x[:, :, None],
            labels,
            layers=layers,
            n_examples=[int(s)],
            positions=[-1],
            methods=methods,
            k=k,
            seed=seed,
        )
        td.insert(0, "group", group)
        td_frames.append(td)
        for li, layer in enumerate(layers):
            recall = per_task_td(x[:, li], labels, k)
            for ci, task in enumerate(tasks):
                per_rows.append(
                    {
                        "group": group,
                        "task": task.name,
                        "family": task.family,
                        "shots": int(s),
                        "layer": layer,
                        "td_task": float(recall[ci]),
                    }
                )
        if s in keep_states:
            kept[int(s)] = x
    return DecodabilityResult(
        td=pd.concat(td_frames, ignore_index=True),
        per_task=pd.DataFrame(per_rows),
        icl=pd.DataFrame(icl_rows),
        labels=labels,
        tasks=tasks,
        layers=layers,
        states=kept,
    )


def td_icl_table(per_task: pd.DataFrame, icl: pd.DataFrame) -> pd.DataFrame:
    """Per-task TD beside ICL accuracy: one row per (group, task, shots, layer)."""
    cols = ["group", "task", "shots", "accuracy", "p_answer", "baseline"]
    return per_task.merge(icl[cols], on=["group", "task", "shots"], how="left")


def td_icl_correlation_table(
    table: pd.DataFrame, exclude_families: Sequence[str] = ("null",)
) -> pd.DataFrame:
    """Pearson / Spearman correlation of per-task TD with ICL accuracy across a group's
    tasks × shot counts, per (group, layer): ``r, r2, p_value, spearman, n_points``.

    Undefined (NaN) when either side is constant, e.g. a model that never answers right.
    """
    from scipy import stats

    rows = []
    d = table[~table["family"].isin(list(exclude_families))]
    for (group, layer), g in d.groupby(["group", "layer"], sort=True):
        x, y = g["td_task"].to_numpy(float), g["accuracy"].to_numpy(float)
        row = {"group": group, "layer": int(layer), "n_points": len(g)}
        if len(g) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
            r, p = stats.pearsonr(x, y)
            row |= {
                "r": float(r),
                "r2": float(r) ** 2,
                "p_value": float(p),
                "spearman": float(stats.spearmanr(x, y)[0]),
            }
        else:
            row |= {"r": np.nan, "r2": np.nan, "p_value": np.nan, "spearman": np.nan}
        rows.append(row)
    return pd.DataFrame(
        rows, columns=["group", "layer", "n_points", "r", "r2", "p_value", "spearman"]
    )


def grouped_tasks(spec: str) -> dict[str, list[NLTask]]:
    """The tasks of ``spec`` grouped by family (each with Null), with a clear error when no
    group of two or more tasks results."""
    groups = task_groups(load_tasks(spec))
    if not groups:
        raise ValueError(
            f"tasks={spec!r} gives no group of two or more tasks of one family; pass e.g. "
            "'pos,null' or 'bitwise'."
        )
    return groups


def group_states(
    run: Any,
    group: str,
    members: Sequence[NLTask],
    shots: Sequence[int],
    n_prompts: int,
    layers: Sequence[int] | None,
    keep: int,
    progress: bool = False,
) -> DecodabilityResult:
    """:func:`decodability_by_shots` of one group on ``run``, keeping the ``keep``-shot
    states; the result is cached on the run, so geometry reuses decodability's pass."""
    key = (
        "llm-decodability",
        group,
        tuple(t.name for t in members),
        n_prompts,
        None if layers is None else tuple(layers),
    )
    cached = run.cache.get(key)
    if cached is not None and keep in cached.states and set(shots) <= set(cached.states):
        return cached
    s = run.settings
    res = decodability_by_shots(
        run.model,
        members,
        shots,
        n_prompts,
        layers,
        s.template,
        s.seed,
        s.point,
        mode=s.mode,
        batch_size=s.batch_size,
        keep_states=(keep,),
        group=group,
        progress=progress,
    )
    run.cache[key] = res  # holds `keep`'s states and every shot count asked
    return res


@driver("decodability", DecodabilityOptions, kind="llm")
def analyse_decodability(
    run: Any, o: DecodabilityOptions, progress: bool
) -> dict[str, pd.DataFrame]:
    """TD by group × layer × shots (``llm_decodability``), per-task TD beside ICL accuracy
    (``llm_td_icl``) and their correlation per group × layer (``llm_td_correlation``)."""
    td, per, icl = [], [], []
    for group, members in grouped_tasks(o.tasks).items():
        res = group_states(
            run, group, members, o.shots, o.n_prompts, o.layers, max(o.shots), progress
        )
        td.append(res.td)
        per.append(res.per_task)
        icl.append(res.icl)
    table = td_icl_table(pd.concat(per, ignore_index=True), pd.concat(icl, ignore_index=True))
    return {
        "llm_decodability": pd.concat(td, ignore_index=True),
        "llm_td_icl": table,
        "llm_td_correlation": td_icl_correlation_table(table),
    }


def headline(tables: dict[str, pd.DataFrame], run: Any = None) -> dict[str, float]:
    """Peak kNN TD of each group at the most shots, with its layer and chance."""
    d = tables["llm_decodability"]
    d = d[(d["method"] == "knn") & (d["n_examples"] == d["n_examples"].max())]
    out = {}
    for group, g in d.groupby("group"):
        best = g.loc[g["td"].idxmax()]
        name = (
            f"TD {group} ({int(best['n_examples'])} shots) peak layer {int(best['layer'])} "
            f"(chance {best['chance']:.2f})"
        )
        out[name] = float(best["td"])
    return out


#: deprecated name of :func:`td_icl_correlation_table` (kept for one release)
td_icl_correlation = td_icl_correlation_table
