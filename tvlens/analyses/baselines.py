"""Null baselines beside the two-modes headline numbers.

A number without its baseline is not a finding. Every headline of the two-modes analysis
has one here, computed on the same states in the same run:

* :func:`variance_share` — the share of a set of states' variance inside a subspace, with
  :func:`random_share` (a uniformly random subspace of the same dimension: its expectation
  is exactly ``rank / d``) and :func:`top_share` (the split's own top principal components:
  the best any subspace of that dimension can do) as floor and ceiling;
* :func:`share_table` — that triple for the major-task subspace span(θ_major) and for the
  span of the minor-task vectors (the reference code's "minor-basis R²"), on major,
  held-out minor and OOD states: held-out minor tasks are the control that tells
  "retrieval over many tasks" from "learning";
* :func:`alignment_baselines` — β–posterior alignment of a state-blind predictor (all
  weight on the true task; the prior) beside the model's, pooled over all positions and over
  the positions where the posterior is still *mixed*, where the one-hot baseline is wrong;
* :func:`reference_gap_table` — the two references' own gap (loss and KL) on each split,
  beside the model's distance to each: where the references are closer than
  :data:`READABLE_NATS`, no loss can place a model in either mode.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from tvlens.analyses.geometry import alignment_scores, capture_states, random_basis
from tvlens.analyses.task_vectors import DEFAULT_POSITIONS, TaskVectors
from tvlens.hooks import orthonormal_basis
from tvlens.hooks.core import Positions
from tvlens.tasks.base import Batch, TaskFamily

if TYPE_CHECKING:
    from tvlens.analyses.geometry import BetaFit

#: the references must differ by at least this much (nats per token) for a loss to place a
#: model in one mode or the other
READABLE_NATS = 0.05
#: a posterior is "mixed" at a position while its largest weight stays below this
MIXED_MAX_POSTERIOR = 0.9


# ------------------------------------------------------------------- subspace shares
def _centred(states: Float[Tensor, "n d"]) -> Tensor:
    x = states.double()
    return x - x.mean(0)


def variance_share(states: Float[Tensor, "n d"], basis: Float[Tensor, "r d"]) -> float:
    """Share of the states' variance (about their own mean) inside span(``basis``):
    ``‖X Bᵀ‖² / ‖X‖²`` with orthonormal rows ``B``. 1: the states vary only inside the
    subspace; 0: only orthogonal to it."""
    if basis.shape[0] == 0:
        return 0.0
    x = _centred(states)
    total = float((x**2).sum())
    if total <= 0:
        raise ValueError("the states do not vary; a variance share needs varying states.")
    return float(((x @ basis.double().T) ** 2).sum()) / total


def random_share(
    states: Float[Tensor, "n d"], rank: int, n_draws: int = 32, seed: int = 0
) -> tuple[float, float]:
    """Mean and standard deviation of :func:`variance_share` over ``n_draws`` uniformly
    random ``rank``-dimensional subspaces (the floor; its expectation is ``rank / d``)."""
    d = states.shape[1]
    if rank == 0:
        return 0.0, 0.0
    shares = torch.tensor(
        [
            variance_share(states, random_basis(rank, d, seed=seed * 1000 + i))
            for i in range(n_draws)
        ]
    )
    return float(shares.mean()), float(shares.std()) if n_draws > 1 else 0.0


def top_share(states: Float[Tensor, "n d"], rank: int) -> float:
    """The largest :func:`variance_share` of any ``rank``-dimensional subspace: that of the
    states' own top principal components (the ceiling)."""
    s = torch.linalg.svdvals(_centred(states)) ** 2
    return float(s[:rank].sum() / s.sum())


def minor_basis(tv: TaskVectors, layer: int) -> Float[Tensor, "r d"]:
    """Orthonormal rows spanning the minor-task vectors of ``tv`` about their own mean
    (rank = number of minors − 1; empty when ``tv`` holds fewer than two minors)."""
    minors = tv.mean(layer)[tv.n_major :]
    if minors.shape[0] < 2:
        return minors.new_zeros(0, minors.shape[1])
    return orthonormal_basis(minors - minors.mean(0))


