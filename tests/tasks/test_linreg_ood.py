"""linreg's OOD draws: the prior, or balls of radius r around the major tasks."""

from __future__ import annotations

import pytest
import torch

from tvlens.analyses.paper_metrics import ood_params
from tvlens.models import RunConfig
from tvlens.tasks import family_config, make_family
from tvlens.tasks.base import ConfigError


def ball_family(radius: float = 2.0):
    return make_family(family_config("linreg", dim=6, seq_len=20, ood="ball", ood_radius=radius))


def test_ball_draws_lie_in_balls_around_the_majors_uniformly():
    fam = ball_family(2.0)
    batch = fam.sample("ood", 3000, seed=0)
    centres = fam.pool[torch.arange(3000) % fam.n_major]
    dist = (batch.params - centres).norm(dim=1)
    assert float(dist.max()) <= 2.0 + 1e-5
    # uniform in a d-ball: (‖w − c‖ / r)^d is uniform on [0, 1], mean 1/2, var 1/12
    u = (dist / 2.0) ** 6
    assert float(u.mean()) == pytest.approx(0.5, abs=4 * (1 / 12) ** 0.5 / 3000**0.5)
    assert (batch.task_ids == -1).all()
    # the paper-style metric draws its fixed OOD tasks the same way
    p = ood_params(fam, 30, seed=1)
    assert float((p - fam.pool[torch.arange(30) % 3]).norm(dim=1).max()) <= 2.0 + 1e-5


def test_prior_is_the_default_and_differs_from_balls():
    prior = make_family(family_config(name="linreg", dim=6, seq_len=20))
    ball = ball_family(0.5)
    a, b = prior.sample("ood", 200, seed=0).params, ball.sample("ood", 200, seed=0).params
    # prior draws have norm ≈ √6; ball draws stay within 0.5 of a major task
    nearest = torch.cdist(a, prior.pool[:3]).min(1).values
    assert float(nearest.median()) > 1.0
    assert float(torch.cdist(b, ball.pool[:3]).min(1).values.max()) <= 0.5 + 1e-5
    # ID splits do not change
    torch.testing.assert_close(prior.sample("major", 8, seed=0).inputs,
                               ball.sample("major", 8, seed=0).inputs)  # fmt: skip


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"ood": "sphere"}, "family.ood="),
        ({"ood": "ball", "ood_radius": -1}, "ood_radius"),
        ({"ood": "ball", "beta_a": 0.5}, r"unknown field\(s\) \['beta_a'\].*valid fields"),
    ],
)
def test_bad_ood_options_are_named(fields, match):
    with pytest.raises(ConfigError, match=match):
        make_family(family_config(name="linreg", dim=6, seq_len=20, **fields))


def test_a_legacy_flat_config_with_extra_still_loads():
    """Run folders of tvlens < 0.5 hold the flat config (every family's fields + extra)."""
    legacy = {"name": "linreg", "vocab": 6, "dim": 6, "noise": 0.5, "n_concepts": 4,
              "sparsity": 4, "seq_len": 20, "extra": {"ood": "ball", "ood_radius": 1.5}}  # fmt: skip
    cfg = RunConfig.from_dict({"family": legacy}).family
    assert (cfg.ood, cfg.ood_radius, cfg.dim) == ("ball", 1.5, 6)
    assert "vocab" not in cfg.to_dict() and "extra" not in cfg.to_dict()


def test_ball_option_round_trips_through_a_run_config():
    cfg = RunConfig.for_family("linreg", family={"ood": "ball", "ood_radius": 2})
    again = RunConfig.from_dict(cfg.to_dict())
    assert make_family(again.family).config.ood == "ball"
