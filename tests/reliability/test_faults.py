"""Faults other than kill -9: a second writer, a full disk, the umask, a diverging loss,
edited or mixed run directories, and analyses overwritten from another checkpoint."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from tiny import tiny_config

from tvlens import io
from tvlens.check_cmd import check_run
from tvlens.cli import main
from tvlens.models import CheckpointError, NonFiniteLossError, load_run, train
from tvlens.models.checkpoint import load_checkpoint

HOLD = """
import sys, time
from tvlens.io import run_lock
with run_lock(sys.argv[1], "a test holder"):
    print("locked", flush=True)
    time.sleep(120)
"""


def _problems(run_dir: Path) -> list[str]:
    return [str(f) for f in check_run(run_dir) if f.level == "problem"]


def test_a_second_writer_is_refused_with_a_clear_message(tmp_path, capsys):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            io.RunLockedError, match=rf"in use by pid {holder.pid} \(a test holder\)"
        ):
            train(tiny_config(steps=4), run_dir, progress=False)
        code = main(["train", "--family", "dice", "--steps", "2", "--out", str(run_dir)])
        err = capsys.readouterr().err
        assert code == 1 and "in use by" in err and "Traceback" not in err
        assert not (run_dir / "config.json").exists()  # nothing was written
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the lock with the process: no stale lock blocks the next writer
    run = train(tiny_config(steps=4), run_dir, progress=False)
    assert run.step == 4 and not _problems(run_dir)


def test_the_lock_is_reentrant_in_its_own_process_and_cleans_temporaries(tmp_path):
    stale = tmp_path / ".metrics.csv.0123abcd.tmp"
    stale.write_text("half a file")
    other = tmp_path / "notes.tmp"  # not one of ours: kept
    other.write_text("mine")
    with io.run_lock(tmp_path, "outer"):
        assert not stale.exists() and other.exists()
        with io.run_lock(tmp_path, "inner"):
            pass
        code = subprocess.run(
            [sys.executable, "-c", HOLD, str(tmp_path)], capture_output=True, text=True
        )
        assert code.returncode != 0 and "RunLockedError" in code.stderr


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_every_file_follows_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        train(tiny_config(steps=4), tmp_path / "run", progress=False)
        io.save_csv(
            tmp_path / "run" / "analyses" / "t.csv", pd.DataFrame({"a": [1]}), source={"step": 4}
        )
        io.save_json(tmp_path / "run" / "x.json", {"a": 1})
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert len(files) >= 8
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == mode, (p, oct(p.stat().st_mode))


def test_a_full_disk_is_named_and_damages_nothing(tmp_path, monkeypatch):
    """ENOSPC at fsync (as on a full disk) gives DiskFullError naming the directory and what
    was kept; the previous file and the temporary are untouched / removed."""
    target = tmp_path / "metrics.csv"
    io.save_text(target, "old\n")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", full)
    with pytest.raises(
        io.DiskFullError,
        match=rf"no space left in {tmp_path}.*kept: the previous metrics.csv unchanged",
    ):
        io.save_text(target, "new\n")
    with pytest.raises(io.DiskFullError, match="kept: no fresh.csv"):
        io.save_text(tmp_path / "fresh.csv", "x")
    monkeypatch.undo()
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


@pytest.fixture
def tiny_disk(tmp_path):
    """A 160 KiB tmpfs mounted at tmp_path/disk; skipped where mount is not allowed."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not allowed here ({r.stderr.strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_training_onto_a_full_disk_stops_cleanly_and_resumes(tiny_disk, tmp_path, capsys):
    cfg = tiny_config(steps=40)
    cfg.train.n_checkpoints = 40  # a checkpoint at every step fills 160 KiB fast
    run_dir = tiny_disk / "run"
    with pytest.raises(io.DiskFullError, match=rf"no space left in {run_dir}") as e:
        train(cfg, run_dir, progress=False)
    assert "kept:" in str(e.value) and "--resume" in str(e.value)
    # everything written before is intact, and no temporary is left
    assert not _problems(run_dir), _problems(run_dir)
    assert not list(run_dir.rglob("*.tmp"))
    saved = load_run(run_dir)  # the last recorded step loads
    assert saved.step >= 0
    # the CLI says the same, without a traceback
    shutil.copytree(run_dir, tmp_path / "copy")
    code = main(["train", "--resume", "--out", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 1 and "no space left in" in err and "Traceback" not in err
    # with space again (a copy on the big disk) the run resumes and finishes
    done = train(cfg, tmp_path / "copy", resume=True, progress=False)
    assert done.step == 40 and not _problems(tmp_path / "copy")


def test_a_diverging_loss_stops_training_with_a_clear_error(tmp_path):
    cfg = tiny_config(steps=12)
    cfg.train.lr = 1e12
    cfg.train.grad_clip = 0.0
    cfg.train.warmup_frac = 0.0
    with pytest.raises(NonFiniteLossError, match=r"stopped at step \d+.*Lower train.lr"):
        train(cfg, tmp_path / "run", progress=False)
    # the resume state it kept is finite and the directory checks clean
    tensors, _ = load_checkpoint(tmp_path / "run" / "checkpoints" / "resume")
    assert all(torch.isfinite(t).all() for t in tensors.values())
    assert not _problems(tmp_path / "run")


def test_a_nan_loss_never_reaches_the_weights():
    from tvlens.models import TaskModel
    from tvlens.models.train import train_step
    from tvlens.tasks import make_family

    cfg = tiny_config()
    fam = make_family(cfg.family)
    model = TaskModel(cfg.model, fam).raw
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = fam.sample("train", 4, seed=0, step=0)

    class NanFamily:
        def loss(self, out, b):
            return fam.loss(out, b) * float("nan")

    with pytest.raises(NonFiniteLossError, match="nan"):
        train_step(model, opt, NanFamily(), batch, lr=1e-3, grad_clip=1.0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    d = tmp_path_factory.mktemp("finished") / "run"
    train(tiny_config(steps=12), d, progress=False)
    return d


def test_a_deleted_checkpoint_is_never_replaced_silently_by_an_older_step(finished, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    (run_dir / "checkpoints" / "step_000012.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"step\(s\) \[12\].*refusing to fall back"):
        load_run(run_dir)
    assert load_run(run_dir, step=3).step == 3  # asking for a step explicitly still works
    assert any("step 12 it records is missing" in p for p in _problems(run_dir))
    assert main(["check", str(run_dir)]) == 1


def test_an_edited_config_is_caught_against_the_checkpoint(finished, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["family"]["name"] = "markov"
    cfg["family"]["vocab"] = 6
    (run_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"family.name: 'dice' vs 'markov'"):
        load_run(run_dir)
    assert any("differs from config.json" in p for p in _problems(run_dir))


def test_checkpoints_mixed_from_two_runs_are_caught(finished, tmp_path):
    other = tiny_config(steps=12)
    other.model.seed = 5  # same shapes, different weights
    train(other, tmp_path / "other", progress=False)
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    # same config except the seed; copy the other run's final weights (and its config) in
    shutil.copy(
        tmp_path / "other" / "checkpoints" / "step_000012.safetensors",
        run_dir / "checkpoints" / "step_000012.safetensors",
    )
    with pytest.raises(CheckpointError):
        load_run(run_dir)
    assert _problems(run_dir)


def test_check_passes_a_clean_run_and_names_the_step_of_each_analysis(finished, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    run = load_run(run_dir)
    io.save_csv(
        run_dir / "analyses" / "geometry.csv", pd.DataFrame({"r2": [0.5]}), source=run.source
    )
    pd.DataFrame({"step": [3, 3], "v": [1, 2]}).to_csv(
        run_dir / "analyses" / "attention.csv", index=False
    )
    assert main(["check", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "analyses/geometry.csv: from step 12" in out
    assert "analyses/attention.csv: from step 3" in out
    # an edited analysis no longer matches its record
    (run_dir / "analyses" / "geometry.csv").write_text("r2\n0.9\n")
    assert main(["check", str(run_dir)]) == 1
    assert "changed since it was written" in capsys.readouterr().out


def test_overwriting_an_analysis_from_another_checkpoint_says_so(tmp_path, caplog):
    path = tmp_path / "analyses" / "attention.csv"
    io.save_csv(path, pd.DataFrame({"a": [1]}), source={"step": 12})
    with caplog.at_level(logging.WARNING, logger="tvlens.io"):
        io.save_csv(path, pd.DataFrame({"a": [1]}), source={"step": 12})
        assert not caplog.records
        io.save_csv(path, pd.DataFrame({"a": [2]}), source={"step": 3})
    assert "computed from {'step': 12}" in caplog.text and "{'step': 3}" in caplog.text
    assert io.read_provenance(path.parent)["attention.csv"]["source"] == {"step": 3}


def test_resume_refuses_a_resume_state_written_by_another_config(finished, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    cfg = tiny_config(steps=12)
    cfg.train.lr = 1e-4
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict()))
    with pytest.raises(CheckpointError, match="resume state was written by a different config"):
        train(cfg, run_dir, resume=True, progress=False)
