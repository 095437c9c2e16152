"""Each family answers for its own layout and has its own config dataclass."""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError, fields

import pytest
import torch

from tvlens.tasks import FAMILIES, ConfigError, PoolConfig, family_config, make_family


def test_token_family_layout():
    fam = make_family(name="dice", vocab=4, seq_len=6, k=1)
    assert fam.max_examples == 5 and fam.query_positions([0, 3, 5]) == [0, 3, 5]
    with pytest.raises(ValueError, match="out of range"):
        fam.query_positions([6])
    batch = fam.sample("major", 5, seed=1)
    assert torch.equal(fam.current_tokens(batch), batch.inputs)
    assert torch.equal(fam.labels(batch), batch.task_ids)
    assert fam.n_label_classes("task", "major") == 3 and fam.n_label_classes("task", "minor") == 2
    assert fam.default_decoding() == ("task", "major")
    free = fam.context_free_loss(batch)
    assert torch.allclose(free, torch.full_like(free, math.log(4)))
    assert fam.token_labels(batch.inputs[0])[0] == "BOS"
    assert fam.as_batch(batch.inputs[0]).shape == (1, 6)
    with pytest.raises(ValueError, match="no concepts"):
        fam.labels(batch, "concept")
    with pytest.raises(ValueError, match="OOD"):
        fam.labels(fam.sample("ood", 2), "task")


def test_regression_family_layout():
    fam = make_family(name="linreg", dim=3, seq_len=10)
    assert fam.max_examples == 4 and fam.query_positions([0, 2, 4]) == [0, 4, 8]
    batch = fam.sample("major", 4, seed=2)
    tokens = fam.current_tokens(batch)
    assert torch.equal(tokens[0], torch.tensor([0, 1] * 5))  # x, y, x, y, ...
    free = fam.context_free_loss(batch)
    assert torch.allclose(free[:, 0::2], batch.targets[:, 0::2] ** 2)
    assert (free[:, 1::2] == 0).all()
    assert fam.token_labels(batch.inputs[0])[:3] == ["x1", "y1", "x2"]
    assert fam.as_batch(batch.inputs[0]).shape == (1, 10, 4)
    assert fam.geometric_mix(torch.ones(4, 10, 3) / 3, torch.zeros(4, 10, 3)) is None
    assert fam.error_summaries(torch.tensor([4.0, 4.0])) == {"rmse": 2.0}


def test_concept_family_decodes_concepts():
    fam = make_family(family_config("sparse_linreg", dim=5, sparsity=2, n_concepts=3, seq_len=8))
    batch = fam.sample("ood", 6, seed=0)
    assert fam.default_decoding() == ("concept", "ood")
    assert torch.equal(fam.labels(batch, "concept"), fam.concept_labels(batch))
    assert fam.n_label_classes("concept", "ood") == 3


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_has_its_own_config(name):
    """A family's options live in its own config class and nowhere else."""
    cls = FAMILIES[name]
    assert issubclass(cls.config_class, PoolConfig) and cls.config_class is not PoolConfig
    own = {f.name for f in fields(cls.config_class)}
    assert {f.name for f in fields(PoolConfig)} <= own and "extra" not in own
    defaults = cls.config_class()
    assert defaults.name == name
    fam = make_family(name=name)  # the run defaults are the class defaults
    assert fam.config == defaults
    with pytest.raises(FrozenInstanceError):
        fam.config.seq_len = 3  # type: ignore[misc]
    again = cls(fam.config)
    assert torch.equal(again.pool, fam.pool)
    # a field of another family is refused with the valid ones named, never ignored
    foreign = "dim" if "dim" not in own else "vocab"
    with pytest.raises(ConfigError, match=rf"unknown field\(s\) \['{foreign}'\].*valid fields"):
        family_config(name, **{foreign: 3})
    # the run's config.json holds only this family's fields
    from tvlens.models import RunConfig

    assert set(RunConfig.for_family(name).to_dict()["family"]) == own
