"""Each family answers for its own layout and has its own config dataclass."""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError, fields

import pytest
import torch

from tvlens.models.config import FAMILY_DEFAULTS
from tvlens.tasks import FAMILIES, FamilyConfig, PoolConfig, make_family


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
    fam = make_family(FamilyConfig("sparse_linreg", dim=5, sparsity=2, n_concepts=3, seq_len=8))
    batch = fam.sample("ood", 6, seed=0)
    assert fam.default_decoding() == ("concept", "ood")
    assert torch.equal(fam.labels(batch, "concept"), fam.concept_labels(batch))
    assert fam.n_label_classes("concept", "ood") == 3


@pytest.mark.parametrize("name", ["dice", "markov", "linreg", "sparse_linreg"])
def test_each_family_has_its_own_config(name):
    cls = FAMILIES[name]
    assert cls.config_class is not None and issubclass(cls.config_class, PoolConfig)
    own = {f.name for f in fields(cls.config_class)}
    # the typed config holds what this family reads, not the union of every family's fields
    # (``extra`` only where the family reads family-specific knobs from it: dyck, linreg)
    assert own - {"extra"} < {f.name for f in fields(FamilyConfig)} - {"extra"}
    assert own <= {f.name for f in fields(FamilyConfig)}
    defaults = cls.config_class()
    assert defaults.name == name
    for key, value in FAMILY_DEFAULTS[name].items():  # the run defaults agree
        assert getattr(defaults, key) == value
    fam = make_family(FamilyConfig(name, **FAMILY_DEFAULTS[name]))
    assert isinstance(fam.config, cls.config_class)
    with pytest.raises(FrozenInstanceError):
        fam.config.seq_len = 3  # type: ignore[misc]
    # a family built from its own config equals one built from the flat config
    again = cls(fam.config)
    assert torch.equal(again.pool, fam.pool)
