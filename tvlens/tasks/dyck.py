"""Dyck paths planted in noise: each task is a balanced bracket string (after mini-ICL).

A task is one Dyck path of ``n`` pairs (``2n`` steps of ±1 that never go below zero and end
at zero), drawn uniformly from all Catalan(n) paths. A sequence shows the path one step at a
time, interleaved with noise: at every position, while steps remain, the next step is
planted with probability ``r`` (token ``down`` or ``up``); otherwise a background symbol is
drawn uniformly from ``S`` symbols. The background carries no task information, so every
reference only reads the Dyck prefix seen so far.

* **Retrieval reference** (exact): the posterior over the pool is the mixture prior
  restricted to the pool paths that agree with the prefix; its predictive is the
  posterior share of those paths whose next step is up. When no pool path agrees (OOD)
  every task has likelihood zero; the posterior then falls back to the paths with the fewest
  disagreements (likelihoods are clamped at 1e-30 per mismatch, as in every family).
* **Learning reference** (exact): the Bayes predictive under the uniform prior over all
  Dyck paths, P(up | height h, m steps left) = N(h + 1, m − 1) / N(h, m) with N(h, m) the
  number of non-negative paths of m steps from height h down to zero.

Vocabulary (``family.vocab = S + 2``): background symbols ``0 … S − 1``, ``down = S``,
``up = S + 1``; ``BOS = S + 2``. Fields of :class:`DyckConfig`: ``dyck_length`` (pairs n,
default 8) and ``repeat_prob`` (r, default 0.3). OOD tasks are fresh uniform paths that
are *not* in the pool (the prior is discrete, so a fresh draw could repeat a pool task;
the reference code does not exclude them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tvlens.tasks.base import (
    Batch,
    ConfigError,
    TaskFamily,
    VocabConfig,
    _expand_params,
    exclusive_cumsum,
)

DEFAULT_DYCK_LENGTH = 8
DEFAULT_REPEAT_PROB = 0.3


def completions(n_steps: int) -> Float[Tensor, "m h"]:
    """``N[m, h]``: non-negative ±1 paths of ``m`` steps from height ``h`` down to zero.

    N[0, 0] = 1; N[m, h] = N[m − 1, h + 1] + N[m − 1, h − 1] (the second term only for
    h ≥ 1). Float64 is exact for the sizes used here (Catalan numbers < 2^53 up to n = 30).
    """
    table = torch.zeros(n_steps + 1, n_steps + 2, dtype=torch.float64)
    table[0, 0] = 1.0
    for m in range(1, n_steps + 1):
        table[m, :-1] += table[m - 1, 1:]
        table[m, 1:] += table[m - 1, :-1]
    return table


@dataclass(frozen=True)
class DyckConfig(VocabConfig):
    """Dyck paths: the pool fields, ``vocab = S + 2`` symbols, the pairs per path
    ``dyck_length`` and the chance ``repeat_prob`` that a position shows the next step."""

    name: str = "dyck"
    dyck_length: int = DEFAULT_DYCK_LENGTH
    repeat_prob: float = DEFAULT_REPEAT_PROB

    def validate(self) -> None:
        super().validate()
        if self.vocab < 3:
            raise ConfigError(
                f"family.vocab={self.vocab}: Dyck needs at least 3 symbols (background "
                "symbols plus the two brackets); set family.vocab >= 3."
            )
        if not 1 <= self.dyck_length <= 30:
            raise ConfigError(
                f"family.dyck_length={self.dyck_length} must lie in 1..30 (pairs per path)."
            )
        if not 0.0 < self.repeat_prob <= 1.0:
            raise ConfigError(
                f"family.repeat_prob={self.repeat_prob} must lie in (0, 1]: it is the "
                "chance that a position shows the next bracket."
            )


class Dyck(TaskFamily):
    """Uniform Dyck paths of ``n`` pairs, revealed step by step among background noise."""

    name = "dyck"
    kind = "discrete"
    param_dims = 1

    config_class = DyckConfig

    def __init__(self, config: DyckConfig) -> None:
        self.n_pairs = config.dyck_length
        self.repeat_prob = config.repeat_prob
        self._table = completions(2 * self.n_pairs)
        super().__init__(config)

    # ------------------------------------------------------------------- tokens
    @property
    def n_background(self) -> int:
        return self.config.vocab - 2

    @property
    def down(self) -> int:
        return self.config.vocab - 2

    @property
    def up(self) -> int:
        return self.config.vocab - 1

    @property
    def bos(self) -> int:
        return self.config.vocab

    @property
    def n_steps(self) -> int:
        return 2 * self.n_pairs

    @property
    def n_paths(self) -> int:
        """Catalan(n): the number of distinct tasks under the prior."""
        return math.comb(2 * self.n_pairs, self.n_pairs) // (self.n_pairs + 1)

    # ------------------------------------------------------------------ sampling
    def p_up(self, height: Tensor, remaining: Tensor) -> Tensor:
        """P(next step = up | height, steps remaining) under the uniform prior (0 where no
        step remains)."""
        h = height.long().clamp(0, self.n_steps)
        m = remaining.long().clamp(0, self.n_steps)
        num = self._table[(m - 1).clamp_min(0), (h + 1).clamp_max(self.n_steps + 1)]
        den = self._table[m, h]
        return torch.where((m > 0) & (den > 0), num / den.clamp_min(1.0), torch.zeros_like(num))

    def sample_prior(self, n: int, g: torch.Generator) -> Tensor:
        """``n`` uniform Dyck paths ``[n, 2n_pairs]`` of ±1 (sequential exact sampling)."""
        path = torch.empty(n, self.n_steps)
        h = torch.zeros(n, dtype=torch.long)
        for t in range(self.n_steps):
            up = torch.rand(n, generator=g, dtype=torch.float64) < self.p_up(
                h, torch.full_like(h, self.n_steps - t)
            )
            path[:, t] = torch.where(up, 1.0, -1.0)
            h = h + torch.where(up, 1, -1)
        return path

    def _codes(self, paths: Tensor) -> Int[Tensor, " n"]:
        bits = (paths > 0).long()
        return (bits * (2 ** torch.arange(self.n_steps))).sum(-1)

    def ood_params(self, n: int, g: torch.Generator) -> Tensor:
        """``n`` uniform Dyck paths that are not in the pool (rejection sampling)."""
        pool = set(self._codes(self.pool).tolist())
        if len(pool) >= self.n_paths:
            raise ConfigError(
                f"the pool holds all {self.n_paths} Dyck paths of {self.n_pairs} pairs, so no "
                "OOD task exists; raise family.dyck_length or lower family.k."
            )
        out: list[Tensor] = []
        have = 0
        while have < n:
            cand = self.sample_prior(2 * (n - have) + 8, g)
            keep = torch.tensor([c not in pool for c in self._codes(cand).tolist()])
            out.append(cand[keep])
            have += int(keep.sum())
        return torch.cat(out)[:n]

    def generate(self, params: Tensor, g: torch.Generator):
        b, t = params.shape[0], self.seq_len
        planted = torch.rand(b, t, generator=g) < self.repeat_prob
        planted &= torch.cumsum(planted.long(), 1) <= self.n_steps
        j = (torch.cumsum(planted.long(), 1) - 1).clamp_min(0)
        step = params.gather(1, j.clamp_max(self.n_steps - 1))
        bracket = torch.where(step > 0, self.up, self.down)
        background = torch.randint(0, self.n_background, (b, t), generator=g)
        x = torch.where(planted, bracket, background)
        bos = torch.full((b, 1), self.bos, dtype=torch.long)
        inputs = torch.cat([bos, x[:, :-1]], dim=1)
        return inputs, x, torch.ones(b, t, dtype=torch.bool)

    # ---------------------------------------------------------------- references
    def progress(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Steps seen before each position ``j [B, T]`` and the height they reach ``[B, T]``."""
        tg = batch.targets
        is_up = (tg == self.up).long()
        is_down = (tg == self.down).long()
        j = exclusive_cumsum((is_up + is_down).unsqueeze(-1).float()).squeeze(-1).long()
        h = exclusive_cumsum((is_up - is_down).unsqueeze(-1).float()).squeeze(-1).long()
        return j, h

    def sufficient_statistics(self, batch: Batch) -> Float[Tensor, "batch pos 2"]:
        """What the learning reference reads: the share of steps seen, ``j / 2n``, and the
        height reached, ``h / n`` (for :mod:`tvlens.analyses.probes`)."""
        j, h = self.progress(batch)
        return torch.stack([j / self.n_steps, h / self.n_pairs], dim=-1).float()

    def _mix(self, p_up: Tensor, active: Tensor) -> Tensor:
        """Next-token distributions ``[..., V]`` from P(up) where a step is still due."""
        s, r = self.n_background, self.repeat_prob
        shape = (*p_up.shape, self.config.vocab)
        out = torch.zeros(shape, dtype=torch.float32)
        act = active.float()
        out[..., :s] = ((1 - r * act) / s).unsqueeze(-1)
        out[..., self.up] = r * act * p_up
        out[..., self.down] = r * act * (1 - p_up)
        return out

    def _next_up(self, batch: Batch, params: Tensor) -> tuple[Tensor, Tensor]:
        """Whether each task's next step is up ``[B, T, K]``, and whether a step is due."""
        p = _expand_params(params, batch.size, 1)  # [B, K, 2n]
        j, _ = self.progress(batch)
        active = j < self.n_steps
        idx = j.clamp_max(self.n_steps - 1)[:, None, :].expand(-1, p.shape[1], -1)
        nxt = p.gather(2, idx).transpose(1, 2)  # [B, T, K]
        return (nxt > 0).float(), active

    def predictive(self, batch: Batch, params: Tensor) -> Tensor:
        nxt, active = self._next_up(batch, params)
        return self._mix(nxt, active.unsqueeze(-1).expand_as(nxt))

    def target_loglik(self, batch: Batch, params: Tensor) -> Tensor:
        nxt, active = self._next_up(batch, params)
        tg = batch.targets.unsqueeze(-1)
        s, r = self.n_background, self.repeat_prob
        act = active.unsqueeze(-1).float()
        p_bg = ((1 - r * act) / s).expand_as(nxt)
        p = torch.where(tg == self.up, r * nxt, torch.where(tg == self.down, r * (1 - nxt), p_bg))
        p = torch.where((tg >= s) & (act == 0), torch.zeros_like(p), p)
        return p.clamp_min(1e-30).log() * batch.target_mask.unsqueeze(-1)

    def retrieval_predictive(self, batch: Batch) -> Tensor:
        # the posterior share of pool paths whose next step is up (no [B, T, K, V] tensor)
        nxt, active = self._next_up(batch, self.pool)
        p_up = (self.retrieval_posterior(batch) * nxt).sum(-1)
        return self._mix(p_up, active)

    def learning_predictive(self, batch: Batch) -> Tensor:
        j, h = self.progress(batch)
        active = j < self.n_steps
        return self._mix(self.p_up(h, self.n_steps - j).float(), active)
