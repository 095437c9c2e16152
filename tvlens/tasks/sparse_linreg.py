"""Sparse linear regression over latent concepts (Han et al., arXiv 2412.12276, section B).

There are ``C`` orthonormal bases of R^d, the **concepts**. A task is a concept ``c`` and an
``s``-sparse coefficient vector ``a`` in that basis: ``w = B_cᵀ a`` with a support of size
``s`` drawn uniformly and its coefficients ~ N(0, 1). Prompts interleave ``x, y`` exactly as
in :class:`~tvlens.tasks.linreg.LinReg` (same token layout, same scoring).

References (all exact, by enumerating the ``C · binom(d, s)`` (concept, support) pairs; each
pair is a Bayesian linear regression with a Gaussian prior, so its evidence is closed-form):

* ``retrieval_*`` — the posterior over the known pool (from the base class);
* :meth:`concept_posterior` — P(concept | context) for a fresh task from the prior;
* :meth:`concept_predictive` — the per-concept sparse estimator: the posterior mean of
  ``y`` given the concept (support unknown, averaged over supports), ``[B, T, C]``;
* :meth:`oracle_predictive` — that estimator for the true concept (an oracle knows ``c``);
* :meth:`bayes_predictive` — the Bayes-optimal prediction under the full prior
  (Σ_c P(c | context) · per-concept mean);
* :meth:`learning_predictive` — ridge. ``E[w wᵀ] = (s/d) I`` here, so the ridge that is Bayes
  for a Gaussian with that covariance uses ``λ = σ² d / s``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tvlens.tasks.base import Batch, ConfigError, generator
from tvlens.tasks.linreg import LinReg, LinRegConfig

#: elements of the largest ``[chunk, n, C·M, s, s]`` tensor built by the enumeration
_ENUM_BUDGET = 2**24


@dataclass(frozen=True)
class SparseLinRegConfig(LinRegConfig):
    """Sparse regression: linear regression's fields plus the concepts and the sparsity."""

    name: str = "sparse_linreg"
    n_major: int = 4
    seq_len: int = 24
    dim: int = 5
    noise: float = 0.25
    n_concepts: int = 4
    sparsity: int = 2


