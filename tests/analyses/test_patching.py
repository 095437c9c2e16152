"""Patching sweeps equal transformer_lens.patching on small seeded models, and fail clearly."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
import transformer_lens.patching as tlp
from tiny import tiny_config

from tvlens.analyses.patching import analyse_patching, patch_sweep, recovered, task_pair
from tvlens.hooks import hook_name
from tvlens.models import train
from tvlens.models.config import ModelConfig
from tvlens.models.model import TaskModel
from tvlens.tasks import make_family
from tvlens.viz.patching import FIGURES, patching_heatmap

ATOL = 1e-4
N_LAYERS, N_HEADS, SEQ = 3, 4, 12
#: the sweep's constants, explicit columns after TL's long form
CONSTANTS = (
    "clean_value",
    "corrupted_value",
    "point",
    "mode",
    "by",
    "engine",
    "suffix",
    "stacked",
    "method",
)


@functools.cache
def _setup(positional: str = "rotary"):
    """A fresh (untrained, raw module in training mode) seeded TaskModel and aligned prompts."""
    family = make_family(name="dice", k=0, seq_len=SEQ)
    config = ModelConfig(
        n_layers=N_LAYERS, d_model=32, n_heads=N_HEADS, d_mlp=64, positional=positional, seed=3
    )
    model = TaskModel(config, family)
    clean = family.sample("major", 4, seed=1).inputs
    corrupted = family.sample("major", 4, seed=2).inputs
    corrupted[:, :3] = clean[:, :3]  # a shared prefix: those patches change nothing
    return model, clean, corrupted


def _metric(logits):
    """Reads every position: log-prob of token 0 at the end plus a mean over all positions."""
    lp = logits.log_softmax(-1)
    return lp[:, -1, 0].mean() + 0.1 * lp[:, :, 1].mean()


def _last(logits):
    """Reads the last position only."""
    return logits[:, -1].log_softmax(-1)[:, 2].mean()


@functools.cache
def _tl(fn_name: str, positional: str, metric_name: str, noise: bool = False):
    model, clean, corrupted = _setup(positional)
    run, patched = (corrupted, clean) if noise else (clean, corrupted)
    _, cache = model.bridge.run_with_cache(run)
    fn = getattr(tlp, fn_name)
    return fn(model.bridge, patched, cache, {"all": _metric, "last": _last}[metric_name])


def _grid(df: pd.DataFrame, shape) -> torch.Tensor:
    return torch.tensor(df["value"].to_numpy()).view(shape)


# --------------------------------------------------------------------------- equality with TL
TL_BY_POS = [
    ("resid_pre", "get_act_patch_resid_pre"),
    ("attn_out", "get_act_patch_attn_out"),
    ("mlp_out", "get_act_patch_mlp_out"),
    ("mlp_in", "get_act_patch_resid_mid"),  # a bridge's resid_mid hook patches the MLP input
]


@pytest.mark.parametrize("engine", ["native", "bridge"])
@pytest.mark.parametrize("point,tl_fn", TL_BY_POS)
@pytest.mark.parametrize("positional", ["rotary", "standard"])
def test_layer_pos_sweeps_equal_transformer_lens(positional, point, tl_fn, engine):
    model, clean, corrupted = _setup(positional)
    assert model.training  # a fresh TaskModel: only its bridge (in eval mode) runs
    ref = _tl(tl_fn, positional, "all")
    df = patch_sweep(model, clean, corrupted, _metric, point, engine=engine)
    assert list(df.columns[:3]) == ["layer", "pos", "value"]  # TL's long form, then constants
    assert list(df.columns[3:]) == list(CONSTANTS)
    assert df.attrs["engine"] == engine
    assert (_grid(df, ref.shape) - ref).abs().max() <= ATOL
    assert ref.std() > 1e-3  # the sweep is not flat, so equality means something


@pytest.mark.parametrize("engine", ["native", "bridge"])
@pytest.mark.parametrize(
    "by,tl_fn,cols",
    [
        ("head", "get_act_patch_attn_head_out_all_pos", ["layer", "head", "value"]),
        ("head_pos", "get_act_patch_attn_head_out_by_pos", ["layer", "pos", "head", "value"]),
    ],
)
def test_head_sweeps_equal_transformer_lens(by, tl_fn, cols, engine):
    model, clean, corrupted = _setup()
    for metric_name, metric, read in (("all", _metric, None), ("last", _last, -1)):
        ref = _tl(tl_fn, "rotary", metric_name)
        df = patch_sweep(
            model, clean, corrupted, metric, "z", by=by, engine=engine, metric_positions=read
        )
        assert list(df.columns[: len(cols)]) == cols
        assert list(df.columns[len(cols) :]) == list(CONSTANTS)
        assert (_grid(df, ref.shape) - ref).abs().max() <= ATOL
        assert ref.std() > 1e-3


def test_resid_post_equals_transformer_lens_generic_patch():
    model, clean, corrupted = _setup()
    _, cache = model.bridge.run_with_cache(clean)
    ref = tlp.generic_activation_patch(
        model.bridge,
        corrupted,
        cache,
        _metric,
        patch_setter=tlp.layer_pos_patch_setter,
        activation_name="resid_post",
        index_axis_names=("layer", "pos"),
    )
    for engine in ("native", "bridge"):
        df = patch_sweep(model, clean, corrupted, _metric, "resid_post", engine=engine)
        assert (_grid(df, ref.shape) - ref).abs().max() <= ATOL


@pytest.mark.parametrize("point,tl_fn", TL_BY_POS[:2])
def test_noising_equals_transformer_lens_with_roles_swapped(point, tl_fn):
    model, clean, corrupted = _setup()
    ref = _tl(tl_fn, "rotary", "all", noise=True)
    df = patch_sweep(model, clean, corrupted, _metric, point, mode="noise")
    assert (_grid(df, ref.shape) - ref).abs().max() <= ATOL
    with torch.no_grad():
        clean_value = float(_metric(model.bridge(clean)))
    assert df.attrs["clean_value"] == pytest.approx(clean_value, abs=1e-5)


@pytest.mark.parametrize("engine", ["native", "bridge"])
def test_declared_metric_positions_give_the_same_numbers(engine):
    model, clean, corrupted = _setup()
    ref = _tl("get_act_patch_resid_pre", "rotary", "last")
    df = patch_sweep(model, clean, corrupted, _last, engine=engine, metric_positions=-1)
    assert (_grid(df, ref.shape) - ref).abs().max() <= ATOL
    # positions after a read position cannot matter under causal attention: exactly unpatched
    df = patch_sweep(
        model, clean, corrupted, lambda x: _last(x[:, :7]), engine=engine, metric_positions=6
    )
    late = df[df["pos"] > 6]
    assert (late["value"] == df.attrs["corrupted_value"]).all()


def test_subsets_and_shared_prefix():
    model, clean, corrupted = _setup()
    ref = _tl("get_act_patch_resid_pre", "rotary", "all")
    df = patch_sweep(model, clean, corrupted, _metric, layers=[2, 0], positions=[5, -1, 0])
    got = df.pivot_table(index="layer", columns="pos", values="value", sort=False)
    assert list(got.index) == [2, 0] and list(got.columns) == [5, 11, 0]
    assert (torch.tensor(got.to_numpy()) - ref[[2, 0]][:, [5, 11, 0]]).abs().max() <= ATOL
    # layer 0, positions 0-2: identical tokens, so the patch is the unpatched run, exactly
    full = patch_sweep(model, clean, corrupted, _metric)
    shared = full[(full["layer"] == 0) & (full["pos"] < 3)]
    assert (shared["value"] == full.attrs["corrupted_value"]).all()


@pytest.mark.parametrize("batch_size", [1, 3])
def test_stacking_does_not_change_the_numbers(batch_size):
    model, clean, corrupted = _setup()
    ref = _tl("get_act_patch_attn_out", "rotary", "all")
    df = patch_sweep(model, clean, corrupted, _metric, "attn_out", batch_size=batch_size)
    assert (_grid(df, ref.shape) - ref).abs().max() <= ATOL


# --------------------------------------------------------------------------- resid_mid semantics
def _resid_mid_reference(model, clean, corrupted, metric):
    """Full forwards with TL hooks: replace resid_mid in the residual stream itself (the
    bridge's hook_resid_mid feeds only the MLP, so the change is also added to mlp_out)."""
    bridge = model.bridge
    _, c = bridge.run_with_cache(clean)
    _, r = bridge.run_with_cache(corrupted)
    out = torch.zeros(N_LAYERS, SEQ)
    for layer in range(N_LAYERS):
        name = hook_name(layer, "resid_mid")
        for pos in range(SEQ):
            delta = c[name][:, pos] - r[name][:, pos]

            def setter(act, hook, pos=pos, name=name):
                act = act.clone()
                act[:, pos] = c[name][:, pos]
                return act

            def carry(act, hook, pos=pos, delta=delta):
                act = act.clone()
                act[:, pos] += delta
                return act

            with torch.no_grad():
                logits = bridge.run_with_hooks(
                    corrupted, fwd_hooks=[(name, setter), (hook_name(layer, "mlp_out"), carry)]
                )
            out[layer, pos] = float(metric(logits))
    return out


def test_resid_mid_patches_the_residual_stream():
    model, clean, corrupted = _setup()
    ref = _resid_mid_reference(model, clean, corrupted, _metric)
    for engine in ("native", "bridge"):
        df = patch_sweep(model, clean, corrupted, _metric, "resid_mid", engine=engine)
        assert (_grid(df, ref.shape) - ref).abs().max() <= ATOL
    # Closed form: at the last layer and position, a metric reading that position sees the
    # clean run exactly when the residual is patched, and not when only the MLP input is.
    mid = patch_sweep(model, clean, corrupted, _last, "resid_mid", metric_positions=-1)
    mlp_in = patch_sweep(model, clean, corrupted, _last, "mlp_in", metric_positions=-1)
    last = (mid["layer"] == N_LAYERS - 1) & (mid["pos"] == SEQ - 1)
    assert float(mid.loc[last, "value"].iloc[0]) == pytest.approx(
        mid.attrs["clean_value"], abs=1e-5
    )
    gap = abs(float(mlp_in.loc[last, "value"].iloc[0]) - mid.attrs["clean_value"])
    assert gap > 1e-3


# --------------------------------------------------------------------------- other families
def test_regression_float_inputs_closed_form():
    family = make_family(name="linreg", k=0, seq_len=10, dim=3)
    model = TaskModel(ModelConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=32, seed=1), family)
    clean, corrupted = (family.sample("major", 3, seed=s).inputs for s in (1, 2))

    def metric(out):
        return out[:, -1, 0].mean()

    dfs = {
        e: patch_sweep(model, clean, corrupted, metric, "resid_post", engine=e)
        for e in ("native", "bridge")
    }
    assert (
        torch.tensor(dfs["native"]["value"].to_numpy())
        - torch.tensor(dfs["bridge"]["value"].to_numpy())
    ).abs().max() <= ATOL
    df = dfs["native"]
    last = df[(df["layer"] == 1) & (df["pos"] == 9)]
    assert float(last["value"].iloc[0]) == pytest.approx(df.attrs["clean_value"], abs=1e-5)


