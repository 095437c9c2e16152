"""The reference code's metrics against hand-computed cases and planted structure."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tvlens.analyses.paper_metrics import (
    force_tokens,
    paper_affine_fit,
    paper_anova,
    paper_ood_r2,
    paper_r2,
    per_sequence_positions,
    task_batch,
    two_way_anova,
)
from tvlens.hooks import hook_name
from tvlens.tasks import make_family
from tvlens.tasks.base import family_config

HOOK = hook_name(0)


# ------------------------------------------------------------- hand-computed estimator
def test_paper_fit_and_r2_hand_computed():
    # centred anchors spanning the first two coordinates; y = (4, -2, 1, 1)
    theta = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [-1, -1, 0, 0]], dtype=torch.float64)
    y = torch.tensor([[4.0, -2.0, 1.0, 1.0]], dtype=torch.float64)
    lam, fitted = paper_affine_fit(y, theta)
    # W = (4, -2) on the first two anchors, shifted by (1 - 2) / 3 so that Σλ = 1
    torch.testing.assert_close(lam[0], torch.tensor([11 / 3, -7 / 3, -1 / 3], dtype=torch.float64))
    torch.testing.assert_close(fitted[0], torch.tensor([4.0, -2.0, 0.0, 0.0], dtype=torch.float64))
    # ‖y − ŷ‖² = 2; ȳ = 1 so Σ(y_d − ȳ)² = 9 + 9 + 0 + 0 = 18; R² = 1 − 2/18
    assert paper_r2(y, fitted).item() == pytest.approx(8 / 9, abs=1e-12)


def test_paper_r2_clamps_and_uses_each_vectors_own_mean():
    y = torch.tensor([[2.0, 1.0, 3.0, 0.0], [1.0, 1.0, 1.0, 3.0]], dtype=torch.float64)
    fitted = torch.tensor([[2.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    # row 0: res 9, ȳ = 1.5, tot 5 → −0.8 (clamped to 0); row 1: res 4, ȳ = 1.5, tot 3 → −1/3
    raw = paper_r2(y, fitted, clamp=False)
    torch.testing.assert_close(raw, torch.tensor([-0.8, -1 / 3], dtype=torch.float64))
    torch.testing.assert_close(paper_r2(y, fitted), torch.zeros(2, dtype=torch.float64))
    # a vector with the same residual but a spread-out own mean scores higher
    y2 = torch.tensor([[10.0, -10.0, 3.0, 0.0]], dtype=torch.float64)
    f2 = torch.tensor([[10.0, -10.0, 0.0, 0.0]], dtype=torch.float64)
    tot = ((y2 - y2.mean()) ** 2).sum()
    assert paper_r2(y2, f2).item() == pytest.approx(1 - 9 / tot.item())


def test_paper_fit_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same width"):
        paper_affine_fit(torch.zeros(2, 3), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="at least 2 anchors"):
        paper_affine_fit(torch.zeros(2, 3), torch.zeros(1, 3))


# --------------------------------------------------------------------- planted ANOVA
def planted_anova(n_task=3, n_tok=4, reps=5, d=6, inter=1.0, seed=0):
    """Balanced cells: μ + a_i + b_j + inter·c_ij + e with every effect centred, so the
    sums of squares have closed forms."""
    g = torch.Generator().manual_seed(seed)
    kw = {"generator": g, "dtype": torch.float64}
    a = torch.randn(n_task, d, **kw)
    a -= a.mean(0)
    b = torch.randn(n_tok, d, **kw)
    b -= b.mean(0)
    c = torch.randn(n_task, n_tok, d, **kw)
    c = c - c.mean(0, keepdim=True) - c.mean(1, keepdim=True) + c.mean((0, 1), keepdim=True)
    c = inter * c
    e = torch.randn(n_task, n_tok, reps, d, **kw)
    e -= e.mean(2, keepdim=True)
    mu = torch.randn(d, **kw)
    h = mu + a[:, None, None] + b[None, :, None] + c[:, :, None] + e
    tasks = torch.arange(n_task)[:, None, None].expand(n_task, n_tok, reps).flatten()
    toks = torch.arange(n_tok)[None, :, None].expand(n_task, n_tok, reps).flatten()
    ss = {
        "task": n_tok * reps * (a**2).sum(),
        "token": n_task * reps * (b**2).sum(),
        "inter": reps * (c**2).sum(),
        "within": (e**2).sum(),
    }
    return h.reshape(-1, d), tasks, toks, {k: float(v) for k, v in ss.items()}


@pytest.mark.parametrize("inter", [0.0, 1.0])
def test_two_way_anova_planted_closed_form(inter):
    h, tasks, toks, ss = planted_anova(inter=inter)
    tot = sum(ss.values())
    out = two_way_anova(h, tasks * 7 + 100, toks + 3)  # labels need not be 0..n-1
    assert out["eta2_task"] == pytest.approx(ss["task"] / tot, rel=1e-9)
    assert out["eta2_token"] == pytest.approx(ss["token"] / tot, rel=1e-9)
    assert out["eta2_interaction"] == pytest.approx(ss["inter"] / tot, rel=1e-9, abs=1e-12)
    assert out["separability"] == pytest.approx(1 - ss["inter"] / tot, rel=1e-9)
    assert out["task_vector_r2"] == pytest.approx(1 - ss["within"] / tot, rel=1e-9)
    assert out["additive_r2"] == pytest.approx((ss["task"] + ss["token"]) / tot, rel=1e-9)
    assert out["balanced"] == 1.0 and out["n_tasks"] == 3 and out["n_tokens"] == 4


def test_two_way_anova_rejects_one_task():
    with pytest.raises(ValueError, match="at least 2 tasks"):
        two_way_anova(torch.randn(4, 2), torch.zeros(4, dtype=torch.long), torch.arange(4))


# -------------------------------------------------------------- planted model (dice)
class FreqModel(torch.nn.Module):
    """A stand-in bridge: h_t = freq_t A + onehot(x_t) B (+ γ · freq_t ⊗ onehot(x_t) C),
    with freq_t the running frequency of the symbols read at positions 1..t."""

    def __init__(self, vocab: int, d: int = 10, gamma: float = 0.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.v, self.gamma = vocab, gamma
        self.A = torch.randn(vocab, d, generator=g, dtype=torch.float64)
        self.B = torch.randn(vocab + 1, d, generator=g, dtype=torch.float64)
        self.C = torch.randn(vocab * (vocab + 1), d, generator=g, dtype=torch.float64)
        self.cfg = SimpleNamespace(n_layers=1)
        self.hook_dict = {HOOK: None}

    def states(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs.long()
        oh = torch.nn.functional.one_hot(x.clamp_max(self.v - 1), self.v).double()
        oh[x == self.v] = 0.0  # BOS carries no count
        t = torch.arange(1, x.shape[1] + 1, dtype=torch.float64).view(1, -1, 1)
        freq = oh.cumsum(1) / t
        cur = torch.nn.functional.one_hot(x, self.v + 1).double()
        h = freq @ self.A + cur @ self.B
        if self.gamma:
            outer = (freq.unsqueeze(-1) * cur.unsqueeze(-2)).flatten(2)
            h = h + self.gamma * outer @ self.C
        return h

    def run_with_cache(self, inputs, names_filter=None):
        h = self.states(inputs).float()
        return h, {HOOK: h}


def test_paper_ood_r2_is_one_when_every_task_lies_in_the_plane():
    # V = 3: three generic majors span the whole 2-D simplex, so every OOD mean of a state
    # that is linear in the token frequencies lies in the major plane.
    fam = make_family(family_config(name="dice", vocab=3, k=2, seq_len=16, seed=1))
    model = FreqModel(vocab=3)
    model.B.zero_()  # the final position's own token would add a task-independent offset
    df = paper_ood_r2(model, fam, n_tasks=16, n_per_task=8, seed=0)
    assert set(df["split"]) == {"ood", "minor"}
    np.testing.assert_allclose(df["r2_paper"], 1.0, atol=1e-5)
    np.testing.assert_allclose(df["frac_in_paper"], 1.0, atol=1e-4)


def test_paper_ood_r2_matches_an_independent_numpy_computation():
    fam = make_family(family_config(name="dice", vocab=5, k=-1, seq_len=12, seed=2))
    model = FreqModel(vocab=5, gamma=0.5)
    n_tasks, n_per, seed = 6, 10, 3
    df = paper_ood_r2(model, fam, n_tasks=n_tasks, n_per_task=n_per, seed=seed)
    assert list(df["split"]) == ["ood"]
    # independent: the same sequences, states read at the final position, numpy LS
    from tvlens.analyses.paper_metrics import ood_params
    from tvlens.analyses.task_vectors import sample_tasks

    majors = sample_tasks(fam, torch.arange(3), n_per, seed=seed)
    ood = task_batch(fam, ood_params(fam, n_tasks, seed), n_per, seed + 1)
    hm = model.states(majors.inputs)[:, -1].numpy().reshape(3, n_per, -1).mean(1)
    ho = model.states(ood.inputs)[:, -1].numpy().reshape(n_tasks, n_per, -1).mean(1)
    c = hm.mean(0)
    x = (hm - c)[:2].T
    scores = []
    for y in ho - c:
        w = np.linalg.lstsq(x, y, rcond=None)[0]
        r2 = 1 - ((y - x @ w) ** 2).sum() / ((y - y.mean()) ** 2).sum()
        scores.append(min(max(r2, 0.0), 1.0))
    assert df["r2_paper"].iloc[0] == pytest.approx(float(np.mean(scores)), abs=1e-4)
    assert 0.0 < df["r2_paper"].iloc[0] < 0.99  # V = 5: OOD means leave the 2-D plane

    # the per-sequence variant: every sequence's own state over positions 15 … T − 2 (here
    # T = 12: the second half, 6 … 10), scored the same way, averaged over sequences
    block = per_sequence_positions(12)
    assert (block.start, block.stop) == (6, 11)
    hs = model.states(ood.inputs)[:, block].numpy().mean(1) - c
    per_seq = []
    for y in hs:
        w = np.linalg.lstsq(x, y, rcond=None)[0]
        r2 = 1 - ((y - x @ w) ** 2).sum() / ((y - y.mean()) ** 2).sum()
        per_seq.append(min(max(r2, 0.0), 1.0))
    assert df["r2_paper_per_seq"].iloc[0] == pytest.approx(float(np.mean(per_seq)), abs=1e-4)
    assert df["n_per_task_per_seq"].iloc[0] == n_per
    assert per_sequence_positions(64) == slice(15, 63)


def test_force_tokens_copies_each_sequence_once_per_symbol():
    fam = make_family(family_config(name="dice", vocab=4, seq_len=6, seed=0))
    batch = fam.sample("major", 3, seed=0)
    big, forced = force_tokens(fam, batch, -1)
    assert big.size == 12 and forced.tolist() == [0, 1, 2, 3] * 3
    assert (big.inputs[:, -1] == forced).all()
    torch.testing.assert_close(big.inputs[4:8, :-1], batch.inputs[1:2, :-1].expand(4, -1))
    lin = make_family(family_config(name="linreg", dim=3, seq_len=6))
    with pytest.raises(ValueError, match="discrete family"):
        force_tokens(lin, lin.sample("major", 2), -1)


def test_paper_anova_additive_planted_model_is_separable():
    fam = make_family(family_config(name="dice", vocab=4, k=2, seq_len=10, seed=0))
    additive = paper_anova(FreqModel(vocab=4), fam, n_per_task=6)
    assert set(additive["split"]) == {"major", "minor", "all"}
    assert (additive["balanced"] == 1.0).all()
    # the forced token enters additively: no interaction at all
    np.testing.assert_allclose(additive["eta2_interaction"], 0.0, atol=1e-6)
    np.testing.assert_allclose(additive["task_vector_r2"], additive["additive_r2"], atol=1e-6)
    assert (additive["eta2_token"] > 0.1).all()
    mult = paper_anova(FreqModel(vocab=4, gamma=3.0), fam, n_per_task=6)
    assert (mult["eta2_interaction"] > 1e-3).all()
    assert (mult["separability"] < 1 - 1e-3).all()
