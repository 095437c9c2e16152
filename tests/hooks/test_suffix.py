"""The suffix runners reproduce the bridge's forward; the row-wise hooks touch only their rows."""

from __future__ import annotations

import copy

import pytest
import torch
import transformer_lens.patching as tlp
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module
from transformer_lens.model_bridge.sources.native import NativeModel, initialize_native_model

from tvlens.analyses.patching import patch_sweep
from tvlens.hooks.rowwise import (
    add_rows_hook,
    patch_head_rows_hook,
    patch_rows_hook,
    store_rows_hook,
)
from tvlens.hooks.suffix import BridgeSuffixRunner, NativeSuffixRunner
from tvlens.models.config import ModelConfig
from tvlens.models.model import TaskModel
from tvlens.tasks import make_family

SEQ = 10


def _llama_like_native():
    """A TL-native bridge with the branches a TaskModel does not use: GQA, RMS norms, a gated
    MLP, attention and output soft-caps."""
    cfg = TransformerBridgeConfig(
        d_model=32,
        d_head=8,
        n_layers=3,
        n_ctx=SEQ,
        n_heads=4,
        n_key_value_heads=2,
        d_mlp=48,
        d_vocab=11,
        act_fn="silu",
        gated_mlp=True,
        normalization_type="RMS",
        final_rms=True,
        positional_embedding_type="rotary",
        attn_scores_soft_cap=5.0,
        output_logits_soft_cap=3.0,
        architecture="TransformerLensNative",
        model_name="llama-like",
        seed=0,
        tokenizer_prepends_bos=False,
    )
    module = NativeModel(copy.deepcopy(cfg))
    initialize_native_model(module, cfg, seed=0)
    return build_bridge_from_module(
        module, architecture="TransformerLensNative", tl_config=cfg, model_name="llama-like"
    ).eval()


def _task_bridge():
    family = make_family(name="dice", k=0, seq_len=SEQ)
    model = TaskModel(ModelConfig(n_layers=3, d_model=32, n_heads=4, d_mlp=64, seed=2), family)
    return model.bridge, family.sample("major", 3, seed=0).inputs


@pytest.mark.parametrize("which", ["task", "llama_like"])
@torch.no_grad()
def test_native_runner_reproduces_the_bridge(which):
    if which == "task":
        bridge, x = _task_bridge()
    else:
        bridge = _llama_like_native()
        x = torch.randint(0, 11, (3, SEQ), generator=torch.Generator().manual_seed(1))
    reference, cache = bridge.run_with_cache(x)
    runner = NativeSuffixRunner(bridge)
    logits, acts = runner.forward(
        bridge(x, stop_at_layer=0),
        {"resid_pre", "resid_mid", "attn.hook_z", "mlp_out"},
        keep_kv=True,
    )
    assert runner.check(logits, reference) <= 1e-5
    for name, act in acts.items():
        assert (act - cache[name]).abs().max() <= 1e-5, name
    # from the middle: layer 1 on, positions 4.. (prefix keys/values from the cache)
    for start, p0 in ((1, 4), (2, 9), (0, 0), (3, 6)):
        resid = (
            cache[f"blocks.{start}.hook_resid_pre"]
            if start < 3
            else cache["blocks.2.hook_resid_post"]
        )
        out = runner.run(resid[:, p0:].repeat(2, 1, 1), start, p0)
        assert (out - reference[:, p0:].repeat(2, 1, 1)).abs().max() <= 1e-5
        rows = torch.tensor([SEQ - 1 - p0])
        out = runner.run(resid[:, p0:], start, p0, read_rows=rows)
        assert (out - reference[:, -1:]).abs().max() <= 1e-5


def test_native_engine_on_gqa_softcap_gated_model_equals_transformer_lens():
    bridge = _llama_like_native()
    g = torch.Generator().manual_seed(2)
    clean, corrupted = torch.randint(0, 11, (2, 3, SEQ), generator=g)

    def metric(logits):
        return logits.log_softmax(-1)[:, :, 3].mean()

    _, cache = bridge.run_with_cache(clean)
    for point, by, fn in (
        ("resid_pre", None, tlp.get_act_patch_resid_pre),
        ("mlp_out", None, tlp.get_act_patch_mlp_out),
        ("z", "head", tlp.get_act_patch_attn_head_out_all_pos),
    ):
        ref = fn(bridge, corrupted, cache, metric)
        df = patch_sweep(bridge, clean, corrupted, metric, point, by=by)
        assert df.attrs["engine"] == "native"
        assert (torch.tensor(df["value"].to_numpy()).view(ref.shape) - ref).abs().max() <= 1e-4


def test_bridge_runner_probes_its_shortcuts():
    bridge, x = _task_bridge()
    runner = BridgeSuffixRunner(bridge)
    resid0 = bridge(x, stop_at_layer=0)
    reference = runner.prepare(x, resid0)
    # TL-native attention ignores past_key_values, so no suffix runs; replay and stacking work
    assert runner.replay_ok and runner.batch_ok and not runner.suffix_ok
    out = runner.run(resid0.repeat(2, 1, 1), 0, 0, 2, [])
    assert (out - reference.repeat(2, 1, 1)).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="suffix"):
        runner.run(resid0[:, 3:], 0, 3, 1, [])


# --------------------------------------------------------------------------- row-wise hooks
def test_rowwise_hooks_touch_one_position_per_row():
    act = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    pos = torch.tensor([1, 3])

    class Hook:
        name = "blocks.0.hook_resid_post"

    store: dict[str, torch.Tensor] = {}
    assert store_rows_hook(store, pos)(act, Hook()) is None
    assert torch.equal(store[Hook.name], torch.stack([act[0, 1], act[1, 3]]))

    out = patch_rows_hook(torch.zeros(3), pos)(act)
    assert out[0, 1].abs().sum() == 0 and out[1, 3].abs().sum() == 0
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[0, 1] = mask[1, 3] = False
    assert torch.equal(out[mask], act[mask]) and act[0, 1].abs().sum() > 0  # input untouched

    out = add_rows_hook(torch.ones(3), pos, scale=2.0)(act)
    assert torch.equal(out[0, 1], act[0, 1] + 2) and torch.equal(out[mask], act[mask])

    z = torch.randn(2, 4, 3, 5)
    out = patch_head_rows_hook(torch.zeros(5), 2, pos)(z)
    assert out[0, 1, 2].abs().sum() == 0 and torch.equal(out[0, 1, :2], z[0, 1, :2])
    assert torch.equal(out[0, 0], z[0, 0])

    with pytest.raises(ValueError, match="one index per row"):
        patch_rows_hook(torch.zeros(3), torch.tensor([1]))(act)
    with pytest.raises(IndexError, match="out of range"):
        patch_rows_hook(torch.zeros(3), torch.tensor([1, 4]))(act)
    with pytest.raises(ValueError, match="width"):
        add_rows_hook(torch.ones(4), pos)(act)
    with pytest.raises(ValueError, match="attn.hook_z"):
        patch_head_rows_hook(torch.zeros(5), 3, pos)(z)
