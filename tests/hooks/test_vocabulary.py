"""One hook vocabulary: TL's own names, one bridge adapter, one layer check."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tvlens.hooks import as_bridge, check_layers, hook_name
from tvlens.hooks.tl_compat import _rotate_adjacent_pairs, rotate_half


@pytest.mark.parametrize(
    ("layer", "point", "expected"),
    [
        (2, "z", "blocks.2.attn.hook_z"),
        (2, "attn.hook_z", "blocks.2.attn.hook_z"),
        (3, "resid_post", "blocks.3.hook_resid_post"),
        (0, "resid_pre", "blocks.0.hook_resid_pre"),
        (1, "attn_out", "blocks.1.hook_attn_out"),
        (1, "pattern", "blocks.1.attn.hook_pattern"),
        (1, "pre", "blocks.1.mlp.hook_pre"),
        (1, "hook_resid_mid", "blocks.1.hook_resid_mid"),
        (None, "embed", "hook_embed"),
    ],
)
def test_hook_name_speaks_transformer_lens(layer, point, expected):
    from transformer_lens.utilities import get_act_name

    assert hook_name(layer, point) == expected
    if "." not in point and not point.startswith("hook_"):
        assert hook_name(layer, point) == get_act_name(point, layer)  # TL's own grammar


def test_hook_name_rejects_bad_layers():
    with pytest.raises(ValueError, match="block index"):
        hook_name(-1, "z")
    with pytest.raises(ValueError, match="hook name"):
        hook_name(0, "")


def test_one_bridge_adapter_and_one_layer_check():
    bridge = SimpleNamespace(hook_dict={}, cfg=SimpleNamespace(n_layers=3))
    task_model = SimpleNamespace(bridge=bridge)
    run = SimpleNamespace(model=task_model)
    assert as_bridge(bridge) is bridge and as_bridge(task_model) is bridge
    assert as_bridge(run) is bridge
    with pytest.raises(TypeError, match="TransformerBridge"):
        as_bridge(object())
    assert check_layers(run, None) == [0, 1, 2]
    assert check_layers(bridge, [2, 0]) == [2, 0]
    with pytest.raises(ValueError, match="not valid for a 3-layer model"):
        check_layers(bridge, [3])
    with pytest.raises(IndexError):  # LayerError is both: callers that index keep working
        check_layers(bridge, [-1])
    with pytest.raises(ValueError, match="not valid"):
        check_layers(bridge, [])


def test_rotate_half_fallback_matches_transformer_lens():
    from transformer_lens.model_bridge.sources.native.model import NativeRotary

    x = torch.randn(2, 3, 8)
    expected = NativeRotary._rotate_half(x)
    assert torch.equal(_rotate_adjacent_pairs(x), expected)
    assert torch.equal(rotate_half(NativeRotary, x), expected)
    with pytest.warns(RuntimeWarning, match="_rotate_half"):
        assert torch.equal(rotate_half(object(), x), expected)  # API gone: the copy
