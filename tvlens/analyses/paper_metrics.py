"""The reference code's own metrics (GitHub ``ezyhdxm/mini-ICL``), beside tvlens's.

tvlens's geometry numbers (:mod:`tvlens.analyses.geometry`) pool single states and centre
R² on the mean state, so they can go negative and cannot be put next to a figure of the
paper. This module adds the paper's definitions as *named variants* (docs/concepts.md §A, "The
reference code's definitions"):

* :func:`paper_r2` — R² of one target *vector*: ``1 − ‖y − ŷ‖² / Σ_d (y_d − ȳ)²`` with ȳ
  the mean of that vector's own coordinates, clamped to [0, 1].
* :func:`paper_affine_fit` — least squares of centred targets on the first K − 1 centred
  anchors, then λ shifted so that Σλ = 1 (the affine projection; λ is not constrained to
  the simplex).
* :func:`paper_ood_r2` — the OOD R² of reference snapshot ``7c5cab9``: per-task *mean*
  states of a fixed set of OOD tasks (default 128 tasks × 128 sequences), centred on the
  major mean, projected onto the span of the centred major-task means, scored by
  :func:`paper_r2` and averaged over tasks; beside it, labelled ``r2_paper_per_seq``, the
  newest snapshot's per-sequence variant (each sequence's own state over positions
  15 … T − 2).
  The same score is reported for the pool's minor tasks (the reference's ``maj_r2_min``).
* :func:`two_way_anova` / :func:`paper_anova` — the token-conditioned two-way ANOVA: cell
  means over task × current token, the η² of task, token and interaction, the
  separability ``1 − η²_interaction`` and the paper's ``task_vector_r2 = 1 − SS_within /
  SS_total`` (interaction included). By default the current token is *forced*: every
  sequence is copied once per vocabulary symbol with the read token replaced, so the cells
  are balanced (the reference's "next token forced" design).

Hook points: the reference's ``post_mlp`` is TransformerLens's ``resid_post`` (the
default) and its ``post_attn`` is ``resid_mid``; pass ``point=``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from tvlens.analyses.task_vectors import (
    _check_layers,
    as_bridge,
    current_tokens,
    sample_tasks,
    select_tasks,
)
from tvlens.hooks import capture, capture_means, hook_name, resolve_positions
from tvlens.hooks.core import Positions
from tvlens.tasks.base import Batch, TaskFamily, generator

#: The paper's OOD figure: the final position of resid_post ("post_mlp").
PAPER_POSITIONS: Positions = -1


# ----------------------------------------------------------------------------- maths
def paper_r2(
    targets: Float[Tensor, "n d"], fitted: Float[Tensor, "n d"], clamp: bool = True
) -> Float[Tensor, " n"]:
    """Per-vector R²: ``1 − ‖y − ŷ‖² / Σ_d (y_d − ȳ)²``, ȳ the mean of y's own coordinates.

    This is the reference code's score of one target vector (its d coordinates play the
    role of observations). Clamped to [0, 1] unless ``clamp=False``.
    """
    if targets.shape != fitted.shape or targets.dim() != 2:
        raise ValueError(
            f"targets and fitted must both be [n, d]; got {tuple(targets.shape)} and "
            f"{tuple(fitted.shape)}."
        )
    y, f = targets.double(), fitted.double()
    ss_res = ((y - f) ** 2).sum(-1)
    ss_tot = ((y - y.mean(-1, keepdim=True)) ** 2).sum(-1)
    out = 1.0 - ss_res / (ss_tot + 1e-12)
    return out.clamp(0.0, 1.0) if clamp else out


def paper_affine_fit(
    targets: Float[Tensor, "n d"], anchors: Float[Tensor, "k d"]
) -> tuple[Float[Tensor, "n k"], Float[Tensor, "n d"]]:
    """The reference's fit of centred ``targets`` on centred ``anchors`` (rows).

    Least squares on the first K − 1 anchors (the last is redundant once the anchors are
    centred), then the weights are shifted by ``(1 − Σλ)/K`` so that Σλ = 1. Returns the
    weights ``[n, K]`` and the fitted vectors ``[n, d]`` (the projection of each target onto
    the span of the first K − 1 anchors).
    """
    if targets.dim() != 2 or anchors.dim() != 2 or targets.shape[1] != anchors.shape[1]:
        raise ValueError(
            f"targets must be [n, d] and anchors [k, d] of the same width; got "
            f"{tuple(targets.shape)} and {tuple(anchors.shape)} (read both at one hook point)."
        )
    k = anchors.shape[0]
    if k < 2:
        raise ValueError(f"the affine fit needs at least 2 anchors; got {k}.")
    x = anchors[:-1].double().T  # [d, k-1]
    y = targets.double().T  # [d, n]
    w = torch.linalg.lstsq(x, y, driver="gelsd").solution  # [k-1, n]
    lam = torch.cat([w, torch.zeros(1, w.shape[1], dtype=w.dtype)], dim=0)
    lam = lam + (1.0 - w.sum(0, keepdim=True)) / k
    return lam.T.to(targets.dtype), (x @ w).T.to(targets.dtype)


def two_way_anova(
    states: Float[Tensor, "n d"], tasks: Int[Tensor, " n"], tokens: Int[Tensor, " n"]
) -> dict[str, float]:
    """Two-way ANOVA of vector states on task × token, summed over coordinates.

    SS_total = Σ‖h − h̄‖²; SS_task, SS_token: the marginal means' sums of squares;
    SS_cells = Σ n_c ‖m_c − h̄‖² over task × token cells; SS_within = SS_total − SS_cells.
    The interaction is what the cells explain beyond the least-squares additive model
    task + token (``SS_cells − SS_additive``, never negative; in a balanced design it equals
    the textbook ``SS_cells − SS_task − SS_token``). Returns η²_task, η²_token,
    η²_interaction, ``separability = 1 − η²_interaction``, ``task_vector_r2 = SS_cells /
    SS_total`` (the paper's ``1 − SS_within/SS_total``), ``additive_r2`` (tvlens's task +
    token R²), ``balanced`` (1.0 when every cell has the same count) and the counts.
    """
    n = states.shape[0]
    if states.dim() != 2 or tasks.shape != (n,) or tokens.shape != (n,):
        raise ValueError(
            f"states must be [n, d] with one task and one token label per row; got states "
            f"{tuple(states.shape)}, tasks {tuple(tasks.shape)}, tokens {tuple(tokens.shape)}."
        )
    x = states.double()
    g = torch.unique(tasks, return_inverse=True)[1]
    s = torch.unique(tokens, return_inverse=True)[1]
    ng, ns = int(g.max()) + 1, int(s.max()) + 1
    if ng < 2:
        raise ValueError("the ANOVA needs states of at least 2 tasks; got 1.")
    grand = x.mean(0)
    ss_total = float(((x - grand) ** 2).sum())

    def between(labels: Tensor, n_levels: int) -> float:
        sums = torch.zeros(n_levels, x.shape[1], dtype=x.dtype).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=n_levels).to(x.dtype)
        keep = counts > 0
        means = sums[keep] / counts[keep, None]
        return float((counts[keep, None] * (means - grand) ** 2).sum())

    cell = g * ns + s
    ss_task, ss_token, ss_cells = between(g, ng), between(s, ns), between(cell, ng * ns)
    design = torch.cat(
        [torch.nn.functional.one_hot(g, ng), torch.nn.functional.one_hot(s, ns)[:, 1:]], dim=1
    ).to(x.dtype)
    coef = torch.linalg.lstsq(design, x, driver="gelsd").solution
    ss_add = ss_total - float(((x - design @ coef) ** 2).sum())
    ss_inter = max(ss_cells - ss_add, 0.0)
    tot = max(ss_total, 1e-30)
    counts = torch.bincount(cell, minlength=ng * ns)
    return {
        "eta2_task": ss_task / tot,
        "eta2_token": ss_token / tot,
        "eta2_interaction": ss_inter / tot,
        "separability": 1.0 - ss_inter / tot,
        "task_vector_r2": ss_cells / tot,
        "additive_r2": ss_add / tot,
        "balanced": float(bool((counts == counts.max()).all())),
        "n_tasks": float(ng),
        "n_tokens": float(ns),
        "n_states": float(n),
    }


# ----------------------------------------------------------------------- data helpers
def ood_params(family: TaskFamily, n_tasks: int, seed: int) -> Tensor:
    """``n_tasks`` fixed OOD task parameters, drawn as the family draws its OOD split
    (:meth:`~tvlens.tasks.base.TaskFamily.ood_params`: the prior by default)."""
    g = generator("paper-ood-tasks", family.name, family.config.seed, seed)
    return family.ood_params(n_tasks, g)


def task_batch(family: TaskFamily, params: Tensor, n_per_task: int, seed: int) -> Batch:
    """``n_per_task`` sequences of each task in ``params`` (grouped: task j is rows
    ``j*n_per_task … (j+1)*n_per_task − 1``); task ids are ``-1`` (outside the pool)."""
    if n_per_task < 1:
        raise ValueError(f"n_per_task={n_per_task}; ask for at least 1 sequence per task.")
    rep = params.repeat_interleave(n_per_task, dim=0)
    g = generator("paper-task-batch", family.name, family.config.seed, seed)
    inputs, targets, mask = family.generate(rep, g)
    ids = torch.full((rep.shape[0],), -1, dtype=torch.long)
    return Batch(inputs, targets, mask, ids, rep, "ood")


def _block_means(
    bridge: Any,
    batch: Batch,
    n_tasks: int,
    n_per_task: int,
    names: list[str],
    positions: Positions,
    batch_size: int,
) -> dict[str, Float[Tensor, "k d"]]:
    groups = torch.arange(n_tasks).repeat_interleave(n_per_task)
    return capture_means(
        bridge, batch.inputs, groups, names, n_tasks, positions=positions, batch_size=batch_size
    )


# --------------------------------------------------------------------- OOD R², paper
def paper_ood_r2(
    model: Any,
    family: TaskFamily,
    layers: Sequence[int] | None = None,
    *,
    n_tasks: int = 128,
    n_per_task: int = 128,
    positions: Positions = PAPER_POSITIONS,
    point: str = "resid_post",
    max_minor: int = 128,
    n_per_seq: int = 16,
    seed: int = 0,
    batch_size: int = 512,
) -> pd.DataFrame:
    """The paper's OOD R² (and the same score for the pool's minor tasks) per layer.

    ``n_tasks`` fixed OOD tasks and the major tasks each get ``n_per_task`` sequences; each
    task's states are averaged over its sequences and over ``positions`` (default: the
    final position, as in the paper's figure; pass a slice for a position block). Every
    mean is centred on the mean of the major means, projected by :func:`paper_affine_fit`
    onto the span of the centred major means, and scored by :func:`paper_r2`.
    Columns: layer, point, split (ood | minor), r2_paper (mean over tasks; the estimator
    of reference snapshot ``7c5cab9``), r2_paper_q25, r2_paper_q75, frac_in_paper (mean
    ‖ŷ‖²/‖y‖², the share of each centred mean inside the task subspace),
    r2_paper_per_seq (the newest snapshot's per-sequence variant: each of the first
    ``n_per_seq`` sequences of every task scored on its own state averaged over positions
    15 … T − 2, :func:`per_sequence_positions`; that snapshot reads ``post_attn``, i.e.
    ``point="resid_mid"``), n_tasks, n_per_task, n_per_task_per_seq.
    """
    bridge = as_bridge(model)
    layers = _check_layers(bridge, layers)
    if n_tasks < 1:
        raise ValueError(f"n_tasks={n_tasks}; ask for at least 1 OOD task.")
    if family.n_major < 2:
        raise ValueError("the paper's OOD R² needs at least 2 major tasks (a task plane).")
    resolve_positions(positions, family.seq_len)  # fail early on a bad block
    names = [hook_name(layer, point) for layer in layers]
    majors = sample_tasks(family, torch.arange(family.n_major), n_per_task, seed=seed)
    anchors = _block_means(bridge, majors, family.n_major, n_per_task, names, positions, batch_size)
    sets: dict[str, Tensor] = {"ood": ood_params(family, n_tasks, seed)}
    if family.n_minor > 0:
        n_min = min(max_minor, family.n_minor)
        sets["minor"] = family.pool[family.n_major : family.n_major + n_min]
    rows = []
    for split, params in sets.items():
        batch = task_batch(family, params, n_per_task, seed + 1)
        means = _block_means(
            bridge, batch, params.shape[0], n_per_task, names, positions, batch_size
        )
        # the newest snapshot's per-sequence variant: each sequence's own state, averaged
        # over positions 15 … T − 2, scored the same way (first n_per_seq of each task)
        per = min(n_per_task, n_per_seq)
        keep = (torch.arange(batch.size) % n_per_task) < per
        sub = batch.take(keep)
        seq_means = capture_means(
            bridge, sub.inputs, torch.arange(sub.size), names, sub.size,
            positions=per_sequence_positions(family.seq_len), batch_size=batch_size,
        )  # fmt: skip
        for layer, name in zip(layers, names, strict=True):
            centre = anchors[name].mean(0)
            theta = anchors[name] - centre
            y = means[name] - centre
            _, fitted = paper_affine_fit(y, theta)
            score = paper_r2(y, fitted).numpy()
            frac = fitted.double().norm(dim=-1) ** 2 / (y.double().norm(dim=-1) ** 2 + 1e-30)
            ys = seq_means[name] - centre
            per_seq = paper_r2(ys, paper_affine_fit(ys, theta)[1]).numpy()
            rows.append(
                {
                    "layer": layer,
                    "point": point,
                    "split": split,
                    "r2_paper": float(score.mean()),
                    "r2_paper_q25": float(np.quantile(score, 0.25)),
                    "r2_paper_q75": float(np.quantile(score, 0.75)),
                    "frac_in_paper": float(frac.mean()),
                    "r2_paper_per_seq": float(per_seq.mean()),
                    "n_tasks": int(params.shape[0]),
                    "n_per_task": n_per_task,
                    "n_per_task_per_seq": per,
                }
            )
    return pd.DataFrame(rows)


def per_sequence_positions(seq_len: int) -> slice:
    """Positions 15 … T − 2 (the newest reference snapshot's per-sequence block), or the
    second half of a context too short for them."""
    start = 15 if seq_len > 17 else seq_len // 2
    return slice(start, seq_len - 1)


# ------------------------------------------------------------------------ ANOVA, paper
def force_tokens(family: TaskFamily, batch: Batch, position: int) -> tuple[Batch, Tensor]:
    """Each sequence copied once per symbol with the token read at ``position`` replaced.

    Returns the enlarged batch (copies of sequence i are rows ``i*V … i*V + V − 1``) and the
    forced token of each row. Discrete families only; the targets are left as sampled.
    """
    if family.d_in is not None:
        raise ValueError(
            f"forcing tokens needs a discrete family (token ids); {family.name!r} reads continuous "
            "tokens. Use force=False (the token is then x / y position type)."
        )
    v = family.config.vocab
    pos = int(resolve_positions(position, batch.inputs.shape[1])[0])
    rep = lambda t: t.repeat_interleave(v, dim=0)  # noqa: E731
    inputs = rep(batch.inputs).clone()
    forced = torch.arange(v).repeat(batch.size)
    inputs[:, pos] = forced
    out = Batch(
        inputs,
        rep(batch.targets),
        rep(batch.target_mask),
        rep(batch.task_ids),
        rep(batch.params),
        batch.split,
    )
    return out, forced


def paper_anova(
    model: Any,
    family: TaskFamily,
    layers: Sequence[int] | None = None,
    *,
    tasks: str = "all",
    max_minor: int = 32,
    n_per_task: int = 32,
    positions: Positions = None,
    force: bool | None = None,
    point: str = "resid_post",
    seed: int = 2,
    batch_size: int = 512,
) -> pd.DataFrame:
    """The token-conditioned two-way ANOVA (:func:`two_way_anova`) per layer and split.

    Discrete families (default ``force=True``, ``positions=-1``): every sequence is copied
    once per symbol with the token read at the final position forced, so the task × token
    cells are balanced. Regression families (``force=False``, default positions: the last
    16) use the x / y position type as the token. The ANOVA runs separately on the major
    tasks' states, on the minor tasks' states and on both together. Columns: layer, point,
    split (major | minor | all) and the keys of :func:`two_way_anova`.
    """
    bridge = as_bridge(model)
    layers = _check_layers(bridge, layers)
    discrete = family.d_in is None  # token ids, not feature vectors
    force = discrete if force is None else force
    if positions is None:
        positions = -1 if force else slice(-16, None)
    ids = select_tasks(family, tasks, max_minor)
    batch = sample_tasks(family, ids, n_per_task, seed=seed)
    idx = resolve_positions(positions, batch.inputs.shape[1])
    if force:
        if idx.numel() != 1:
            raise ValueError(
                f"forced tokens are read at one position; got positions {idx.tolist()}."
            )
        batch, forced = force_tokens(family, batch, int(idx[0]))
        tokens = forced[:, None]
    else:
        tokens = current_tokens(family, batch)[:, idx]
    names = [hook_name(layer, point) for layer in layers]
    acts = capture(bridge, batch.inputs, names, positions=idx, batch_size=batch_size)
    groups = batch.task_ids.repeat_interleave(idx.numel())
    tok = tokens.flatten()
    major = groups < family.n_major
    splits = {"major": major, "minor": ~major, "all": torch.ones_like(major)}
    rows = []
    for layer, name in zip(layers, names, strict=True):
        h = acts[name].flatten(0, 1)
        for split, sel in splits.items():
            if torch.unique(groups[sel]).numel() < 2:
                continue
            res = two_way_anova(h[sel], groups[sel], tok[sel])
            rows.append({"layer": layer, "point": point, "split": split, **res})
    return pd.DataFrame(rows)


__all__ = [
    "PAPER_POSITIONS",
    "force_tokens",
    "ood_params",
    "paper_affine_fit",
    "paper_anova",
    "paper_ood_r2",
    "paper_r2",
    "task_batch",
    "two_way_anova",
]
