"""Task decodability: planted clusters, shuffled labels, leak-free splits, sweep formats.

Tolerances are stated where they are used. Shuffled labels: LOO-kNN and probe accuracies
are averages of ``n`` near-independent Bernoulli(chance) trials, so their standard error is
``sqrt(c (1 - c) / n)``; single draws must land within 4 standard errors of chance and the
mean over 20 permutations within 1.5 % of it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from tvlens.analyses.decodability import (
    DEFAULT_K,
    chance_level,
    collect_representations,
    decodability,
    decodability_table,
    default_label,
    example_positions,
    knn_loo_accuracy,
    knn_loo_predict,
    knn_neighbours,
    probe_accuracy,
    probe_predict,
    stratified_split,
    summarise,
    task_decodability,
)
from tvlens.hooks import capture, hook_name
from tvlens.models import ModelConfig, TaskModel
from tvlens.tasks import make_family


def clusters(n_per: int, n_classes: int, d: int, sep: float, seed: int = 0):
    """Gaussian clusters with unit noise around centres ``sep`` apart (random directions)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, d, generator=g)
    centres = sep * centres / centres.norm(dim=-1, keepdim=True)
    labels = torch.arange(n_classes).repeat_interleave(n_per)
    x = centres[labels] + torch.randn(labels.shape[0], d, generator=g)
    perm = torch.randperm(labels.shape[0], generator=g)
    return x[perm], labels[perm]


def test_paper_default_is_leave_one_out_knn_with_k_10():
    assert DEFAULT_K == 10
    df = decodability(*clusters(20, 3, 5, 30.0))
    assert df["method"].tolist() == ["knn", "probe"]
    assert df.loc[df["method"] == "knn", "k"].item() == 10


def test_planted_well_separated_clusters_decode_perfectly():
    x, y = clusters(100, 4, 16, sep=40.0)  # centres 40 apart (≈ 28σ per coordinate pair)
    df = decodability(x, y, shuffled=True)
    assert (df["td"] == 1.0).all()
    assert (df["chance"] == 0.25).all()
    # numpy input gives the same numbers
    df_np = decodability(x.numpy(), y.numpy(), shuffled=True)
    pd.testing.assert_frame_equal(df, df_np)


@pytest.mark.parametrize("method", ["knn", "probe"])
def test_shuffled_labels_give_chance_within_stated_tolerance(method):
    n, c = 400, 4
    x, y = clusters(n // c, c, 16, sep=40.0, seed=2)
    se = math.sqrt(0.25 * 0.75 / n)
    accs = []
    for seed in range(20 if method == "knn" else 8):
        perm = y[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]
        acc = knn_loo_accuracy(x, perm) if method == "knn" else probe_accuracy(x, perm, seed=seed)
        test_se = se if method == "knn" else math.sqrt(0.25 * 0.75 / 120)
        assert abs(acc - 0.25) < 4 * test_se, (seed, acc)
        accs.append(acc)
    assert abs(np.mean(accs) - 0.25) < (0.015 if method == "knn" else 0.03)
    # the shuffled column of decodability is this baseline
    df = decodability(x, y, [method], shuffled=True)
    assert df["td"].item() == 1.0
    assert abs(df["shuffled"].item() - 0.25) < 4 * se * (1 if method == "knn" else 2)


def test_leave_one_out_never_uses_the_point_itself():
    # every point far from all others and alone in its class: including itself would give
    # accuracy 1 with k = 1; leave-one-out must get every point wrong
    x = 100.0 * torch.eye(30)
    y = torch.arange(30)
    assert knn_loo_accuracy(x, y, k=1) == 0.0
    nbr = knn_neighbours(x + 0.01 * torch.randn(30, 30), k=5)
    assert not (nbr == torch.arange(30)[:, None]).any()
    # exact duplicates: each point's nearest other point is its twin (a different row)
    twins = torch.cat([x[:10], x[:10]])
    nbr = knn_neighbours(twins, k=1).squeeze(1)
    assert torch.equal(nbr, torch.cat([torch.arange(10, 20), torch.arange(10)]))


def test_leave_one_out_matches_sklearn_fitted_without_the_point():
    """Closed-form check: LOO kNN at point i equals sklearn's kNN fitted on the other n−1
    points (odd k and two classes, so no vote ties)."""
    x, y = clusters(30, 2, 3, sep=1.5, seed=4)  # overlapping clusters: many errors
    k = 5
    ours = knn_loo_predict(x, y, k)
    for i in range(0, 60, 3):
        keep = torch.arange(60) != i
        clf = KNeighborsClassifier(n_neighbors=k).fit(x[keep].numpy(), y[keep].numpy())
        assert ours[i].item() == clf.predict(x[i : i + 1].numpy())[0]
    assert 0.55 < float((ours == y).float().mean()) < 0.98


def test_knn_vote_tie_goes_to_the_nearer_neighbour():
    # point 0 has neighbours at distance 1 (class 1) and 2 (class 2): a 1-1 tie at k = 2
    x = torch.tensor([[0.0], [1.0], [-2.0], [50.0], [60.0]])
    y = torch.tensor([0, 1, 2, 1, 2])
    assert knn_loo_predict(x, y, k=2)[0].item() == 1


def test_probe_split_is_disjoint_stratified_and_deterministic():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    train, test = stratified_split(y, test_frac=0.3, seed=0)
    assert set(train).isdisjoint(test)
    assert sorted([*train, *test]) == list(range(100))
    assert np.bincount(y.numpy()[test]).tolist() == [15, 9, 6]
    again = stratified_split(y, test_frac=0.3, seed=0)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], test)
    # predictions are only ever made for held-out rows
    x = torch.randn(100, 3)
    idx, pred = probe_predict(x, y, seed=0)
    assert np.array_equal(idx, test) and pred.shape == test.shape


