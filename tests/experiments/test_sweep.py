"""``tvlens sweep``: config validation, resumable local sweeps, failures, and Ray = local."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from tvlens import registry
from tvlens.cli import main
from tvlens.experiments import sweep as sweep_mod
from tvlens.experiments.engines import LocalEngine, RayEngine, make_engine
from tvlens.experiments.sweep import PARTIAL, SweepSpec, Trial, run_sweep
from tvlens.models import RunConfig, train
from tvlens.models.checkpoint import load_checkpoint, read_meta
from tvlens.options import Options, option
from tvlens.registry import Analysis, driver
from tvlens.tasks.base import ConfigError

ROOT = Path(__file__).resolve().parents[2]

#: a tiny two-modes sweep: two ks, one seed, a 2-layer d_model 16 model, 12 steps
TINY: dict = {
    "name": "tiny",
    "families": ["dice"],
    "ks": [-1, 1],
    "seeds": [0],
    "model": {"n_layers": 2, "d_model": 16, "n_heads": 2, "d_mlp": 32},
    "family": {"seq_len": 8},
    "train": {"steps": 12, "batch_size": 8, "eval_every": 4, "eval_size": 16, "n_checkpoints": 3},
    "analyses": {"two_modes": {"n_eval": 16, "n_causal": 16, "n_paper_tasks": 8}},
    "resources": {"cpu": 1},
}
TIMING = {"seconds", "train_seconds"}
#: where a trial ran (differs between engines by design)
PLACE = {"host", "pid"}


def tiny(**changes) -> dict:
    return json.loads(json.dumps({**TINY, **changes}))


# ------------------------------------------------------------------------- validation
def test_trials_are_the_product_of_the_axes_with_stable_names():
    d = tiny(families=["dice", "markov"], seeds=[0, 3])
    del d["model"]
    d["models"] = {"small": {"d_model": 16, "n_heads": 2}, "wide": {"d_model": 32}}
    spec = SweepSpec.from_dict(d)
    trials = spec.trials()
    assert len(trials) == 2 * 2 * 2 * 2
    assert trials[0].id == "dice_small_k-1_s0" and trials[-1].id == "markov_wide_k1_s3"
    t = next(t for t in trials if t.id == "markov_wide_k1_s3")
    cfg = RunConfig.from_dict(t.config)  # a complete, valid run config
    assert (cfg.family.name, cfg.family.k, cfg.model.d_model) == ("markov", 1, 32)
    assert cfg.model.seed == cfg.train.seed == cfg.family.seed == 3
    assert cfg.train.device == "cpu" and cfg.train.steps == 12
    # one model size is named after its shape
    assert SweepSpec.from_dict(tiny()).trials()[0].id == "dice_L2d16_k-1_s0"


def test_grid_axes_set_config_fields_name_trials_and_fill_results(tmp_path):
    """A ``grid`` axis (the Raventós sweep over the pool size) multiplies the trials, sets the
    field in each trial's config, names the trial directory and becomes a results column."""
    spec = SweepSpec.from_dict(
        tiny(ks=[-1], grid={"family.n_major": [2, 3], "train.lr": [1e-3, 2e-3]})
    )
    trials = spec.trials()
    assert [t.id for t in trials] == [
        "dice_L2d16_k-1_s0_n_major2_lr0.001",
        "dice_L2d16_k-1_s0_n_major2_lr0.002",
        "dice_L2d16_k-1_s0_n_major3_lr0.001",
        "dice_L2d16_k-1_s0_n_major3_lr0.002",
    ]
    cfg = RunConfig.from_dict(trials[3].config)
    assert (cfg.family.n_major, cfg.train.lr) == (3, 2e-3)
    assert trials[3].axes["n_major"] == 3 and trials[3].axes["lr"] == 2e-3
    small = tiny(ks=[-1], grid={"family.n_major": [2, 3]}, train={**TINY["train"], "steps": 4})
    result = run_sweep(SweepSpec.from_dict(small), tmp_path / "out", LocalEngine(1))
    assert not result.failed
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(results["n_major"]) == [2, 3]
    across = pd.read_csv(tmp_path / "out" / "analyses" / "ood_r2_vs_k.csv")
    assert set(across["n_major"]) == {2, 3}  # one across-k group per pool size


