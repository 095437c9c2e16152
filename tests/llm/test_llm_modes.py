"""The two modes in a pretrained model: planted geometry with known answers, the learnt-in-
context rule, the convex-steering summaries, and both drivers end to end on a tiny model."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from tvlens.llm.convex_steering import demo_mix_prompts, shared_queries, switch_index
from tvlens.llm.modes import angle_table, learnt, share_table
from tvlens.llm.tasks import load_task


def _planted(d: int = 40, n: int = 30, seed: int = 0):
    """Basis tasks spanning the first 4 coordinates; held-out known tasks whose vectors lie in
    that span; novel tasks whose vectors lie in coordinates 10.. (orthogonal to it)."""
    g = torch.Generator().manual_seed(seed)
    states, sets = {}, {"basis": [], "heldout_known": [], "novel": []}

    def task(name: str, kind: str, mean: torch.Tensor) -> None:
        states[name] = (mean + 0.01 * torch.randn(n, 1, d, generator=g)).double()
        sets[kind].append(name)

    for i in range(5):  # 5 basis tasks: span of the 4 differences = coords 0..3
        task(f"b{i}", "basis", torch.nn.functional.pad(torch.eye(5)[i] * 3, (0, d - 5))[None, None])
    mix = torch.zeros(d)
    for i, w in enumerate([(0.5, 0.5, 0, 0, 0), (0.2, 0, 0.8, 0, 0), (0, 0, 0, 0.3, 0.7)]):
        mix = torch.nn.functional.pad(torch.tensor(w) * 3, (0, d - 5))
        task(f"h{i}", "heldout_known", mix[None, None])
    for i in range(3):
        far = torch.zeros(d)
        far[10 + i] = 3.0
        task(
            f"n{i}",
            "novel",
            far[None, None] + torch.nn.functional.pad(torch.eye(5)[0] * 3, (0, d - 5)),
        )
    return states, sets


def test_planted_shares_and_angles_have_their_closed_form():
    states, sets = _planted()
    shares = share_table(states, sets, [7], seed=0, shuffled=states).set_index(["set", "level"])
    # the surface control on the same states is the share itself
    assert (shares["shuffled_share"] - shares["share"]).abs().max() < 1e-12
    # held-out known task vectors are convex mixtures of the basis ones: inside the span
    assert shares.loc[("heldout_known", "task_vectors"), "share"] == pytest.approx(1, abs=1e-3)
    # novel task vectors differ only orthogonally to it: outside
    assert shares.loc[("novel", "task_vectors"), "share"] == pytest.approx(0, abs=1e-3)
    # the random baseline is rank/d on average, the ceiling 1 for 3 points
    assert shares.loc[("novel", "task_vectors"), "random_share"] == pytest.approx(4 / 40, abs=0.06)
    assert shares.loc[("novel", "task_vectors"), "top_share"] == pytest.approx(1)
    assert (shares["rank"] == 4).all() and (shares["d"] == 40).all()
    angles = angle_table(states, sets, [7], seed=0).set_index("set")
    assert angles.loc["heldout_known", "mean_angle"] == pytest.approx(0, abs=0.5)
    assert angles.loc["novel", "min_angle"] == pytest.approx(90, abs=0.5)
    assert 60 < angles.loc["novel", "random_mean_angle"] <= 90


def test_learnt_needs_both_baselines_beaten():
    icl = pd.DataFrame(
        {
            "task": ["a", "a", "b", "b", "c", "c"],
            "set": ["novel"] * 6,
            "shots": [0, 8] * 3,
            "accuracy": [0.0, 0.9, 0.0, 0.3, 0.6, 0.65],
            "baseline": [0.1, 0.1, 0.35, 0.35, 0.2, 0.2],
            "n": [20] * 6,
        }
    )
    got = learnt(icl, margin=0.1).set_index("task")
    assert got["learnt"].to_dict() == {"a": True, "b": False, "c": False}  # b: below majority
    assert got.loc["a", "ci95"] == pytest.approx(1.96 * math.sqrt(0.9 * 0.1 / 20))


def _curve(p_a: list[float]) -> pd.DataFrame:
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    rows = [
        {"condition": "task_vector_mix", "alpha": a, "p_a": p}
        for a, p in zip(alphas, p_a, strict=True)
    ]
    lo, hi = p_a[0], p_a[-1]
    rows += [{"condition": "output_mix", "alpha": a, "p_a": a * hi + (1 - a) * lo} for a in alphas]
    return pd.DataFrame(rows)


def test_switch_index_is_zero_for_a_mixture_and_large_for_a_step():
    assert switch_index(_curve([0.0, 0.25, 0.5, 0.75, 1.0])) == pytest.approx(0)
    step = switch_index(_curve([0.0, 0.0, 1.0, 1.0, 1.0]))
    assert step == pytest.approx((0.25 + 0.5 + 0.25) / 3)
    assert np.isnan(switch_index(_curve([0.3, 0.3, 0.3, 0.3, 0.3])))  # no gap to place


def test_mixed_demonstrations_hold_the_asked_share_of_task_a():
    a, b = load_task("uppercase"), load_task("first_letter")
    pool = shared_queries(a, b, 40, seed=0)
    assert all(ya != yb for _, ya, yb in pool) and len(pool) == 40
    for alpha in (0.0, 0.25, 0.5, 1.0):
        pa, pb = demo_mix_prompts(a, b, pool[8:], pool[:8], 8, alpha, "qa", seed=1)
        for p, q in zip(pa, pb, strict=True):
            assert p.text == q.text and p.answer != q.answer  # one text, two answers
            from_a = sum(y == x.upper() for x, y in p.demos)
            assert from_a == round(alpha * 8) and p.query not in {x for x, _ in p.demos}


def test_both_drivers_run_through_the_registry(bridges, tmp_path):
    from tvlens.io import read_provenance
    from tvlens.llm.run import LLMRun
    from tvlens.registry import run_analyses

    run = LLMRun(bridges["llama"], tmp_path, name="tiny")
    options = {
        "modes": {"n_prompts": 6, "icl_shots": [0, 2], "shots": 2, "only_learnt": False,
                  "ablation_layers": [1], "novel_tasks": "novel_first_upper,novel_antonym_upper",
                  "heldout_tasks": "first_letter,present_past",
                  "basis_tasks": "antonym,uppercase,country_capital"},
        "convex_steering": {"n_prompts": 6, "shots": 2, "alphas": [0.0, 0.5, 1.0]},
    }  # fmt: skip
    tables, _ = run_analyses(run, ["modes", "convex_steering"], options=options)
    share = tables["llm_modes_share"]
    assert set(share["set"]) == {"heldout_known", "novel"} and (share["rank"] == 2).all()
    assert share["share"].between(0, 1).all() and share["random_share"].between(0, 1).all()
    ab = tables["llm_modes_ablation"]
    assert set(ab["condition"]) == {"known_subspace", "random_subspace"}
    assert np.allclose(ab["drop"], ab["clean_accuracy"] - ab["accuracy"])
    icl = tables["llm_modes_icl"]
    assert {"basis", "heldout_known", "novel"} == set(icl["set"]) and icl["learnt"].notna().any()
    steer = tables["llm_convex_steering"].set_index(["condition", "alpha"])
    layers = tables["llm_steering_layers"].set_index("layer")
    chosen = int(layers.index[layers["chosen"]][0])
    # α = 1 patches θ_A itself: the same probability as the layer sweep's θ_A at that layer
    assert steer.loc[("task_vector_mix", 1.0), "p_a"] == pytest.approx(
        layers.loc[chosen, "p_a_with_theta_a"], abs=1e-5
    )
    # the output mixture meets the steered curve at both ends
    for alpha in (0.0, 1.0):
        assert steer.loc[("output_mix", alpha), "p_a"] == pytest.approx(
            steer.loc[("task_vector_mix", alpha), "p_a"]
        )
    row = steer.loc[("task_vector_mix", 0.5)]
    assert row["p_a"] + row["p_b"] + row["p_neither"] == pytest.approx(1, abs=1e-6)
    from tvlens.viz.llm import FIGURES

    for name, df in tables.items():  # every table draws its figure
        assert len(FIGURES[name](df).data) > 0, name
    prov = read_provenance(tmp_path / "analyses")
    assert prov["llm_convex_steering.csv"]["options"]["alphas"] == [0.0, 0.5, 1.0]


def test_wilson_interval_has_its_closed_form():
    from tvlens.llm.icl import binomial_interval

    z = 1.96
    lo, hi = binomial_interval(0, 10)
    assert lo == 0 and hi == pytest.approx(
        (z * z / 20 + z * math.sqrt(z * z / 400)) / (1 + z * z / 10)
    )
    lo, hi = binomial_interval(5, 10)
    assert lo + hi == pytest.approx(1.0) and 0.2 < lo < 0.3
    assert np.isnan(binomial_interval(0, 0)[0])


def test_icl_reports_the_spread_over_prompt_draws(bridges, tmp_path):
    from tvlens.llm.run import LLMRun
    from tvlens.registry import run_analyses

    run = LLMRun(bridges["llama"], tmp_path, name="tiny")
    options = {"icl": {"shots": (0, 2), "n_prompts": 5, "draws": 3}}
    (icl,) = run_analyses(run, ["icl"], options=options)[0].values()
    assert (icl["n_draws"] == 3).all()
    assert (icl["draws_min"] <= icl["draws_mean"]).all() and (
        icl["draws_mean"] <= icl["draws_max"]
    ).all()
    assert (icl["ci_low"] <= icl["accuracy"]).all() and (icl["accuracy"] <= icl["ci_high"]).all()
    # the first draw is the table's own accuracy: the same prompts as with draws = 1
    single = LLMRun(bridges["llama"], tmp_path / "one", name="tiny")
    options["icl"]["draws"] = 1
    (one,) = run_analyses(single, ["icl"], options=options)[0].values()
    assert one["accuracy"].tolist() == icl["accuracy"].tolist() and "draws_sd" not in one


def test_project_out_rows_hook_touches_only_the_query_token():
    from tvlens.hooks.rowwise import project_out_rows_hook

    g = torch.Generator().manual_seed(0)
    act = torch.randn(3, 5, 6, generator=g)
    basis = torch.linalg.qr(torch.randn(6, 2, generator=g))[0].T  # orthonormal rows
    qpos = torch.tensor([4, 2, 0])
    out = project_out_rows_hook(basis, qpos)(act)
    rows = torch.arange(3)
    assert torch.allclose(out[rows, qpos] @ basis.T, torch.zeros(3, 2), atol=1e-6)
    # the orthogonal part of the query token is kept, every other position unchanged
    keep = act[rows, qpos] - (act[rows, qpos] @ basis.T) @ basis
    assert torch.allclose(out[rows, qpos], keep, atol=1e-6)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[rows, qpos] = False
    assert torch.equal(out[mask], act[mask])


def test_mean_ablation_sets_the_subspace_component_to_the_centre():
    from tvlens.hooks.rowwise import project_out_rows_hook

    g = torch.Generator().manual_seed(1)
    act = torch.randn(2, 4, 6, generator=g)
    basis = torch.linalg.qr(torch.randn(6, 2, generator=g))[0].T
    centre = torch.randn(6, generator=g)
    qpos = torch.tensor([3, 1])
    out = project_out_rows_hook(basis, qpos, centre=centre)(act)
    rows = torch.arange(2)
    assert torch.allclose(out[rows, qpos] @ basis.T, (centre @ basis.T).expand(2, 2), atol=1e-6)
    orth = lambda h: h - (h @ basis.T) @ basis  # noqa: E731
    assert torch.allclose(orth(out[rows, qpos]), orth(act[rows, qpos]), atol=1e-6)
