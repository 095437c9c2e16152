"""Public analysis functions refuse degenerate or mismatched input at the boundary, with an
error that names the argument, the expected and the received (tvlens.validation)."""

from __future__ import annotations

import pytest
import torch

from tvlens.analyses.geometry import ablation_table, fit_beta, principal_angles
from tvlens.analyses.task_vectors import anova_table
from tvlens.models.evaluate import reference_table
from tvlens.tasks import make_family
from tvlens.validation import InputTypeError, InvalidInputError

DICE = make_family(name="dice", seq_len=8)


def test_fit_beta_refuses_a_batch_from_another_family():
    other_len = make_family(name="dice", seq_len=12).sample("major", 4)
    with pytest.raises(InvalidInputError, match="length 12 but the family's seq_len is 8"):
        fit_beta(None, DICE, None, other_len)
    other_pool = make_family(name="dice", seq_len=8, seed=7).sample("major", 4)
    with pytest.raises(InvalidInputError, match="not this family's tasks.*another family"):
        fit_beta(None, DICE, None, other_pool)
    with pytest.raises(InputTypeError, match="batch must be a Batch"):
        fit_beta(None, DICE, None, torch.zeros(4, 8))


def test_empty_tables_are_refused():
    with pytest.raises(InvalidInputError, match="batches is empty; it must hold at least one"):
        ablation_table(None, DICE, {}, {0: torch.eye(4)})
    with pytest.raises(InvalidInputError, match="bases is empty"):
        ablation_table(None, DICE, {"major": DICE.sample("major", 2)}, {})
    with pytest.raises(InvalidInputError, match="batches is empty"):
        reference_table(None, DICE, {})
    foreign = {"major": make_family(name="dice", seq_len=8, seed=3).sample("major", 2)}
    with pytest.raises(InvalidInputError, match=r"batches\['major'\]'s task parameters"):
        reference_table(None, DICE, foreign)


@pytest.mark.parametrize(("n", "error"), [(1, InvalidInputError), (0, InvalidInputError)])
def test_anova_needs_two_sequences_per_task(n, error):
    with pytest.raises(error, match=f"n_per_task must be >= 2; got {n}"):
        anova_table(None, DICE, n_per_task=n)
    with pytest.raises(InputTypeError, match="n_per_task must be an integer >= 2; got the num"):
        anova_table(None, DICE, n_per_task=2.5)


def test_principal_angles_refuses_nan_wrong_width_and_1d():
    a, b = torch.eye(4)[:2], torch.eye(4)[1:3]
    assert torch.allclose(principal_angles(a, b), torch.tensor([0.0, torch.pi / 2]).double())
    with pytest.raises(InvalidInputError, match=r"a contains 1 NaN/inf"):
        principal_angles(torch.tensor([[float("nan"), 0, 0, 0]]), b)
    with pytest.raises(InvalidInputError, match=r"b must have last dimension 4.*\(2, 5\)"):
        principal_angles(a, torch.zeros(2, 5))
    with pytest.raises(InvalidInputError, match=r"a must be 2-D; got a float32 tensor of shape"):
        principal_angles(torch.ones(4), b)
    with pytest.raises(InputTypeError, match="b must be a torch.Tensor; got a list"):
        principal_angles(a, [[0.0] * 4])