def test_gpu_resources_default_the_device_to_cuda():
    spec = SweepSpec.from_dict(tiny(resources={"cpu": 2, "gpu": 1}))
    assert all(t.config["train"]["device"] == "cuda" for t in spec.trials())
    assert spec.trials()[0].to_payload(Path("o"))["threads"] == 2


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kz": [1]}, "unknown key(s) ['kz']"),
        ({"families": ["dicee"]}, "families: 'dicee' is not a task family"),
        ({"ks": [1, 1]}, "ks: lists [1] more than once"),
        ({"ks": [-2]}, "ks: -2 is not an integer >= -1"),
        ({"seeds": []}, "seeds: must be a non-empty list"),
        ({"analyses": ["two_mode"]}, "analyses: 'two_mode' is not a known analysis"),
        (
            {"analyses": {"two_modes": {"n_evl": 3}}},
            "analyses.two_modes: unknown option(s) ['n_evl']",
        ),
        ({"resources": {"cpu": 0}}, "resources.cpu: 0 must be a whole number of cores >= 1"),
        ({"resources": {"gpus": 1}}, "resources: unknown field(s) ['gpus']"),
        ({"resources": {"gpu": 1}, "train": {"device": "cpu"}}, "set train.device: cuda"),
        ({"train": {"device": "cuda"}}, "set resources.gpu: 1"),
        ({"train": {"seed": 1}}, "train.seed: is a sweep axis; list it under seeds"),
        ({"family": {"k": 1}}, "family.k: is a sweep axis; list it under ks"),
        ({"trial_dir": "k{k}"}, None),  # fine: one seed, one model, one family
        ({"trial_dir": "run"}, "gives 'run' to two trials"),
        ({"trial_dir": "{family}_{lr}"}, "use only named fields"),
        ({"model": {"d_model": 15}}, "model.d_model=15 is not divisible by model.n_heads"),
        ({"train": {"steps": 0}}, "train.steps=0 must be >= 1"),
        ({"grid": {"n_major": [4]}}, "grid.n_major: name a field as SECTION.FIELD"),
        ({"grid": {"family.k": [1, 2]}}, "grid.family.k: is a sweep axis; list it under ks"),
        ({"grid": {"family.n_major": []}}, "grid.family.n_major: must be a non-empty list"),
        ({"grid": {"family.n_major": [4, 4]}}, "must list distinct plain values"),
        ({"grid": {"model.steps": [1]}}, "the column 'steps' is taken"),
        ({"grid": {"family.n_major": [0]}}, "n_major"),
    ],
)
def test_bad_configs_name_the_field_and_the_fix(changes, message):
    if message is None:
        SweepSpec.from_dict(tiny(**changes), source="s.yaml")
        return
    with pytest.raises(ConfigError) as e:
        SweepSpec.from_dict(tiny(**changes), source="s.yaml")
    assert message in str(e.value) and str(e.value).startswith("s.yaml")


