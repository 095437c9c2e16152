"""Every family's exact references against brute force or an independent closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tvlens.tasks import ConfigError, family_config, make_family


def _mixture_predictive_bruteforce(family, batch):
    """P(target_t | earlier targets) under the pool mixture, by explicit joint likelihoods."""
    b, t = batch.targets.shape
    prior = family.prior.double()
    out = torch.zeros(b, t, family.config.vocab, dtype=torch.float64)
    for i in range(b):
        for pos in range(t):
            joint = torch.zeros(family.config.vocab, dtype=torch.float64)
            for k in range(family.n_tasks):
                lik = prior[k].item()
                for j in range(pos):
                    lik *= _task_prob(family, k, batch, i, j, batch.targets[i, j].item())
                for v in range(family.config.vocab):
                    joint[v] += lik * _task_prob(family, k, batch, i, pos, v)
            out[i, pos] = joint / joint.sum()
    return out


def _task_prob(family, k, batch, i, pos, v):
    params = family.pool[k].double()
    if family.name == "dice":
        return params[v].item()
    if pos == 0:
        return 1.0 / family.config.vocab
    return params[batch.inputs[i, pos].item(), v].item()


@pytest.mark.parametrize("name", ["dice", "markov"])
def test_retrieval_predictive_matches_bruteforce(name):
    family = make_family(name=name, vocab=3, n_major=2, k=1, seq_len=6, seed=3)
    batch = family.sample("train", 4, seed=1)
    expected = _mixture_predictive_bruteforce(family, batch)
    got = family.retrieval_predictive(batch).double()
    assert torch.allclose(got, expected, atol=1e-6)
    post = family.retrieval_posterior(batch)
    assert torch.allclose(post.sum(-1), torch.ones(4, 6), atol=1e-6)
    assert torch.allclose(post[:, 0], family.prior.expand(4, -1))  # nothing seen yet


def _dirichlet_log_marginal(counts: np.ndarray) -> float:
    """log ∫ Π p_v^{n_v} dDir(1) = lgamma(V) − lgamma(V+n) + Σ lgamma(1+n_v)."""
    v, n = len(counts), counts.sum()
    return math.lgamma(v) - math.lgamma(v + n) + sum(math.lgamma(1 + c) for c in counts)


def test_dice_learning_is_dirichlet_multinomial_marginal_ratio():
    family = make_family(name="dice", vocab=4, seq_len=7)
    batch = family.sample("ood", 3, seed=2)
    got = family.learning_predictive(batch)
    for i in range(3):
        for pos in range(7):
            counts = np.bincount(batch.targets[i, :pos].numpy(), minlength=4)
            base = _dirichlet_log_marginal(counts)
            for v in range(4):
                nxt = counts.copy()
                nxt[v] += 1
                assert got[i, pos, v].item() == pytest.approx(
                    math.exp(_dirichlet_log_marginal(nxt) - base), rel=1e-5
                )


def test_markov_learning_is_per_row_dirichlet_marginal_ratio():
    v = 3
    family = make_family(name="markov", vocab=v, seq_len=9)
    batch = family.sample("ood", 3, seed=5)
    got = family.learning_predictive(batch)
    for i in range(3):
        x = batch.targets[i].tolist()
        for pos in range(9):
            if pos == 0:
                assert torch.allclose(got[i, 0], torch.full((v,), 1 / v))
                continue
            trans = np.zeros((v, v))
            for a, b in zip(x[: pos - 1], x[1:pos], strict=True):
                trans[a, b] += 1
            state = x[pos - 1]
            base = _dirichlet_log_marginal(trans[state])
            for nxt in range(v):
                row = trans[state].copy()
                row[nxt] += 1
                expect = math.exp(_dirichlet_log_marginal(row) - base)
                assert got[i, pos, nxt].item() == pytest.approx(expect, rel=1e-5)


def test_linreg_references_match_gaussian_closed_forms():
    family = make_family(name="linreg", dim=3, seq_len=10, n_major=3, k=1, noise=0.5)
    batch = family.sample("train", 2, seed=4)
    s2 = 0.25
    ridge = family.learning_predictive(batch)
    retr = family.retrieval_predictive(batch)
    post = family.retrieval_posterior(batch)
    pool = family.pool.double().numpy()
    prior = family.prior.double().numpy()
    for i in range(2):
        x = batch.inputs[i, 0::2, :3].double().numpy()
        y = batch.targets[i, 0::2].double().numpy()
        for n in range(5):
            xs, ys = x[:n], y[:n]
            # Bayesian posterior mean with prior N(0, I): Σ = (I + XᵀX/σ²)⁻¹, μ = Σ Xᵀy / σ²
            sigma = np.linalg.inv(np.eye(3) + xs.T @ xs / s2)
            mu = sigma @ xs.T @ ys / s2
            assert ridge[i, 2 * n].item() == pytest.approx(float(x[n] @ mu), abs=1e-4)
            # discrete posterior over the pool from Gaussian likelihoods
            loglik = np.array([-0.5 * ((ys - xs @ w) ** 2).sum() / s2 for w in pool])
            p = prior * np.exp(loglik - loglik.max())
            p /= p.sum()
            assert np.allclose(post[i, 2 * n].double().numpy(), p, atol=1e-5)
            assert retr[i, 2 * n].item() == pytest.approx(float(p @ (pool @ x[n])), abs=1e-4)


def test_true_predictive_is_the_generating_task():
    family = make_family(name="dice", k=2)
    batch = family.sample("minor", 5)
    assert (batch.task_ids >= family.n_major).all()
    assert torch.allclose(family.true_predictive(batch)[:, 3], family.pool[batch.task_ids])


def test_sampling_is_a_pure_function_of_seed_and_step():
    family = make_family(name="markov", k=3)
    a = family.sample("train", 8, seed=1, step=7)
    b = family.sample("train", 8, seed=1, step=7)
    c = family.sample("train", 8, seed=1, step=8)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.task_ids, b.task_ids)
    assert not torch.equal(a.inputs, c.inputs)
    # a fresh family object with the same config has the same pool
    assert torch.equal(make_family(name="markov", k=3).pool, family.pool)


def test_mixture_weights_and_empirical_frequencies():
    family = make_family(name="dice", n_major=3, k=3, p_minor=0.2, seq_len=4)
    assert torch.allclose(family.prior[:3], torch.full((3,), 0.8 / 3))
    assert torch.allclose(family.prior[3:], torch.full((8,), 0.2 / 8))
    ids = family.sample("train", 20000, seed=0).task_ids
    frac_minor = (ids >= 3).float().mean().item()
    assert abs(frac_minor - 0.2) < 0.015  # ~5 standard errors
    batch = family.sample("major", 3000, seed=1)
    task0 = batch.targets[batch.task_ids == 0].flatten()
    freq = torch.bincount(task0, minlength=6).float() / task0.numel()
    assert torch.allclose(freq, family.pool[0], atol=0.03)


def test_ood_tasks_are_fresh_draws():
    family = make_family(name="dice")
    batch = family.sample("ood", 16)
    assert (batch.task_ids == -1).all()
    dists = torch.cdist(batch.params, family.pool)
    assert dists.min() > 1e-4


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("k", -2, "family.k"),
        ("p_minor", 1.0, "family.p_minor"),
        ("p_minor", -0.1, "family.p_minor"),
        ("name", "dicee", "family.name"),
        ("n_major", 0, "family.n_major"),
    ],
)
def test_family_config_errors_name_the_field(field, value, match):
    with pytest.raises(ConfigError, match=match):
        make_family(family_config(), **{field: value})


def test_minor_split_without_minor_tasks_is_a_clear_error():
    with pytest.raises(ValueError, match="minor"):
        make_family(name="dice", k=-1).sample("minor", 2)
