"""Geometry of hidden states relative to the task vectors (docs/concepts.md, section A).

Maths on tensors (testable against closed forms):

* :func:`simplex_fit` — h ≈ Σ_k β_k h̄_k with β on the simplex: affine least squares, then
  the exact Euclidean projection of β onto the simplex (:func:`project_simplex`, Duchi et
  al. 2008); R² of the task part and of task + token, norms in / orthogonal to the subspace.
* :func:`alignment_scores` — β against the exact retrieval posterior (corr, TV, cosine).
* :func:`projection_r2`, :func:`principal_angles` — does a set of states (OOD) live in the
  task subspace?

Analyses of a model (each returns a tidy DataFrame):

* :func:`simplex_table` — simplex / affine R² and norms per layer and split;
* :func:`fit_beta` → :class:`BetaFit` — β_t by position beside the family's exact
  ``retrieval_posterior`` (``by_position``, ``summary``, ``points``);
* :func:`principal_angle_table` — angles between the task subspace and each split's top PCs;
* :func:`geometry_points` — 3-D coordinates (task plane + the main off-plane direction);
* :func:`geometry_over_training` — the simplex table at every checkpoint of a run;
* :func:`subspace_ablation` — h' = h − P_S h as a TL hook: loss change on major, minor and
  OOD data against random subspaces of the same rank.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tvlens.analyses.task_vectors import (
    DEFAULT_POSITIONS,
    TaskVectors,
    as_bridge,
    current_tokens,
    r2,
    task_vectors,
)
from tvlens.hooks import (
    capture,
    hook_name,
    orthonormal_basis,
    project_out_hook,
    resolve_positions,
)
from tvlens.hooks.core import Positions
from tvlens.tasks.base import Batch, TaskFamily, generator


# ----------------------------------------------------------------------------- simplex
def project_simplex(v: Float[Tensor, "... k"]) -> Float[Tensor, "... k"]:
    """Exact Euclidean projection of each row onto the probability simplex (Duchi et al.).

    Sort, find the largest ρ with u_ρ − (Σ_{i≤ρ} u_i − 1)/ρ > 0, shift by that threshold
    and clip at zero.
    """
    x = v.double()
    k = x.shape[-1]
    u = torch.sort(x, dim=-1, descending=True).values
    css = u.cumsum(-1) - 1.0
    ind = torch.arange(1, k + 1, dtype=x.dtype)
    cond = u - css / ind > 0
    rho = (cond * ind).argmax(-1, keepdim=True)  # index of the last True (cond is a prefix)
    tau = css.gather(-1, rho) / (rho + 1).to(x.dtype)
    return (x - tau).clamp_min(0.0).to(v.dtype)


def affine_weights(
    states: Float[Tensor, "n d"], vertices: Float[Tensor, "k d"]
) -> Float[Tensor, "n k"]:
    """Least-squares affine weights: argmin_β ‖h − Σ β_k v_k‖² subject to Σ β = 1."""
    if states.shape[-1] != vertices.shape[-1]:
        raise ValueError(
            f"states have width {states.shape[-1]} but vertices {vertices.shape[-1]}; capture "
            "both at the same hook point."
        )
    k = vertices.shape[0]
    if k == 1:
        return torch.ones(states.shape[0], 1, dtype=states.dtype)
    x, v = states.double(), vertices.double()
    diffs = (v[:-1] - v[-1]).T  # [d, k-1]
    rhs = (x - v[-1]).T  # [d, n]
    coef = torch.linalg.pinv(diffs) @ rhs  # [k-1, n]
    beta = torch.cat([coef.T, 1.0 - coef.sum(0)[:, None]], dim=1)
    return beta.to(states.dtype)


def token_effects(resid: Float[Tensor, "n d"], tokens: Int[Tensor, " n"]) -> Float[Tensor, "n d"]:
    """ν_{s}: the mean residual of each token, broadcast back to the rows."""
    s = torch.unique(tokens, return_inverse=True)[1]
    ns = int(s.max()) + 1
    sums = torch.zeros(ns, resid.shape[1], dtype=torch.float64).index_add_(0, s, resid.double())
    counts = torch.bincount(s, minlength=ns).double()
    return (sums / counts[:, None])[s].to(resid.dtype)


@dataclass
class SimplexFit:
    """β on the simplex for every state, with R² and the norms in / orthogonal to the
    task subspace (both measured from the centre of the vertices)."""

    beta: Float[Tensor, "n k"]
    beta_affine: Float[Tensor, "n k"]
    fitted: Float[Tensor, "n d"]
    r2_task: float
    r2_task_token: float | None
    r2_affine: float
    norm_in: Float[Tensor, " n"]
    norm_orth: Float[Tensor, " n"]

    def summary(self) -> dict[str, float]:
        """Scalars: R² (simplex, simplex + token, affine hull), mean norms, in-plane fraction."""
        return {
            "r2_task": self.r2_task,
            "r2_task_token": np.nan if self.r2_task_token is None else self.r2_task_token,
            "r2_affine": self.r2_affine,
            "norm_in": float(self.norm_in.mean()),
            "norm_orth": float(self.norm_orth.mean()),
            "frac_in": float((self.norm_in**2).sum() / (self.norm_in**2 + self.norm_orth**2).sum()),
        }


def simplex_fit(
    states: Float[Tensor, "n d"],
    vertices: Float[Tensor, "k d"],
    tokens: Int[Tensor, " n"] | None = None,
    centre: Float[Tensor, " d"] | None = None,
) -> SimplexFit:
    """Fit ``h ≈ Σ_k β_k v_k`` with β ≥ 0, Σβ = 1 (affine LS, then simplex projection).

    The projection is Euclidean in β (as docs/concepts.md specifies); where the affine weights
    already lie in the simplex it is the exact constrained least-squares solution.
    ``r2_task`` scores the simplex reconstruction; with ``tokens`` the task + token R² adds
    ν_{s_t}, the mean residual of each current token (docs/concepts.md's ANOVA variant);
    ``r2_affine`` scores the unconstrained affine-hull projection. ``centre`` (default: the
    mean vertex) anchors the norms inside / orthogonal to the span of the centred vertices.
    """
    if states.dim() != 2 or vertices.dim() != 2:
        raise ValueError(
            f"states must be [n, d] and vertices [k, d]; got {tuple(states.shape)} and "
            f"{tuple(vertices.shape)} (flatten batch and positions first)."
        )
    if tokens is not None and tokens.shape[0] != states.shape[0]:
        raise ValueError(
            f"{states.shape[0]} states but {tokens.shape[0]} tokens; pass one token per state."
        )
    if states.shape[1] != vertices.shape[1]:
        raise ValueError(
            f"states have width {states.shape[1]} but vertices {vertices.shape[1]}; capture "
            "both at the same hook."
        )
    from tvlens.validation import check_states  # degenerate input: a clear error, not garbage

    check_states(states, "states")
    check_states(vertices, "vertices", min_samples=1, varying=False)
    beta_aff = affine_weights(states, vertices)
    beta = project_simplex(beta_aff)
    fitted = beta @ vertices
    resid = states - fitted
    r2_tok = None
    if tokens is not None:
        r2_tok = r2(states, fitted + token_effects(resid, tokens))
    c = vertices.mean(0) if centre is None else centre
    basis = orthonormal_basis(vertices - c)
    h = states - c
    inside = (h @ basis.T) @ basis
    return SimplexFit(
        beta=beta,
        beta_affine=beta_aff,
        fitted=fitted,
        r2_task=r2(states, fitted),
        r2_task_token=r2_tok,
        r2_affine=r2(states, beta_aff.to(vertices.dtype) @ vertices),
        norm_in=inside.norm(dim=-1),
        norm_orth=(h - inside).norm(dim=-1),
    )


# ------------------------------------------------------------------ posterior alignment
def alignment_scores(
    beta: Float[Tensor, "n k"], posterior: Float[Tensor, "n k"]
) -> dict[str, float]:
    """β against a posterior: Pearson correlation over all entries, mean total variation
    ½Σ|β − p| and mean cosine per row."""
    if beta.shape != posterior.shape:
        raise ValueError(
            f"beta {tuple(beta.shape)} and posterior {tuple(posterior.shape)} differ; restrict "
            "the posterior to the tasks of the basis (restrict_posterior) first."
        )
    b, p = beta.double(), posterior.double()
    bc, pc = b.flatten() - b.mean(), p.flatten() - p.mean()
    denom = bc.norm() * pc.norm()
    corr = float(bc @ pc / denom) if denom > 1e-12 else float("nan")
    tv = float(0.5 * (b - p).abs().sum(-1).mean())
    cos = float(torch.nn.functional.cosine_similarity(b, p, dim=-1).mean())
    return {"corr": corr, "tv": tv, "cosine": cos}


def restrict_posterior(
    posterior: Float[Tensor, "... K"], task_ids: Int[Tensor, " k"]
) -> Float[Tensor, "... k"]:
    """The posterior over the pool restricted to ``task_ids`` and renormalised."""
    p = posterior[..., task_ids]
    return p / p.sum(-1, keepdim=True).clamp_min(1e-30)


@dataclass
class BetaFit:
    """Simplex weights β_t of the states of one batch, beside the exact posterior.

    ``beta[layer]`` and ``posterior`` are ``[batch, P, k]`` over the positions ``pos``; the
    posterior is the family's ``retrieval_posterior`` restricted to the k major tasks of the
    basis and renormalised.
    """

    layers: list[int]
    pos: Int[Tensor, " p"]
    beta: dict[int, Float[Tensor, "batch p k"]]
    posterior: Float[Tensor, "batch p k"]
    task_ids: Int[Tensor, " batch"]

    def by_position(self) -> pd.DataFrame:
        """Columns: layer, pos, corr, tv, cosine (one row per layer and position)."""
        rows = []
        for layer in self.layers:
            for i, pos in enumerate(self.pos.tolist()):
                scores = alignment_scores(self.beta[layer][:, i], self.posterior[:, i])
                rows.append({"layer": layer, "pos": pos, **scores})
        return pd.DataFrame(rows)

    def summary(self, min_pos: int = 1) -> pd.DataFrame:
        """Pooled over every position ≥ ``min_pos``: layer, corr, tv, cosine, n_states."""
        keep = self.pos >= min_pos
        if not keep.any():
            raise ValueError(f"no positions >= {min_pos} in this fit (positions {self.pos}).")
        rows = []
        for layer in self.layers:
            b = self.beta[layer][:, keep].flatten(0, 1)
            p = self.posterior[:, keep].flatten(0, 1)
            rows.append({"layer": layer, **alignment_scores(b, p), "n_states": b.shape[0]})
        return pd.DataFrame(rows)

    def points(self, layer: int, n_seq: int = 48, every: int = 4) -> pd.DataFrame:
        """A subsample for a β-vs-posterior scatter: seq, pos, task, true_task, beta,
        posterior (``n_seq`` sequences, every ``every``-th position)."""
        if layer not in self.beta:
            raise ValueError(f"no β at layer {layer}; fitted layers are {self.layers}.")
        n = min(n_seq, self.posterior.shape[0])
        cols = torch.arange(0, self.pos.numel(), every)
        b = self.beta[layer][:n, cols]
        p = self.posterior[:n, cols]
        seq, pi, task = torch.meshgrid(
            torch.arange(n), torch.arange(cols.numel()), torch.arange(b.shape[-1]), indexing="ij"
        )
        return pd.DataFrame(
            {
                "layer": layer,
                "seq": seq.flatten().numpy(),
                "pos": self.pos[cols][pi.flatten()].numpy(),
                "task": task.flatten().numpy(),
                "true_task": self.task_ids[:n][seq.flatten()].numpy(),
                "beta": b.flatten().double().numpy(),
                "posterior": p.flatten().double().numpy(),
            }
        )


def fit_beta(
    model: Any,
    family: TaskFamily,
    tv: TaskVectors,
    batch: Batch,
    layers: Sequence[int] | None = None,
    positions: Positions = None,
    batch_size: int = 256,
) -> BetaFit:
    """Simplex weights β_t on the major task means at every position of ``batch``.

    The posterior at position t conditions on the tokens the model has read there (the
    family's ``retrieval_posterior``), so β_t and P(task | x_≤t) line up position by
    position.
    """
    from tvlens.validation import check_batch_family

    check_batch_family(batch, family)
    layers = list(tv.layers) if layers is None else list(layers)
    idx = resolve_positions(positions, batch.inputs.shape[1])
    acts = capture(as_bridge(model), batch.inputs, [tv.hook(x) for x in layers], idx, batch_size)
    ids = tv.task_ids[: tv.n_major]
    posterior = restrict_posterior(family.retrieval_posterior(batch)[:, idx], ids)
    betas = {}
    for layer in layers:
        h = acts[tv.hook(layer)]  # [B, P, d]
        fit = simplex_fit(h.flatten(0, 1), tv.vertices(layer))
        betas[layer] = fit.beta.view(h.shape[0], h.shape[1], -1)
    return BetaFit(layers, idx, betas, posterior.float(), batch.task_ids)


# -------------------------------------------------------------------- subspace geometry
def projection_r2(
    states: Float[Tensor, "n d"], basis: Float[Tensor, "r d"], centre: Float[Tensor, " d"]
) -> float:
    """R² of the states' projection onto the affine subspace ``centre + span(basis)``.

    ``1 − Σ‖(I − P)(h − c)‖² / Σ‖h − mean h‖²``; ``basis`` rows must be orthonormal.
    Negative when the states sit off the subspace by more than they vary.
    """
    from tvlens.validation import check_orthonormal, check_states

    check_states(states, "states")
    check_orthonormal(basis, "basis")
    h = states - centre
    resid = h - (h @ basis.T) @ basis
    return r2(states, states - resid)


def principal_angles(a: Float[Tensor, "r d"], b: Float[Tensor, "s d"]) -> Float[Tensor, " m"]:
    """Principal angles (radians, ascending) between span(a) and span(b), rows spanning.

    Null directions are dropped first (:func:`~tvlens.hooks.orthonormal_basis`); the angles
    are ``scipy.linalg.subspace_angles``'s, which stays accurate for small angles (it uses
    sines there, where the arccos of the singular values loses precision).
    """
    from scipy.linalg import subspace_angles

    from tvlens.validation import check_tensor

    check_tensor(a, "a", dim=2)
    check_tensor(b, "b", dim=2, width=a.shape[-1])
    qa, qb = orthonormal_basis(a).double(), orthonormal_basis(b).double()
    if qa.shape[0] == 0 or qb.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float64)
    angles = subspace_angles(qa.T.numpy(), qb.T.numpy())
    return torch.from_numpy(angles.copy()).sort().values


def top_components(states: Float[Tensor, "n d"], r: int) -> Float[Tensor, "r d"]:
    """The top ``r`` principal directions of ``states`` (rows, orthonormal)."""
    x = states.double() - states.double().mean(0)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    return vh[:r].to(states.dtype)


def random_basis(rank: int, d: int, seed: int) -> Float[Tensor, "r d"]:
    """A uniformly random ``rank``-dimensional subspace of R^d (orthonormal rows)."""
    g = generator("random-basis", rank, d, seed)
    return orthonormal_basis(torch.randn(rank, d, generator=g))


# ------------------------------------------------------------------ analyses of a model
def capture_states(
    model: Any,
    tv: TaskVectors,
    batch: Batch,
    layers: Sequence[int],
    positions: Positions = DEFAULT_POSITIONS,
    batch_size: int = 256,
) -> dict[int, Float[Tensor, "batch p d"]]:
    """States of ``batch`` at ``tv``'s hook point for each layer, kept at ``positions``."""
    acts = capture(
        as_bridge(model), batch.inputs, [tv.hook(x) for x in layers], positions, batch_size
    )
    return {layer: acts[tv.hook(layer)] for layer in layers}


def simplex_table(
    model: Any,
    family: TaskFamily,
    tv: TaskVectors,
    batches: Mapping[str, Batch],
    layers: Sequence[int] | None = None,
    positions: Positions = DEFAULT_POSITIONS,
    batch_size: int = 256,
) -> pd.DataFrame:
    """The simplex fit on the major task means, per layer and split.

    Columns: layer, split, r2_task (simplex), r2_task_token (simplex + ν_token), r2_affine
    (= the projection R² on the affine task plane), norm_in, norm_orth, frac_in (share of
    the squared norm, from the centre, inside the task subspace), n_states. On OOD data a
    low ``r2_affine`` means the states leave the task plane.
    """
    layers = list(tv.layers) if layers is None else list(layers)
    idx = resolve_positions(positions, family.seq_len)
    rows = []
    for split, batch in batches.items():
        states = capture_states(model, tv, batch, layers, idx, batch_size)
        tokens = current_tokens(family, batch)[:, idx].flatten()
        for layer in layers:
            h = states[layer].flatten(0, 1)
            fit = simplex_fit(h, tv.vertices(layer), tokens, centre=tv.centre(layer))
            rows.append({"layer": layer, "split": split, **fit.summary(), "n_states": h.shape[0]})
    return pd.DataFrame(rows)


def principal_angle_table(
    model: Any,
    tv: TaskVectors,
    batches: Mapping[str, Batch],
    layers: Sequence[int] | None = None,
    positions: Positions = DEFAULT_POSITIONS,
    batch_size: int = 256,
) -> pd.DataFrame:
    """Principal angles between span(θ_major) and the top-r principal directions of each
    split's states (r = rank of the task subspace).

    Small angles: the split's main variation lies in the task subspace (expected for ID
    data); angles near 90°: it varies in directions orthogonal to it.
    Columns: layer, split, index, angle_deg.
    """
    layers = list(tv.layers) if layers is None else list(layers)
    rows = []
    for split, batch in batches.items():
        states = capture_states(model, tv, batch, layers, positions, batch_size)
        for layer in layers:
            basis = tv.basis(layer)
            pcs = top_components(states[layer].flatten(0, 1), basis.shape[0])
            for i, a in enumerate(principal_angles(basis, pcs).tolist()):
                rows.append(
                    {"layer": layer, "split": split, "index": i, "angle_deg": float(np.degrees(a))}
                )
    return pd.DataFrame(rows)


def geometry_points(
    model: Any,
    tv: TaskVectors,
    batches: Mapping[str, Batch],
    layer: int,
    positions: Positions = -1,
    n_per_split: int = 200,
    batch_size: int = 256,
) -> pd.DataFrame:
    """3-D coordinates of states for a simplex / PCA scatter at ``layer``.

    ``x, y`` span the task plane (the top two principal directions of the centred major
    means, so the major vertices form the simplex); ``z`` is the main direction of the
    states' variation orthogonal to the plane (pooled over splits), so ID points sit in the
    plane and states that leave it rise along ``z``. Rows: each split's first
    ``n_per_split`` sequences at ``positions``, plus the vertices (split ``vertex``).
    Columns: layer, split, seq, pos, task, x, y, z, off_plane (norm orthogonal to the plane).
    """
    theta = tv.theta(layer)[: tv.n_major]
    centre = tv.centre(layer)
    plane = top_components(torch.cat([theta, -theta]), min(2, theta.shape[0]))
    idx = resolve_positions(positions, next(iter(batches.values())).inputs.shape[1])
    parts, labels = [], []
    for split, batch in batches.items():
        n = min(n_per_split, batch.size)
        h = capture_states(model, tv, batch, [layer], idx, batch_size)[layer][:n]
        parts.append(h.flatten(0, 1) - centre)
        seq, pos = torch.meshgrid(torch.arange(n), idx, indexing="ij")
        labels.append(
            pd.DataFrame(
                {
                    "split": split,
                    "seq": seq.flatten().numpy(),
                    "pos": pos.flatten().numpy(),
                    "task": batch.task_ids[:n][seq.flatten()].numpy(),
                }
            )
        )
    h = torch.cat(parts)
    off = h - (h @ plane.T) @ plane
    z_axis = top_components(torch.cat([off, -off]), 1)
    coords = torch.cat([h, theta]) @ torch.cat([plane, z_axis]).T  # [n, 2 or 1, +1]
    all_off = torch.cat([off, theta - (theta @ plane.T) @ plane]).norm(dim=-1)
    vertex = pd.DataFrame(
        {"split": "vertex", "seq": -1, "pos": -1, "task": tv.task_ids[: tv.n_major].numpy()}
    )
    df = pd.concat(labels + [vertex], ignore_index=True)
    df.insert(0, "layer", layer)
    names = ["x", "y"][: plane.shape[0]] + ["z"]
    for j, name in enumerate(names):
        df[name] = coords[:, j].double().numpy()
    if "y" not in df:
        df["y"] = 0.0
    df["off_plane"] = all_off.double().numpy()
    return df[["layer", "split", "seq", "pos", "task", "x", "y", "z", "off_plane"]]


def geometry_over_training(
    run_dir: Path | str,
    steps: Sequence[int] | None = None,
    splits: Sequence[str] = ("major", "minor", "ood"),
    n: int = 128,
    n_per_task: int = 32,
    positions: Positions = DEFAULT_POSITIONS,
    seed: int = 1,
    progress: bool = False,
) -> pd.DataFrame:
    """:func:`simplex_table` at every checkpoint ``steps`` (default: all) of a run, with task
    vectors re-estimated at each step: how the ID simplex forms and whether OOD states
    join the task plane or leave it as training goes on.

    The same ``n`` sequences per split are used at every step. Columns: step, layer, split
    and the columns of :func:`simplex_table`.
    """
    from tvlens.models import eval_batches, list_checkpoints, load_run

    run_dir = Path(run_dir)
    available = list_checkpoints(run_dir)
    steps = available if steps is None else sorted(int(x) for x in steps)
    missing = sorted(set(steps) - set(available))
    if not steps or missing:
        raise ValueError(
            f"no checkpoints at steps {missing or steps} in {run_dir}; available: {available}."
        )
    family = load_run(run_dir, steps[-1]).family
    wanted = [x for x in splits if not (x == "minor" and family.n_minor == 0)]
    batches = eval_batches(family, n, seed=seed, splits=wanted)
    frames = []
    for step in tqdm(steps, desc="geometry over training", disable=None if progress else True):
        run = load_run(run_dir, step)
        tv = task_vectors(run.model, family, n_per_task=n_per_task, seed=seed)
        df = simplex_table(run.model, family, tv, batches, positions=positions)
        df.insert(0, "step", step)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------- ablation
@torch.no_grad()
def forward_with_hooks(
    model: Any, inputs: Tensor, fwd_hooks: Sequence[tuple[str, object]] = (), batch_size: int = 256
) -> Tensor:
    """The model's read-out with TL hooks attached, in chunks (CPU tensor)."""
    bridge = as_bridge(model)
    device = next(bridge.parameters()).device
    outs = []
    for i in range(0, inputs.shape[0], batch_size):
        x = inputs[i : i + batch_size].to(device)
        out = bridge.run_with_hooks(x, fwd_hooks=list(fwd_hooks)) if fwd_hooks else bridge(x)
        outs.append(out.detach().float().cpu())
    return torch.cat(outs)


def masked_mean(values: Float[Tensor, "batch pos"], batch: Batch, positions: Positions) -> float:
    """Mean of per-position ``values`` over scored positions within ``positions``."""
    idx = resolve_positions(positions, values.shape[1])
    mask = batch.target_mask[:, idx].to(values.dtype)
    return float((values[:, idx] * mask).sum() / mask.sum().clamp_min(1))


def ablation_table(
    model: Any,
    family: TaskFamily,
    batches: Mapping[str, Batch],
    bases: Mapping[int, Float[Tensor, "r d"]],
    *,
    point: str = "resid_post",
    n_random: int = 5,
    positions: Positions = None,
    loss_positions: Positions = DEFAULT_POSITIONS,
    seed: int = 0,
    batch_size: int = 256,
) -> pd.DataFrame:
    """Loss change from ablating span(basis) (h' = h − P_S h) at each layer of ``bases``
    (layer → orthonormal rows, e.g. ``{l: tv.basis(l)}``), per split, against ``n_random``
    random subspaces of the same rank (the same draws at every layer).

    ``positions``: where the hook ablates (default: every position); ``loss_positions``:
    where the loss is averaged (default: the late positions the task vectors come from).
    Columns: layer, split, subspace (task | random), draw, rank, loss_clean, loss_ablated,
    delta.
    """
    from tvlens.validation import check_nonempty

    check_nonempty(batches, "batches", "at least one split -> Batch, e.g. {'major': batch}")
    check_nonempty(bases, "bases", "at least one layer -> basis, e.g. {l: tv.basis(l)}")
    if n_random < 0:
        raise ValueError(f"n_random={n_random}; use 0 or more random subspaces.")
    rows = []
    for split, batch in batches.items():
        clean = family.loss(forward_with_hooks(model, batch.inputs, (), batch_size), batch, True)
        loss_clean = masked_mean(clean, batch, loss_positions)
        for layer, basis in bases.items():
            name = hook_name(layer, point)
            rank, d = basis.shape
            draws = [("task", 0, basis)] + [
                ("random", i, random_basis(rank, d, seed=seed * 1000 + i)) for i in range(n_random)
            ]
            for kind, draw, b in draws:
                out = forward_with_hooks(
                    model, batch.inputs, [(name, project_out_hook(b, positions))], batch_size
                )
                loss = masked_mean(family.loss(out, batch, True), batch, loss_positions)
                rows.append(
                    {
                        "layer": layer,
                        "split": split,
                        "subspace": kind,
                        "draw": draw,
                        "rank": rank,
                        "loss_clean": loss_clean,
                        "loss_ablated": loss,
                        "delta": loss - loss_clean,
                    }
                )
    return pd.DataFrame(rows)


#: deprecated name of :func:`ablation_table` (kept for one release)
subspace_ablation = ablation_table

#: the naming rule's name for :func:`simplex_fit` (maths is a verb); ``simplex_fit`` stays
#: the definition's name for one release
fit_simplex = simplex_fit
