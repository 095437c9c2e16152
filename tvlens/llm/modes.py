"""The two modes in a pretrained model: tasks it knows vs tasks defined only in context.

The synthetic half of tvlens asks whether in-distribution behaviour is retrieval over task
vectors and whether out-of-distribution states leave the task-vector subspace
(docs/modes.md). Here the same questions are asked of a pretrained LM, with

* **known tasks** (family ``word``: antonym, uppercase, country -> capital, ...), split into
  a *basis* set, whose task vectors span the known-task subspace, and a *held-out* set, the
  control: tasks the model also knows but that did not define the subspace;
* **in-context-only tasks** (family ``novel``: seeded mappings such as a random word
  derangement or a letter code, :func:`tvlens.llm.make_data.build_novel_tasks`), which the
  model can only infer from the demonstrations.

At every layer a task's vector is the mean query-token state of its ``shots``-shot prompts;
the known subspace is the span of the basis tasks' vectors about their mean (rank = basis
tasks − 1). :func:`analyse_modes` writes

* ``llm_modes_icl``: accuracy by shots of the held-out and in-context-only tasks beside the
  majority baseline (an in-context-only task is analysed as one only if it is learnt);
* ``llm_modes_share``: the share of each set's variance inside the known subspace, for the
  prompts' states and for the task vectors, beside a random subspace of the same rank (mean
  and sd; expectation rank/d), the set's own top principal components (the ceiling) and the
  same prompts with their labels shuffled (the surface control: what the inputs' kind and
  the outputs' format alone put in the subspace) (:mod:`tvlens.analyses.baselines`, the
  synthetic half's definitions);
* ``llm_modes_angles``: principal angles between the known subspace and each set's
  task-vector span, beside those of a random span of the same rank;
* ``llm_modes_ablation``: accuracy with the known subspace mean-ablated from the query
  token's state at a layer (its component set to the mean query state's), beside
  a random subspace of the same rank (the paper's claim predicts held-out known tasks hurt
  more than in-context-only ones).

Whether task vectors of in-context-only tasks transfer to zero-shot queries (Hendel
patching) is the ``task_vectors`` analysis run on ``--task novel``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from tvlens.analyses.baselines import random_share, top_share, variance_share
from tvlens.analyses.geometry import principal_angles, random_basis
from tvlens.hooks.core import check_layers, hook_name, model_device, orthonormal_basis
from tvlens.hooks.rowwise import project_out_rows_hook
from tvlens.llm.config import ModesOptions
from tvlens.llm.icl import icl_row, icl_table
from tvlens.llm.prompts import (
    Encoded,
    Scored,
    encode,
    run_prompts,
    sample_prompts,
    tokenizer_of,
)
from tvlens.llm.tasks import NLTask, load_tasks
from tvlens.registry import driver

log = logging.getLogger(__name__)

#: the three sets of tasks compared
SETS = ("basis", "heldout_known", "novel")


def known_basis(
    means: dict[str, Float[Tensor, "layer d"]], basis_tasks: Sequence[str], li: int
) -> Float[Tensor, "r d"]:
    """Orthonormal rows spanning the basis tasks' vectors at layer index ``li`` about their
    mean (rank = number of basis tasks − 1)."""
    v = torch.stack([means[t][li] for t in basis_tasks]).double()
    return orthonormal_basis(v - v.mean(0))


def _share_row(x: Tensor, basis: Tensor, seed: int) -> dict[str, float]:
    mean, sd = random_share(x, basis.shape[0], seed=seed)
    return {
        "share": variance_share(x, basis),
        "random_share": mean,
        "random_sd": sd,
        "top_share": top_share(x, basis.shape[0]),
    }


def share_table(
    states: dict[str, Float[Tensor, "n layer d"]],
    sets: dict[str, list[str]],
    layers: Sequence[int],
    seed: int = 0,
    shuffled: dict[str, Float[Tensor, "n layer d"]] | None = None,
) -> pd.DataFrame:
    """Variance share of each set's states and task vectors in the known subspace, per layer,
    beside random subspaces of equal rank and the set's own top PCs.

    ``shuffled`` holds each task's states on *label-shuffled* prompts (the same inputs and
    outputs, the mapping broken): their share, ``shuffled_share``, is what the prompts'
    surface alone puts in the subspace (the inputs' kind, the outputs' format), so the
    task's own part is ``share − shuffled_share``.
    """
    means = {t: s.mean(0) for t, s in states.items()}
    rows = []
    for li, layer in enumerate(layers):
        basis = known_basis(means, sets["basis"], li)
        d = basis.shape[1]
        for name in ("heldout_known", "novel"):
            tasks = sets[name]
            for level in ("states", "task_vectors"):

                def view(source: dict[str, Tensor], tasks=tasks, level=level, li=li) -> Tensor:
                    if level == "states":
                        return torch.cat([source[t][:, li] for t in tasks]).double()
                    return torch.stack([source[t][:, li].mean(0) for t in tasks]).double()

                row = {
                    "layer": layer,
                    "set": name,
                    "level": level,
                    "rank": basis.shape[0],
                    "d": d,
                    "n_tasks": len(tasks),
                    **_share_row(view(states), basis, seed + li),
                }
                if shuffled is not None:
                    row["shuffled_share"] = variance_share(view(shuffled), basis)
                rows.append(row)
    return pd.DataFrame(rows)


def angle_table(
    states: dict[str, Float[Tensor, "n layer d"]],
    sets: dict[str, list[str]],
    layers: Sequence[int],
    seed: int = 0,
) -> pd.DataFrame:
    """Principal angles (degrees) between the known subspace and each set's task-vector
    span about its mean, and between the known subspace and a random span of that rank."""
    means = {t: s.mean(0) for t, s in states.items()}
    rows = []
    for li, layer in enumerate(layers):
        basis = known_basis(means, sets["basis"], li)
        for name in ("heldout_known", "novel"):
            v = torch.stack([means[t][li] for t in sets[name]]).double()
            span = orthonormal_basis(v - v.mean(0))
            rand = random_basis(span.shape[0], basis.shape[1], seed=seed + li).double()
            ang = torch.rad2deg(principal_angles(basis, span))
            ref = torch.rad2deg(principal_angles(basis, rand))
            rows.append(
                {
                    "layer": layer,
                    "set": name,
                    "min_angle": float(ang.min()),
                    "mean_angle": float(ang.mean()),
                    "random_min_angle": float(ref.min()),
                    "random_mean_angle": float(ref.mean()),
                    "n_angles": int(ang.numel()),
                }
            )
    return pd.DataFrame(rows)


def ablation_table(
    model: Any,
    encs: dict[str, Encoded],
    task_set: dict[str, str],
    bases: dict[int, Float[Tensor, "r d"]],
    point: str,
    *,
    centres: dict[int, Float[Tensor, " d"]] | None = None,
    clean: dict[str, Scored] | None = None,
    mode: str = "first_token",
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """Accuracy of each task's prompts with ``bases[layer]`` ablated from ``point`` at that
    layer, at the query token (where the task vectors are read; other positions, such as a
    BOS attention sink, stay as they are), beside a random subspace of the same rank and no
    ablation. With ``centres[layer]`` (the mean query state) it is a mean ablation: the
    component inside the subspace is set to the mean's, so only the variation along it goes
    (zeroing it would also move the state away from its typical norm)."""
    rows = []
    grid = [(layer, cond) for layer in bases for cond in ("known_subspace", "random_subspace")]
    if clean is None:  # the unablated scores (the caller may have them from its own pass)
        clean = {
            t: run_prompts(model, e, mode=mode, batch_size=batch_size) for t, e in encs.items()
        }
    for layer, cond in tqdm(grid, desc="ablation", disable=None if progress else True):
        basis = bases[layer].float()
        if cond == "random_subspace":
            basis = random_basis(basis.shape[0], basis.shape[1], seed=seed + layer).float()
        basis = basis.to(model_device(model))
        c = centres[layer].float() if centres is not None else None
        name = hook_name(layer, point)
        for task, enc in encs.items():

            def hooks(rows: Tensor, qpos: Tensor, b=basis, n=name, c=c) -> list:
                return [(n, project_out_rows_hook(b, qpos, centre=c))]

            scored = run_prompts(
                model,
                enc,
                hooks=hooks,
                mode=mode,
                batch_size=batch_size,
            )
            base = clean[task]
            rows.append(
                {
                    "layer": layer,
                    "condition": cond,
                    "task": task,
                    "set": task_set[task],
                    "rank": int(basis.shape[0]),
                    "accuracy": scored.accuracy,
                    "clean_accuracy": base.accuracy,
                    "drop": base.accuracy - scored.accuracy,
                    "p_answer": float(scored.p_answer.mean()),
                    "clean_p_answer": float(base.p_answer.mean()),
                    "n": len(enc),
                }
            )
    return pd.DataFrame(rows)


def default_ablation_layers(n_layers: int, k: int = 1) -> list[int]:
    """``k`` layers spread over the middle of the model (where task vectors live): the
    middle layer for ``k = 1``, else from 1/3 to 2/3 of the depth."""
    if k == 1:
        return [n_layers // 2]
    return sorted({round(n_layers * f) for f in np.linspace(1 / 3, 2 / 3, k)})


@driver("modes", ModesOptions, kind="llm")
def analyse_modes(run: Any, o: ModesOptions, progress: bool) -> dict[str, pd.DataFrame]:
    """Known vs in-context-only tasks: ICL by shots, subspace shares, principal angles and
    the ablation contrast (tables ``llm_modes_*``, see the module docstring)."""
    s = run.settings
    model, tok = run.model, tokenizer_of(run.model)
    tasks = {
        "basis": load_tasks(o.basis_tasks),
        "heldout_known": load_tasks(o.heldout_tasks),
        "novel": load_tasks(o.novel_tasks),
    }
    sets = {k: [t.name for t in v] for k, v in tasks.items()}
    task_set = {t: k for k, names in sets.items() for t in names}
    by_name: dict[str, NLTask] = {t.name: t for v in tasks.values() for t in v}
    layers = check_layers(model, o.layers)
    names = [hook_name(layer, s.point) for layer in layers]

    # ICL by shots of the held-out and in-context-only tasks, beside the majority baseline
    probe = [by_name[t] for t in (*sets["heldout_known"], *sets["novel"])]
    other_shots = [k for k in o.icl_shots if k != o.shots]  # `shots` comes from the state pass
    icl = (
        icl_table(
            model,
            probe,
            other_shots,
            o.n_prompts,
            mode=s.mode,
            progress=progress,
            **run.prompt_kwargs,
        )
        if other_shots
        else pd.DataFrame()
    )
    if not icl.empty:
        icl.insert(1, "set", icl["task"].map(task_set))

    # the query states of every task at `shots` shots, all layers in one pass
    states, shuffled, encs, scores, at_shots = {}, {}, {}, {}, []
    for name, task in tqdm(by_name.items(), desc="states", disable=None if progress else True):
        enc = encode(tok, sample_prompts(task, o.n_prompts, o.shots, s.template, s.seed))
        scored = run_prompts(model, enc, capture=names, mode=s.mode, batch_size=s.batch_size)
        states[name] = torch.stack([scored.states[n] for n in names], dim=1)  # [n, L, d]
        encs[name], scores[name] = enc, scored
        at_shots.append({"set": task_set[name], **icl_row(task, o.shots, enc, scored)})
        if task_set[name] != "basis":  # the surface control: same tokens, mapping broken
            bad = sample_prompts(task, o.n_prompts, o.shots, s.template, s.seed, corrupt=True)
            got = run_prompts(model, encode(tok, bad), capture=names, batch_size=s.batch_size)
            shuffled[name] = torch.stack([got.states[n] for n in names], dim=1)
    icl = pd.concat([icl, pd.DataFrame(at_shots)], ignore_index=True)
    icl = icl.drop_duplicates(["task", "shots"], keep="first").sort_values(["set", "task", "shots"])
    # the geometry compares tasks the model does: known tasks it solves, novel ones it learns
    verdict = learnt(icl[icl["set"] != "basis"], o.learnt_margin).set_index("task")["learnt"]
    icl["learnt"] = icl["task"].map(verdict)
    compared = {}
    for name in ("heldout_known", "novel"):
        keep = [t for t in sets[name] if verdict.get(t, False) or not o.only_learnt]
        compared[name] = "done in context" if o.only_learnt else "all (only_learnt off)"
        if len(keep) < 2:
            log.warning(
                "modes: only %s of the %s tasks %s are done in context (learnt_margin %s); "
                "comparing all of them, which says nothing about the two modes",
                keep,
                name,
                sets[name],
                o.learnt_margin,
            )
            keep, compared[name] = sets[name], "all (fewer than two done in context)"
        sets[name] = keep

    shares = share_table(states, sets, layers, seed=s.seed, shuffled=shuffled)
    shares["compared"] = shares["set"].map(compared)
    angles = angle_table(states, sets, layers, seed=s.seed)
    means = {t: v.mean(0) for t, v in states.items()}
    ablate = o.ablation_layers or default_ablation_layers(int(model.cfg.n_layers))
    bad = [layer for layer in ablate if layer not in layers]
    if bad:
        raise ValueError(f"modes.ablation_layers {bad} are not among the analysed layers {layers}.")
    bases = {layer: known_basis(means, sets["basis"], layers.index(layer)) for layer in ablate}
    probe_encs = {t: encs[t] for t in (*sets["heldout_known"], *sets["novel"])}
    everything = torch.cat(list(states.values()))  # [N, L, d]: every task's query states
    centres = {layer: everything[:, layers.index(layer)].mean(0) for layer in ablate}
    ablation = ablation_table(
        model,
        probe_encs,
        task_set,
        bases,
        s.point,
        centres=centres,
        clean={t: scores[t] for t in probe_encs},
        mode=s.mode,
        batch_size=s.batch_size,
        seed=s.seed,
        progress=progress,
    )
    return {
        "llm_modes_icl": icl.reset_index(drop=True),
        "llm_modes_share": shares,
        "llm_modes_angles": angles,
        "llm_modes_ablation": ablation,
    }


def learnt(icl: pd.DataFrame, margin: float = 0.1) -> pd.DataFrame:
    """Per task: accuracy at the most shots against the majority baseline and zero shots,
    and whether it is learnt in context (above both by ``margin``)."""
    rows = []
    for (task, set_), g in icl.groupby(["task", "set"], sort=False):
        top, zero = g.loc[g["shots"].idxmax()], g.loc[g["shots"].idxmin()]
        rows.append(
            {
                "task": task,
                "set": set_,
                "shots": int(top["shots"]),
                "accuracy": float(top["accuracy"]),
                "zero_shot": float(zero["accuracy"]),
                "majority": float(top["baseline"]),
                "learnt": bool(top["accuracy"] >= max(top["baseline"], zero["accuracy"]) + margin),
                "ci95": 1.96
                * math.sqrt(max(top["accuracy"] * (1 - top["accuracy"]), 1e-12) / top["n"]),
            }
        )
    return pd.DataFrame(rows)


def headline(tables: dict[str, pd.DataFrame], run: Any = None) -> dict[str, float]:
    """At each set's layer of largest task-vector share: the share beside random; and the
    mean ablation drop of each set beside its random-subspace drop."""
    out: dict[str, float] = {}
    sh = tables["llm_modes_share"]
    sh = sh[sh["level"] == "states"]
    for set_, g in sh.groupby("set"):
        best = g.loc[g["share"].idxmax()]
        out[
            f"share {set_} (states, layer {int(best['layer'])}; random {best['random_share']:.3f})"
        ] = float(best["share"])
    ab = tables["llm_modes_ablation"]
    for (set_, cond), g in ab.groupby(["set", "condition"]):
        out[f"ablation drop {set_} {cond}"] = float(g["drop"].mean())
    return out