# --------------------------------------------------------------------------- bad input
def test_bad_inputs_fail_clearly():
    model, clean, corrupted = _setup()
    with pytest.raises(ValueError, match="differ"):
        patch_sweep(model, clean, corrupted[:, :-1], _metric)
    with pytest.raises(ValueError, match="differ"):
        patch_sweep(model, clean, corrupted.float(), _metric)
    with pytest.raises(ValueError, match="one scalar"):
        patch_sweep(model, clean, corrupted, lambda x: x[:, -1, 0])
    with pytest.raises(ValueError, match="unknown patching point 'resid_pree'.*resid_pre"):
        patch_sweep(model, clean, corrupted, _metric, "resid_pree")
    with pytest.raises(ValueError, match="by one of"):
        patch_sweep(model, clean, corrupted, _metric, "resid_pre", by="head")
    with pytest.raises(ValueError, match="head_pos"):
        patch_sweep(model, clean, corrupted, _metric, "z", positions=[1])
    with pytest.raises(ValueError, match="does not list every position"):
        patch_sweep(model, clean, corrupted, _metric, metric_positions=-1)
    with pytest.raises(IndexError):
        patch_sweep(model, clean, corrupted, _metric, layers=[N_LAYERS])
    with pytest.raises(ValueError, match="n_ctx"):
        long = torch.zeros(1, 64, dtype=torch.long)
        patch_sweep(model, long, long, _metric)


