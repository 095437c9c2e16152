"""Geometry maths against planted structure with known answers, and the analyses on a model.

The planted model (:class:`PlantedModel`) has a residual stream whose task part is *exactly*
the family's restricted retrieval posterior times the vertices, plus noise orthogonal to the
task plane, so the simplex fit, the posterior alignment and the projection R² have closed
forms.
"""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from tvlens.analyses.geometry import (
    affine_weights,
    alignment_scores,
    fit_beta,
    geometry_points,
    principal_angle_table,
    principal_angles,
    project_simplex,
    projection_r2,
    random_basis,
    restrict_posterior,
    simplex_fit,
    simplex_table,
    subspace_ablation,
)
from tvlens.analyses.task_vectors import TaskVectors
from tvlens.hooks import hook_name, orthonormal_basis, project_out_hook
from tvlens.models import TaskModel
from tvlens.models.config import ModelConfig
from tvlens.tasks import make_family
from tvlens.tasks.base import Batch, family_config

HOOK = hook_name(0)


# ------------------------------------------------------------------------ helpers
def brute_force_simplex(v: torch.Tensor) -> torch.Tensor:
    """Projection onto the simplex by enumerating supports: on support S the projection
    onto the face's affine hull is v_S − (Σ v_S − 1)/|S|; keep the feasible closest one."""
    k = v.shape[0]
    best, best_d = None, math.inf
    for r in range(1, k + 1):
        for support in itertools.combinations(range(k), r):
            s = list(support)
            x = torch.zeros(k, dtype=torch.float64)
            x[s] = v[s] - (v[s].sum() - 1.0) / r
            if (x >= -1e-12).all():
                d = float(((x - v) ** 2).sum())
                if d < best_d:
                    best, best_d = x.clamp_min(0.0), d
    return best


def planted_states(n: int, k: int, d: int, noise: float, seed: int = 0):
    """States Σ β_k v_k + noise orthogonal to the affine hull of the vertices."""
    g = torch.Generator().manual_seed(seed)
    vertices = torch.randn(k, d, generator=g, dtype=torch.float64) * 3
    e = -torch.log(torch.rand(n, k, generator=g, dtype=torch.float64))
    beta = e / e.sum(-1, keepdim=True)
    basis = orthonormal_basis(vertices[:-1] - vertices[-1])
    z = torch.randn(n, d, generator=g, dtype=torch.float64) * noise
    orth = z - (z @ basis.T) @ basis
    return vertices, beta, beta @ vertices + orth, orth


def batch_from_inputs(family, inputs: torch.Tensor) -> Batch:
    """A dice batch whose posterior matches ``inputs`` (targets are the next inputs; the
    last target is never conditioned on)."""
    targets = torch.cat([inputs[:, 1:], torch.zeros_like(inputs[:, :1])], dim=1)
    n = inputs.shape[0]
    ids = torch.zeros(n, dtype=torch.long)
    return Batch(inputs, targets, torch.ones_like(targets, dtype=torch.bool), ids, ids, "x")


