"""Null baselines against planted cases whose values are known in closed form."""

from __future__ import annotations

import math

import pytest
import torch
from test_geometry import planted_setup

from tvlens.analyses.baselines import (
    READABLE_NATS,
    alignment_baselines,
    heldout_minor,
    minor_basis,
    random_share,
    reference_gap_rows,
    share_rows,
    top_share,
    variance_share,
)
from tvlens.analyses.geometry import BetaFit, fit_beta
from tvlens.analyses.task_vectors import TaskVectors
from tvlens.tasks import family_config, make_family


def planted_spectrum(spectrum: list[float], n: int = 200, seed: int = 0):
    """States whose centred covariance has exactly the principal variances ``spectrum``
    along known orthonormal directions (rows of the returned basis)."""
    g = torch.Generator().manual_seed(seed)
    d = len(spectrum)
    u, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64))
    u = u - u.mean(0)  # centred columns stay orthogonal only approximately: re-orthonormalise
    u, _ = torch.linalg.qr(u)
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    x = u @ torch.diag(torch.tensor(spectrum, dtype=torch.float64).sqrt()) @ v.T
    return x + 5.0, v.T  # an offset: shares are about the states' own mean


def test_variance_share_and_top_share_closed_form():
    spectrum = [9.0, 4.0, 1.0, 0.5, 0.25, 0.25]
    x, dirs = planted_spectrum(spectrum)
    total = sum(spectrum)
    # the planted principal directions hold exactly their variances
    assert variance_share(x, dirs[:2]) == pytest.approx(13.0 / total, abs=1e-9)
    assert variance_share(x, dirs[2:4]) == pytest.approx(1.5 / total, abs=1e-9)
    assert variance_share(x, dirs) == pytest.approx(1.0, abs=1e-9)
    # the ceiling of rank r is the top r variances, and no subspace beats it
    for r in range(1, 6):
        assert top_share(x, r) == pytest.approx(sum(spectrum[:r]) / total, abs=1e-9)
        assert variance_share(x, dirs[r - 1 : r]) <= top_share(x, 1) + 1e-12


def test_random_share_expectation_is_rank_over_d():
    x, _ = planted_spectrum([5.0, 3.0, 2.0, 1.0, 1.0, 0.5, 0.5, 0.25], n=300)
    d, r, n_draws = 8, 3, 400
    mean, sd = random_share(x, r, n_draws=n_draws, seed=1)
    # E[share] = r / d for a uniformly random r-dim subspace, whatever the states
    assert mean == pytest.approx(r / d, abs=4 * sd / math.sqrt(n_draws))
    assert sd > 0
    # seeded: the same draws again
    assert random_share(x, r, n_draws=8, seed=1) == random_share(x, r, n_draws=8, seed=1)


def test_share_rows_name_floor_and_ceiling():
    x, dirs = planted_spectrum([9.0, 4.0, 1.0, 1.0], n=100)
    rows = share_rows(x, {"planted": dirs[:1], "empty": dirs[:0]}, n_draws=16)
    assert [r["subspace"] for r in rows] == ["planted"]  # an empty subspace is skipped
    r = rows[0]
    assert r["share"] == pytest.approx(r["top_share"], abs=1e-9)  # the top PC is planted
    assert r["over_random"] == pytest.approx(r["share"] / r["random_share"])
    assert r["rank"] == 1 and r["n_states"] == 100


def test_variance_share_refuses_constant_states():
    with pytest.raises(ValueError, match="do not vary"):
        variance_share(torch.ones(5, 3), torch.eye(3)[:1])


