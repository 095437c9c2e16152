"""Task vectors and the ANOVA decomposition, checked against direct computations."""

from __future__ import annotations

import pytest
import torch

from tvlens.analyses.task_vectors import (
    anova_fit,
    anova_r2,
    sample_tasks,
    select_tasks,
    task_vectors,
)
from tvlens.hooks import capture, hook_name, resolve_positions
from tvlens.models import TaskModel
from tvlens.models.config import ModelConfig
from tvlens.tasks import make_family
from tvlens.tasks.base import family_config


@pytest.fixture(scope="module")
def setup():
    family = make_family(family_config(name="dice", k=3, seq_len=12, seed=2))
    model = TaskModel(ModelConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=32, seed=4), family)
    return family, model.eval()


def test_task_means_equal_direct_averages(setup):
    family, model = setup
    positions = slice(-4, None)
    tv = task_vectors(model, family, tasks="all", n_per_task=6, positions=positions, batch_size=5)
    ids = select_tasks(family, "all")
    assert torch.equal(tv.task_ids, ids) and tv.n_major == family.n_major
    batch = sample_tasks(family, ids, 6, seed=0)
    for layer in (0, 1):
        h = capture(model.bridge, batch.inputs, [hook_name(layer)], positions)[hook_name(layer)]
        direct = torch.stack([h[batch.task_ids == t].mean((0, 1)) for t in ids])
        torch.testing.assert_close(tv.mean(layer), direct, atol=1e-5, rtol=0)
        # θ is centred on the major-task mean; the major θ's span a rank M − 1 subspace
        theta = tv.theta(layer)
        torch.testing.assert_close(
            theta[: family.n_major].sum(0), torch.zeros(16), atol=1e-5, rtol=0
        )
        basis = tv.basis(layer)
        assert basis.shape == (family.n_major - 1, 16)
        torch.testing.assert_close(basis @ basis.T, torch.eye(basis.shape[0]), atol=1e-5, rtol=0)
    frame = tv.to_frame()
    assert len(frame) == 2 * len(ids) and frame["major"].sum() == 2 * family.n_major


def test_task_vectors_from_a_given_batch(setup):
    family, model = setup
    batch = family.sample("major", 30, seed=3)
    tv = task_vectors(model, family, layers=[1], positions=-1, batch=batch)
    h = capture(model.bridge, batch.inputs, [hook_name(1)], -1)[hook_name(1)][:, 0]
    direct = torch.stack([h[batch.task_ids == t].mean(0) for t in range(family.n_major)])
    torch.testing.assert_close(tv.mean(1), direct, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="cover every major task"):
        task_vectors(model, family, batch=family.sample("ood", 8))
    with pytest.raises(ValueError, match="not valid for a 2-layer model"):
        task_vectors(model, family, layers=[2])
    with pytest.raises(ValueError, match="choose 'major' or 'all'"):
        task_vectors(model, family, tasks="minor")


def test_anova_fit_on_planted_additive_effects():
    g = torch.Generator().manual_seed(0)
    groups = torch.arange(600) % 5
    tokens = (torch.arange(600) // 5) % 7
    mu, theta, nu = (torch.randn(s, 8, generator=g, dtype=torch.float64) for s in (1, 5, 7))
    h = mu + theta[groups] + nu[tokens]
    r_task, r_both = anova_fit(h, groups, tokens)
    assert r_both.abs().max() < 1e-5  # the additive model is exact
    means = torch.stack([h[groups == k].mean(0) for k in range(5)])
    torch.testing.assert_close(r_task.double(), h - means[groups], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="one group and one token"):
        anova_fit(h, groups[:-1], tokens)


def test_anova_r2_table(setup):
    family, model = setup
    df = anova_r2(model, family, n_per_task=4)
    assert set(df["split"]) == {"major", "minor"} and set(df["layer"]) == {0, 1}
    assert (df["r2_task"] <= 1).all() and (df["r2_task_token"] <= 1 + 1e-6).all()
    n_minor = min(32, family.n_minor)
    major = df[df["split"] == "major"]["n_states"].iloc[0]
    assert major == family.n_major * 4 * len(resolve_positions(slice(-16, None), 12))
    assert df[df["split"] == "minor"]["n_states"].iloc[0] == major // family.n_major * n_minor
