"""Where do OOD states go? Linear probes for the learning reference's sufficient statistics.

The two-modes claim is that OOD states leave the task-vector subspace. If the model *learns*
OOD tasks in context, the part of the state orthogonal to that subspace should carry the
statistics the prior-conjugate learner reads (docs/concepts.md §A; the reference code probes the
same statistics):

* dice — token counts (per observation: the running frequencies);
* markov — bigram (transition) counts, per transition seen;
* linreg / sparse_linreg — XᵀX (upper triangle) and Xᵀy, per example seen;
* dyck — steps seen and height reached.

Each family computes its own statistics (``family.sufficient_statistics(batch)``).

:func:`probe_table` fits ridge probes from states to the statistics, per layer and split,
on views of each state: the full state, its coordinates in the task subspace
span(θ_major), its part orthogonal to that subspace, and three controls of the task
subspace's rank (a random subspace; a random subspace inside the orthogonal complement; the
complement's top principal components), so the task view is compared with views of equal
dimension. Scores are held-out R² (by sequence). The principal angles
between the probe's read-out subspace (the span of its weight columns) and the task subspace
say whether the statistics are read from inside the task plane (small angles) or off it
(angles near 90°), beside the same angles for random subspaces (their mean and 5th
percentile), which in high dimension are near 90° too. :func:`analyse_probes` runs it on a trained run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from tvlens.analyses.geometry import (
    capture_states,
    principal_angles,
    random_basis,
    top_components,
)
from tvlens.analyses.task_vectors import DEFAULT_POSITIONS, TaskVectors, task_vectors
from tvlens.hooks import orthonormal_basis, resolve_positions
from tvlens.hooks.core import Positions
from tvlens.options import Options, option
from tvlens.registry import driver
from tvlens.tasks.base import SPLITS, Batch, TaskFamily

VIEWS = ("full", "task", "orth", "random", "orth_random", "orth_top")
#: random subspaces drawn for the principal-angle reference distribution
N_ANGLE_DRAWS = 200


# ------------------------------------------------------------------ the statistics
def sufficient_statistics(family: TaskFamily, batch: Batch) -> Float[Tensor, "batch pos s"]:
    """The learning reference's sufficient statistics at every position ``[B, T, S]``, from
    the targets seen *before* each position, normalised per observation (so that their scale
    does not simply track the position)."""
    family.require("sufficient_statistics", "the probes analysis")
    return family.sufficient_statistics(batch)


# ------------------------------------------------------------------------- probes
def ridge_fit(
    x: Float[Tensor, "n d"], y: Float[Tensor, "n s"], lam: float = 1e-3
) -> tuple[Float[Tensor, "d s"], Float[Tensor, " s"], Float[Tensor, " d"]]:
    """Ridge regression on centred data; ``lam`` is relative to the mean eigenvalue of the
    covariance. Returns the weights, the intercept and the input mean."""
    xd, yd = x.double(), y.double()
    mx, my = xd.mean(0), yd.mean(0)
    xc, yc = xd - mx, yd - my
    gram = xc.T @ xc
    scale = float(torch.diagonal(gram).mean()) if gram.numel() else 0.0
    reg = lam * max(scale, 1e-12) * torch.eye(gram.shape[0], dtype=gram.dtype)
    w = torch.linalg.solve(gram + reg, xc.T @ yc)
    return w, my, mx


def heldout_r2(
    x: Float[Tensor, "n d"], y: Float[Tensor, "n s"], groups: Tensor, lam: float = 1e-3
) -> tuple[float, Float[Tensor, "d s"]]:
    """R² of a ridge probe fitted on the even groups (sequences) and scored on the odd ones:
    the mean over statistics of 1 − SS_res / SS_tot (statistics that do not vary are
    skipped). Returns the score and the weights fitted on the training half."""
    train = groups % 2 == 0
    w, my, mx = ridge_fit(x[train], y[train], lam)
    xt, yt = x[~train].double(), y[~train].double()
    pred = (xt - mx) @ w + my
    ss_res = ((yt - pred) ** 2).sum(0)
    ss_tot = ((yt - yt.mean(0)) ** 2).sum(0)
    keep = ss_tot > 1e-12 * max(float(ss_tot.max()), 1e-30)
    r2 = 1.0 - ss_res[keep] / ss_tot[keep]
    return float(r2.mean()) if keep.any() else float("nan"), w


def views(
    h: Float[Tensor, "n d"],
    basis: Float[Tensor, "r d"],
    centre: Float[Tensor, " d"],
    rand: Float[Tensor, "r d"],
) -> dict[str, Float[Tensor, "n m"]]:
    """The views a probe reads: the full state, its task-subspace coordinates, its
    orthogonal part, and three controls of the task view's rank r: a random subspace of
    R^d (``random``), a random subspace inside the orthogonal complement (``orth_random``)
    and the top-r principal components of the orthogonal part (``orth_top``). The last two
    compare the task subspace with views of equal dimension off it."""
    hc = h.double() - centre.double()
    b = basis.double()
    inside = hc @ b.T
    orth = hc - inside @ b
    r = b.shape[0]
    rand_orth = rand.double() - (rand.double() @ b.T) @ b  # inside the complement
    rand_orth = orthonormal_basis(rand_orth)
    top = top_components(orth, r) if r else orth.new_zeros(0, orth.shape[1])
    return {
        "full": hc,
        "task": inside,
        "orth": orth,
        "random": hc @ rand.double().T,
        "orth_random": orth @ rand_orth.T,
        "orth_top": orth @ top.double().T,
    }


def random_angle_reference(
    basis: Float[Tensor, "r d"], k: int, n_draws: int = N_ANGLE_DRAWS, seed: int = 0
) -> tuple[Float[Tensor, " m"], Float[Tensor, " m"]]:
    """Mean and 5th percentile (degrees, per principal-angle index) of the principal angles
    between span(``basis``) and uniformly random ``k``-dimensional subspaces: what a
    read-out angle would be by chance (random planes in high dimension are nearly
    orthogonal to any fixed plane, so large angles alone say little)."""
    d = basis.shape[1]
    angles = torch.stack(
        [
            torch.rad2deg(principal_angles(basis, random_basis(k, d, seed=seed * 7919 + i)))
            for i in range(n_draws)
        ]
    )
    return angles.mean(0), torch.quantile(angles, 0.05, dim=0)


def probe_table(
    states: Mapping[int, Float[Tensor, "batch p d"]],
    stats: Float[Tensor, "batch p s"],
    bases: Mapping[int, Float[Tensor, "r d"]],
    centres: Mapping[int, Float[Tensor, " d"]],
    *,
    split: str = "",
    lam: float = 1e-3,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Held-out probe R² for each layer × view, and the principal angles between the full
    probe's read-out subspace and the task subspace.

    ``states[layer]`` and ``stats`` share their ``[batch, positions]`` layout; sequences are
    split even/odd for fitting and scoring. Returns ``(probes, angles)``: columns layer,
    split, view, rank, r2, n_states; and layer, split, index, angle_deg, random_angle_mean,
    random_angle_p05 (the same angle between the task subspace and random subspaces of the
    read-out's dimension: the chance reference).
    """
    rows, angle_rows = [], []
    b, p = stats.shape[:2]
    y = stats.flatten(0, 1)
    groups = torch.arange(b).repeat_interleave(p)
    for layer, h in states.items():
        if h.shape[:2] != (b, p):
            raise ValueError(
                f"states at layer {layer} are {tuple(h.shape[:2])} but the statistics "
                f"{(b, p)}; read both at the same sequences and positions."
            )
        basis = bases[layer]
        rand = random_basis(basis.shape[0], h.shape[-1], seed=seed)
        d, r = h.shape[-1], basis.shape[0]
        # the view's subspace rank
        dims = {"full": d, "task": r, "orth": d - r, "random": r, "orth_random": r, "orth_top": r}
        for name, x in views(h.flatten(0, 1), basis, centres[layer], rand).items():
            r2, w = heldout_r2(x, y, groups, lam)
            rank = dims[name]
            rows.append(
                {
                    "layer": layer,
                    "split": split,
                    "view": name,
                    "rank": rank,
                    "r2": r2,
                    "n_states": x.shape[0],
                }  # fmt: skip
            )
            if name == "full":
                read = torch.linalg.svd(w.T, full_matrices=False).Vh  # [min(s,d), d]
                k = min(read.shape[0], max(basis.shape[0], 1))
                ref_mean, ref_p05 = random_angle_reference(basis, k, seed=seed)
                for i, a in enumerate(principal_angles(basis, read[:k].float()).tolist()):
                    angle_rows.append(
                        {
                            "layer": layer,
                            "split": split,
                            "index": i,
                            "angle_deg": float(np.degrees(a)),
                            "random_angle_mean": float(ref_mean[i]),
                            "random_angle_p05": float(ref_p05[i]),
                        }  # fmt: skip
                    )
    return pd.DataFrame(rows), pd.DataFrame(angle_rows)


