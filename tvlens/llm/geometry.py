"""Geometry of last-token states of a pretrained LM: PCA by task, and the simplex / subspace
analyses of :mod:`tvlens.analyses.geometry` on prompts that mix two tasks.

* :func:`pca_table` projects the query-token states of a task group onto their top principal
  directions at each layer (for a scatter coloured by task).
* :func:`mixture_geometry` builds prompts whose demonstrations mix task A and task B in
  proportion α : 1 − α and fits each state as a convex combination of the pure-task means
  h̄_k (:func:`tvlens.analyses.geometry.simplex_fit`). If the model's state interpolates
  between task representations, β_A tracks α. It also reports how much of the pure, mixed
  and Null states lies in the affine span of the task means (the analogue of docs/concepts.md's
  OOD projection R²): Null prompts follow no rule, like an unseen task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from tvlens.analyses.geometry import alignment_scores, projection_r2, simplex_fit, top_components
from tvlens.hooks.core import hook_name, orthonormal_basis
from tvlens.llm.config import DEFAULT_TEMPLATE, GeometryOptions
from tvlens.llm.prompts import (
    Prompt,
    Template,
    encode,
    make_prompt,
    run_prompts,
    tokenizer_of,
)
from tvlens.llm.tasks import NLTask
from tvlens.registry import driver

DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def pca_table(
    states: Float[Tensor, "n layer d"],
    labels: Int[Tensor, " n"],
    task_names: Sequence[str],
    layers: Sequence[int],
    n_components: int = 2,
    group: str = "tasks",
) -> pd.DataFrame:
    """Top-``n_components`` PCA coordinates of the states at each layer, one row per prompt.

    Columns: group, layer, task, prompt, pc1.., explained1.. (share of the layer's variance
    along each component).
    """
    if states.shape[1] != len(layers):
        raise ValueError(f"states have {states.shape[1]} layers but {len(layers)} labels.")
    rows = []
    for li, layer in enumerate(layers):
        x = states[:, li].double()
        centred = x - x.mean(0)
        comps = top_components(x, n_components).double()
        coords = centred @ comps.T
        total = float((centred**2).sum())
        explained = ((coords**2).sum(0) / max(total, 1e-30)).tolist()
        frame = pd.DataFrame(coords.numpy(), columns=[f"pc{i + 1}" for i in range(len(explained))])
        frame.insert(0, "prompt", np.arange(len(x)))
        frame.insert(0, "task", [task_names[int(c)] for c in labels])
        frame.insert(0, "layer", layer)
        frame.insert(0, "group", group)
        for i, e in enumerate(explained):
            frame[f"explained{i + 1}"] = e
        rows.append(frame)
    return pd.concat(rows, ignore_index=True)


def mixture_prompts(
    a: NLTask,
    b: NLTask,
    alpha: float,
    shots: int,
    n_prompts: int,
    template: str | Template = DEFAULT_TEMPLATE,
    seed: int = 0,
) -> list[Prompt]:
    """Prompts with ``round(alpha * shots)`` demos of ``a`` and the rest of ``b``, in a
    seeded random order, ending at a query of ``a``; no input repeats within a prompt."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must lie in [0, 1].")
    n_a = int(round(alpha * shots))
    rng = np.random.default_rng([seed, int(round(alpha * 1000)), shots])
    out = []
    for _ in range(n_prompts):
        q = a.pairs[int(rng.integers(len(a)))]
        used = {q[0]}
        demos = []
        for task, n in ((a, n_a), (b, shots - n_a)):
            pool = [p for p in task.pairs if p[0] not in used]
            if len(pool) < n:
                raise ValueError(
                    f"{task.name!r} has too few distinct inputs for {shots} shots; lower shots."
                )
            for j in rng.choice(len(pool), size=n, replace=False):
                demos.append(pool[int(j)])
                used.add(pool[int(j)][0])
        order = rng.permutation(len(demos))
        out.append(make_prompt(a, q, [demos[int(j)] for j in order], template))
    return out


def _vertices(
    states: Float[Tensor, "n d"], labels: Tensor, classes: Sequence[int]
) -> Float[Tensor, "k d"]:
    return torch.stack([states[labels == c].mean(0) for c in classes])


