"""Categorical "dice": each task is a distribution over V symbols, tokens are i.i.d."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tvlens.tasks.base import Batch, TaskFamily, VocabConfig, _expand_params, exclusive_cumsum


@dataclass(frozen=True)
class DiceConfig(VocabConfig):
    """Dice: the pool fields plus the number of symbols ``vocab``."""


class Dice(TaskFamily):
    """p_k ~ Dirichlet(1) over V symbols; sequence ``[BOS, x_1, ...]`` with x_i ~ p_k.

    Learning reference: the Dirichlet(1)-multinomial predictive ``(count_v + 1) / (t + V)``.
    """

    name = "dice"
    kind = "discrete"
    param_dims = 1
    config_class = DiceConfig

    @property
    def bos(self) -> int:
        return self.config.vocab

    def sample_prior(self, n: int, g: torch.Generator) -> Tensor:
        e = -torch.log(torch.rand(n, self.config.vocab, generator=g).clamp_min(1e-12))
        return e / e.sum(-1, keepdim=True)  # normalised Exp(1) draws = Dirichlet(1)

    def generate(self, params: Tensor, g: torch.Generator):
        b, t = params.shape[0], self.seq_len
        x = torch.multinomial(params, t, replacement=True, generator=g)
        bos = torch.full((b, 1), self.bos, dtype=torch.long)
        inputs = torch.cat([bos, x[:, :-1]], dim=1)
        return inputs, x, torch.ones(b, t, dtype=torch.bool)

    def predictive(self, batch: Batch, params: Tensor) -> Tensor:
        p = _expand_params(params, batch.size, 1)  # [B, K, V]
        return p.unsqueeze(1).expand(-1, batch.targets.shape[1], -1, -1)

    def target_loglik(self, batch: Batch, params: Tensor) -> Tensor:
        logp = _expand_params(params, batch.size, 1).clamp_min(1e-30).log()  # [B, K, V]
        idx = batch.targets.unsqueeze(1).expand(-1, logp.shape[1], -1)  # [B, K, T]
        return logp.gather(2, idx).transpose(1, 2) * batch.target_mask.unsqueeze(-1)

    def retrieval_predictive(self, batch: Batch) -> Tensor:
        # Same as the base definition, without materialising [B, T, K, V].
        return torch.einsum("btk,kv->btv", self.retrieval_posterior(batch), self.pool)

    def _counts(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Symbol counts of the targets before each position ``[B, T, V]``, and the number
        of targets seen ``[1, T, 1]``."""
        counts = exclusive_cumsum(F.one_hot(batch.targets, self.config.vocab).float())
        t = torch.arange(batch.targets.shape[1], dtype=torch.float32).view(1, -1, 1)
        return counts, t

    def learning_predictive(self, batch: Batch) -> Tensor:
        counts, t = self._counts(batch)
        return (counts + 1.0) / (t + self.config.vocab)

    def sufficient_statistics(self, batch: Batch) -> Tensor:
        """The Dirichlet-multinomial learner's statistic: symbol frequencies of the targets
        seen before each position ``[B, T, V]`` (for :mod:`tvlens.analyses.probes`)."""
        counts, t = self._counts(batch)
        return counts / t.clamp_min(1)
