"""Config validation, raw-vs-bridge equality, checkpoints and exact resume."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from tiny import tiny_config

from tvlens.models import CheckpointError, RunConfig, TaskModel, load_run, train
from tvlens.models.checkpoint import load_checkpoint, save_checkpoint
from tvlens.tasks import ConfigError, make_family


@pytest.mark.parametrize(
    "sections,match",
    [
        ({"model": {"d_model": 30, "n_heads": 4}}, "not divisible by model.n_heads"),
        ({"model": {"n_ctx": 16}, "family": {"seq_len": 32}}, "longer than model.n_ctx"),
        ({"family": {"k": -3}}, "family.k"),
        ({"family": {"p_minor": 1.5}}, "family.p_minor"),
        ({"train": {"lr": -1}}, "train.lr"),
        ({"model": {"n_layerz": 2}}, "unknown field"),
    ],
)
def test_invalid_configs_raise_errors_that_name_the_field(sections, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig.for_family("dice", **sections)


def test_unknown_family_is_named():
    with pytest.raises(ConfigError, match="family.name"):
        RunConfig.from_dict({"family": {"name": "poker"}})


def test_too_long_sequence_is_a_clear_error():
    cfg = tiny_config()
    fam = make_family(cfg.family)
    model = TaskModel(cfg.model, fam)
    with pytest.raises(ValueError, match="n_ctx"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids"):
        model(torch.zeros(1, 4))


@pytest.mark.parametrize("family", ["dice", "markov", "linreg"])
def test_raw_module_and_bridge_agree_and_share_weights(family, tmp_path):
    cfg = tiny_config(family, steps=8)
    run = train(cfg, tmp_path / "run", progress=False)
    batch = run.family.sample("major", 4, seed=9)
    raw = run.model(batch.inputs)
    bridged = run.bridge(batch.inputs)
    assert torch.allclose(raw, bridged, atol=1e-5)
    # the bridge sees a later update of the raw weights without rebuilding
    with torch.no_grad():
        for p in run.model.raw.parameters():
            p.mul_(1.1)
    assert torch.allclose(run.model(batch.inputs), run.bridge(batch.inputs), atol=1e-5)
    assert not torch.allclose(raw, run.bridge(batch.inputs), atol=1e-5)
    _, cache = run.bridge.run_with_cache(batch.inputs, names_filter=lambda n: "resid_post" in n)
    assert cache["blocks.1.hook_resid_post"].shape == (4, batch.inputs.shape[1], 16)


def test_training_reduces_loss(tmp_path):
    cfg = tiny_config(steps=40)
    run = train(cfg, tmp_path / "run", progress=False)
    major = run.metrics[run.metrics.split == "major"]
    assert major.loss.iloc[-1] < major.loss.iloc[0] - 0.05


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path):
    cfg = tiny_config(steps=12)
    full = train(cfg, tmp_path / "full", progress=False)
    part = train(cfg, tmp_path / "part", progress=False, stop_at=6)
    assert part.step == 6
    resumed = train(cfg, tmp_path / "part", resume=True, progress=False)
    for (name, a), (_, b) in zip(
        full.model.raw.state_dict().items(), resumed.model.raw.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert full.metrics.shape == resumed.metrics.shape
    assert torch.allclose(
        torch.tensor(full.metrics.loss.values), torch.tensor(resumed.metrics.loss.values)
    )


def test_checkpoint_round_trip_and_log_spacing(tmp_path):
    cfg = tiny_config(steps=12)
    run = train(cfg, tmp_path / "run", progress=False)
    steps = run.checkpoint_steps()
    assert steps[0] == 0 and steps[-1] == 12 and len(steps) >= 3
    loaded = load_run(tmp_path / "run")
    assert loaded.step == 12
    for (k, a), (_, b) in zip(
        run.model.raw.state_dict().items(), loaded.model.raw.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k
    early = load_run(tmp_path / "run", step=0)
    assert not torch.equal(early.model.raw.head.weight, loaded.model.raw.head.weight)


def test_corrupt_truncated_and_foreign_checkpoints_are_refused(tmp_path):
    stem = tmp_path / "ck" / "step_000001"
    path = save_checkpoint(stem, {"w": torch.arange(1000.0)}, {"step": 1})
    assert path == stem.with_suffix(".safetensors") and not stem.with_suffix(".json").exists()
    tensors, meta = load_checkpoint(stem)
    assert meta["step"] == 1 and torch.equal(tensors["w"], torch.arange(1000.0))

    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(stem)
    path.write_bytes(data[:-8] + b"\x00" * 8)  # flipped tensor bytes
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_checkpoint(stem)
    # edited metadata (the step) is caught by the same hash
    path.write_bytes(data.replace(b": 1}", b": 7}"))
    assert path.read_bytes() != data
    with pytest.raises(CheckpointError, match="edited"):
        load_checkpoint(stem)

    foreign = tmp_path / "ck" / "other.safetensors"
    save_file({"w": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a tvlens checkpoint"):
        load_checkpoint(foreign)
    (tmp_path / "ck" / "bad.safetensors").write_bytes(
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}xxxxxx"
    )
    with pytest.raises(CheckpointError, match="corrupt header"):
        load_checkpoint(tmp_path / "ck" / "bad")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "ck" / "nothing_here")


def test_format_1_checkpoints_still_load(tmp_path):
    """A JSON sidecar with the tensor file's SHA-256 (format 1) is verified and read."""
    import hashlib

    stem = tmp_path / "step_000003"
    save_file({"w": torch.arange(5.0)}, stem.with_suffix(".safetensors"))
    sha = hashlib.sha256(stem.with_suffix(".safetensors").read_bytes()).hexdigest()
    record = {"format": "tvlens-checkpoint", "format_version": 1, "sha256": sha, "step": 3}
    stem.with_suffix(".json").write_text(json.dumps(record))
    tensors, meta = load_checkpoint(stem)
    assert meta["step"] == 3 and torch.equal(tensors["w"], torch.arange(5.0))
    stem.with_suffix(".json").write_text(json.dumps({**record, "sha256": "0" * 64}))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(stem)


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    cfg = tiny_config(steps=4)
    train(cfg, tmp_path / "run", progress=False)
    other = tiny_config(steps=4)
    other.model.d_model = 32
    other.model.d_mlp = 64
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    config["model"]["d_model"] = 32
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"does not match the config recorded.*d_model"):
        load_run(tmp_path / "run")


def test_existing_run_directory_is_not_overwritten(tmp_path):
    cfg = tiny_config(steps=4)
    train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(FileExistsError, match="resume"):
        train(cfg, tmp_path / "run", progress=False)


def test_no_pickle_anywhere_in_the_package():
    import pathlib

    import tvlens

    root = pathlib.Path(tvlens.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text()
        for banned in ("torch.load(", "import pickle", "pickle.load", "weights_only=False"):
            assert banned not in text, (path, banned)
