"""Sparse regression over concepts: the prior, concept labels and the exact references
checked against brute force (Gaussian marginal likelihoods of every (concept, support))."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from tvlens.models import RunConfig
from tvlens.tasks import ConfigError, SparseLinReg, make_family


def small_family(**kw) -> SparseLinReg:
    cfg = {"dim": 3, "sparsity": 1, "n_concepts": 2, "seq_len": 8, "noise": 0.5, "n_major": 2}
    return make_family(name="sparse_linreg", **{**cfg, **kw})  # type: ignore[return-value]


def test_bases_are_orthonormal_and_tasks_are_sparse_in_their_concept():
    fam = make_family(name="sparse_linreg", dim=8, sparsity=2, n_concepts=4, seq_len=16, k=3)
    eye = torch.eye(8)
    for b in fam.bases:
        assert torch.allclose(b @ b.T, eye, atol=1e-5)
    batch = fam.sample("ood", 64, seed=3)
    labels = fam.concept_labels(batch)
    coef = torch.einsum("nid,nd->ni", fam.bases[labels], batch.params)
    nonzero = (coef.abs() > 1e-5).sum(-1)
    assert (nonzero == 2).all()
    # in every other basis the task is dense
    for c in range(4):
        other = labels != c
        dense = torch.einsum("id,nd->ni", fam.bases[c], batch.params[other]).abs() > 1e-5
        assert (dense.sum(-1) > 2).all()
    # concepts of the pool: majors cover every concept (draws cycle through them)
    assert sorted(fam.concepts[:4].tolist()) == [0, 1, 2, 3]
    assert torch.equal(fam.concept_of(fam.pool), fam.concepts)
    assert torch.bincount(labels, minlength=4).tolist() == [16, 16, 16, 16]


def test_invalid_sparsity_is_a_config_error():
    with pytest.raises(ConfigError, match="family.sparsity"):
        small_family(sparsity=3)
    with pytest.raises(ConfigError, match="family.sparsity"):
        small_family(sparsity=0)


def brute_force(fam: SparseLinReg, batch):
    """log p(y_<i | c, S) and E[y_i | y_<i, c, S] by direct Gaussian conditioning."""
    d, s, sigma2 = fam.config.dim, fam.sparsity, fam.config.noise**2
    x = batch.inputs[:, 0::2, :d].double()
    y = batch.targets[:, 0::2].double()
    b, n = y.shape
    pairs = [(c, sup) for c in range(fam.n_concepts) for sup in itertools.combinations(range(d), s)]
    logev = torch.zeros(b, n + 1, len(pairs), dtype=torch.float64)
    mean = torch.zeros(b, n, len(pairs), dtype=torch.float64)
    for j, (c, sup) in enumerate(pairs):
        basis = fam.bases[c][list(sup)].double()  # [s, d]
        for bi in range(b):
            phi = x[bi] @ basis.T  # [n, s]
            for i in range(n + 1):
                if i:
                    cov = phi[:i] @ phi[:i].T + sigma2 * torch.eye(i, dtype=torch.float64)
                    logev[bi, i, j] = MultivariateNormal(
                        torch.zeros(i, dtype=torch.float64), cov
                    ).log_prob(y[bi, :i])
                if i < n:
                    if i:
                        cov = phi[:i] @ phi[:i].T + sigma2 * torch.eye(i, dtype=torch.float64)
                        mu = phi[:i].T @ torch.linalg.solve(cov, y[bi, :i])
                    else:
                        mu = torch.zeros(s, dtype=torch.float64)
                    mean[bi, i, j] = phi[i] @ mu
    return logev, mean


def test_exact_references_match_brute_force():
    fam = small_family()
    batch = fam.sample("ood", 5, seed=1)
    logev, mean = brute_force(fam, batch)
    ours_logev, ours_mean = fam._pair_stats(batch)
    assert torch.allclose(ours_logev, logev, atol=1e-8)
    assert torch.allclose(ours_mean, mean, atol=1e-8)

    post = torch.softmax(logev, -1).unflatten(-1, (fam.n_concepts, -1))  # [b, n+1, C, M]
    concept = post.sum(-1)
    cp = fam.concept_posterior(batch)
    assert torch.allclose(cp[:, 0::2], concept[:, :-1].float(), atol=1e-5)
    assert torch.allclose(cp[:, 1::2], concept[:, 1:].float(), atol=1e-5)
    assert torch.allclose(cp[:, 0], torch.full_like(cp[:, 0], 1 / fam.n_concepts))

    m = mean.unflatten(-1, (fam.n_concepts, -1))
    w_s = post[:, :-1] / post[:, :-1].sum(-1, keepdim=True)  # P(S | c, context)
    per_concept = (w_s * m).sum(-1)
    assert torch.allclose(fam.concept_predictive(batch)[:, 0::2], per_concept.float(), atol=1e-5)
    bayes = (post[:, :-1] * m).sum((-1, -2))
    assert torch.allclose(fam.bayes_predictive(batch)[:, 0::2], bayes.float(), atol=1e-5)
    labels = fam.concept_labels(batch)
    oracle = per_concept[torch.arange(5), :, labels]
    assert torch.allclose(fam.oracle_predictive(batch)[:, 0::2], oracle.float(), atol=1e-5)


def test_references_are_ordered_as_bayes_theory_says():
    """Oracle (knows the concept) ≤ Bayes (prior over concepts) ≤ ridge, in mean squared error."""
    fam = make_family(name="sparse_linreg", dim=6, sparsity=2, n_concepts=3, seq_len=16, noise=0.25)
    batch = fam.sample("ood", 1200, seed=7)
    mse = {
        name: float(
            fam.prediction_loss(pred, batch)[:, 4::2].sum() / batch.target_mask[:, 4::2].sum()
        )
        for name, pred in [
            ("oracle", fam.oracle_predictive(batch)),
            ("bayes", fam.bayes_predictive(batch)),
            ("ridge", fam.learning_predictive(batch)),
        ]
    }
    assert mse["oracle"] < mse["bayes"] < mse["ridge"]
    # the concept becomes identifiable from the context
    cp = fam.concept_posterior(batch)
    labels = fam.concept_labels(batch)
    acc = (cp[:, -2].argmax(-1) == labels).float().mean()
    assert acc > 0.8
    assert float(cp[:, 0].max()) == pytest.approx(1 / 3, abs=1e-6)


def test_retrieval_concept_posterior_groups_the_pool_posterior():
    fam = make_family(name="sparse_linreg", dim=4, sparsity=1, n_concepts=2, seq_len=8, k=2)
    batch = fam.sample("train", 6, seed=0)
    rc = fam.retrieval_concept_posterior(batch)
    post = fam.retrieval_posterior(batch)
    for c in range(2):
        assert torch.allclose(rc[..., c], post[..., fam.concepts == c].sum(-1))
    assert torch.allclose(rc.sum(-1), torch.ones(rc.shape[:2]))


def test_ridge_uses_the_prior_matched_lambda_and_training_config_builds():
    fam = small_family()
    assert fam.ridge_lambda() == pytest.approx(0.25 * 3 / 1)
    cfg = RunConfig.for_family("sparse_linreg")
    assert cfg.family.sparsity < cfg.family.dim
    assert math.comb(cfg.family.dim, cfg.family.sparsity) * cfg.family.n_concepts <= 50_000


def test_ridge_is_the_posterior_mean_under_the_matched_gaussian_prior():
    """Ridge with λ = σ² d / s equals the kernel-form posterior mean
    Σ Xᵀ (X Σ Xᵀ + σ² I)⁻¹ y with Σ = E[w wᵀ] = (s/d) I, computed per prefix."""
    fam = make_family(name="sparse_linreg", dim=5, sparsity=2, n_concepts=3, seq_len=12)
    batch = fam.sample("ood", 4, seed=2)
    d, s, sigma2 = 5, 2, fam.config.noise**2
    prior_cov = (s / d) * torch.eye(d, dtype=torch.float64)
    x = batch.inputs[:, 0::2, :d].double()
    y = batch.targets[:, 0::2].double()
    ridge = fam.learning_predictive(batch)[:, 0::2]
    for b in range(4):
        for i in range(6):
            if i == 0:
                expected = torch.tensor(0.0, dtype=torch.float64)
            else:
                xs = x[b, :i]
                gram = xs @ prior_cov @ xs.T + sigma2 * torch.eye(i, dtype=torch.float64)
                w = prior_cov @ xs.T @ torch.linalg.solve(gram, y[b, :i])
                expected = x[b, i] @ w
            assert float(ridge[b, i]) == pytest.approx(float(expected), abs=1e-4)


def test_prior_second_moment_is_isotropic_with_scale_s_over_d():
    fam = make_family(name="sparse_linreg", dim=5, sparsity=2, n_concepts=3, seq_len=12)
    w = fam.sample_prior(40_000, torch.Generator().manual_seed(0)).double()
    second = w.T @ w / w.shape[0]
    # Monte Carlo: each entry has a standard error of about 0.003; the tolerance is 4 of them
    assert torch.allclose(second, (2 / 5) * torch.eye(5, dtype=torch.float64), atol=0.012)
