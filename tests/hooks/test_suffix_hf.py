"""The bridge suffix runner on Hugging Face bridges: every shortcut is taken, and each is exact.

A refused shortcut keeps results exact but silently loses the speed-up (transformers 5.24 did
this to the prefix-K/V path), so these tests fail when any shortcut is refused.
"""

from __future__ import annotations

import logging

import pytest
import torch

from tvlens.hooks.suffix import BridgeSuffixRunner

ATOL = 1e-5


@pytest.fixture(scope="module", params=["llama", "gemma2"])
def hf(request, tmp_path_factory):
    tiny = pytest.importorskip("tvlens.llm.tiny")
    from tvlens.llm.load import load

    path = tiny.build_tiny_checkpoint(
        tmp_path_factory.mktemp(request.param), request.param, n_layers=3
    )
    bridge = load(path, device="cpu", dtype="float32")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(5, bridge.cfg.d_vocab, (2, 12), generator=g)
    runner = BridgeSuffixRunner(bridge)
    reference = runner.prepare(x, bridge(x, stop_at_layer=0))
    return bridge, x, runner, reference


@torch.no_grad()
def _hooked_forward(bridge, x, hooks):
    with bridge.hooks(fwd_hooks=hooks):
        return bridge(x)


def _add_at(pos: int, value: float):
    def hook(act, hook):
        act = act.clone()
        act[:, pos] += value
        return act

    return hook


def test_every_shortcut_is_taken(hf):
    _, _, runner, _ = hf
    assert runner.refused == {}
    assert runner.replay_ok and runner.batch_ok and runner.suffix_ok and runner.rows_ok


@pytest.mark.parametrize("layer,p0", [(0, 0), (1, 5), (2, 11)])
def test_suffix_with_read_rows_equals_the_hooked_forward(hf, layer, p0):
    bridge, x, runner, _ = hf
    hooks = [(f"blocks.{layer}.hook_resid_pre", _add_at(p0, 0.5))]
    expected = _hooked_forward(bridge, x, hooks)[:, -1:]
    with torch.no_grad():
        plain = bridge(x)[:, -1:]
    _, cache = bridge.run_with_cache(x, names_filter=f"blocks.{layer}.hook_resid_pre")
    resid = cache[f"blocks.{layer}.hook_resid_pre"][:, p0:]
    rel = torch.tensor([x.shape[1] - 1 - p0])
    # in a suffix run the hooks see positions p0.. only: the patched row is row 0 there
    suffix_hooks = [(f"blocks.{layer}.hook_resid_pre", _add_at(0, 0.5))]
    got = runner.run(resid, layer, p0, 1, suffix_hooks, read_rows=rel)
    assert (got - expected).abs().max() <= ATOL * max(1.0, float(expected.abs().max()))
    assert (expected - plain).abs().max() > 1e-4  # the patch matters


def test_a_hook_on_the_last_mlp_still_sees_every_row(hf):
    bridge, x, runner, _ = hf
    last = bridge.cfg.n_layers - 1
    seen = []

    def spy(act, hook):
        seen.append(act.shape[1])
        return act + 0.25

    hooks = [(f"blocks.{last}.hook_mlp_out", spy)]
    expected = _hooked_forward(bridge, x, hooks)[:, -1:]
    seen.clear()
    _, cache = bridge.run_with_cache(x, names_filter="blocks.0.hook_resid_pre")
    got = runner.run(cache["blocks.0.hook_resid_pre"], 0, 0, 1, hooks, torch.tensor([11]))
    assert seen == [x.shape[1]]  # the rows-only MLP is off when a hook reads the last MLP
    assert (got - expected).abs().max() <= ATOL * max(1.0, float(expected.abs().max()))


def test_a_refused_shortcut_is_logged_once(hf, caplog, monkeypatch):
    bridge, x, _, _ = hf
    from tvlens.hooks import suffix

    monkeypatch.setattr(suffix, "_WARNED", set())
    monkeypatch.setattr(suffix, "_SLICERS", {})  # nothing can be cut: suffix runs refused
    with caplog.at_level(logging.WARNING, logger="tvlens.hooks.suffix"):
        for _ in range(2):
            runner = BridgeSuffixRunner(bridge)
            runner.prepare(x, bridge(x, stop_at_layer=0))
    assert not runner.suffix_ok and "suffix" in runner.refused
    warned = [r for r in caplog.records if "suffix shortcut refused" in r.getMessage()]
    assert len(warned) == 1