def test_training_mode_is_refused():
    model, clean, corrupted = _setup()
    model.bridge.train()
    try:
        with pytest.raises(ValueError, match="training mode.*eval"):
            patch_sweep(model, clean, corrupted, _metric)
        with pytest.raises(ValueError, match="training mode"):  # TL refuses it too
            _, cache = model.bridge.run_with_cache(clean)
            tlp.get_act_patch_resid_pre(model.bridge, corrupted, cache, _metric)
    finally:
        model.bridge.eval()


def test_hook_missing_from_the_model():
    """An attention-only TL-native bridge has no MLP hooks: sweeping them names the problem."""
    import copy

    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module
    from transformer_lens.model_bridge.sources.native import NativeModel, initialize_native_model

    cfg = TransformerBridgeConfig(
        d_model=16,
        d_head=8,
        n_layers=2,
        n_ctx=SEQ,
        n_heads=2,
        d_vocab=7,
        attn_only=True,
        positional_embedding_type="rotary",
        architecture="TransformerLensNative",
        model_name="attn-only",
        seed=0,
        tokenizer_prepends_bos=False,
    )
    module = NativeModel(copy.deepcopy(cfg))
    initialize_native_model(module, cfg, seed=0)
    bridge = build_bridge_from_module(
        module, architecture="TransformerLensNative", tl_config=cfg, model_name="attn-only"
    ).eval()
    x = torch.randint(0, 7, (2, SEQ), generator=torch.Generator().manual_seed(0))
    with pytest.raises(KeyError, match="unknown hook name 'blocks.0.hook_mlp_out'"):
        patch_sweep(bridge, x, x.flip(0), _metric, "mlp_out")
    native = patch_sweep(bridge, x, x.flip(0), _metric, "attn_out", engine="native")
    generic = patch_sweep(bridge, x, x.flip(0), _metric, "attn_out", engine="bridge")
    assert (native["value"] - generic["value"]).abs().max() <= ATOL


