"""The hook factories refuse bad input at the boundary, naming the argument, what was
expected and what came (tvlens.validation), instead of returning NaN or wrong logits."""

from __future__ import annotations

import pytest
import torch

from tvlens.hooks import (
    add_hook,
    as_bridge,
    capture_means,
    hook_name,
    patch_hook,
    project_out_hook,
)
from tvlens.hooks.core import replace_subspace_hook
from tvlens.models import TaskModel
from tvlens.models.config import ModelConfig
from tvlens.tasks import make_family
from tvlens.validation import InputTypeError, InvalidInputError

D = 8
ACT = torch.randn(2, 5, D, generator=torch.Generator().manual_seed(0))
E = torch.eye(D)


def test_add_hook_refuses_nan_and_non_tensors():
    nan = torch.zeros(D)
    nan[3] = float("nan")
    with pytest.raises(InvalidInputError, match=r"vector contains 1 NaN/inf.*shape \(8,\)"):
        add_hook(nan)
    with pytest.raises(InputTypeError, match="vector must be a torch.Tensor; got a list"):
        add_hook([0.0] * D)
    with pytest.raises(InvalidInputError, match="scale returned nan"):
        add_hook(torch.ones(D), scale=float("nan"))
    with pytest.raises(TypeError, match="scale must be a number"):  # a TypeError too
        add_hook(torch.ones(D), scale="2")
    assert torch.isfinite(add_hook(torch.ones(D))(ACT)).all()


@pytest.mark.parametrize(
    ("basis", "message"),
    [
        (torch.full((2, D), float("nan")), "basis contains 16 NaN/inf"),
        (torch.ones(2, D), r"rows of basis are not orthonormal \(max \|B Bᵀ − I\|"),
        (2 * E[:2], "rows of basis are not orthonormal"),
        (E[0], r"basis must be 2-D; got a float32 tensor of shape \(8,\)"),
    ],
)
def test_bases_must_be_finite_and_orthonormal(basis, message):
    with pytest.raises(InvalidInputError, match=message):
        project_out_hook(basis)
    with pytest.raises(InvalidInputError, match=message):
        replace_subspace_hook(basis, torch.zeros(D))
    out = project_out_hook(E[:2])(ACT)  # an orthonormal basis still works
    assert torch.allclose(out[..., :2], torch.zeros(2, 5, 2))


def test_patch_and_replace_refuse_wrong_shapes_naming_both():
    with pytest.raises(InvalidInputError, match=r"patch_hook value has shape \(3,\).*\(2, 5, 8\)"):
        patch_hook(torch.zeros(3))(ACT)
    with pytest.raises(InvalidInputError, match=r"value contains"):
        patch_hook(torch.full((D,), float("inf")))
    with pytest.raises(InvalidInputError, match=r"target must have last dimension 8.*\(3,\)"):
        replace_subspace_hook(E[:2], torch.zeros(3))
    with pytest.raises(InvalidInputError, match="target has 3 rows but the batch has 2"):
        replace_subspace_hook(E[:2], torch.zeros(3, D))(ACT)
    assert patch_hook(torch.zeros(D))(ACT).abs().sum() == 0
    assert patch_hook(torch.zeros(5, D))(ACT).abs().sum() == 0  # per position
    assert replace_subspace_hook(E[:2], torch.zeros(2, D))(ACT).shape == ACT.shape


def test_capture_means_refuses_group_ids_out_of_range():
    fam = make_family(name="dice", seq_len=8)
    model = TaskModel(ModelConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32), fam)
    batch = fam.sample("train", 4)
    names = [hook_name(0)]
    with pytest.raises(InvalidInputError, match=r"groups holds ids in \[0, 5\] but n_groups=2"):
        capture_means(model, batch.inputs, torch.tensor([0, 1, 5, 1]), names, 2)
    with pytest.raises(InvalidInputError, match="groups has 3 ids but there are 4 sequences"):
        capture_means(model, batch.inputs, torch.tensor([0, 1, 1]), names, 2)
    with pytest.raises(InputTypeError, match="groups must hold integer ids; got a float32"):
        capture_means(model, batch.inputs, torch.tensor([0.0, 1, 1, 0]), names, 2)
    with pytest.raises(InputTypeError, match="n_groups must be an integer >= 1; got the number"):
        capture_means(model, batch.inputs, torch.tensor([0, 1, 1, 0]), names, 2.0)
    means = capture_means(as_bridge(model), batch.inputs, torch.tensor([0, 1, 1, 0]), names, 2)
    assert means[names[0]].shape == (2, 16)