@torch.no_grad()
def mixture_geometry(
    model: Any,
    tasks: Sequence[NLTask],
    states: Float[Tensor, "n layer d"],
    labels: Int[Tensor, " n"],
    layers: Sequence[int],
    shots: int,
    pair: tuple[int, int] = (0, 1),
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    n_prompts: int = 20,
    template: str | Template = DEFAULT_TEMPLATE,
    seed: int = 0,
    point: str = "resid_post",
    batch_size: int = 16,
    group: str = "tasks",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simplex fit of mixed-task prompts on the pure-task means, and subspace R² by split.

    ``states``/``labels`` are the pure ``shots``-shot states of ``tasks`` (as kept by
    :func:`tvlens.llm.decodability.decodability_by_shots`); the task means of the non-Null
    tasks are the simplex vertices. Returns ``(mixture, simplex)``:

    * mixture: group, layer, alpha, vertex, beta_mean, beta_std, expected, n;
    * simplex: group, layer, split (pure | mixture | null), r2_simplex, projection_r2,
      frac_in, corr, tv (corr / tv of β with the demo proportions, mixture only).
    """
    real = [i for i, t in enumerate(tasks) if t.family != "null"]
    nulls = [i for i, t in enumerate(tasks) if t.family == "null"]
    if len(real) < 2 or pair[0] not in real or pair[1] not in real or pair[0] == pair[1]:
        raise ValueError(
            f"pair={pair} must name two different non-Null tasks among "
            f"{[tasks[i].name for i in real]} (indices {real})."
        )
    if states.shape[1] != len(layers):
        raise ValueError(f"states have {states.shape[1]} layers but {len(layers)} labels.")
    a, b = tasks[pair[0]], tasks[pair[1]]
    names = [hook_name(layer, point) for layer in layers]
    tok = tokenizer_of(model)
    mixed, mixed_alpha = [], []
    for alpha in alphas:
        enc = encode(tok, mixture_prompts(a, b, alpha, shots, n_prompts, template, seed))
        st = run_prompts(model, enc, capture=names, batch_size=batch_size).states
        mixed.append(torch.stack([st[n] for n in names], dim=1))
        mixed_alpha += [float(alpha)] * len(enc)
    mix = torch.cat(mixed)  # [M, L, d]
    alpha_t = torch.tensor(mixed_alpha, dtype=torch.float64)
    k = len(real)
    expected = torch.zeros(len(alpha_t), k, dtype=torch.float64)
    expected[:, real.index(pair[0])] = alpha_t
    expected[:, real.index(pair[1])] = 1 - alpha_t
    is_real = torch.isin(labels, torch.tensor(real))
    is_null = torch.isin(labels, torch.tensor(nulls)) if nulls else torch.zeros_like(is_real)
    mix_rows, simplex_rows = [], []
    for li, layer in enumerate(layers):
        verts = _vertices(states[:, li].double(), labels, real)
        centre = verts.mean(0)
        basis = orthonormal_basis(verts - centre)
        splits = {"pure": states[is_real, li].double(), "mixture": mix[:, li].double()}
        if bool(is_null.any()):
            splits["null"] = states[is_null, li].double()
        for split, x in splits.items():
            fit = simplex_fit(x, verts, centre=centre)
            row = {
                "group": group,
                "layer": layer,
                "split": split,
                "r2_simplex": fit.r2_task,
                "projection_r2": projection_r2(x, basis, centre),
                "frac_in": fit.summary()["frac_in"],
                "corr": np.nan,
                "tv": np.nan,
                "n": int(x.shape[0]),
            }
            if split == "mixture":
                row |= {
                    k_: v
                    for k_, v in alignment_scores(fit.beta, expected).items()
                    if k_ != "cosine"
                }
                for alpha in alphas:
                    sel = alpha_t == float(alpha)
                    beta = fit.beta[sel]
                    for vi, c in enumerate(real):
                        mix_rows.append(
                            {
                                "group": group,
                                "layer": layer,
                                "alpha": float(alpha),
                                "vertex": tasks[c].name,
                                "beta_mean": float(beta[:, vi].mean()),
                                "beta_std": float(beta[:, vi].std()) if len(beta) > 1 else 0.0,
                                "expected": float(expected[sel][0, vi]),
                                "n": int(sel.sum()),
                            }
                        )
            simplex_rows.append(row)
    return pd.DataFrame(mix_rows), pd.DataFrame(simplex_rows)


@driver("geometry", GeometryOptions, kind="llm")
def analyse_geometry(run: Any, o: GeometryOptions, progress: bool) -> dict[str, pd.DataFrame]:
    """PCA of the ``shots``-shot query states by task (``llm_pca``) and the simplex fit of
    mixed-demonstration prompts (``llm_mixture``, ``llm_simplex``), per task group. The
    states come from decodability's pass when it ran on this run with the same tasks."""
    from tvlens.llm.decodability import group_states, grouped_tasks

    s = run.settings
    pca, mix, simplex = [], [], []
    for group, members in grouped_tasks(o.tasks).items():
        res = group_states(
            run, group, members, (o.shots,), o.n_prompts, o.layers, o.shots, progress
        )
        states = res.states[o.shots]
        names = [t.name for t in res.tasks]
        pca.append(pca_table(states, res.labels, names, res.layers, group=group))
        m, fit = mixture_geometry(
            run.model,
            res.tasks,
            states,
            res.labels,
            res.layers,
            o.shots,
            n_prompts=o.n_mixture,
            template=s.template,
            seed=s.seed,
            point=s.point,
            batch_size=s.batch_size,
            group=group,
        )
        mix.append(m)
        simplex.append(fit)
    return {
        "llm_pca": pd.concat(pca, ignore_index=True),
        "llm_mixture": pd.concat(mix, ignore_index=True),
        "llm_simplex": pd.concat(simplex, ignore_index=True),
    }
