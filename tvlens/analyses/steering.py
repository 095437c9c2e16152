"""Steering along the task simplex: replace the task-subspace part of h by Σ α_k θ_k.

The hook is :func:`tvlens.hooks.replace_subspace_hook` with target ``Σ α_k h̄_k`` (= centre
+ Σ α_k θ_k when Σα = 1): the part of h orthogonal to the task subspace is kept. Outcomes
(docs/concepts.md, section A): the divergence between the steered prediction and each task's true
predictive distribution (KL in nats; squared error for regression, reported as RMSE), the
task-ID accuracy (the task of smallest divergence), and the convexity check — a convex mix
of task vectors should predict the α-mixture of the tasks' predictive distributions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from tvlens.analyses.geometry import forward_with_hooks
from tvlens.analyses.task_vectors import DEFAULT_POSITIONS, TaskVectors
from tvlens.hooks import replace_subspace_hook, resolve_positions
from tvlens.hooks.core import HookFn, Positions
from tvlens.tasks.base import Batch, TaskFamily, generator


def mixture_target(
    tv: TaskVectors, layer: int, alpha: Float[Tensor, "*batch k"]
) -> Float[Tensor, "*batch d"]:
    """Σ_k α_k h̄_k over the major task means (the point of the simplex with weights α)."""
    vertices = tv.vertices(layer)
    if alpha.shape[-1] != vertices.shape[0]:
        raise ValueError(
            f"alpha has {alpha.shape[-1]} weights but there are {vertices.shape[0]} major "
            "task vectors; pass one weight per major task."
        )
    if (alpha < -1e-6).any() or not torch.allclose(alpha.sum(-1), torch.ones(()), atol=1e-4):
        raise ValueError("alpha must be a convex combination: α ≥ 0 and Σα = 1.")
    return alpha.to(vertices.dtype) @ vertices


def steering_hook(
    tv: TaskVectors, layer: int, alpha: Float[Tensor, "*batch k"], positions: Positions = None
) -> HookFn:
    """A TL hook steering ``layer`` to the simplex point α (one ``[k]`` or one per sequence)."""
    return replace_subspace_hook(tv.basis(layer), mixture_target(tv, layer, alpha), positions)


def steered_prediction(
    model: Any,
    family: TaskFamily,
    batch: Batch,
    tv: TaskVectors,
    layer: int,
    alpha: Tensor | None,
    positions: Positions = None,
    batch_size: int = 256,
) -> Tensor:
    """The model's prediction with ``layer`` steered to α (``None``: unsteered).

    ``alpha`` is one simplex point ``[k]`` for every sequence or one per sequence
    ``[batch, k]``.
    """
    if alpha is not None:
        if alpha.dim() not in (1, 2) or (alpha.dim() == 2 and alpha.shape[0] != batch.size):
            raise ValueError(
                f"alpha has shape {tuple(alpha.shape)}; pass [k] or one row per sequence "
                f"[{batch.size}, k]."
            )
        outs = []
        for i in range(0, batch.size, batch_size):
            a = alpha[i : i + batch_size] if alpha.dim() == 2 else alpha
            hooks = [(tv.hook(layer), steering_hook(tv, layer, a, positions))]
            x = batch.inputs[i : i + batch_size]
            outs.append(forward_with_hooks(model, x, hooks, batch_size=x.shape[0]))
        out = torch.cat(outs)
    else:
        out = forward_with_hooks(model, batch.inputs, (), batch_size)
    return family.output_to_prediction(out)


def task_divergences(
    family: TaskFamily,
    pred: Tensor,
    batch: Batch,
    task_ids: Int[Tensor, " k"],
    positions: Positions = DEFAULT_POSITIONS,
) -> Float[Tensor, "batch k"]:
    """Mean divergence of ``pred`` from each task's true predictive, over scored positions.

    KL(pred ‖ p_k) in nats for discrete families; squared error to task k's mean for
    regression (take the square root for an RMSE).
    """
    per_task = family.predictive(batch, family.pool[task_ids])  # [B, T, K(, V)]
    idx = resolve_positions(positions, batch.targets.shape[1])
    mask = batch.target_mask[:, idx].float()
    divs = []
    for j in range(per_task.shape[2]):
        d = family.divergence(pred[:, idx], per_task[:, idx, j])
        divs.append((d * mask).sum(1) / mask.sum(1).clamp_min(1))
    return torch.stack(divs, dim=1)


def _outcome_row(family: TaskFamily, div: Tensor, target: Tensor) -> dict[str, float]:
    """Accuracy (argmin = target), the divergence to the target task and, for regression,
    the RMSE to it."""
    to_target = div.gather(1, target[:, None]).squeeze(1)
    row = {
        "accuracy": float((div.argmin(1) == target).float().mean()),
        "div_target": float(to_target.mean()),
        "div_min_other": float(
            div.masked_fill(torch.nn.functional.one_hot(target, div.shape[1]).bool(), float("inf"))
            .min(1)
            .values.mean()
        )
        if div.shape[1] > 1
        else float("nan"),
    }
    row.update({f"{k}_target": v for k, v in family.error_summaries(to_target).items()})
    return row


def steering_table(
    model: Any,
    family: TaskFamily,
    tv: TaskVectors,
    batch: Batch,
    layers: Sequence[int],
    *,
    positions: Positions = None,
    eval_positions: Positions = DEFAULT_POSITIONS,
    batch_size: int = 256,
) -> pd.DataFrame:
    """Task-ID accuracy and divergence when steering to each major task, per layer.

    Rows: ``condition = unsteered`` (target = each sequence's own task, meaningful for
    major-task batches), ``own`` (α = one-hot of the sequence's own task) and ``to_task``
    with ``target`` = the task steered to. Columns: layer, split, condition, target,
    accuracy, div_target, div_min_other (and rmse_target for regression).
    """
    m = tv.n_major
    ids = tv.task_ids[:m]
    own = batch.task_ids
    has_own = bool(((own >= 0) & (own < m)).all())
    rows = []
    base = steered_prediction(model, family, batch, tv, tv.layers[0], None, batch_size=batch_size)
    div0 = task_divergences(family, base, batch, ids, eval_positions)
    if has_own:
        rows.append(
            {"layer": -1, "split": batch.split, "condition": "unsteered", "target": -1}
            | _outcome_row(family, div0, own)
        )
    for layer in layers:
        if has_own:
            alpha = torch.nn.functional.one_hot(own, m).float()
            pred = steered_prediction(model, family, batch, tv, layer, alpha, positions, batch_size)
            div = task_divergences(family, pred, batch, ids, eval_positions)
            rows.append(
                {"layer": layer, "split": batch.split, "condition": "own", "target": -1}
                | _outcome_row(family, div, own)
            )
        for k in range(m):
            alpha = torch.nn.functional.one_hot(torch.tensor(k), m).float()
            pred = steered_prediction(model, family, batch, tv, layer, alpha, positions, batch_size)
            div = task_divergences(family, pred, batch, ids, eval_positions)
            target = torch.full((batch.size,), k, dtype=torch.long)
            rows.append(
                {"layer": layer, "split": batch.split, "condition": "to_task", "target": k}
                | _outcome_row(family, div, target)
            )
    return pd.DataFrame(rows)


def default_alphas(m: int, n_random: int = 4, seed: int = 0) -> Float[Tensor, "a m"]:
    """Mixed simplex points to test: every edge midpoint, the centroid and ``n_random``
    Dirichlet(1) draws (the vertices are :func:`steering_table`'s job)."""
    if m < 2:
        raise ValueError(f"a convex mixture needs at least 2 tasks; got m={m}.")
    eye = torch.eye(m)
    pairs = [(eye[i] + eye[j]) / 2 for i in range(m) for j in range(i + 1, m)]
    g = generator("alphas", m, seed)
    e = -torch.log(torch.rand(n_random, m, generator=g).clamp_min(1e-12))
    pts = [torch.stack(pairs), torch.full((1, m), 1.0 / m), e / e.sum(-1, keepdim=True)]
    return torch.cat(pts).unique(dim=0)


def convexity_table(
    model: Any,
    family: TaskFamily,
    tv: TaskVectors,
    batch: Batch,
    layers: Sequence[int],
    alphas: Float[Tensor, "a k"] | None = None,
    *,
    positions: Positions = None,
    eval_positions: Positions = DEFAULT_POSITIONS,
    batch_size: int = 256,
) -> pd.DataFrame:
    """Convexity check: steer to Σ α_k θ_k and compare with Σ α_k p_k, per layer and α.

    Columns: layer, alpha_id, alpha (text), alpha_max, div_mixture (the steered prediction
    against the α-mixture Σ α_k p_k of the tasks' predictive distributions), div_vertex
    (against the largest-α task alone), div_mixture_vertex (the α-mixture against that task:
    the size of the effect a mixture has to reproduce) and, for discrete families,
    div_geometric (against the normalised geometric mixture ∝ Π p_k^α_k, i.e. mixing in
    logit space instead of probability space). Divergences are KL(·‖·) in nats, or squared
    errors for regression.
    """
    m = tv.n_major
    ids = tv.task_ids[:m]
    alphas = default_alphas(m) if alphas is None else alphas
    per_task = family.predictive(batch, family.pool[ids])  # [B, T, m(, V)]
    idx = resolve_positions(eval_positions, batch.targets.shape[1])
    mask = batch.target_mask[:, idx].float()

    def mean_div(a: Tensor, b: Tensor) -> float:
        return float((family.divergence(a[:, idx], b[:, idx]) * mask).sum() / mask.sum())

    rows = []
    for layer in layers:
        for i, alpha in enumerate(alphas):
            w = alpha.view(1, 1, m).expand(batch.size, per_task.shape[1], m)
            mix = family.mix(w, per_task)
            geo = family.geometric_mix(w, per_task)
            top = int(alpha.argmax())
            vertex = per_task[:, :, top]
            pred = steered_prediction(model, family, batch, tv, layer, alpha, positions, batch_size)
            rows.append(
                {
                    "layer": layer,
                    "alpha_id": i,
                    "alpha": ",".join(f"{a:.2f}" for a in alpha.tolist()),
                    "alpha_max": float(alpha.max()),
                    "div_mixture": mean_div(pred, mix),
                    "div_vertex": mean_div(pred, vertex),
                    "div_mixture_vertex": mean_div(mix, vertex),
                    "div_geometric": float("nan") if geo is None else mean_div(pred, geo),
                }
            )
    return pd.DataFrame(rows)
