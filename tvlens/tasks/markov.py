"""Latent Markov chains: each task is a V×V transition matrix with Dirichlet(1) rows."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tvlens.tasks.base import Batch, TaskFamily, VocabConfig, _expand_params, exclusive_cumsum


@dataclass(frozen=True)
class MarkovConfig(VocabConfig):
    """Markov chains: the pool fields plus the number of states ``vocab``."""

    name: str = "markov"
    vocab: int = 8


class Markov(TaskFamily):
    """Order-1 chains. ``x_1`` is uniform (so it carries no task information), then
    ``x_{i+1} ~ P_k[x_i]``. Learning reference: add-one bigram counts per current state.
    """

    name = "markov"
    kind = "discrete"
    param_dims = 2
    config_class = MarkovConfig

    @property
    def bos(self) -> int:
        return self.config.vocab

    def sample_prior(self, n: int, g: torch.Generator) -> Tensor:
        v = self.config.vocab
        e = -torch.log(torch.rand(n, v, v, generator=g).clamp_min(1e-12))
        return e / e.sum(-1, keepdim=True)

    def generate(self, params: Tensor, g: torch.Generator):
        b, t, v = params.shape[0], self.seq_len, self.config.vocab
        x = torch.empty(b, t, dtype=torch.long)
        x[:, 0] = torch.randint(0, v, (b,), generator=g)
        rows = torch.arange(b)
        for i in range(1, t):
            x[:, i] = torch.multinomial(params[rows, x[:, i - 1]], 1, generator=g).squeeze(1)
        bos = torch.full((b, 1), self.bos, dtype=torch.long)
        inputs = torch.cat([bos, x[:, :-1]], dim=1)
        return inputs, x, torch.ones(b, t, dtype=torch.bool)

    def predictive(self, batch: Batch, params: Tensor) -> Tensor:
        p = _expand_params(params, batch.size, 2)  # [B, K, V, V]
        b, k, v, _ = p.shape
        state = batch.inputs.clamp_max(v - 1)  # BOS row is overwritten below
        idx = state[:, None, :, None].expand(b, k, -1, v)  # [B, K, T, V]
        rows = p.gather(2, idx).transpose(1, 2).clone()  # [B, T, K, V]
        rows[:, 0] = 1.0 / v  # the first symbol is uniform under every task
        return rows

    def target_loglik(self, batch: Batch, params: Tensor) -> Tensor:
        pred = self.predictive(batch, params)
        idx = batch.targets[:, :, None, None].expand(-1, -1, pred.shape[2], 1)
        ll = pred.gather(3, idx).squeeze(-1).clamp_min(1e-30).log()
        return ll * batch.target_mask.unsqueeze(-1)

    def _transition_counts(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """The previous symbol at each position ``[B, T]`` and the transition counts seen
        before it ``[B, T, V, V]`` (from → to)."""
        v = self.config.vocab
        prev = batch.inputs.clamp_max(v - 1)
        trans = F.one_hot(prev, v).unsqueeze(-1) * F.one_hot(batch.targets, v).unsqueeze(-2)
        trans = trans.float()
        trans[:, 0] = 0.0  # position 0 has no predecessor: BOS -> x_1 is not a transition
        return prev, exclusive_cumsum(trans.flatten(2)).view_as(trans)

    def learning_predictive(self, batch: Batch) -> Tensor:
        v = self.config.vocab
        prev, counts = self._transition_counts(batch)
        row = counts.gather(2, prev[:, :, None, None].expand(-1, -1, 1, v)).squeeze(2)
        pred = (row + 1.0) / (row.sum(-1, keepdim=True) + v)
        pred[:, 0] = 1.0 / v
        return pred

    def sufficient_statistics(self, batch: Batch) -> Tensor:
        """The add-one bigram learner's statistic: transition frequencies seen before each
        position ``[B, T, V·V]`` (BOS → x_1 is not a transition)."""
        counts = self._transition_counts(batch)[1].flatten(2)
        return counts / counts.sum(-1, keepdim=True).clamp_min(1)