# --------------------------------------------------------------------------- memory
def _peak_bytes(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    return max(e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]")


def test_memory_does_not_grow_with_positions():
    model, clean, corrupted = _setup()

    def sweep(positions):
        return lambda: patch_sweep(
            model, clean, corrupted, _metric, positions=positions, batch_size=2
        )

    few, every = _peak_bytes(sweep([3, 4])), _peak_bytes(sweep(None))
    assert every <= few * 1.02 + 1024


# --------------------------------------------------------------------------- trained run
def test_analyse_patching_writes_tables_and_figures(tmp_path):
    run = train(tiny_config("dice", steps=8), tmp_path / "run", progress=False)
    tables = analyse_patching(run, n_per_task=2)
    for name, cols in (("patching_resid_pre", "pos"), ("patching_heads", "head")):
        csv = pd.read_csv(tmp_path / "run" / "analyses" / f"{name}.csv")
        assert {"layer", cols, "value", "recovered"} <= set(csv.columns)
        assert len(csv) == run.config.model.n_layers * (
            run.family.seq_len if cols == "pos" else run.config.model.n_heads
        )
        frame = tables[name]
        assert recovered(frame).to_numpy() == pytest.approx(
            csv["recovered"].to_numpy(), nan_ok=True
        )
        assert isinstance(FIGURES[name](csv), go.Figure)
    clean, corrupted = task_pair(run.family, 2, seed=0)
    assert (clean.task_ids != corrupted.task_ids).all()


def test_heatmap_shapes():
    model, clean, corrupted = _setup()
    df = patch_sweep(model, clean, corrupted, _metric, "z", by="head_pos", layers=[1])
    fig = patching_heatmap(df)
    assert fig.data[0].z.shape == (N_HEADS, SEQ)
    df = patch_sweep(model, clean, corrupted, _metric, layers=[0, 2], positions=[1, 2, 3])
    assert patching_heatmap(df).data[0].z.shape == (2, 3)
    with pytest.raises(ValueError, match="expected columns"):
        patching_heatmap(df.drop(columns="pos"))


# --------------------------------------------------------------------------- pretrained bridges
@pytest.fixture(scope="module", params=["llama", "gemma2"])
def hf_bridge(request, tmp_path_factory):
    """A tiny random Llama / Gemma-2 booted through boot_transformers (tvlens.llm.load)."""
    tiny = pytest.importorskip("tvlens.llm.tiny")
    from tvlens.llm.load import load

    path = tiny.build_tiny_checkpoint(tmp_path_factory.mktemp(request.param), request.param)
    return load(path, device="cpu", dtype="float32")


@pytest.mark.parametrize(
    "point,by,tl_fn",
    [
        ("resid_pre", None, "get_act_patch_resid_pre"),
        ("attn_out", None, "get_act_patch_attn_out"),
        ("mlp_out", None, "get_act_patch_mlp_out"),
        ("mlp_in", None, "get_act_patch_resid_mid"),
        ("z", "head", "get_act_patch_attn_head_out_all_pos"),
        ("z", "head_pos", "get_act_patch_attn_head_out_by_pos"),
    ],
)
def test_pretrained_bridges_equal_transformer_lens(hf_bridge, point, by, tl_fn):
    g = torch.Generator().manual_seed(0)
    vocab = hf_bridge.cfg.d_vocab
    clean = torch.randint(5, vocab, (3, 10), generator=g)
    corrupted = torch.randint(5, vocab, (3, 10), generator=g)
    corrupted[:, :2] = clean[:, :2]
    _, cache = hf_bridge.run_with_cache(clean)
    ref = getattr(tlp, tl_fn)(hf_bridge, corrupted, cache, _metric)
    df = patch_sweep(hf_bridge, clean, corrupted, _metric, point, by=by)
    assert df.attrs["engine"] == "bridge" and df.attrs["suffix"] and df.attrs["stacked"]
    assert (_grid(df, ref.shape) - ref).abs().max() <= ATOL
    assert ref.std() > 1e-5
    with pytest.raises(ValueError, match="engine='native' needs"):
        patch_sweep(hf_bridge, clean, corrupted, _metric, point, by=by, engine="native")


@pytest.mark.parametrize(
    "point,by,tl_fn",
    [
        ("resid_pre", None, "get_act_patch_resid_pre"),
        ("z", "head", "get_act_patch_attn_head_out_all_pos"),
        ("z", "head_pos", "get_act_patch_attn_head_out_by_pos"),
    ],
)
def test_pretrained_bridges_with_declared_read_rows(hf_bridge, point, by, tl_fn):
    """Read rows declared: the source run unembeds them only, head patches start after their
    layer's attention where the block allows it (Llama; not Gemma-2's post-attention norm)."""
    from tvlens.hooks.suffix import _VERDICTS

    g = torch.Generator().manual_seed(4)
    vocab = hf_bridge.cfg.d_vocab
    clean = torch.randint(5, vocab, (3, 10), generator=g)
    corrupted = torch.randint(5, vocab, (3, 10), generator=g)
    _, cache = hf_bridge.run_with_cache(clean)
    ref = getattr(tlp, tl_fn)(hf_bridge, corrupted, cache, _last)
    for _ in range(2):  # full checks, then the cached verdict
        df = patch_sweep(hf_bridge, clean, corrupted, _last, point, by=by, metric_positions=-1)
        assert (_grid(df, ref.shape) - ref).abs().max() <= ATOL
    assert ref.std() > 1e-5
    if point == "z":
        verdicts = [v for v in hf_bridge.__dict__[_VERDICTS].values() if isinstance(v, dict)]
        is_llama = "Llama" in type(hf_bridge.original_model).__name__
        assert {v["z_ok"] for v in verdicts if v["z_ok"] is not None} == {is_llama}


# --------------------------------------------------------------------------- stacks
def _fake_setup(batch=2, seq=16, n_layers=4):
    from types import SimpleNamespace

    cfg = SimpleNamespace(d_model=8, n_heads=2, d_mlp=16, n_layers=n_layers)
    return SimpleNamespace(
        bridge=SimpleNamespace(cfg=cfg), batch=batch, seq=seq, base_logits=torch.zeros(1)
    )


def test_stacks_start_where_their_patches_start(monkeypatch):
    from types import SimpleNamespace

    from tvlens.analyses import patching

    runner = SimpleNamespace(batch_ok=True)  # the bridge engine
    cpu = torch.device("cpu")
    jobs = [(0, p, None, p) for p in (0, 4, 8, 12)] + [(0, -1, h, 3) for h in range(3)]
    # where a rerun costs little against a row's arithmetic (SmolLM2 on a CPU), only patches
    # with the same start share a rerun: no position is recomputed for a later patch
    monkeypatch.setitem(patching.RERUN_OVERHEAD_FLOPS, ("cpu", "bridge"), 0.0)
    groups = patching._groups(_fake_setup(), runner, jobs, None, cpu)
    for group in groups:
        assert len({start for *_, start in group}) == 1
    assert sorted(len(g) for g in groups) == [1, 1, 1, 1, 3]
    # batch_size stacks regardless, latest starts first (adjacent starts share a stack)
    forced = patching._groups(_fake_setup(), runner, jobs[:4], 2, cpu)
    assert [[j[1] for j in g] for g in forced] == [[12, 8], [4, 0]]
    # where a rerun's fixed cost is large (a GPU), nearby starts stack while they fit ...
    monkeypatch.setitem(patching.RERUN_OVERHEAD_FLOPS, ("cpu", "bridge"), 1e9)
    assert len(patching._groups(_fake_setup(), runner, jobs[:4], None, cpu)) == 1
    # ... within the rows the memory allows
    monkeypatch.setitem(
        patching.STACK_MAX_ROWS, ("cpu", "bridge"), 2 * 2 * 16
    )  # copies × batch × seq
    sizes = [len(g) for g in patching._groups(_fake_setup(), runner, jobs[:4], None, cpu)]
    assert max(sizes) <= 2 and sum(sizes) == 4
    # a bridge that cannot stack runs one patch per rerun
    single = patching._groups(_fake_setup(), SimpleNamespace(batch_ok=False), jobs, 4, cpu)
    assert all(len(g) == 1 for g in single)


def test_stacks_across_layers_share_a_start_and_come_back_in_layer_order(monkeypatch):
    from types import SimpleNamespace

    from tvlens.analyses import patching

    runner = SimpleNamespace(batch_ok=True)
    cpu = torch.device("cpu")
    monkeypatch.setitem(patching.RERUN_OVERHEAD_FLOPS, ("cpu", "bridge"), 0.0)
    jobs = [(lay, p, None, p) for lay in (3, 0, 2) for p in (4, 8)]
    groups = patching._groups(_fake_setup(), runner, jobs, None, cpu)
    # same start, any layer: one pass each, no block's fixed cost paid twice for free
    assert sorted([j[3] for j in g] for g in groups) == [[4, 4, 4], [8, 8, 8]]
    assert all([j[0] for j in g] == [0, 2, 3] for g in groups)


@pytest.fixture(scope="module", params=["llama", "gemma2"])
def deep_bridge(request, tmp_path_factory):
    """A tiny random 3-layer Llama / Gemma-2: two layers before the last for head stacks."""
    tiny = pytest.importorskip("tvlens.llm.tiny")
    from tvlens.llm.load import load

    folder = tmp_path_factory.mktemp(f"deep-{request.param}")
    return load(tiny.build_tiny_checkpoint(folder, request.param, n_layers=3), device="cpu")


@pytest.mark.parametrize("point,by", [("resid_pre", None), ("resid_post", None), ("z", "head")])
def test_cross_layer_stacks_equal_transformer_lens(deep_bridge, point, by, monkeypatch):
    """Copies entering one pass at layers 0, 1, … give each patch's own full forward."""
    import pandas as pd

    from tvlens.analyses import patching
    from tvlens.hooks.suffix import BridgeSuffixRunner

    hf_bridge = deep_bridge
    passes: list[tuple[list[int], int]] = []
    run_stack = BridgeSuffixRunner.run_stack

    def spy(self, entries, p0, read_rows=None):
        passes.append((sorted(layer for layer, _ in entries), p0))
        return run_stack(self, entries, p0, read_rows)

    monkeypatch.setattr(BridgeSuffixRunner, "run_stack", spy)
    g = torch.Generator().manual_seed(7)
    vocab, n_layers = hf_bridge.cfg.d_vocab, hf_bridge.cfg.n_layers
    clean = torch.randint(5, vocab, (2, 9), generator=g)
    corrupted = torch.randint(5, vocab, (2, 9), generator=g)
    corrupted[:, :3] = clean[:, :3]  # a shared prefix: head patches start at position 3
    frames = [patch_sweep(hf_bridge, clean, corrupted, _last, point, by=by, metric_positions=-1)]
    # no fixed cost per block: only patches that start together stack (suffix passes, p0 > 0)
    monkeypatch.setitem(patching.RERUN_OVERHEAD_FLOPS, ("cpu", "bridge"), 0.0)
    frames.append(
        patch_sweep(hf_bridge, clean, corrupted, _last, point, by=by, metric_positions=-1)
    )
    _, cache = hf_bridge.run_with_cache(clean)
    if by == "head":
        index = [(lay, h) for lay in range(n_layers) for h in range(hf_bridge.cfg.n_heads)]
        setter, cols = tlp.layer_head_vector_patch_setter, ["layer", "head"]
    else:
        index = [(lay, p) for lay in range(n_layers) for p in range(9)]
        setter, cols = tlp.layer_pos_patch_setter, ["layer", "pos"]
    ref = tlp.generic_activation_patch(
        hf_bridge,
        corrupted,
        cache,
        _last,
        patch_setter=setter,
        activation_name=point,
        index_df=pd.DataFrame(index, columns=cols),
    ).flatten()
    for df in frames:
        assert (torch.tensor(df["value"].to_numpy()) - ref).abs().max() <= ATOL
    assert ref.std() > 1e-5
    z_ok = point != "z" or "Llama" in type(hf_bridge.original_model).__name__
    if z_ok:  # the pass crossed layers (Gemma-2's head outputs cannot enter one)
        assert max(len(set(layers)) for layers, p0 in passes if p0 > 0) > 1


# --------------------------------------------------------------------------- attribution
def test_attribution_returns_the_same_table():
    model, clean, corrupted = _setup()
    for point, by in (("resid_pre", None), ("mlp_out", None), ("z", "head"), ("z", "head_pos")):
        exact = patch_sweep(model, clean, corrupted, _metric, point, by=by)
        approx = patch_sweep(model, clean, corrupted, _metric, point, by=by, method="attribution")
        keys = [c for c in ("layer", "pos", "head") if c in exact.columns]
        assert approx[keys].equals(exact[keys])
        assert list(approx.columns) == list(exact.columns)
        assert (approx["method"] == "attribution").all() and (exact["method"] == "exact").all()
        assert approx["engine"].iloc[0] == "attribution"
        for col in ("clean_value", "corrupted_value"):
            assert approx[col].iloc[0] == pytest.approx(exact[col].iloc[0], abs=1e-5)
        # unchanged cells (the shared prefix) are exactly the unpatched value in both
        if "pos" in keys:
            shared = approx["pos"] < 3
            assert (approx.loc[shared, "value"] == approx["corrupted_value"][shared]).all()
        # first order: it ranks the patches as the exact sweep does, roughly
        rho = pd.Series(approx["value"].to_numpy()).corr(
            pd.Series(exact["value"].to_numpy()), method="spearman"
        )
        assert rho > 0.5, (point, by, rho)


@pytest.mark.parametrize("point", ["resid_pre", "resid_mid", "mlp_in", "attn_out", "z"])
def test_attribution_is_exact_to_first_order(point):
    """Patching in a slightly different run: the estimate's error shrinks as the square of
    the difference, while the effect shrinks linearly."""
    family = make_family(name="linreg", k=0, seq_len=8, dim=3)
    model = TaskModel(ModelConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=32, seed=1), family)
    base = family.sample("major", 3, seed=1).inputs
    direction = torch.randn(base.shape, generator=torch.Generator().manual_seed(0))
    by = "head_pos" if point == "z" else None

    def metric(out):
        return (out[:, -1, 0] ** 2).mean()

    errors, effects = [], []
    for eps in (1e-2, 5e-3):
        src = base + eps * direction
        exact = patch_sweep(model, src, base, metric, point, by=by)
        approx = patch_sweep(model, src, base, metric, point, by=by, method="attribution")
        effect = (exact["value"] - exact["corrupted_value"]).abs().max()
        error = (approx["value"] - exact["value"]).abs().max()
        errors.append(error)
        effects.append(effect)
    assert effects[0] > 1e-4
    assert errors[0] < 0.05 * effects[0]
    assert errors[1] < errors[0] / 3  # quadratic (4×), with room for float noise


