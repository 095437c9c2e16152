"""Dynamics of TD and ICL loss over checkpoints; correlations checked against closed forms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from tiny import tiny_config

from tvlens.analyses.decodability import collect_representations, knn_loo_accuracy
from tvlens.analyses.dynamics import (
    context_free_loss,
    decodability_dynamics,
    emergence_correlation,
    emergence_steps,
    group_scores,
    half_rise_step,
    reference_losses,
    td_and_loss,
    td_performance_correlation,
)
from tvlens.models import list_checkpoints, load_run, predict, train
from tvlens.tasks import make_family


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    cfg = tiny_config("sparse_linreg", steps=12, dim=4, sparsity=1, n_concepts=2, seq_len=12)
    return train(cfg, tmp_path_factory.mktemp("dyn") / "run", progress=False)


def test_pearson_and_spearman_match_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    df = pd.DataFrame({"td": x, "performance": 0.5 * x + rng.normal(size=30)})
    ours = td_performance_correlation(df)
    ref = stats.pearsonr(df["td"], df["performance"])
    assert ours["r"] == pytest.approx(ref[0]) and ours["p"] == pytest.approx(ref[1])
    assert ours["n"] == 30
    ours = td_performance_correlation(df, method="spearman")
    ref = stats.spearmanr(df["td"], df["performance"])
    assert ours["r"] == pytest.approx(ref[0])
    assert ours["p"] == pytest.approx(ref[1], rel=1e-6)


def test_within_group_correlation_is_the_ols_partial_correlation():
    """Controlling for a grouping equals the t-test of x in OLS y ~ x + group dummies."""
    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(5), 8)
    x = g + rng.normal(size=40)
    y = 2.0 * g + 0.3 * x + rng.normal(size=40)
    df = pd.DataFrame({"td": x, "performance": y, "n_examples": g})
    ours = td_performance_correlation(df, within="n_examples")
    design = np.column_stack([x, np.eye(5)[g]])
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ beta
    dof = 40 - design.shape[1]
    cov = resid @ resid / dof * np.linalg.inv(design.T @ design)
    t = beta[0] / np.sqrt(cov[0, 0])
    assert ours["p"] == pytest.approx(2 * stats.t.sf(abs(t), dof), rel=1e-6)
    assert ours["r"] == pytest.approx(t / np.sqrt(t * t + dof))
    # the pooled correlation is dominated by the shared dependence on the group
    assert td_performance_correlation(df)["r"] > 0.85 > ours["r"]


def test_correlation_is_nan_when_undefined_and_errors_name_the_column():
    df = pd.DataFrame({"td": [0.5, 0.5, 0.5, 0.5], "performance": [0.1, 0.2, 0.3, 0.4]})
    assert np.isnan(td_performance_correlation(df)["r"])
    with pytest.raises(KeyError, match="'loss' missing"):
        td_performance_correlation(df, y="loss")


def test_half_rise_step_interpolates_linearly():
    steps = [0, 10, 20, 30]
    assert half_rise_step(steps, [0.25, 0.25, 0.75, 1.0]) == pytest.approx(17.5)
    assert half_rise_step(steps, [2.0, 1.0, 0.5, 0.0]) == pytest.approx(10.0)  # falling
    assert np.isnan(half_rise_step(steps, [1.0, 1.0, 1.0, 1.0]))


def test_emergence_tables_on_a_planted_dynamics_frame():
    steps = np.array([0, 10, 20, 40, 80])
    td = np.array([0.25, 0.3, 0.6, 0.9, 0.95])
    loss = 2.0 - 1.5 * (td - 0.25) / 0.7  # loss falls exactly as TD rises
    dyn = pd.DataFrame(
        {
            "step": np.repeat(steps, 2),
            "method": "knn",
            "layer": np.tile([0, 1], 5),
            "n_examples": 7,
            "td": np.repeat(td, 2) * np.tile([1.0, 0.5], 5),
            "icl_loss": np.repeat(loss, 2),
            "icl_performance": 1 - np.repeat(loss, 2) / 2.0,
        }
    )
    corr = emergence_correlation(dyn).set_index("layer")
    assert corr["r"].tolist() == pytest.approx([1.0, 1.0])
    em = emergence_steps(dyn).set_index("layer")
    assert em.loc[0, "td_half_step"] == pytest.approx(em.loc[0, "loss_half_step"])


def test_context_free_loss_is_y_squared_for_regression_and_log_v_for_tokens():
    fam = make_family(name="sparse_linreg", dim=4, sparsity=1, n_concepts=2, seq_len=8)
    b = fam.sample("ood", 3)
    assert torch.allclose(context_free_loss(fam, b), fam.prediction_loss(torch.zeros(3, 8), b))
    dice = make_family(name="dice", seq_len=8)
    b = dice.sample("major", 3)
    uniform = torch.full((3, 8, 6), 1 / 6)
    assert torch.allclose(context_free_loss(dice, b), dice.prediction_loss(uniform, b))


def test_td_and_loss_scores_the_model_on_fixed_prompts(tiny_run):
    df = td_and_loss(tiny_run.model, tiny_run.family, n_examples=[0, 5], n=40, seed=2)
    assert len(df) == 2 * 2  # layers × example counts
    reps = collect_representations(tiny_run.model, tiny_run.family, n=40, n_examples=[0, 5], seed=2)
    row = df[(df["layer"] == 1) & (df["n_examples"] == 5)].iloc[0]
    assert row["td"] == knn_loo_accuracy(reps.reps[:, 1, 1], reps.labels)
    fam, batch = tiny_run.family, reps.batch
    loss = fam.prediction_loss(predict(tiny_run.model, fam, batch), batch)
    assert row["loss"] == pytest.approx(float(loss[:, 10].mean()), rel=1e-5)
    assert row["icl_loss"] == pytest.approx(float(loss.sum() / batch.target_mask.sum()), rel=1e-5)
    base = float(context_free_loss(fam, batch)[:, 10].mean())
    assert row["performance"] == pytest.approx(1 - row["loss"] / base, rel=1e-5)


def test_dynamics_covers_every_checkpoint_on_the_same_prompts(tiny_run):
    dyn = decodability_dynamics(tiny_run.dir, n_examples=[5], n=40, progress=False)
    steps = list_checkpoints(tiny_run.dir)
    assert sorted(dyn["step"].unique().tolist()) == steps
    assert len(dyn) == len(steps) * 2
    first = td_and_loss(
        load_run(tiny_run.dir, steps[0]).model, tiny_run.family, n_examples=[5], n=40
    )
    got = dyn[dyn["step"] == steps[0]].drop(columns="step").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, first)
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        decodability_dynamics(tiny_run.dir / "nothing")


def test_group_scores_recombine_into_the_overall_td_and_carry_references(tiny_run):
    reps = collect_representations(tiny_run.model, tiny_run.family, n=60, n_examples=[1, 5])
    g = group_scores(reps, tiny_run.model, tiny_run.family, layer=1)
    assert sorted(g["group"].unique().tolist()) == [0, 1]
    for pi, n_ex in enumerate([1, 5]):
        d = g[g["n_examples"] == n_ex]
        overall = knn_loo_accuracy(reps.reps[:, 1, pi], reps.labels)
        assert float((d["td"] * d["n"]).sum() / d["n"].sum()) == pytest.approx(overall)
    assert {"perf_oracle", "perf_bayes", "perf_learning", "perf_retrieval"} <= set(g.columns)
    # gap to the retrieval reference = loss − its loss, with its loss = base · (1 − perf)
    base = g["loss"] / (1 - g["performance"])
    assert np.allclose(g["gap_retrieval"], g["loss"] - base * (1 - g["perf_retrieval"]))
    with pytest.raises(ValueError, match="not captured"):
        group_scores(reps, tiny_run.model, tiny_run.family, layer=7)


def test_reference_losses_order_on_sparse_regression():
    fam = make_family(name="sparse_linreg", dim=6, sparsity=2, n_concepts=3, seq_len=16)
    b = fam.sample("ood", 600, seed=3)
    refs = {
        k: float(v[:, 6::2].sum() / b.target_mask[:, 6::2].sum())
        for k, v in reference_losses(fam, b).items()
    }
    assert refs["oracle"] < refs["bayes"] < refs["learning"]
