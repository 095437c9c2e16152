"""Sufficient-statistic probes: the statistics' closed forms and probes on planted states."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import tiny_config

from tvlens.analyses.probes import analyse_probes, probe_table, sufficient_statistics
from tvlens.hooks import orthonormal_basis
from tvlens.models import train
from tvlens.tasks import make_family
from tvlens.tasks.base import Batch, family_config


def _batch(targets: list[list[int]], bos: int) -> Batch:
    tg = torch.tensor(targets)
    inputs = torch.cat([torch.full((tg.shape[0], 1), bos), tg[:, :-1]], dim=1)
    ids = torch.zeros(tg.shape[0], dtype=torch.long)
    return Batch(inputs, tg, torch.ones_like(tg, dtype=torch.bool), ids, ids, "x")


def test_dice_statistics_are_running_frequencies():
    fam = make_family(family_config(name="dice", vocab=3, seq_len=5))
    s = sufficient_statistics(fam, _batch([[0, 2, 2, 1, 0]], bos=3))[0]
    want = torch.tensor([[0, 0, 0], [1, 0, 0], [1 / 2, 0, 1 / 2], [1 / 3, 0, 2 / 3],
                         [1 / 4, 1 / 4, 2 / 4]])  # fmt: skip
    torch.testing.assert_close(s, want)


def test_markov_statistics_are_normalised_bigram_counts():
    fam = make_family(family_config(name="markov", vocab=2, seq_len=5))
    # x = 0 1 1 0 1: transitions seen before t: t=2: (0→1); t=3: +(1→1); t=4: +(1→0)
    s = sufficient_statistics(fam, _batch([[0, 1, 1, 0, 1]], bos=2))[0].view(5, 2, 2)
    torch.testing.assert_close(s[0], torch.zeros(2, 2))
    torch.testing.assert_close(s[1], torch.zeros(2, 2))  # x_1 follows BOS: not a transition
    torch.testing.assert_close(s[2], torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
    torch.testing.assert_close(s[4], torch.tensor([[0.0, 1.0], [1.0, 1.0]]) / 3)


def test_linreg_statistics_give_the_ridge_reference():
    fam = make_family(family_config(name="linreg", dim=3, seq_len=12, noise=0.5))
    batch = fam.sample("ood", 4, seed=0)
    stats = sufficient_statistics(fam, batch)[:, 0::2]  # at x positions: examples before
    n = torch.arange(6).clamp_min(1).view(1, -1, 1).float()
    d, iu = 3, torch.triu_indices(3, 3)
    xx = torch.zeros(4, 6, d, d)
    xx[:, :, iu[0], iu[1]] = stats[..., :6] * n
    xx = xx + xx.transpose(-1, -2) - torch.diag_embed(torch.diagonal(xx, dim1=-2, dim2=-1))
    xy = stats[..., 6:] * n
    w = torch.linalg.solve(xx + 0.25 * torch.eye(3), xy.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(w, fam.ridge_weights(batch), atol=1e-4, rtol=1e-4)


def planted(where: str, n=300, p=4, d=12, s=2, seed=0):
    """States = centre + (task-plane noise) + statistics written into the task plane
    (``where='task'``) or into directions orthogonal to it (``'orth'``)."""
    g = torch.Generator().manual_seed(seed)
    basis = orthonormal_basis(torch.randn(2, d, generator=g))
    q = torch.linalg.qr(torch.randn(d, d, generator=g))[0].T
    orth = q - (q @ basis.T) @ basis
    orth = orthonormal_basis(orth)[:s]
    stats = torch.rand(n, p, s, generator=g)
    centre = torch.randn(d, generator=g)
    if where == "task":
        h = centre + stats @ basis + 0.3 * torch.randn(n, p, 1, generator=g) * orth[0]
    else:
        h = centre + stats @ orth + 0.3 * torch.randn(n, p, 2, generator=g) @ basis
    return {0: h}, stats, {0: basis}, {0: centre}


@pytest.mark.parametrize("where", ["orth", "task"])
def test_probes_find_where_planted_statistics_live(where):
    states, stats, bases, centres = planted(where)
    df, ang = probe_table(states, stats, bases, centres, split="ood")
    r2 = df.set_index("view")["r2"]
    assert r2["full"] > 0.999
    other = "task" if where == "orth" else "orth"
    assert r2[where] > 0.999 and r2[other] < 0.05
    assert r2["random"] < 0.9  # a random 2-D view of 12-D states misses most of it
    angles = ang["angle_deg"].to_numpy()
    if where == "orth":
        np.testing.assert_allclose(angles, 90.0, atol=1.0)
    else:
        np.testing.assert_allclose(angles, 0.0, atol=1.0)
    assert df.set_index("view")["rank"].to_dict() == {"full": 12, "task": 2, "orth": 10,
                                                      "random": 2, "orth_random": 2,
                                                      "orth_top": 2}  # fmt: skip
    # views of equal dimension off the task plane: the complement's top components hold
    # statistics planted there (so does a generic random plane in the complement: nothing
    # else varies there, so its 2 x 2 projection of the planted plane is invertible)
    if where == "orth":
        assert r2["orth_top"] > 0.999 and r2["orth_random"] > 0.99
    else:
        assert r2["orth_top"] < 0.05 and r2["orth_random"] < 0.05
    # the chance reference: random 2-D planes in R^12 sit at large angles to the task
    # plane, and the planted read-outs are beyond it (orth) or far below it (task)
    assert (ang["random_angle_p05"] <= ang["random_angle_mean"]).all()
    assert ang["random_angle_mean"].between(30, 90).all()


def test_probe_table_rejects_mismatched_layouts():
    states, stats, bases, centres = planted("orth")
    with pytest.raises(ValueError, match="same sequences and positions"):
        probe_table(states, stats[:, :2], bases, centres)


def test_analyse_probes_on_a_trained_run(tmp_path):
    run = train(tiny_config("dice", steps=8, k=1), tmp_path / "run", progress=False)
    tables = analyse_probes(run, n=32, n_per_task=8, last_positions=4)
    df = tables["probes"]
    assert set(df["view"]) == {"full", "task", "orth", "random", "orth_random", "orth_top"}
    assert set(df["split"]) == {"major", "ood"} and (df["k"] == 1).all()
    assert df["r2"].notna().all() and (df["r2"] <= 1.0).all()
    assert (tmp_path / "run" / "analyses" / "probes.csv").exists()
    assert tables["probe_angles"]["angle_deg"].between(0, 90.001).all()