def heldout_minor(batch: Batch, tv: TaskVectors) -> Batch:
    """The sequences of a minor batch whose task is *not* one of ``tv``'s minors (held out
    from the minor span, so their share is a fair control)."""
    seen = tv.task_ids[tv.n_major :]
    return batch.take(~torch.isin(batch.task_ids, seen))


def share_rows(
    states: Float[Tensor, "n d"],
    bases: Mapping[str, Float[Tensor, "r d"]],
    n_draws: int = 32,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per named subspace: its share beside the random floor (mean ± sd) and the
    top-PC ceiling of the same rank, and ``over_random`` = share / random mean."""
    rows = []
    for name, basis in bases.items():
        rank = int(basis.shape[0])
        if rank == 0:
            continue
        share = variance_share(states, basis)
        rand, rand_sd = random_share(states, rank, n_draws, seed)
        rows.append(
            {
                "subspace": name,
                "rank": rank,
                "share": share,
                "random_share": rand,
                "random_share_sd": rand_sd,
                "top_share": top_share(states, rank),
                "over_random": share / rand if rand > 0 else float("nan"),
                "n_states": int(states.shape[0]),
            }
        )
    return rows


def share_table(
    model: Any,
    tv: TaskVectors,
    batches: Mapping[str, Batch],
    layers: Sequence[int] | None = None,
    positions: Positions = DEFAULT_POSITIONS,
    n_draws: int = 32,
    seed: int = 0,
) -> pd.DataFrame:
    """Variance shares of each split's states in the major-task subspace (``task``) and in
    the minor-task span (``minor``, when ``tv`` holds ≥ 2 minors), each beside a random
    subspace and the top PCs of the same rank. The minor split keeps only tasks held out
    from the minor span. Columns: layer, split, subspace and those of :func:`share_rows`.
    """
    layers = list(tv.layers) if layers is None else list(layers)
    rows = []
    for split, batch in batches.items():
        if split == "minor":
            batch = heldout_minor(batch, tv)
            if batch.size == 0:
                continue
        states = capture_states(model, tv, batch, layers, positions)
        for layer in layers:
            bases = {"task": tv.basis(layer), "minor": minor_basis(tv, layer)}
            for r in share_rows(states[layer].flatten(0, 1), bases, n_draws, seed):
                rows.append({"layer": layer, "split": split, **r})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ alignment baselines
def alignment_baselines(
    fit: BetaFit, min_pos: int = 1, mixed_max: float = MIXED_MAX_POSTERIOR
) -> pd.DataFrame:
    """β–posterior alignment of the model beside two state-blind predictors, per layer:
    ``one_hot`` (all weight on the sequence's true task) and ``prior`` (the mixture prior
    over the majors, uniform; its correlation is undefined, so only TV and cosine). Pooled
    over all positions ≥ ``min_pos`` (columns without suffix) and over the *mixed* ones,
    where the exact posterior's largest weight is below ``mixed_max`` (suffix ``_mixed``):
    there the one-hot baseline is wrong by construction, so the model must read the
    evidence to beat it."""
    keep = fit.pos >= min_pos
    if not keep.any():
        raise ValueError(f"no positions >= {min_pos} in this fit (positions {fit.pos}).")
    post = fit.posterior[:, keep]  # [B, P, k]
    k = post.shape[-1]
    if fit.task_ids.max() >= k or fit.task_ids.min() < 0:
        raise ValueError(
            "alignment baselines need major-task sequences (task ids in [0, k)); fit β on a "
            "major batch."
        )
    one_hot = torch.nn.functional.one_hot(fit.task_ids, k).to(post.dtype)
    one_hot = one_hot[:, None, :].expand_as(post)
    prior = torch.full_like(post, 1.0 / k)
    mixed = post.max(-1).values < mixed_max  # [B, P]
    rows = []
    for layer in fit.layers:
        beta = fit.beta[layer][:, keep]
        row: dict[str, Any] = {"layer": layer}
        for suffix, sel in (("", torch.ones_like(mixed)), ("_mixed", mixed)):
            n = int(sel.sum())
            row[f"n_states{suffix}"] = n
            for name, pred in (("", beta), ("_one_hot", one_hot), ("_prior", prior)):
                if n < 2:
                    scores = {"corr": float("nan"), "tv": float("nan"), "cosine": float("nan")}
                else:
                    scores = alignment_scores(pred[sel], post[sel])
                for metric, value in scores.items():
                    if name == "_prior" and metric == "corr":
                        continue
                    row[f"{metric}{name}{suffix}"] = value
        row["mixed_max_posterior"] = mixed_max
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the references' gap
def place(gap_retrieval: float, gap_learning: float, ref_gap: float) -> tuple[float, str]:
    """Which reference a model's loss sits nearer: the margin |L − R| − |L − Lrn| (positive:
    nearer the learner) and ``learning``, ``retrieval`` or, where the references differ by
    less than :data:`READABLE_NATS`, ``unreadable``."""
    margin = abs(gap_retrieval) - abs(gap_learning)
    if abs(ref_gap) < READABLE_NATS:
        return margin, "unreadable"
    return margin, "learning" if margin > 0 else "retrieval"


def reference_gap_rows(
    family: TaskFamily,
    batch: Batch,
    pred: Tensor,
    bands: Sequence[tuple[int, int]] | None = None,
) -> list[dict[str, Any]]:
    """The rows of :func:`reference_gap_table` for one batch and a prediction ``pred``
    (probabilities, or means for regression, as ``family.output_to_prediction`` gives)."""
    from tvlens.models.evaluate import References, default_bands

    refs = References(family, batch)
    per_pos = {
        "loss": family.prediction_loss(pred, batch),
        "loss_retrieval": refs.losses["retrieval"],
        "loss_learning": refs.losses["learning"],
        "ref_kl": family.divergence(refs.preds["retrieval"], refs.preds["learning"]),
        "div_retrieval": family.divergence(pred, refs.preds["retrieval"]),
        "div_learning": family.divergence(pred, refs.preds["learning"]),
    }
    rows = []
    for lo, hi in bands or default_bands(batch.targets.shape[1]):
        mask = batch.target_mask[:, lo:hi].to(torch.float64)
        n = mask.sum(1).clamp_min(1)
        seq = {k: (v[:, lo:hi].double() * mask).sum(1) / n for k, v in per_pos.items()}
        seq["ref_gap"] = seq["loss_retrieval"] - seq["loss_learning"]
        seq["gap_retrieval"] = seq["loss"] - seq["loss_retrieval"]
        seq["gap_learning"] = seq["loss"] - seq["loss_learning"]
        seq["margin_kl"] = seq["div_retrieval"] - seq["div_learning"]
        row: dict[str, Any] = {"split": batch.split, "band": f"{lo}-{hi}"}
        for key, v in seq.items():
            row[key] = float(v.mean())
            row[f"{key}_se"] = float(v.std() / v.numel() ** 0.5) if v.numel() > 1 else 0.0
        row["margin_loss"], row["nearer"] = place(
            row["gap_retrieval"], row["gap_learning"], row["ref_gap"]
        )
        row["readable"] = row["nearer"] != "unreadable"
        row["n_sequences"] = int(batch.size)
        rows.append(row)
    return rows


def reference_gap_table(
    model: Any,
    family: TaskFamily,
    batches: Mapping[str, Batch],
    bands: Sequence[tuple[int, int]] | None = None,
) -> pd.DataFrame:
    """Per split × position band: the model's loss beside the retrieval and learning
    references, the references' own gap (``ref_gap`` = retrieval − learning loss, and
    ``ref_kl`` = KL(retrieval ‖ learning)), the model's divergence to each, and which one
    it sits nearer to, by loss (``margin_loss`` = |L − R| − |L − Lrn|, positive: nearer
    the learner) and by KL (``margin_kl`` = KL(model ‖ R) − KL(model ‖ Lrn)). Each
    quantity also has its standard error over sequences (``*_se``), and ``readable`` says
    whether the references differ by ≥ :data:`READABLE_NATS`; where they do not, the
    ``nearer`` column reads ``unreadable``."""
    from tvlens.models.evaluate import predict

    rows = []
    for batch in batches.values():
        rows += reference_gap_rows(family, batch, predict(model, family, batch), bands)
    return pd.DataFrame(rows)