def test_probe_cannot_memorise_through_the_split():
    """More dimensions than prompts: the probe fits any labelling of its training rows, so
    a split that leaked training rows into the test set would score far above chance."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(200, 500, generator=g)
    y = torch.randint(0, 2, (200,), generator=g)
    test, pred = probe_predict(x, y)
    assert abs(float((pred == y.numpy()[test]).mean()) - 0.5) < 4 * math.sqrt(0.25 / 60)


def test_chance_is_the_majority_rate():
    assert chance_level(torch.tensor([0, 0, 0, 1])) == 0.75
    assert chance_level(np.array([2, 2, 1, 1])) == 0.5


def test_bad_inputs_name_the_problem_and_the_fix():
    x, y = clusters(10, 2, 3, 10.0)
    with pytest.raises(ValueError, match="one label per row"):
        decodability(x, y[:-1])
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        decodability(x[None], y)
    with pytest.raises(ValueError, match="lower k"):
        knn_loo_accuracy(x, y, k=20)
    with pytest.raises(ValueError, match="choose from"):
        decodability(x, y, ["svm"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="return_inverse"):
        decodability(x.numpy(), np.array(["a", "b"] * 10))
    with pytest.raises(ValueError, match="NaN"):
        decodability(x * float("nan"), y)
    with pytest.raises(ValueError, match="fewer than 2"):
        stratified_split(torch.tensor([0, 0, 0, 1]))


# ------------------------------------------------------------------------------ sweeps
def _planted_sweep(n_per: int = 40):
    """``[N, L=3, P=2, d]``: layer 0 noise, layer 1 weak signal, layer 2 clean clusters;
    position 1 holds twice position 0's signal."""
    g = torch.Generator().manual_seed(7)
    y = torch.arange(3).repeat(n_per)
    centres = torch.randn(3, 8, generator=g)
    centres = centres / centres.norm(dim=-1, keepdim=True)
    reps = torch.randn(y.shape[0], 3, 2, 8, generator=g)
    for layer, strength in [(1, 1.0), (2, 20.0)]:
        for pos in range(2):
            reps[:, layer, pos] += (pos + 1) * strength * centres[y]
    return reps, y


def test_sweep_over_layers_and_examples_is_tidy_and_ordered():
    reps, y = _planted_sweep()
    df = decodability_table(reps, y, n_examples=[1, 5], positions=[2, 10], shuffled=True)
    assert len(df) == 2 * 3 * 2
    assert list(df.columns[:4]) == ["method", "layer", "n_examples", "pos"]
    assert {"td", "chance", "shuffled", "n", "n_classes", "k"} <= set(df.columns)
    knn = df[df["method"] == "knn"].set_index(["layer", "n_examples"])["td"]
    assert knn[(2, 1)] == 1.0 and knn[(2, 5)] == 1.0
    assert knn[(0, 1)] < 0.6 and knn[(0, 5)] < 0.6  # noise: near chance 1/3
    assert knn[(1, 5)] > knn[(1, 1)]  # more signal at the later position
    assert np.allclose(df["chance"], 1 / 3)
    assert set(df.loc[df["n_examples"] == 5, "pos"]) == {10}
    s = summarise(df)
    assert s.set_index("method").loc["knn", "best_layer"] == 2


