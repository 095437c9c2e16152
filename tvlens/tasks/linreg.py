"""Noisy linear regression: each task is a weight vector w ~ N(0, I_d)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from tvlens.tasks.base import (
    Batch,
    ConfigError,
    PoolConfig,
    TaskFamily,
    _expand_params,
    exclusive_cumsum,
)

#: how OOD tasks are drawn (``family.ood``): fresh from the prior N(0, I), or uniformly in
#: balls of radius ``family.ood_radius`` around the major tasks (the reference code's OOD
#: tasks, radius 2 by default)
OOD_MODES = ("prior", "ball")


@dataclass(frozen=True)
class LinRegConfig(PoolConfig):
    """Linear regression: the pool fields plus the input dimension, the noise σ, and how OOD
    tasks are drawn (``ood``: ``prior`` or ``ball``; ``ood_radius`` for ``ball``)."""

    name: str = "linreg"
    seq_len: int = 40
    dim: int = 6
    noise: float = 0.5
    ood: str = "prior"
    ood_radius: float = 2.0

    def validate(self) -> None:
        super().validate()
        if self.seq_len % 2:
            raise ConfigError(
                f"family.seq_len={self.seq_len} must be even for regression: "
                "each example takes two positions (x then y)."
            )
        if self.dim < 1:
            raise ConfigError(f"family.dim={self.dim} must be >= 1.")
        if self.noise <= 0:
            raise ConfigError(f"family.noise={self.noise} must be > 0.")
        if self.ood not in OOD_MODES:
            raise ConfigError(
                f"family.ood={self.ood!r}; choose one of {list(OOD_MODES)} (prior: fresh "
                "draws from N(0, I); ball: around the major tasks)."
            )
        if self.ood_radius <= 0:
            raise ConfigError(f"family.ood_radius={self.ood_radius} must be > 0.")


class LinReg(TaskFamily):
    """Prompts interleave ``x_1, y_1, x_2, y_2, ...`` with ``y = wᵀx + ε``, ``ε ~ N(0, σ²)``.

    Tokens are ``d + 1`` features: an x-token is ``(x, 0)``, a y-token ``(0, y)``. The model
    predicts ``y_i`` at the position of ``x_i``. Retrieval reference: dMMSE over the pool.
    Learning reference: ridge with ``λ = σ²``, the posterior mean under the N(0, I) prior.
    """

    name = "linreg"
    kind = "regression"
    param_dims = 1
    divergence_name = "sq_err"
    config_class = LinRegConfig

    @property
    def d_vocab(self) -> int:
        return 1

    @property
    def d_out(self) -> int:
        return 1

    @classmethod
    def d_in_for(cls, config: LinRegConfig) -> int:
        return config.dim + 1

    @property
    def n_examples(self) -> int:
        return self.seq_len // 2

    # ------------------------------------------------------------------- layout
    @property
    def max_examples(self) -> int:
        """Examples before the last query: each example takes two positions (x, y)."""
        return self.n_examples - 1

    def _query_position(self, n: int) -> int:
        return 2 * n  # x_{n+1} follows n (x, y) pairs

    def current_tokens(self, batch: Batch) -> Tensor:
        """0 at x positions and 1 at y positions (regression tokens are continuous)."""
        return (~batch.target_mask).long()

    def token_labels(self, inputs: Tensor) -> list[str]:
        return [f"{'xy'[t % 2]}{t // 2 + 1}" for t in range(inputs.shape[0])]

    def as_batch(self, inputs: Tensor) -> Tensor:
        return inputs.unsqueeze(0) if inputs.dim() == 2 else inputs

    def context_free_loss(self, batch: Batch) -> Tensor:
        """Squared error of the context-free prediction 0: ``y²`` at scored positions."""
        return torch.nan_to_num(batch.targets) ** 2 * batch.target_mask

    def geometric_mix(self, weights: Tensor, per_task: Tensor) -> None:
        return None

    def error_summaries(self, divergence: Tensor) -> dict[str, float]:
        return {"rmse": float(divergence.mean().sqrt())}

    def sample_prior(self, n: int, g: torch.Generator) -> Tensor:
        return torch.randn(n, self.config.dim, generator=g)

    def ood_params(self, n: int, g: torch.Generator) -> Tensor:
        """OOD weights: prior draws (``ood = 'prior'``, the default), or, with
        ``'ball'``, points uniform in balls of radius ``ood_radius`` around the major
        tasks (major j gets draws j, j + M, j + 2M, …), as the reference code draws them."""
        if self.config.ood == "prior":
            return self.sample_prior(n, g)
        d = self.config.dim
        centres = self.pool[torch.arange(n) % self.n_major]
        dirs = torch.randn(n, d, generator=g)
        dirs = dirs / dirs.norm(dim=1, keepdim=True)
        radii = self.config.ood_radius * torch.rand(n, generator=g) ** (1.0 / d)
        return centres + dirs * radii[:, None]

    def sample_x(self, n: int, g: torch.Generator) -> Tensor:
        return torch.randn(n, self.n_examples, self.config.dim, generator=g)

    def generate(self, params: Tensor, g: torch.Generator):
        b, n, d = params.shape[0], self.n_examples, self.config.dim
        x = self.sample_x(b, g)
        y = torch.einsum("bnd,bd->bn", x, params)
        y = y + self.config.noise * torch.randn(b, n, generator=g)
        inputs = torch.zeros(b, 2 * n, d + 1)
        inputs[:, 0::2, :d] = x
        inputs[:, 1::2, d] = y
        targets = torch.zeros(b, 2 * n)
        targets[:, 0::2] = y
        mask = torch.zeros(b, 2 * n, dtype=torch.bool)
        mask[:, 0::2] = True
        return inputs, targets, mask

    def xs(self, batch: Batch) -> Tensor:
        """The x vector at every position ``[B, T, d]`` (zero at y positions)."""
        return batch.inputs[..., : self.config.dim]

    def predictive(self, batch: Batch, params: Tensor) -> Tensor:
        w = _expand_params(params, batch.size, 1)  # [B, K, d]
        return torch.einsum("btd,bkd->btk", self.xs(batch), w)

    def target_loglik(self, batch: Batch, params: Tensor) -> Tensor:
        s2 = self.config.noise**2
        mu = self.predictive(batch, params)
        ll = -0.5 * (batch.targets.unsqueeze(-1) - mu) ** 2 / s2 - 0.5 * math.log(2 * math.pi * s2)
        return ll * batch.target_mask.unsqueeze(-1)

    def ridge_weights(self, batch: Batch, lam: float | None = None) -> Tensor:
        """Ridge estimate from the examples before each example, ``[B, n_examples, d]``."""
        lam = self.config.noise**2 if lam is None else lam
        d = self.config.dim
        x = batch.inputs[:, 0::2, :d]
        y = batch.targets[:, 0::2]
        xx = torch.einsum("bnd,bne->bnde", x, x)
        xy = x * y.unsqueeze(-1)
        xx = torch.cumsum(xx, 1) - xx
        xy = torch.cumsum(xy, 1) - xy
        a = xx + lam * torch.eye(d)
        return torch.linalg.solve(a, xy.unsqueeze(-1)).squeeze(-1)

    def learning_predictive(self, batch: Batch) -> Tensor:
        w = self.ridge_weights(batch)
        out = torch.zeros_like(batch.targets)
        out[:, 0::2] = torch.einsum("bnd,bnd->bn", batch.inputs[:, 0::2, : self.config.dim], w)
        return out

    def sufficient_statistics(self, batch: Batch) -> Tensor:
        """Ridge's statistics from the pairs seen before each position: the upper triangle of
        XᵀX and Xᵀy, per observed pair ``[B, T, d(d+1)/2 + d]``."""
        d = self.config.dim
        x = self.xs(batch)  # [B, T, d], zero at y positions
        y = torch.nan_to_num(batch.targets) * batch.target_mask
        xx = exclusive_cumsum((x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(2))
        xy = exclusive_cumsum(x * y.unsqueeze(-1))
        n = exclusive_cumsum(batch.target_mask.float().unsqueeze(-1)).clamp_min(1)
        iu = torch.triu_indices(d, d)
        xx = xx.view(*xx.shape[:2], d, d)[:, :, iu[0], iu[1]]
        return torch.cat([xx, xy], dim=-1) / n
