"""Task vectors: per-task mean residuals at late positions, centred on the major-task mean.

docs/concepts.md, section A: θ_k = h̄_k − mean_{j major} h̄_j, where h̄_k averages the residual
stream (``resid_post`` by default) of sequences of task k over late positions (the last 16
by default). The ANOVA variant conditions on the current token:
h_t ≈ μ + Σ_k β_k θ_k + ν_{s_t}; :func:`anova_r2` reports how much variance the task and
token effects explain, per layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from tvlens.hooks.core import (
    Positions,
    as_bridge,
    capture,
    capture_means,
    check_layers,
    hook_name,
    orthonormal_basis,
    resolve_positions,
)
from tvlens.tasks.base import Batch, TaskFamily, generator

#: Late positions: the prototype averaged the last 16 positions of ``resid_post``.
DEFAULT_POSITIONS: Positions = slice(-16, None)


def n_layers_of(model: Any) -> int:
    """Number of transformer blocks of a model or bridge."""
    return int(as_bridge(model).cfg.n_layers)


def select_tasks(family: TaskFamily, tasks: str = "major", max_minor: int = 32) -> Tensor:
    """Pool indices to build task vectors for: the majors, or majors plus (a fixed seeded
    subset of at most ``max_minor``) minors."""
    if tasks not in ("major", "all"):
        raise ValueError(f"tasks={tasks!r}; choose 'major' or 'all'.")
    majors = torch.arange(family.n_major)
    if tasks == "major" or family.n_minor == 0:
        return majors
    n = min(max_minor, family.n_minor)
    g = generator("select-minor", family.name, family.config.seed)
    minors = family.n_major + torch.randperm(family.n_minor, generator=g)[:n].sort().values
    return torch.cat([majors, minors])


def sample_tasks(
    family: TaskFamily, task_ids: Int[Tensor, " k"], n_per_task: int, seed: int = 0
) -> Batch:
    """``n_per_task`` sequences of each pool task in ``task_ids`` (grouped by task)."""
    if n_per_task < 1:
        raise ValueError(f"n_per_task={n_per_task}; ask for at least 1 sequence per task.")
    task_ids = torch.as_tensor(task_ids, dtype=torch.long)
    if task_ids.numel() == 0 or task_ids.min() < 0 or task_ids.max() >= family.n_tasks:
        raise ValueError(
            f"task_ids must index the pool [0, {family.n_tasks}); got {task_ids.tolist()}."
        )
    ids = task_ids.repeat_interleave(n_per_task)
    params = family.pool[ids]
    g = generator("sample-tasks", family.name, family.config.seed, seed)
    inputs, targets, mask = family.generate(params, g)
    split = "major" if bool((task_ids < family.n_major).all()) else "pool"
    return Batch(inputs, targets, mask, ids, params, split)


@dataclass
class TaskVectors:
    """Per-layer task means ``h̄_k`` of the tasks ``task_ids`` and their centre.

    ``centre`` is the mean of the major-task means, so ``theta = means - centre`` are the
    task vectors of docs/concepts.md. ``basis`` is an orthonormal basis (rows) of span(θ_major).
    """

    task_ids: Int[Tensor, " k"]
    n_major: int
    layers: list[int]
    point: str
    positions: Positions
    means: dict[int, Float[Tensor, "k d"]]

    def mean(self, layer: int) -> Float[Tensor, "k d"]:
        """The task means ``h̄_k`` at ``layer`` (majors first, in ``task_ids`` order)."""
        if layer not in self.means:
            raise ValueError(
                f"no task vectors at layer {layer}; these were computed for layers "
                f"{self.layers}. Pass layers=[..., {layer}] to task_vectors()."
            )
        return self.means[layer]

    def centre(self, layer: int) -> Float[Tensor, " d"]:
        """The mean of the major-task means: the origin of the task vectors."""
        return self.mean(layer)[: self.n_major].mean(0)

    def theta(self, layer: int) -> Float[Tensor, "k d"]:
        """Task vectors θ_k = h̄_k − centre for every task in ``task_ids``."""
        return self.mean(layer) - self.centre(layer)

    def vertices(self, layer: int, major_only: bool = True) -> Float[Tensor, "k d"]:
        """The simplex vertices: the major-task means (or every task's mean)."""
        return self.mean(layer)[: self.n_major] if major_only else self.mean(layer)

    def basis(self, layer: int, major_only: bool = True) -> Float[Tensor, "r d"]:
        """Orthonormal rows spanning the task subspace span(θ_major) (or span of all θ)."""
        theta = self.theta(layer)
        return orthonormal_basis(theta[: self.n_major] if major_only else theta)

    def hook(self, layer: int) -> str:
        """The TL hook name the vectors were read from at ``layer``."""
        return hook_name(layer, self.point)

    def to_frame(self) -> pd.DataFrame:
        """Tidy norms: layer, task, is_major, norm of θ_k, norm of h̄_k."""
        rows = []
        for layer in self.layers:
            theta = self.theta(layer)
            for i, t in enumerate(self.task_ids.tolist()):
                rows.append(
                    {
                        "layer": layer,
                        "task": t,
                        "major": i < self.n_major,
                        "theta_norm": float(theta[i].norm()),
                        "mean_norm": float(self.means[layer][i].norm()),
                    }
                )
        return pd.DataFrame(rows)


def task_vectors(
    model: Any,
    family: TaskFamily,
    layers: Sequence[int] | None = None,
    *,
    tasks: str = "major",
    max_minor: int = 32,
    n_per_task: int = 64,
    positions: Positions = DEFAULT_POSITIONS,
    point: str = "resid_post",
    seed: int = 0,
    batch: Batch | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> TaskVectors:
    """Streaming per-task means at ``point`` over ``positions`` (see :class:`TaskVectors`).

    By default ``n_per_task`` fresh sequences of each selected pool task are sampled; pass
    ``batch`` to average a batch of your own instead (every major task must occur in it and
    every sequence must come from the pool).
    """
    bridge = as_bridge(model)
    layers = check_layers(bridge, layers)
    if batch is None:
        ids = select_tasks(family, tasks, max_minor)
        batch = sample_tasks(family, ids, n_per_task, seed=seed)
    else:
        ids = torch.unique(batch.task_ids)
        missing = sorted(set(range(family.n_major)) - set(ids.tolist()))
        if (ids < 0).any() or missing:
            raise ValueError(
                "task vectors need pool sequences that cover every major task; this batch "
                f"has task ids {ids.tolist()} (missing majors {missing}, -1 = OOD). Sample "
                "it with family.sample('major', ...) or sample_tasks(...)."
            )
    groups = torch.searchsorted(ids, batch.task_ids)
    names = [hook_name(layer, point) for layer in layers]
    means = capture_means(
        bridge,
        batch.inputs,
        groups,
        names,
        n_groups=ids.numel(),
        positions=positions,
        batch_size=batch_size,
        progress=progress,
    )
    return TaskVectors(
        task_ids=ids,
        n_major=int((ids < family.n_major).sum()),
        layers=layers,
        point=point,
        positions=positions,
        means={layer: means[name] for layer, name in zip(layers, names, strict=True)},
    )


#: deprecated private alias (use :func:`tvlens.hooks.check_layers`)
_check_layers = check_layers


def r2(states: Float[Tensor, "n d"], fitted: Float[Tensor, "n d"]) -> float:
    """1 − Σ‖h − ĥ‖² / Σ‖h − mean h‖² (negative when the fit is worse than the mean)."""
    x, f = states.double(), fitted.double()
    tot = ((x - x.mean(0)) ** 2).sum()
    return float(1.0 - ((x - f) ** 2).sum() / tot.clamp_min(1e-30))


def anova_fit(
    states: Float[Tensor, "n d"], groups: Int[Tensor, " n"], tokens: Int[Tensor, " n"]
) -> tuple[Float[Tensor, "n d"], Float[Tensor, "n d"]]:
    """Least-squares fits of the task-only and the additive task + token models.

    Returns the residuals of ``h ≈ μ + θ_group`` and of ``h ≈ μ + θ_group + ν_token``.
    """
    if states.dim() != 2 or not states.shape[0] == groups.shape[0] == tokens.shape[0]:
        raise ValueError(
            f"states must be [n, d] with one group and one token label per row; got states "
            f"{tuple(states.shape)}, groups {tuple(groups.shape)}, tokens {tuple(tokens.shape)}."
        )
    x = states.double()
    g = torch.unique(groups, return_inverse=True)[1]
    s = torch.unique(tokens, return_inverse=True)[1]
    ng, ns = int(g.max()) + 1, int(s.max()) + 1
    sums = torch.zeros(ng, x.shape[1], dtype=x.dtype).index_add_(0, g, x)
    counts = torch.bincount(g, minlength=ng).to(x.dtype)
    resid_task = x - (sums / counts[:, None])[g]
    design = torch.cat(
        [torch.nn.functional.one_hot(g, ng), torch.nn.functional.one_hot(s, ns)[:, 1:]], dim=1
    ).to(x.dtype)
    coef = torch.linalg.lstsq(design, x).solution
    resid_both = x - design @ coef
    return resid_task.float(), resid_both.float()


def anova_table(
    model: Any,
    family: TaskFamily,
    layers: Sequence[int] | None = None,
    *,
    tasks: str = "all",
    max_minor: int = 32,
    n_per_task: int = 32,
    positions: Positions = DEFAULT_POSITIONS,
    point: str = "resid_post",
    seed: int = 1,
    batch_size: int = 256,
) -> pd.DataFrame:
    """R² of the task-only and task + token ANOVA models, per layer and split.

    The fit uses every selected task at once (its true task as the one-hot β); R² is then
    computed separately on the major and the minor tasks' states. For regression families
    the "token" is whether the position holds an x or a y (the token identity is continuous).
    Columns: layer, split, r2_task, r2_task_token, n_states.
    """
    from tvlens.validation import check_int

    # one sequence per task leaves no within-task variance: the task model fits perfectly
    n_per_task = check_int(n_per_task, "n_per_task", min_value=2)
    bridge = as_bridge(model)
    layers = check_layers(bridge, layers)
    ids = select_tasks(family, tasks, max_minor)
    batch = sample_tasks(family, ids, n_per_task, seed=seed)
    names = [hook_name(layer, point) for layer in layers]
    acts = capture(bridge, batch.inputs, names, positions=positions, batch_size=batch_size)
    idx = resolve_positions(positions, batch.inputs.shape[1])
    tokens = current_tokens(family, batch)[:, idx]  # [N, P]
    n_pos = idx.numel()
    groups = batch.task_ids.repeat_interleave(n_pos)
    major = groups < family.n_major
    rows = []
    for layer, name in zip(layers, names, strict=True):
        h = acts[name].flatten(0, 1)
        r_task, r_both = anova_fit(h, groups, tokens.flatten())
        for split, sel in (("major", major), ("minor", ~major)):
            if sel.sum() == 0:
                continue
            rows.append(
                {
                    "layer": layer,
                    "split": split,
                    "r2_task": r2(h[sel], h[sel] - r_task[sel]),
                    "r2_task_token": r2(h[sel], h[sel] - r_both[sel]),
                    "n_states": int(sel.sum()),
                }
            )
    return pd.DataFrame(rows)


def current_tokens(family: TaskFamily, batch: Batch) -> Int[Tensor, "batch pos"]:
    """The token the model reads at each position: the input id (discrete families), or
    0 / 1 for x / y positions (regression, whose tokens are continuous): the family's own
    :meth:`~tvlens.tasks.base.TaskFamily.current_tokens`."""
    return family.current_tokens(batch)


#: deprecated name of :func:`anova_table` (kept for one release)
anova_r2 = anova_table