def test_minor_basis_and_heldout_minor():
    family = make_family(family_config(name="dice", k=3, seq_len=8, seed=0))
    means = torch.randn(3 + 4, 10, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([0, 1, 2, 3, 5, 6, 9])
    tv = TaskVectors(ids, 3, [0], "resid_post", None, {0: means})
    basis = minor_basis(tv, 0)
    assert basis.shape == (3, 10)  # 4 minors about their own mean span 3 dimensions
    centred = means[3:] - means[3:].mean(0)
    assert torch.allclose((centred @ basis.T) @ basis, centred, atol=1e-5)
    batch = family.sample("minor", 200, seed=0)
    held = heldout_minor(batch, tv)
    assert not torch.isin(held.task_ids, ids[3:]).any()
    assert held.size == int((~torch.isin(batch.task_ids, ids[3:])).sum()) > 0
    # fewer than two minors: no span
    tv1 = TaskVectors(ids[:4], 3, [0], "resid_post", None, {0: means[:4]})
    assert minor_basis(tv1, 0).shape == (0, 10)


def test_alignment_baselines_closed_form():
    # 2 sequences of true task 0, 3 positions, 3 major tasks; β equals the posterior
    post = torch.tensor(
        [
            [[1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]],
            [[1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]],
        ]
    )
    fit = BetaFit([0], torch.arange(3), {0: post.clone()}, post, torch.tensor([0, 0]))
    row = alignment_baselines(fit, min_pos=1).iloc[0]
    assert row["corr"] == pytest.approx(1.0) and row["tv"] == pytest.approx(0.0)
    # mixed positions: only the [0.5, 0.5, 0] ones (max posterior < 0.9)
    assert row["n_states_mixed"] == 2 and row["n_states"] == 4
    assert row["tv_one_hot_mixed"] == pytest.approx(0.5)  # ½(0.5 + 0.5 + 0)
    assert row["tv_prior_mixed"] == pytest.approx(1 / 3)  # ½(1/6 + 1/6 + 1/3)
    assert row["cosine_one_hot_mixed"] == pytest.approx(0.5 / math.sqrt(0.5))
    # over all positions ≥ 1 the one-hot predictor is right half the time
    assert row["tv_one_hot"] == pytest.approx(0.25)
    assert "corr_prior" not in row  # a constant predictor has no correlation


def test_planted_model_beats_the_one_hot_baseline_where_the_posterior_is_mixed():
    family, model, tv = planted_setup(k=-1, seq_len=12)
    batch = family.sample("major", 64, seed=0)
    row = alignment_baselines(fit_beta(model, family, tv, batch)).iloc[0]
    # the planted β is the exact posterior: perfect, where the one-hot baseline is not
    assert row["corr_mixed"] == pytest.approx(1.0, abs=1e-4)
    assert row["corr_one_hot_mixed"] < 0.95
    assert row["n_states_mixed"] > 0


def test_alignment_baselines_refuse_non_major_sequences():
    post = torch.full((1, 2, 3), 1 / 3)
    fit = BetaFit([0], torch.arange(2), {0: post}, post, torch.tensor([-1]))
    with pytest.raises(ValueError, match="major"):
        alignment_baselines(fit, min_pos=0)


@pytest.mark.parametrize("which", ["retrieval", "learning"])
def test_reference_gap_places_each_reference_on_its_own_side(which):
    family = make_family(family_config(name="dice", k=-1, vocab=16, seq_len=32, seed=0))
    batch = family.sample("ood", 128, seed=0)
    pred = getattr(family, f"{which}_predictive")(batch)
    rows = reference_gap_rows(family, batch, pred, bands=[(16, 32)])
    r = rows[0]
    assert r[f"gap_{which}"] == pytest.approx(0.0, abs=1e-6)
    assert r[f"div_{which}"] == pytest.approx(0.0, abs=1e-6)
    assert r["ref_gap"] == pytest.approx(r["loss_retrieval"] - r["loss_learning"])
    # 3 tasks on 16 symbols: retrieval is far worse than the learner on OOD tasks
    assert r["ref_gap"] > READABLE_NATS and r["readable"]
    assert r["nearer"] == which
    assert abs(r["margin_loss"]) == pytest.approx(r["ref_gap"], rel=1e-6)
    assert r["ref_kl"] > 0 and r["loss_se"] > 0


def test_reference_gap_flags_references_too_close_to_read():
    # with a pool the size of the simplex's resolution the references nearly coincide on
    # the second half of a short context: the table must say the mode cannot be read
    family = make_family(family_config(name="dice", k=12, vocab=2, seq_len=16, seed=0))
    batch = family.sample("ood", 64, seed=0)
    r = reference_gap_rows(family, batch, family.learning_predictive(batch), [(8, 16)])[0]
    assert abs(r["ref_gap"]) < READABLE_NATS
    assert not r["readable"] and r["nearer"] == "unreadable"
