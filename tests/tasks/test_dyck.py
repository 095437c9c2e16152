"""The Dyck family's sampler and exact references against brute-force enumeration."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tvlens.tasks import FAMILIES, make_family
from tvlens.tasks.base import ConfigError, family_config
from tvlens.tasks.dyck import Dyck, completions


def all_paths(n: int) -> list[tuple[int, ...]]:
    """Every Dyck path of n pairs, by enumerating ±1 strings."""
    out = []
    for steps in itertools.product((1, -1), repeat=2 * n):
        h = list(itertools.accumulate(steps))
        if min(h) >= 0 and h[-1] == 0:
            out.append(steps)
    return out


def dyck(n_pairs=3, **kw) -> Dyck:
    kw = {"vocab": 5, "seq_len": 16, "repeat_prob": 0.5, "seed": 0, **kw}
    return make_family(family_config("dyck", dyck_length=n_pairs, **kw))


def test_registered_and_catalan_counts():
    assert FAMILIES["dyck"] is Dyck
    for n in range(1, 7):
        assert len(all_paths(n)) == math.comb(2 * n, n) // (n + 1) == dyck(n).n_paths
    table = completions(8)
    # N(h, m) by enumeration of non-negative paths from height h ending at zero
    for m in range(9):
        for h in range(9):
            brute = sum(
                1
                for s in itertools.product((1, -1), repeat=m)
                if all(h + x >= 0 for x in itertools.accumulate(s)) and h + sum(s) == 0
            )
            assert table[m, h] == brute, (m, h)


def test_prior_is_uniform_over_dyck_paths():
    fam = dyck(3)
    g = torch.Generator().manual_seed(0)
    paths = fam.sample_prior(20000, g)
    valid = {p: 0 for p in all_paths(3)}
    for p in paths.long().tolist():
        valid[tuple(p)] += 1  # KeyError if a draw is not a Dyck path
    freq = torch.tensor(list(valid.values()), dtype=torch.float64) / 20000
    assert (freq - 1 / 5).abs().max() < 0.015  # 5 paths, sd of each share ≈ 0.003


def test_sequences_reveal_a_prefix_of_their_task_in_order():
    fam = dyck(3, seq_len=24, repeat_prob=0.4)
    batch = fam.sample("train", 64, seed=1)
    assert batch.inputs[:, 0].eq(fam.bos).all()
    torch.testing.assert_close(batch.inputs[:, 1:], batch.targets[:, :-1])
    for x, path in zip(batch.targets.tolist(), batch.params.long().tolist(), strict=True):
        shown = [1 if t == fam.up else -1 for t in x if t in (fam.up, fam.down)]
        assert len(shown) <= 6 and shown == path[: len(shown)]


def _prefix_steps(x: list[int], fam: Dyck) -> list[int]:
    return [1 if t == fam.up else -1 for t in x if t in (fam.up, fam.down)]


def test_learning_reference_matches_enumeration_of_consistent_paths():
    fam = dyck(4, seq_len=20, repeat_prob=0.6)
    paths = all_paths(4)
    batch = fam.sample("ood", 16, seed=2)
    pred = fam.learning_predictive(batch)
    s, r = fam.n_background, fam.repeat_prob
    for b in range(batch.size):
        x = batch.targets[b].tolist()
        for t in range(len(x)):
            prefix = _prefix_steps(x[:t], fam)
            if len(prefix) == 8:
                expect_up, due = 0.0, False
            else:
                ok = [p for p in paths if list(p[: len(prefix)]) == prefix]
                expect_up, due = sum(p[len(prefix)] == 1 for p in ok) / len(ok), True
            want = torch.full((fam.config.vocab,), (1 - r * due) / s)
            want[fam.up], want[fam.down] = r * due * expect_up, r * due * (1 - expect_up)
            torch.testing.assert_close(pred[b, t], want, atol=1e-6, rtol=0)


def test_retrieval_reference_matches_brute_force_posterior():
    fam = dyck(3, k=1, seq_len=14, repeat_prob=0.5, seed=4)  # 3 majors + 2 minors
    pool = fam.pool.long().tolist()
    prior = fam.prior.tolist()
    batch = fam.sample("train", 24, seed=3)
    post = fam.retrieval_posterior(batch)
    pred = fam.retrieval_predictive(batch)
    s, r = fam.n_background, fam.repeat_prob
    for b in range(batch.size):
        x = batch.targets[b].tolist()
        for t in range(len(x)):
            prefix = _prefix_steps(x[:t], fam)
            w = [prior[k] * (list(pool[k][: len(prefix)]) == prefix) for k in range(len(pool))]
            w = [v / sum(w) for v in w]  # the true task always agrees with its own prefix
            torch.testing.assert_close(post[b, t], torch.tensor(w), atol=1e-6, rtol=0)
            due = len(prefix) < 6
            p_up = sum(w[k] * (pool[k][len(prefix)] == 1) for k in range(len(pool))) if due else 0
            want = torch.full((fam.config.vocab,), (1 - r * due) / s)
            want[fam.up], want[fam.down] = r * due * p_up, r * due * (1 - p_up)
            torch.testing.assert_close(pred[b, t], want, atol=1e-6, rtol=0)
    # the generic mixture of per-task predictives gives the same answer
    torch.testing.assert_close(pred, fam.mix(post, fam.predictive(batch, fam.pool)), atol=1e-6,
                               rtol=0)  # fmt: skip


def test_predictive_is_a_distribution_and_true_task_has_finite_likelihood():
    fam = dyck(3, k=2, seq_len=20)
    batch = fam.sample("major", 32, seed=5)
    per = fam.predictive(batch, fam.pool)
    torch.testing.assert_close(per.sum(-1), torch.ones(per.shape[:-1]))
    ll = fam.target_loglik(batch, fam.pool)
    own = ll.gather(2, batch.task_ids[:, None, None].expand(-1, ll.shape[1], 1))
    assert own.min() > math.log(1e-6)  # the generating task never contradicts its sequence
    true = fam.true_predictive(batch)
    torch.testing.assert_close(true.sum(-1), torch.ones(true.shape[:-1]))


def test_ood_tasks_are_outside_the_pool_and_errors_name_the_fix():
    fam = dyck(3, k=1)  # 5 pool draws out of 5 paths may not cover them all
    codes = set(fam._codes(fam.pool).tolist())
    if len(codes) < fam.n_paths:
        ood = fam.sample("ood", 50, seed=0)
        assert not (set(fam._codes(ood.params).tolist()) & codes)
        assert (ood.task_ids == -1).all()
    full = dyck(1)  # one path only: the pool holds every task
    with pytest.raises(ConfigError, match="no OOD task exists"):
        full.sample("ood", 2)
    with pytest.raises(ConfigError, match="vocab"):
        dyck(3, vocab=2)
    with pytest.raises(ConfigError, match="repeat_prob"):
        dyck(3, repeat_prob=0.0)