class SparseLinReg(LinReg):
    """``y = wᵀx + ε`` with ``w`` s-sparse in one of ``C`` orthonormal bases (the concepts).

    ``sample_prior`` cycles through the concepts from a random offset, so each draw's concept
    is uniform and any ``n ≥ C`` draws (the pool's majors, an OOD batch) cover every concept
    evenly. ``concepts`` holds the pool tasks' concept labels ``[K]``.
    """

    name = "sparse_linreg"
    config_class = SparseLinRegConfig

    def __init__(self, config: SparseLinRegConfig) -> None:
        d, s, c = config.dim, config.sparsity, config.n_concepts
        if not 1 <= s < d:
            raise ConfigError(
                f"family.sparsity={s} must satisfy 1 <= sparsity < family.dim={d}: with "
                "sparsity = dim every concept gives the same prior and none is identifiable."
            )
        if c < 1:
            raise ConfigError(f"family.n_concepts={c} must be >= 1.")
        n_pairs = c * math.comb(d, s)
        if n_pairs > 50_000:
            raise ConfigError(
                f"n_concepts · binom(dim, sparsity) = {n_pairs} (concept, support) pairs is too "
                "many for the exact references; lower family.dim or family.sparsity."
            )
        g = generator("concepts", self.name, config.seed)
        q, r = torch.linalg.qr(torch.randn(c, d, d, generator=g, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)  # unique QR
        #: ``[C, d, d]``; row ``i`` of ``bases[c]`` is the i-th basis vector of concept c
        self.bases: Float[Tensor, "concept d d"] = q.transpose(-1, -2).float().contiguous()
        #: every support of size s, ``[M, s]``
        self.supports: Int[Tensor, "m s"] = torch.tensor(
            list(itertools.combinations(range(d), s)), dtype=torch.long
        )
        super().__init__(config)
        self.concepts: Int[Tensor, " k"] = self.concept_of(self.pool)

    @property
    def n_concepts(self) -> int:
        return self.config.n_concepts

    @property
    def sparsity(self) -> int:
        return self.config.sparsity

    # -------------------------------------------------------------------- prior
    def sample_prior(self, n: int, g: torch.Generator) -> Tensor:
        d, s, c = self.config.dim, self.sparsity, self.n_concepts
        offset = torch.randint(0, c, (1,), generator=g)
        concept = (offset + torch.arange(n)) % c
        support = torch.rand(n, d, generator=g).argsort(-1)[:, :s]  # uniform s-subset
        coef = torch.zeros(n, d)
        coef.scatter_(1, support, torch.randn(n, s, generator=g))
        return torch.einsum("ni,nid->nd", coef, self.bases[concept])

    def concept_of(self, w: Float[Tensor, "n d"]) -> Int[Tensor, " n"]:
        """The concept whose basis represents each ``w`` with the fewest non-zeros.

        ``w`` is exactly s-sparse in its own basis; in any other basis it is dense with
        probability one, so the mass outside the best s-term approximation identifies it.
        """
        coef = torch.einsum("cid,nd->nci", self.bases, w.float()).abs()
        tail = coef.sort(-1).values[..., : self.config.dim - self.sparsity].sum(-1)
        return tail.argmin(-1)

    label_kinds = ("task", "concept")

    def default_decoding(self) -> tuple[str, str]:
        """The concepts of fresh (OOD) tasks."""
        return "concept", "ood"

    def decoding_targets(self) -> list[tuple[str, str]]:
        """The concepts of the pool's majors and of fresh (OOD) tasks."""
        return [("concept", "major"), ("concept", "ood")]

    def labels(self, batch: Batch, label: str = "task") -> Int[Tensor, " batch"]:
        return self.concept_labels(batch) if label == "concept" else super().labels(batch, label)

    def n_label_classes(self, label: str, split: str) -> int:
        return self.n_concepts if label == "concept" else super().n_label_classes(label, split)

    def concept_labels(self, batch: Batch) -> Int[Tensor, " batch"]:
        """Concept of every sequence (pool lookup where possible, else recovered from ``w``)."""
        out = self.concept_of(batch.params)
        known = batch.task_ids >= 0
        out[known] = self.concepts[batch.task_ids[known]]
        return out

    # ------------------------------------------------------- exact enumeration
    def _pair_stats(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Per (concept, support) pair and example ``i``: log-evidence of the examples
        before ``i`` and the posterior-mean prediction of ``y_i`` from them.

        Returns ``logev [B, n+1, C·M]`` (``logev[:, i]`` = log p(y_<i)) and
        ``mean [B, n, C·M]``.
        """
        d, s, sigma2 = self.config.dim, self.sparsity, self.config.noise**2
        x = batch.inputs[:, 0::2, :d].double()  # [B, n, d]
        y = batch.targets[:, 0::2].double()  # [B, n]
        b, n = y.shape
        n_pairs = self.n_concepts * self.supports.shape[0]
        chunk = max(1, _ENUM_BUDGET // max(1, n * n_pairs * s * s))
        logevs, means = [], []
        bases = self.bases.double()
        for lo in range(0, b, chunk):
            xs, ys = x[lo : lo + chunk], y[lo : lo + chunk]
            z = torch.einsum("cjd,bnd->bncj", bases, xs)  # coordinates in every basis
            phi = z[..., self.supports].flatten(2, 3)  # [b, n, C·M, s]
            outer = phi.unsqueeze(-1) * phi.unsqueeze(-2) / sigma2
            prec = torch.cumsum(outer, 1) - outer + torch.eye(s, dtype=phi.dtype)
            rhs = torch.cumsum(phi * ys[..., None, None], 1) - phi * ys[..., None, None]
            chol = torch.linalg.cholesky(prec)
            mu = torch.cholesky_solve((rhs / sigma2).unsqueeze(-1), chol).squeeze(-1)
            cov_phi = torch.cholesky_solve(phi.unsqueeze(-1), chol).squeeze(-1)
            mean = (phi * mu).sum(-1)  # [b, n, P]
            var = sigma2 + (phi * cov_phi).sum(-1)
            ll = -0.5 * ((ys.unsqueeze(-1) - mean) ** 2 / var + torch.log(2 * math.pi * var))
            zero = torch.zeros_like(ll[:, :1])
            logevs.append(torch.cat([zero, torch.cumsum(ll, 1)], 1))
            means.append(mean)
        return torch.cat(logevs), torch.cat(means)

    def _to_positions(self, per_example: Tensor, inclusive: Tensor | None = None) -> Tensor:
        """Place per-example values ``[B, n, ...]`` at x positions (and ``inclusive`` at the
        y positions, which come after ``y_i`` is scored)."""
        b, n = per_example.shape[:2]
        out = per_example.new_zeros(b, 2 * n, *per_example.shape[2:])
        out[:, 0::2] = per_example
        if inclusive is not None:
            out[:, 1::2] = inclusive
        return out

    def pair_posterior(self, batch: Batch) -> Float[Tensor, "batch n_plus_1 pairs"]:
        """P(concept, support | the first ``i`` examples) for ``i = 0..n``, pairs in
        concept-major order ``c · M + m``."""
        logev, _ = self._pair_stats(batch)
        return torch.softmax(logev, -1)  # uniform prior over (concept, support)

    def concept_posterior(self, batch: Batch) -> Float[Tensor, "batch pos concept"]:
        """Exact P(concept | context before t) for a fresh task from the prior."""
        post = self.pair_posterior(batch).unflatten(-1, (self.n_concepts, -1)).sum(-1)
        return self._to_positions(post[:, :-1], post[:, 1:]).float()

    def concept_predictive(self, batch: Batch) -> Float[Tensor, "batch pos concept"]:
        """Per-concept sparse estimator: E[y_t | context, concept = c] (support averaged)."""
        logev, mean = self._pair_stats(batch)
        shape = (self.n_concepts, -1)
        w = torch.softmax(logev[:, :-1].unflatten(-1, shape), -1)  # P(support | c, context)
        per = (w * mean.unflatten(-1, shape)).sum(-1)
        return self._to_positions(per).float()

    def oracle_predictive(self, batch: Batch) -> Float[Tensor, "batch pos"]:
        """The posterior mean for an oracle that knows each sequence's concept."""
        per = self.concept_predictive(batch)
        idx = self.concept_labels(batch).view(-1, 1, 1).expand(-1, per.shape[1], 1)
        return per.gather(-1, idx).squeeze(-1)

    def bayes_predictive(self, batch: Batch) -> Float[Tensor, "batch pos"]:
        """The Bayes-optimal prediction under the concept prior (MMSE for fresh tasks)."""
        logev, mean = self._pair_stats(batch)
        w = torch.softmax(logev[:, :-1], -1)
        return self._to_positions((w * mean).sum(-1)).float()

    def retrieval_concept_posterior(self, batch: Batch) -> Float[Tensor, "batch pos concept"]:
        """P(concept | context) under the *pool* mixture: the retrieval posterior by concept."""
        post = self.retrieval_posterior(batch)
        out = post.new_zeros(*post.shape[:2], self.n_concepts)
        return out.index_add_(-1, self.concepts.to(post.device), post)

    def ridge_lambda(self) -> float:
        """``σ² d / s``: Bayes ridge for a Gaussian prior with this family's ``E[w wᵀ]``."""
        return self.config.noise**2 * self.config.dim / self.sparsity

    def learning_predictive(self, batch: Batch) -> Tensor:
        w = self.ridge_weights(batch, self.ridge_lambda())
        out = torch.zeros_like(batch.targets)
        out[:, 0::2] = torch.einsum("bnd,bnd->bn", batch.inputs[:, 0::2, : self.config.dim], w)
        return out

    def __repr__(self) -> str:
        c = self.config
        return (
            f"SparseLinReg(dim={c.dim}, sparsity={c.sparsity}, n_concepts={c.n_concepts}, "
            f"n_major={c.n_major}, n_minor={self.n_minor}, seq_len={c.seq_len})"
        )