class PlantedModel(torch.nn.Module):
    """A stand-in for a TL bridge with one hook point, ``blocks.0.hook_resid_post``.

    h_t = Σ_k P(task k | x_≤t) v_k + o_t with o_t orthogonal to the task plane (a fixed
    function of the token read at t); the read-out maps h back to its affine coordinates β
    and predicts log Σ β_k p_k (``mix='linear'``) or log softmax Σ β_k log p_k
    (``mix='geometric'``).
    """

    def __init__(self, family, vertices: torch.Tensor, mix: str = "linear", noise: float = 1.0):
        super().__init__()
        self.family, self.vertices, self.mix = family, vertices.float(), mix
        self.cfg = SimpleNamespace(n_layers=1)
        self.hook_dict = {HOOK: None}
        self._p = torch.nn.Parameter(torch.zeros(()), requires_grad=False)
        basis = orthonormal_basis(self.vertices - self.vertices.mean(0))
        g = torch.Generator().manual_seed(7)
        z = torch.randn(family.d_vocab, vertices.shape[1], generator=g) * noise
        self.token_noise = z - (z @ basis.T) @ basis  # orthogonal to the task plane

    def states(self, inputs: torch.Tensor) -> torch.Tensor:
        batch = batch_from_inputs(self.family, inputs)
        m = self.vertices.shape[0]
        post = restrict_posterior(self.family.retrieval_posterior(batch), torch.arange(m))
        return post.float() @ self.vertices + self.token_noise[inputs]

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        beta = affine_weights(h.flatten(0, 1), self.vertices).view(*h.shape[:2], -1)
        probs = self.family.pool[: self.vertices.shape[0]].float()
        if self.mix == "linear":
            return (beta @ probs).clamp_min(1e-12).log()
        return torch.log_softmax(beta @ probs.clamp_min(1e-12).log(), dim=-1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.readout(self.states(inputs))

    def run_with_hooks(self, inputs, fwd_hooks=()):
        h = self.states(inputs)
        for name, fn in fwd_hooks:
            assert name == HOOK, name
            h = fn(h, None)
        return self.readout(h)

    def run_with_cache(self, inputs, names_filter=None):
        h = self.states(inputs)
        return self.readout(h), {HOOK: h}


def planted_setup(mix: str = "linear", k: int = -1, d: int = 12, seq_len: int = 12):
    family = make_family(family_config(name="dice", k=k, seq_len=seq_len, seed=3))
    g = torch.Generator().manual_seed(11)
    vertices = torch.randn(family.n_major, d, generator=g) * 2
    model = PlantedModel(family, vertices, mix=mix)
    tv = TaskVectors(
        task_ids=torch.arange(family.n_major),
        n_major=family.n_major,
        layers=[0],
        point="resid_post",
        positions=None,
        means={0: vertices},
    )
    return family, model, tv


# ------------------------------------------------------------------- simplex maths
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_project_simplex_matches_brute_force(k):
    g = torch.Generator().manual_seed(k)
    v = torch.randn(200, k, generator=g, dtype=torch.float64) * 2
    got = project_simplex(v)
    want = torch.stack([brute_force_simplex(row) for row in v])
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    assert (got >= 0).all() and torch.allclose(got.sum(-1), torch.ones(200, dtype=got.dtype))


def test_project_simplex_closed_form_two_vertices_and_fixed_points():
    a = torch.tensor([[0.3, 0.9], [2.0, -1.0], [-5.0, 0.2], [0.25, 0.75]], dtype=torch.float64)
    # on the line x + y = 1: x* = clip((a0 − a1 + 1) / 2, 0, 1)
    x = ((a[:, 0] - a[:, 1] + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(project_simplex(a), torch.stack([x, 1 - x], -1))
    inside = torch.tensor([[0.2, 0.3, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(project_simplex(inside), inside)


def test_planted_convex_combinations_recover_beta_and_r2():
    vertices, beta, states, orth = planted_states(n=500, k=4, d=16, noise=0.7)
    fit = simplex_fit(states, vertices)
    torch.testing.assert_close(fit.beta_affine, beta, atol=1e-9, rtol=0)
    torch.testing.assert_close(fit.beta, beta, atol=1e-9, rtol=0)
    tot = ((states - states.mean(0)) ** 2).sum()
    want = 1 - float((orth**2).sum() / tot)
    assert fit.r2_task == pytest.approx(want, abs=1e-9)
    assert fit.r2_affine == pytest.approx(want, abs=1e-9)
    # norms: the orthogonal part is exactly the planted noise
    torch.testing.assert_close(fit.norm_orth, orth.norm(dim=-1), atol=1e-9, rtol=0)
    c = vertices.mean(0)
    inside = beta @ vertices - c
    torch.testing.assert_close(fit.norm_in, inside.norm(dim=-1), atol=1e-9, rtol=0)


def test_states_outside_the_simplex_are_projected():
    vertices, _, _, _ = planted_states(n=1, k=3, d=8, noise=0.0)
    beta = torch.tensor([[1.4, -0.2, -0.2], [0.6, 0.6, -0.2]], dtype=torch.float64)
    fit = simplex_fit(beta @ vertices, vertices)
    torch.testing.assert_close(fit.beta_affine, beta, atol=1e-9, rtol=0)
    torch.testing.assert_close(fit.beta, project_simplex(beta))
    assert fit.r2_affine == pytest.approx(1.0, abs=1e-9)
    assert fit.r2_task < 1.0


def test_task_plus_token_r2_adds_token_means():
    vertices, beta, states, _ = planted_states(n=600, k=3, d=10, noise=0.0)
    tokens = torch.arange(600) % 4
    g = torch.Generator().manual_seed(2)
    nu = torch.randn(4, 10, generator=g, dtype=torch.float64)
    basis = orthonormal_basis(vertices[:-1] - vertices[-1])
    nu = nu - (nu @ basis.T) @ basis  # token effects off the plane: β stays exact
    fit = simplex_fit(states + nu[tokens], vertices, tokens=tokens)
    torch.testing.assert_close(fit.beta, beta, atol=1e-9, rtol=0)
    assert fit.r2_task < 0.99
    assert fit.r2_task_token == pytest.approx(1.0, abs=1e-9)


def test_simplex_fit_rejects_bad_shapes():
    with pytest.raises(ValueError, match="width"):
        simplex_fit(torch.zeros(5, 4), torch.zeros(3, 6))
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        simplex_fit(torch.zeros(2, 5, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="one token per state"):
        simplex_fit(torch.zeros(5, 4), torch.randn(3, 4), tokens=torch.zeros(4, dtype=torch.long))


# --------------------------------------------------------------- subspace maths
def test_projection_r2_of_a_known_subspace_is_exact():
    g = torch.Generator().manual_seed(0)
    d, r, n = 10, 3, 400
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    basis, comp = q[:, :r].T, q[:, r:].T
    centre = torch.randn(d, generator=g, dtype=torch.float64)
    a = torch.randn(n, r, generator=g, dtype=torch.float64) * 2
    b = torch.randn(n, d - r, generator=g, dtype=torch.float64) * 0.5
    a, b = a - a.mean(0), b - b.mean(0)  # states centred on the centre
    states = centre + a @ basis + b @ comp
    want = float((a**2).sum() / ((a**2).sum() + (b**2).sum()))
    assert projection_r2(states, basis, centre) == pytest.approx(want, abs=1e-12)
    # an offset off the subspace is penalised: R² = 1 − (Σ‖b‖² + n‖δ‖²) / Σ‖h − h̄‖²
    delta = 5.0 * comp[0]
    got = projection_r2(states + delta, basis, centre)
    want_off = 1 - float(((b**2).sum() + n * (delta**2).sum()) / ((a**2).sum() + (b**2).sum()))
    assert got == pytest.approx(want_off, abs=1e-12)
    assert got < 0


def test_principal_angles_known_planes():
    e = torch.eye(5, dtype=torch.float64)
    angles = torch.tensor([0.3, 1.1])
    a = e[:2]
    b = torch.stack(
        [
            math.cos(angles[0]) * e[0] + math.sin(angles[0]) * e[2],
            math.cos(angles[1]) * e[1] + math.sin(angles[1]) * e[3],
        ]
    )
    got = principal_angles(a * 3.0, torch.stack([b[0] + b[1], b[0] - b[1]]))  # any spanning rows
    torch.testing.assert_close(got, angles.double(), atol=1e-7, rtol=0)
    torch.testing.assert_close(
        principal_angles(a, e[2:4]), torch.full((2,), math.pi / 2, dtype=torch.float64)
    )


def test_random_bases_orthonormal_distinct_and_seeded():
    a, b = random_basis(3, 16, seed=0), random_basis(3, 16, seed=1)
    torch.testing.assert_close(a @ a.T, torch.eye(3), atol=1e-5, rtol=0)
    assert a.shape == (3, 16) and not torch.allclose(a, b)
    torch.testing.assert_close(a, random_basis(3, 16, seed=0))
    assert principal_angles(a, b).max() > 0.1


# ---------------------------------------------------------- posterior alignment
def test_alignment_scores_closed_form():
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    s = alignment_scores(b, p)
    assert s["tv"] == pytest.approx(0.25)
    assert s["cosine"] == pytest.approx((1 / math.sqrt(2) + 1) / 2, abs=1e-6)
    assert alignment_scores(p, p)["corr"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="restrict"):
        alignment_scores(torch.zeros(2, 3), torch.zeros(2, 2))


@pytest.mark.parametrize("k", [-1, 2])
def test_beta_tracks_the_exact_posterior_position_by_position(k):
    family, model, tv = planted_setup(k=k)
    batch = family.sample("major", 64, seed=4)
    fit = fit_beta(model, family, tv, batch)
    post = family.retrieval_posterior(batch)[..., : family.n_major]
    post = post / post.sum(-1, keepdim=True)
    torch.testing.assert_close(fit.posterior, post.float())
    torch.testing.assert_close(fit.beta[0], post.float(), atol=2e-5, rtol=0)
    by_pos = fit.by_position()
    assert list(by_pos["pos"]) == list(range(family.seq_len))
    late = by_pos[by_pos["pos"] >= 1]
    assert (late["corr"] > 0.9999).all() and (late["tv"] < 1e-4).all()
    summary = fit.summary()
    assert summary["corr"].iloc[0] > 0.9999
    # the test can fail: the posterior one position later does not align as well
    shifted = alignment_scores(
        fit.beta[0][:, 1:-1].flatten(0, 1), fit.posterior[:, 2:].flatten(0, 1)
    )
    assert shifted["tv"] > 0.01
    pts = fit.points(0, n_seq=5, every=3)
    assert len(pts) == 5 * len(range(0, family.seq_len, 3)) * family.n_major
    assert set(pts.columns) >= {"seq", "pos", "task", "true_task", "beta", "posterior"}


def test_simplex_table_on_planted_states():
    family, model, tv = planted_setup()
    batches = {s: family.sample(s, 48, seed=5) for s in ("major", "ood")}
    df = simplex_table(model, family, tv, batches)
    assert set(df["split"]) == {"major", "ood"} and set(df["layer"]) == {0}
    # β = posterior is already in the simplex: simplex and affine R² coincide
    assert (df["r2_task"] - df["r2_affine"]).abs().max() < 1e-5
    # states are c + Σβθ + ν_token with ν off the plane: task + token explains everything
    assert (df["r2_task_token"] > 1 - 1e-5).all()
    angles = principal_angle_table(model, tv, batches)
    assert set(angles["index"]) == {0, 1} and angles["angle_deg"].between(0, 90).all()
    pts = geometry_points(model, tv, batches, layer=0, n_per_split=10)
    v = pts[pts["split"] == "vertex"]
    assert len(v) == family.n_major
    assert v["off_plane"].abs().max() < 1e-4  # the vertices span the plane
    # in-plane coordinates preserve the distances between the vertices
    xy = torch.tensor(v[["x", "y"]].to_numpy())
    torch.testing.assert_close(
        torch.cdist(xy, xy),
        torch.cdist(tv.vertices(0).double(), tv.vertices(0).double()),
        atol=1e-4,
        rtol=0,
    )


# --------------------------------------------------------------------- ablation
@pytest.fixture(scope="module")
def tiny_model():
    family = make_family(family_config(name="dice", k=1, seq_len=10))
    model = TaskModel(ModelConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=32, seed=1), family)
    return family, model.eval()


def test_zero_basis_ablation_leaves_logits_unchanged(tiny_model):
    family, model = tiny_model
    batches = {s: family.sample(s, 16, seed=1) for s in ("major", "minor", "ood")}
    x = batches["major"].inputs
    zero = torch.zeros(0, 16)
    clean = model.bridge(x)
    hooked = model.bridge.run_with_hooks(x, fwd_hooks=[(HOOK, project_out_hook(zero))])
    assert torch.equal(clean, hooked)
    df = subspace_ablation(model, family, batches, {0: zero, 1: zero}, n_random=2)
    assert (df["delta"] == 0).all() and len(df) == 3 * 2 * 3
    assert set(df["split"]) == {"major", "minor", "ood"} and set(df["layer"]) == {0, 1}


def test_ablation_against_random_subspaces_of_equal_rank(tiny_model):
    family, model = tiny_model
    batches = {s: family.sample(s, 16, seed=2) for s in ("major", "ood")}
    basis = orthonormal_basis(torch.randn(2, 16, generator=torch.Generator().manual_seed(0)))
    df = subspace_ablation(model, family, batches, {1: basis}, n_random=4, seed=3)
    for split in ("major", "ood"):
        d = df[df["split"] == split]
        assert (d["subspace"] == "task").sum() == 1 and (d["subspace"] == "random").sum() == 4
        assert d["draw"][d["subspace"] == "random"].tolist() == [0, 1, 2, 3]
        assert (d["rank"] == 2).all() and d["loss_clean"].nunique() == 1
        assert d["delta"].abs().max() > 0  # the ablations change the loss
    # different random draws give different subspaces, hence different losses
    assert df[df["subspace"] == "random"]["loss_ablated"].nunique() > 2


def test_full_rank_ablation_erases_the_input(tiny_model):
    """Removing every direction of the final residual makes the output input-independent."""
    family, model = tiny_model
    x = family.sample("ood", 8, seed=3).inputs
    hook = project_out_hook(torch.eye(16), positions=None)
    out = model.bridge.run_with_hooks(x, fwd_hooks=[(hook_name(1), hook)])
    torch.testing.assert_close(out, out[:1, :1].expand_as(out))


def test_principal_angles_are_the_planted_ones():
    import math

    from tvlens.analyses.geometry import principal_angles

    # span{e0, e1} against span{e0, cos t e1 + sin t e2}: angles 0 and t (t small and large)
    for t in (1e-6, 0.3, 1.2):
        a = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]], dtype=torch.float64)
        b = torch.tensor([[1.0, 0, 0, 0], [0, math.cos(t), math.sin(t), 0]], dtype=torch.float64)
        got = principal_angles(a, b)
        assert torch.allclose(got, torch.tensor([0.0, t], dtype=torch.float64), atol=1e-12)
    # a null direction is dropped: rank 1 against rank 2 gives one angle
    assert principal_angles(torch.tensor([[1.0, 0, 0], [0, 0, 0]]), torch.eye(3)[:2]).numel() == 1