def test_attribution_needs_a_differentiable_metric():
    model, clean, corrupted = _setup()
    with pytest.raises(ValueError, match="differentiable metric"):
        patch_sweep(
            model, clean, corrupted, lambda x: torch.tensor(_last(x).item()), method="attribution"
        )
    with pytest.raises(ValueError, match="method must be one of"):
        patch_sweep(model, clean, corrupted, _metric, method="gradient")


def test_analyse_patching_attribution_option(tmp_path):
    run = train(tiny_config("dice", steps=4), tmp_path / "run", progress=False)
    tables = analyse_patching(run, n_per_task=2, method="attribution", save=False)
    assert set(tables) == {"patching_resid_pre", "patching_heads"}
    assert tables["patching_resid_pre"].attrs["method"] == "attribution"
    with pytest.raises(ValueError, match="method"):
        analyse_patching(run, n_per_task=2, method="gradient", save=False)


def test_bridge_engine_memory_does_not_grow_with_positions(hf_bridge):
    """The bridge engine holds the two runs' activations at the swept layers, keys and values
    and one stack: with the stack's size fixed, patching every position costs no more memory
    than patching two (each layer's share is freed when its patches are done)."""
    g = torch.Generator().manual_seed(5)
    vocab = hf_bridge.cfg.d_vocab
    clean = torch.randint(5, vocab, (2, 24), generator=g)
    corrupted = torch.randint(5, vocab, (2, 24), generator=g)

    def sweep(positions):
        return lambda: patch_sweep(
            hf_bridge,
            clean,
            corrupted,
            _last,
            positions=positions,
            metric_positions=-1,
            batch_size=2,
        )

    sweep([3, 4])()  # the engine's checks run once per model: not part of either peak
    few, every = _peak_bytes(sweep([3, 4])), _peak_bytes(sweep(None))
    assert every <= few * 1.05 + 4096