def test_yaml_and_json_files_load_the_same(tmp_path):
    import yaml

    (tmp_path / "a.json").write_text(json.dumps(TINY))
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(TINY))
    a, b = SweepSpec.load(tmp_path / "a.json"), SweepSpec.load(tmp_path / "a.yaml")
    assert [t.config for t in a.trials()] == [t.config for t in b.trials()]
    (tmp_path / "bad.yaml").write_text("ks: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        SweepSpec.load(tmp_path / "bad.yaml")
    (tmp_path / "a.toml").write_text("")
    with pytest.raises(ConfigError, match="name it .json, .yaml or .yml"):
        SweepSpec.load(tmp_path / "a.toml")


def test_engine_options_are_checked():
    with pytest.raises(ValueError, match="add --engine ray"):
        make_engine("local", address="auto")
    with pytest.raises(ValueError, match="resources decide"):
        make_engine("ray", jobs=2)  # checked before Ray is imported
    with pytest.raises(ValueError, match="jobs=0: use at least 1 worker"):
        make_engine("local", jobs=0)
    with pytest.raises(ValueError, match="use auto"):
        RayEngine("localhost")
    assert isinstance(make_engine("local", jobs=2), LocalEngine)


def test_sweep_help_imports_nothing_heavy():
    code = (
        "import contextlib, io, sys\nfrom tvlens.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n        main(['sweep', '--help'])\n    except SystemExit:\n        pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'pandas'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ------------------------------------------------------------------------ local sweeps
def _outputs(trial_dir: Path) -> dict[str, object]:
    """A trial's results, engine-independent: every CSV and JSON byte for byte (timings
    dropped from trial.json) and every checkpoint's tensors and self-recorded SHA-256."""
    found: dict[str, object] = {}
    for p in sorted(trial_dir.rglob("*")):
        rel = str(p.relative_to(trial_dir))
        if p.suffix == ".csv" or p.name == "config.json":
            found[rel] = p.read_bytes()
        elif p.name == "trial.json":
            rec = json.loads(p.read_text())
            found[rel] = {k: v for k, v in rec.items() if k not in TIMING | PLACE}
        elif p.suffix == ".safetensors":
            tensors, meta = load_checkpoint(p.with_suffix(""))
            found[rel] = (meta["sha256"], {k: v.numpy().tobytes() for k, v in tensors.items()})
    return found


def test_local_sweep_end_to_end_then_resumes_only_missing_trials(tmp_path, capsys):
    cfg = tmp_path / "sweep.json"
    out = tmp_path / "out"
    cfg.write_text(json.dumps(tiny(ks=[-1])))
    assert main(["sweep", str(cfg), "--out", str(out), "--jobs", "1"]) == 0
    assert "ran 1, skipped 0" in capsys.readouterr().out
    first = out / "dice_L2d16_k-1_s0"
    rec = json.loads((first / "trial.json").read_text())
    assert rec["status"] == "done" and rec["torch_threads"] == 1
    assert set(rec["tables"]["two_modes"]) >= {"simplex_fit", "ablation", "modes"}
    assert not (out / PARTIAL).exists()  # staged trials were all moved into place
    before = {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()}

    # widen the sweep: only the new k trains; the finished trial is not touched
    cfg.write_text(json.dumps(tiny(ks=[-1, 1])))
    assert main(["sweep", str(cfg), "--out", str(out), "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert "done  dice_L2d16_k-1_s0" in listing and "todo  dice_L2d16_k1_s0" in listing
    assert main(["sweep", str(cfg), "--out", str(out), "--jobs", "1"]) == 0
    assert "ran 1, skipped 1" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()} == before

    results = pd.read_csv(out / "results.csv")
    assert list(results["trial"]) == ["dice_L2d16_k-1_s0", "dice_L2d16_k1_s0"]
    assert list(results["k"]) == [-1, 1] and list(results["n_minor"]) == [0, 2]
    assert (results["status"] == "done").all() and results["error"].isna().all()
    for col in ("id_simplex_r2", "ood_proj_r2", "ablate_major", "best_layer"):
        assert results[col].notna().all(), col
    # the across-k tables and figures of two-modes, read by `tvlens report OUT`
    across = {p.stem for p in (out / "analyses").glob("*.csv")}
    assert {"ood_r2_vs_k", "ablation_vs_k", "convexity_vs_k", "mode_heatmap"} <= across
    assert set(pd.read_csv(out / "analyses" / "ood_r2_vs_k.csv")["k"]) == {-1, 1}
    assert (out / "figures" / "results.html").exists()
    assert (out / "figures" / "k1_geometry_points.html").exists()

    # another config into this folder is refused, naming both configs and the fix
    summary = (out / "results.csv").read_bytes()
    cfg.write_text(json.dumps(tiny(ks=[-1], train={**TINY["train"], "lr": 1e-3})))
    assert main(["sweep", str(cfg), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert str(out / "sweep_config.txt") in err and str(cfg) in err and "--force" in err
    assert (out / "results.csv").read_bytes() == summary


def test_interrupted_trial_resumes_and_matches_an_uninterrupted_one(tmp_path):
    spec = SweepSpec.from_dict(tiny(ks=[1]))
    (trial,) = spec.trials()
    # a sweep killed mid-training leaves the staged run with a resume state at step 4
    train(RunConfig.from_dict(trial.config), tmp_path / "a" / PARTIAL / trial.id, stop_at=4)
    assert not (tmp_path / "a" / trial.id).exists()
    resumed = run_sweep(spec, tmp_path / "a", LocalEngine(1), progress=False)
    fresh = run_sweep(spec, tmp_path / "b", LocalEngine(1), progress=False)
    assert resumed.ok and fresh.ok
    a = _outputs(tmp_path / "a" / trial.id)
    assert a == _outputs(tmp_path / "b" / trial.id)
    assert "checkpoints/step_000012.safetensors" in a and "analyses/simplex_fit.csv" in a


def test_a_run_trained_outside_the_sweep_is_adopted_not_retrained(tmp_path):
    # e.g. `tvlens experiment two-modes` wrote k1/ before; trial_dir "k{k}" names it
    spec = SweepSpec.from_dict(tiny(ks=[1, 2], trial_dir="k{k}"))
    one, two = spec.trials()
    train(RunConfig.from_dict(one.config), tmp_path / "k1", progress=False)
    ckpt = tmp_path / "k1" / "checkpoints" / "step_000012.safetensors"
    before = ckpt.stat().st_mtime_ns
    other = json.loads(json.dumps(two.config))
    other["train"]["lr"] = 1e-3  # a different run where trial k2 belongs
    train(RunConfig.from_dict(other), tmp_path / "k2", progress=False)

    result = run_sweep(spec, tmp_path, LocalEngine(1), progress=False)
    assert result.ran == ["k1", "k2"] and result.failed == ["k2"]
    assert ckpt.stat().st_mtime_ns == before  # reused, not retrained
    assert json.loads((tmp_path / "k1" / "trial.json").read_text())["status"] == "done"
    assert (tmp_path / "k1" / "analyses" / "simplex_fit.csv").exists()
    err = result.records[1]["error"]
    assert "different config" in err and "train.lr" in err
    assert (tmp_path / "k2" / "config.json").exists()  # refused, left as it was


def test_changed_analyses_rerun_on_the_trained_model(tmp_path):
    first = SweepSpec.from_dict(tiny(ks=[1], analyses={"dynamics": {"n": 40}}))
    assert run_sweep(first, tmp_path, LocalEngine(1), progress=False).ok
    (trial,) = first.trials()
    run_dir = tmp_path / trial.id
    ckpt = run_dir / "checkpoints" / "step_000012.safetensors"
    before = ckpt.stat().st_mtime_ns
    assert run_sweep(first, tmp_path, LocalEngine(1), progress=False).ran == []  # unchanged

    second = SweepSpec.from_dict(tiny(ks=[1], analyses={"patching": {"n_per_task": 2}}))
    with pytest.raises(sweep_mod.SweepFolderError, match="analyses"):  # would replace the summary
        run_sweep(second, tmp_path, LocalEngine(1), progress=False)
    result = run_sweep(second, tmp_path, LocalEngine(1), progress=False, force=True)
    assert result.ok and result.ran == [trial.id]
    assert ckpt.stat().st_mtime_ns == before  # the model is reused
    rec = json.loads((run_dir / "trial.json").read_text())
    assert rec["analyses"] == {"patching": {"n_per_task": 2}}
    assert (run_dir / "analyses" / "patching_heads.csv").exists()
    assert not (run_dir / "analyses" / "decodability_dynamics.csv").exists()  # stale, removed


def test_trials_built_from_run_configs_equal_the_spec_trials():
    spec = SweepSpec.from_dict(tiny(ks=[-1, 2], trial_dir="k{k}"))
    for t in spec.trials():
        cfg = RunConfig.from_dict(t.config)
        assert Trial.from_config(t.id, cfg, t.analyses, t.resources) == t


@dataclass(frozen=True)
class BoomOptions(Options):
    section = "boom"
    seed: int = option(0, "unused")


@driver("boom", BoomOptions)
def boom(run, o: BoomOptions, progress: bool) -> dict:
    """A test analysis that fails on the k = 1 trial only."""
    if run.family.config.k == 1:
        raise RuntimeError("planted failure on k=1")
    return {}


@driver("boom", BoomOptions)
def _fixed(run, o: BoomOptions, progress: bool) -> dict:
    return {}


def test_a_failed_trial_is_reported_and_the_sweep_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(registry.ANALYSES, "boom", Analysis("boom", boom, (), (), "test"))
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(json.dumps(tiny(ks=[-1, 1, 2], analyses=["boom"])))  # JSON is YAML
    assert main(["sweep", str(cfg), "--out", str(tmp_path), "--jobs", "1"]) == 1
    captured = capsys.readouterr()
    assert "ran 3, skipped 0 already done, failed 1" in captured.out
    assert "failed dice_L2d16_k1_s0: RuntimeError: planted failure on k=1" in captured.err
    assert "rerun the same command" in captured.err
    spec = SweepSpec.load(cfg)
    results = pd.read_csv(tmp_path / "results.csv")
    assert list(results["status"]) == ["done", "failed", "done"]
    assert results.loc[1, "error"] == "RuntimeError: planted failure on k=1"
    err = tmp_path / PARTIAL / "dice_L2d16_k1_s0" / "error.txt"
    assert "planted failure" in err.read_text() and "Traceback" in err.read_text()
    assert (tmp_path / "dice_L2d16_k2_s0" / "trial.json").exists()

    # fixed: the rerun runs only the failed trial, reusing its trained model
    monkeypatch.setitem(registry.ANALYSES, "boom", Analysis("boom", _fixed, (), (), "test"))
    again = run_sweep(spec, tmp_path, LocalEngine(1), progress=False)
    assert again.ok and again.ran == ["dice_L2d16_k1_s0"]
    assert (pd.read_csv(tmp_path / "results.csv")["status"] == "done").all()
    assert not (tmp_path / PARTIAL).exists()


def test_decodability_dynamics_and_patching_run_as_sweep_analyses(tmp_path):
    spec = SweepSpec.from_dict(
        tiny(
            ks=[1],
            analyses={
                "decodability": {"n": 40},
                "dynamics": {"n": 40},
                "patching": {"n_per_task": 2},
            },
        )
    )
    result = run_sweep(spec, tmp_path, LocalEngine(1), progress=False)
    assert result.ok, result.records
    (rec,) = result.records
    assert rec["tables"] == {
        "decodability": ["decodability"],
        "dynamics": ["decodability_dynamics"],
        "patching": ["patching_heads", "patching_resid_pre"],
    }
    trial_dir = tmp_path / rec["trial"]
    for name in ("decodability", "decodability_dynamics", "patching_heads", "patching_resid_pre"):
        assert not pd.read_csv(trial_dir / "analyses" / f"{name}.csv").empty, name
    row = pd.read_csv(tmp_path / "results.csv").iloc[0]
    td = pd.read_csv(trial_dir / "analyses" / "decodability.csv")
    knn = td[td["method"] == "knn"]
    assert row["td_knn_best_td"] == knn["td"].max()  # the headline is the table's maximum
    assert not (tmp_path / "analyses").exists()  # across-k tables belong to two_modes


def test_progress_shows_done_running_failed_and_eta():
    import io

    buf = io.StringIO()
    bar = sweep_mod._Progress(3, 1, "t", file=buf)
    bar.update("running", running=2)
    assert bar.eta() is None
    bar.update("finished", {"status": "done"}, running=2)
    bar.update("finished", {"status": "failed", "error": "x"}, running=1)
    assert (bar.done, bar.failed, bar.running, bar.skipped) == (1, 1, 1, 1)
    assert bar.bar.n == 2 and bar.eta() >= 0
    bar.close()
    shown = buf.getvalue()
    assert "2/3" in shown and "done=1 running=1 failed=1 skipped=1" in shown
    assert "<" in shown  # tqdm's elapsed<remaining


# -------------------------------------------------------------------------------- Ray
def _has_ray() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _gpu_placement() -> list[dict]:
    """Run four 1-GPU probe tasks through RayEngine; each reports the GPU it was given."""
    from tvlens.experiments.sweep import Resources

    def probe(p: dict) -> dict:  # nested: Ray ships it by value to its workers
        import os
        import time

        import ray

        t0 = time.time()
        time.sleep(0.5)
        gpus = ray.get_gpu_ids()
        cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
        return {
            **p["axes"],
            "status": "done",
            "gpus": gpus,
            "cvd": cvd,
            "t0": t0,
            "t1": time.time(),
        }

    running: list[int] = []
    engine = RayEngine()
    payloads = [{"id": f"t{i}", "axes": {"trial": f"t{i}"}} for i in range(4)]
    out = list(
        engine.run(payloads, probe, lambda *a, **k: running.append(k["running"]), Resources(1, 1))
    )
    assert running[0] == 2  # two slots: 2 CPUs and 2 GPUs, one of each per trial
    return [r for _, r in out]


@pytest.mark.skipif(
    not _has_ray(),
    reason="Ray is not installed (optional extra): pip install -c constraints.txt -e '.[ray]'",
)
def test_ray_engine_gives_bit_identical_trials_to_the_local_engine(tmp_path):
    import ray

    spec = SweepSpec.from_dict(tiny(ks=[-1, 1]))
    local = run_sweep(spec, tmp_path / "local", LocalEngine(1), progress=False)
    # two logical GPUs (none needed physically): the trials above ask for none
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert ray.cluster_resources()["CPU"] == 2
        remote = run_sweep(spec, tmp_path / "ray", RayEngine(), progress=False)
        placed = _gpu_placement()
    finally:
        ray.shutdown()
    # resources {gpu: 1}: every task got one GPU of its own, two ran at a time
    assert all(len(r["gpus"]) == 1 and r["cvd"] == str(r["gpus"][0]) for r in placed)
    assert sorted(r["gpus"][0] for r in placed) == [0, 0, 1, 1]
    for gpu in (0, 1):
        a, b = sorted((r["t0"], r["t1"]) for r in placed if r["gpus"][0] == gpu)
        assert a[1] <= b[0], "two tasks shared one GPU"
    errors = [(r["trial"], r["error"]) for r in local.records + remote.records if r["error"]]
    assert local.ok and remote.ok, errors
    for t in spec.trials():
        a, b = _outputs(tmp_path / "local" / t.id), _outputs(tmp_path / "ray" / t.id)
        assert len(a) > 20 and a == b, t.id
    drop = sorted(TIMING)
    ra = pd.read_csv(tmp_path / "local" / "results.csv").drop(columns=drop)
    rb = pd.read_csv(tmp_path / "ray" / "results.csv").drop(columns=drop)
    pd.testing.assert_frame_equal(ra, rb, check_exact=True)
    # the trials ran in Ray worker processes, not in this one
    for t in spec.trials():
        rec = json.loads((tmp_path / "ray" / t.id / "trial.json").read_text())
        assert rec["pid"] != os.getpid()
        assert read_meta(tmp_path / "ray" / t.id / "checkpoints" / "step_000012")["step"] == 12


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "sweeps").glob("*.yaml")))
def test_every_shipped_sweep_config_is_valid(name):
    assert SweepSpec.load(ROOT / "sweeps" / name).trials()


@pytest.mark.parametrize("name", ["dice_two_modes.yaml", "dice_two_modes_reference.yaml"])
def test_shipped_sweep_configs_are_valid(name):
    spec = SweepSpec.load(ROOT / "sweeps" / name)
    trials = spec.trials()
    assert {t.k for t in trials} == {-1, 0, 2, 4, 6, 8}
    if name == "dice_two_modes_reference.yaml":  # docs/concepts.md A's reference runs, one GPU each
        assert len(trials) == 18 and spec.resources.gpu == 1
        cfg = RunConfig.from_dict(trials[0].config)
        assert (cfg.model.n_layers, cfg.model.d_model, cfg.model.n_heads, cfg.model.d_mlp) == (
            6,
            128,
            2,
            512,
        )
        assert (cfg.train.steps, cfg.train.batch_size, cfg.train.device) == (30000, 64, "cuda")


def test_seed_summary_gives_mean_and_sd_over_seeds_per_setting():
    results = pd.DataFrame(
        {
            "trial": [f"t{i}" for i in range(7)],
            "family": ["dice"] * 7,
            "model": ["m"] * 7,
            "k": [-1, -1, -1, 8, 8, 8, 8],
            "n_minor": [0, 0, 0, 256, 256, 256, 256],
            "seed": [0, 1, 2, 0, 1, 2, 3],
            "status": ["done"] * 6 + ["failed"],
            "seconds": [1.0] * 7,
            "r2": [0.9, 0.95, 1.0, 0.1, 0.2, 0.3, float("nan")],
            "note": ["x"] * 7,  # not numeric: not summarised
        }
    )
    out = sweep_mod.seed_summary(results).set_index("k")
    assert list(out["n_seeds"]) == [3, 3]  # the failed trial does not count
    assert out.loc[-1, "r2_mean"] == pytest.approx(0.95)
    assert out.loc[8, "r2_sd"] == pytest.approx(0.1)
    assert "seconds_mean" not in out and "note_mean" not in out and "seed_mean" not in out
    # one seed per setting: there is no interval to give
    assert sweep_mod.seed_summary(results[results["seed"] == 0]) is None


# ------------------------------------------------------------------- folder ownership
def _fake_trial(payload) -> dict:
    """A stand-in for run_trial: a record without training (ownership is about summaries)."""
    return {**payload["axes"], "status": "done", "seconds": 0.0, "headline": {"x": 1.0}}


class _FakeEngine(LocalEngine):
    def run(self, payloads, fn, on_event, resources):
        yield from super().run(payloads, _fake_trial, on_event, resources)


def _sweep(out: Path, force: bool = False, **changes):
    spec = SweepSpec.from_dict(tiny(**changes), source=f"cfg_{changes.get('ks')}.yaml")
    return run_sweep(spec, out, _FakeEngine(1), progress=False, force=force)


def test_another_sweep_into_a_finished_sweeps_folder_is_refused_and_force_moves_aside(tmp_path):
    out = tmp_path / "out"
    _sweep(out, ks=[0, 1, 2], analyses={})
    before = {n: (out / n).read_bytes() for n in ("results.csv", "sweep.json")}
    assert len(pd.read_csv(out / "results.csv")) == 3

    with pytest.raises(sweep_mod.SweepFolderError) as e:
        _sweep(out, ks=[3], analyses={})
    msg = str(e.value)
    assert "'tiny'" in msg and "cfg_[3].yaml" in msg and "ks: [0, 1, 2] there, [3] here" in msg
    assert "new --out" in msg and "--force" in msg
    assert {n: (out / n).read_bytes() for n in before} == before  # nothing replaced

    # widening the same sweep adds trials: allowed, and the summary grows
    _sweep(out, ks=[0, 1, 2, 4], analyses={}, resources={"cpu": 1})
    assert len(pd.read_csv(out / "results.csv")) == 4

    # --force moves the old summaries aside, never deletes them
    _sweep(out, force=True, ks=[3], analyses={})
    (aside,) = out.glob("replaced-*")
    assert len(pd.read_csv(aside / "results.csv")) == 4
    assert json.loads((aside / "sweep.json").read_text())["ks"] == [0, 1, 2, 4]
    assert list(pd.read_csv(out / "results.csv")["k"]) == [3]


def test_a_summary_is_never_replaced_by_a_subset_without_a_sweep_json(tmp_path):
    out = tmp_path / "out"
    _sweep(out, ks=[0, 1], analyses={})
    (out / "sweep.json").unlink()  # e.g. a folder written by `tvlens experiment two-modes`
    before = (out / "results.csv").read_bytes()
    with pytest.raises(sweep_mod.SweepFolderError, match=r"holds 1 trial\(s\)"):
        _sweep(out, ks=[0], analyses={})
    assert (out / "results.csv").read_bytes() == before


def test_a_running_sweeps_folder_refuses_another_config_naming_both(tmp_path):
    from tvlens.io import run_lock

    out = tmp_path / "out"
    _sweep(out, ks=[0], analyses={})
    with run_lock(out, "another tvlens sweep"):  # held by a running sweep (nested: re-check)
        with pytest.raises(sweep_mod.SweepFolderError, match="cfg_\\[5\\].yaml"):
            _sweep(out, ks=[5], analyses={})


def test_dry_run_reports_a_folder_conflict(tmp_path, capsys):
    out = tmp_path / "out"
    _sweep(out, ks=[0], analyses={})
    cfg = tmp_path / "other.json"
    cfg.write_text(json.dumps(tiny(ks=[7], analyses={})))
    assert main(["sweep", str(cfg), "--out", str(out), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert str(cfg) in err and "--force" in err


def test_resources_above_the_machine_are_refused_naming_both_numbers(tmp_path):
    cores = os.cpu_count()
    with pytest.raises(ValueError, match=f"resources.cpu is 1000 but this machine has {cores}"):
        _sweep(tmp_path / "out", ks=[0], analyses={}, resources={"cpu": 1000})
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_a_ray_address_that_does_not_answer_fails_fast_naming_it():
    import time

    from tvlens.experiments.engines import probe_address

    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="'127.0.0.1:1'.*up to 2 s"):
        probe_address("127.0.0.1:1", timeout=2)
    with pytest.raises(RuntimeError, match="ray://127.0.0.1:1"):
        probe_address("ray://127.0.0.1:1", timeout=2)
    assert time.perf_counter() - t0 < 5
    with pytest.raises(ValueError, match="HOST:PORT"):
        probe_address("ray://nohost", timeout=2)