# -------------------------------------------------------------------- on a model
def probes(
    model: Any,
    family: TaskFamily,
    tv: TaskVectors,
    batches: Mapping[str, Batch],
    layers: Sequence[int] | None = None,
    positions: Positions = DEFAULT_POSITIONS,
    lam: float = 1e-3,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, pd.DataFrame]:
    """:func:`probe_table` for each split's batch (states at ``tv``'s hook point, at
    ``positions``). Returns ``{"probes": ..., "probe_angles": ...}``."""
    layers = list(tv.layers) if layers is None else list(layers)
    bases = {layer: tv.basis(layer) for layer in layers}
    centres = {layer: tv.centre(layer) for layer in layers}
    frames, angles = [], []
    for split, batch in batches.items():
        idx = resolve_positions(positions, batch.inputs.shape[1])
        states = capture_states(model, tv, batch, layers, idx, batch_size)
        stats = sufficient_statistics(family, batch)[:, idx]
        keep = batch.target_mask[0, idx]  # scored positions only (regression: the x tokens)
        if not bool(keep.all()):
            states = {k: v[:, keep] for k, v in states.items()}
            stats = stats[:, keep]
        df, ang = probe_table(states, stats, bases, centres, split=split, lam=lam, seed=seed)
        frames.append(df)
        angles.append(ang)
    return {
        "probes": pd.concat(frames, ignore_index=True),
        "probe_angles": pd.concat(angles, ignore_index=True),
    }


