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


# --------------------------------------------------------------------------- amortised checks
class _Forwards:
    """Counts the work the bridge's blocks do, in forwards of the unpatched batch: every block
    call adds its rows (copies × batch × positions) over ``n_layers × batch × seq``."""

    def __init__(self, bridge, batch: int, seq: int) -> None:
        self.rows, self.unit = 0, bridge.cfg.n_layers * batch * seq
        self.handles = [block.register_forward_pre_hook(self._count) for block in bridge.blocks]

    def _count(self, module, args) -> None:
        if args and torch.is_tensor(args[0]):
            self.rows += args[0].shape[0] * args[0].shape[1]

    def take(self) -> float:
        out, self.rows = self.rows / self.unit, 0
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _fresh_llama(tmp_path):
    tiny = pytest.importorskip("tvlens.llm.tiny")
    from tvlens.llm.load import load

    path = tiny.build_tiny_checkpoint(tmp_path, "llama", n_layers=3)
    return load(path, device="cpu", dtype="float32")


def _last_metric(logits):
    return logits[:, -1].log_softmax(-1)[:, 2].mean()


def test_one_patch_sweep_costs_about_two_forwards_once_checked(tmp_path):
    from tvlens.analyses.patching import patch_sweep

    bridge = _fresh_llama(tmp_path)
    g = torch.Generator().manual_seed(0)
    clean, corrupted = (torch.randint(5, bridge.cfg.d_vocab, (2, 12), generator=g) for _ in "ab")
    counter = _Forwards(bridge, 2, 12)
    try:

        def sweep():
            return patch_sweep(
                bridge,
                clean,
                corrupted,
                _last_metric,
                layers=[1],
                positions=[6],
                metric_positions=-1,
            )

        first = sweep()
        checked = counter.take()
        again = sweep()
        cached = counter.take()
    finally:
        counter.close()
    # first sweep: the two cached runs, the full checks (about 3.5 forwards) and the patch
    assert 4.0 < checked < 7.0
    # later sweeps: the two cached runs, a one-row spot check and the patch (2/3 × 6/12)
    assert 2.3 < cached < 2.5
    assert first["value"].tolist() == pytest.approx(again["value"].tolist(), abs=1e-6)
    assert again["suffix"].all() and again["stacked"].all()


def test_a_cached_verdict_is_spot_checked_and_rechecked_when_stale(tmp_path):
    bridge = _fresh_llama(tmp_path)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(5, bridge.cfg.d_vocab, (2, 12), generator=g)
    last = bridge.cfg.n_layers - 1
    names = [f"blocks.{last}.hook_resid_pre"]

    def settle():
        runner = BridgeSuffixRunner(bridge)
        logits, acts = runner.record(x, names)
        runner.verify(logits, acts[names[0]])
        return runner

    assert settle().verdict_source == "checked"
    runner = settle()
    assert runner.verdict_source == "cached" and runner.rows_ok and runner.refused == {}

    # A hook that depends on how many rows the last MLP sees: the read-rows MLP no longer
    # reproduces the forward. Module hooks below the blocks are not part of the key, so the
    # cached verdict is found, fails its spot check, and the full checks refuse the shortcut.
    def by_row(module, args, out):
        return out + 0.01 * torch.arange(out.shape[1], dtype=out.dtype)[None, :, None]

    handle = bridge.blocks[last].mlp.register_forward_hook(by_row)
    try:
        runner = settle()
    finally:
        handle.remove()
    assert runner.verdict_source == "checked"
    assert runner.replay_ok and runner.batch_ok  # all rows, every copy: still the forward
    # a suffix's rows are numbered from its start, so the hook breaks suffix runs as well
    assert {"read-rows MLP", "suffix"} <= set(runner.refused)
    assert not (runner.rows_ok or runner.suffix_ok)
    # the hook is gone: the stored (slower, still exact) verdict passes its spot check and
    # stays until forgotten; then every shortcut is checked, and taken, again
    assert settle().verdict_source == "cached"
    BridgeSuffixRunner.forget(bridge)
    runner = settle()
    assert runner.verdict_source == "checked" and runner.refused == {}


def test_a_hook_on_the_bridge_is_part_of_the_verdict_key(tmp_path):
    bridge = _fresh_llama(tmp_path)
    x = torch.randint(5, bridge.cfg.d_vocab, (2, 8), generator=torch.Generator().manual_seed(2))
    runner = BridgeSuffixRunner(bridge)
    runner.record(x)
    plain = runner.verdict_key(8)
    bridge.blocks[1].hook_resid_pre.add_hook(lambda act, hook: act)
    try:
        hooked = runner.verdict_key(8)
    finally:
        bridge.reset_hooks()
    assert plain != hooked and runner.verdict_key(8) == plain