def test_sweep_from_a_cache_and_from_per_count_prompt_sets():
    reps, y = _planted_sweep()
    base = decodability_table(reps, y, layers=[0, 1, 2], methods=["knn"])
    # a cache of hook names → [N, P, d], in any key order
    cache = {hook_name(layer): reps[:, layer] for layer in (2, 0, 1)}
    from_cache = decodability_table(cache, y, methods=["knn"])
    pd.testing.assert_frame_equal(base, from_cache)
    # one prompt set per example count: {n: [N, L, d]}, labels shared or per count
    per = {0: reps[:, :, 0].numpy(), 1: reps[:, :, 1].numpy()}
    df = decodability_table(per, {0: y, 1: y}, methods=["knn"])
    merged = df.merge(base, on=["method", "layer", "n_examples"], suffixes=("", "_base"))
    assert len(merged) == 6
    assert np.allclose(merged["td"], merged["td_base"])
    with pytest.raises(ValueError, match="one hook point per layer|several hook points"):
        decodability_table({hook_name(0): reps[:, 0], hook_name(0, "resid_pre"): reps[:, 1]}, y)
    with pytest.raises(ValueError, match=r"\[n, layer, pos, d\]"):
        decodability_table(reps[:, 0], y)


# ------------------------------------------------------------------------ with a model
def _tiny(family_name: str = "dice", **kw):
    family = make_family(name=family_name, **kw)
    model = TaskModel(ModelConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=32, seed=1), family)
    return model, family


def test_regression_query_positions_are_the_x_tokens_after_n_examples():
    fam = make_family(name="sparse_linreg", dim=4, sparsity=1, n_concepts=2, seq_len=12)
    assert example_positions(fam, [0, 1, 5]) == [0, 2, 10]
    assert fam.sample("ood", 1).target_mask[0, [0, 2, 10]].all()  # a prediction is scored there
    with pytest.raises(ValueError, match="0..5"):
        example_positions(fam, [6])
    dice = make_family(name="dice", seq_len=8)
    assert example_positions(dice, [0, 7]) == [0, 7]
    assert default_label(fam) == ("concept", "ood") and default_label(dice) == ("task", "major")


def test_representations_are_the_bridge_cache_at_the_query_positions():
    model, fam = _tiny("sparse_linreg", dim=4, sparsity=1, n_concepts=2, seq_len=12)
    r = collect_representations(model, fam, n=20, n_examples=[0, 3], layers=[1], seed=3)
    assert r.reps.shape == (20, 1, 2, 16)
    assert r.label == "concept" and torch.equal(r.labels, fam.concept_labels(r.batch))
    acts = capture(model.bridge, r.batch.inputs, [hook_name(1)])[hook_name(1)]
    assert torch.allclose(r.reps[:, 0], acts[:, [0, 6]])
    again = collect_representations(model, fam, n=20, n_examples=[0, 3], layers=[1], seed=3)
    assert torch.equal(again.reps, r.reps)  # same prompts for the same seed


def test_task_decodability_end_to_end_on_a_token_family():
    model, fam = _tiny("dice", seq_len=8)
    df = task_decodability(model, fam, n=60, n_examples=[0, 7], shuffled=True)
    assert len(df) == 2 * 2 * 2  # methods × layers × example counts
    assert (df["label"] == "task").all() and (df["n_classes"] == 3).all()
    # with no context there is nothing to decode: every prompt starts with the same BOS
    zero = df[df["n_examples"] == 0]
    assert (zero["td"] <= zero["chance"] + 0.2).all()
    with pytest.raises(ValueError, match="no concepts"):
        task_decodability(model, fam, label="concept", n=30)


def test_knn_neighbours_match_scikit_learn_leave_one_out():
    from sklearn.neighbors import NearestNeighbors

    from tvlens.analyses.decodability import knn_neighbours

    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(0))
    ours = knn_neighbours(x, k=6)
    # kneighbors() without X queries every training point and excludes the point itself
    theirs = NearestNeighbors(n_neighbors=6).fit(x.numpy()).kneighbors(return_distance=False)
    assert torch.equal(ours, torch.from_numpy(theirs))