@dataclass(frozen=True)
class ProbesOptions(Options):
    """Options of :func:`analyse_probes`."""

    section = "probes"
    seed: int | None = option(None, "seed (default: the run's training seed + 7)")
    n: int = option(512, "held-out sequences per split", min=2)
    n_per_task: int = option(64, "sequences per major task for the task vectors", min=1)
    splits: tuple[str, ...] = option(("major", "ood"), "splits", choices=SPLITS)
    last_positions: int = option(
        -DEFAULT_POSITIONS.start, "probe the last N positions of each sequence", min=1
    )


@driver("probes", ProbesOptions)
def analyse_probes(run: Any, o: ProbesOptions, progress: bool) -> dict[str, pd.DataFrame]:
    """Sufficient-statistic probes on a trained run (``probes.csv`` and ``probe_angles.csv``):
    ``n`` held-out sequences per split, task vectors from ``n_per_task`` sequences of each
    major task. Tables carry the run's ``k``."""
    fam, model = run.family, run.model
    fam.require("sufficient_statistics", "the probes analysis")
    model.eval()
    seed = run.config.train.seed + 7 if o.seed is None else o.seed
    n, positions = o.n, slice(-o.last_positions, None)
    tv = task_vectors(model, fam, n_per_task=o.n_per_task, seed=seed, progress=progress)
    wanted = [s for s in o.splits if not (s == "minor" and fam.n_minor == 0)]
    # split keys ("major", "ood") are never drawn in training; the seed offset keeps these
    # batches apart from the evaluation batches too
    batches = {s: fam.sample(s, n, seed=seed + 1000) for s in wanted}
    tables = probes(model, fam, tv, batches, positions=positions, seed=seed)
    for df in tables.values():
        df.insert(0, "k", fam.config.k)
    return tables


__all__ = [
    "VIEWS",
    "analyse_probes",
    "heldout_r2",
    "probe_table",
    "probes",
    "ridge_fit",
    "sufficient_statistics",
    "views",
]
