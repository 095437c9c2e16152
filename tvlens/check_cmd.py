"""``tvlens check RUN_DIR``: verify a run directory and exit non-zero on any problem.

It checks every weight checkpoint's SHA-256, its step and its recorded config against
``config.json`` and the model that config builds; that the resume state is intact, agrees
with the config, lists exactly the checkpoints on disk (with their hashes) and matches
``metrics.csv``; and which checkpoint step every analysis table came from. Nothing is
written. :func:`check_run` returns the findings for use from Python.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
import torch

from tvlens.io import LOCK_NAME, PROVENANCE, read_provenance
from tvlens.models.checkpoint import CheckpointError, load_checkpoint, load_module_state
from tvlens.models.config import RunConfig
from tvlens.models.train import (
    CKPT_DIR,
    _ckpt_stem,
    _jsonable,
    config_diff,
    has_resume_state,
    list_checkpoints,
    make_optimizer,
    restore_resume,
)
from tvlens.tasks.base import ConfigError

Level = Literal["ok", "note", "problem"]


@dataclass(frozen=True)
class Finding:
    """One line of the check: ``problem`` makes the command fail, ``note`` does not."""

    level: Level
    what: str
    detail: str

    def __str__(self) -> str:
        tag = {"ok": "ok     ", "note": "note   ", "problem": "PROBLEM"}[self.level]
        return f"{tag} {self.what}: {self.detail}"


def _frames_equal(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    if list(a.columns) != list(b.columns) or len(a) != len(b):
        return False
    for c in a.columns:
        x, y = a[c].tolist(), b[c].tolist()
        for u, v in zip(x, y, strict=True):
            if isinstance(u, float) and isinstance(v, float):
                if not (u == v or (math.isnan(u) and math.isnan(v)) or math.isclose(u, v)):
                    return False
            elif u != v:
                return False
    return True


def resumable(model: torch.nn.Module, config: RunConfig, tensors: dict, meta: dict) -> None:
    """Load the resume state into ``model`` and a fresh optimiser exactly as ``--resume``
    does, then take one optimiser step on zero gradients (on this throwaway model), so
    every field the training loop reads is proven present; a
    :class:`~tvlens.models.checkpoint.CheckpointError` says what is missing."""
    opt = make_optimizer(model, config.train)
    restore_resume(model, opt, tensors, meta)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    try:
        opt.step()
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        raise CheckpointError(
            f"the resume state's optimiser settings do not run ({type(e).__name__}: {e}); "
            "the file is damaged or was edited; train into a new directory."
        ) from None
    finally:
        opt.zero_grad(set_to_none=True)


def nested_runs(folder: Path) -> list[Path]:
    """Runs tvlens wrote inside ``folder``: the nearest sub-folders holding a
    ``config.json`` (the demo's second model ``learning_k<K>``, its ``seeds/*``, a sweep's
    trials), not looking inside a run found, its checkpoints or a sweep's staging area."""
    found: list[Path] = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if sub.name == CKPT_DIR or sub.name.startswith("."):
            continue
        if (sub / "config.json").is_file():
            found.append(sub)
        else:
            found += nested_runs(sub)
    return found


def check_run(run_dir: Path | str) -> list[Finding]:
    """All findings for ``run_dir`` (see the module docstring); reads, never writes.

    A folder holding other runs (the demo's second model, a sweep's trials) has each
    checked as a run of its own, its findings named by their path from ``run_dir``; a
    folder with no ``config.json`` of its own (a sweep) is a note, not a problem."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return [Finding("problem", str(run_dir), "is not a directory; pass a run directory.")]
    nested = nested_runs(run_dir)
    if (run_dir / "config.json").exists() or not nested:
        out = _check_one(run_dir, nested)
    else:
        kind = "a sweep" if (run_dir / "sweep.json").exists() else "a folder of runs"
        out = [Finding("note", str(run_dir), f"{kind} of {len(nested)} run(s), each checked")]
        out += _check_tables(run_dir, {}, nested)
    for sub in nested:
        rel = sub.relative_to(run_dir).as_posix()
        out += [Finding(f.level, f"{rel}/{f.what}", f.detail) for f in check_run(sub)]
    return out


def _check_one(run_dir: Path, nested: list[Path]) -> list[Finding]:
    """The findings of one run directory, leaving out the runs ``nested`` inside it."""
    out: list[Finding] = []
    add = lambda level, what, detail: out.append(Finding(level, what, detail))  # noqa: E731
    cfg_path = run_dir / "config.json"
    config = None
    try:
        kind = json.loads(cfg_path.read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind is not None:  # a run of another kind (e.g. llm): only its tables are checked
        add("note", "config.json", f"a {kind!r} run: no checkpoints to verify")
    else:
        try:
            config = RunConfig.load(cfg_path)
            add("ok", "config.json", f"valid ({config.family.name}, {config.train.steps} steps)")
        except ConfigError as e:
            add("problem", "config.json", str(e))
    wanted = _jsonable(config) if config is not None else None

    model = None
    if config is not None:
        from tvlens.models.model import TaskModel
        from tvlens.tasks import make_family

        model = TaskModel(config.model, make_family(config.family)).raw

    # ---------------------------------------------------------------- weight checkpoints
    steps = list_checkpoints(run_dir)
    shas: dict[int, str] = {}
    for step in steps:
        what = f"checkpoint step {step}"
        try:
            tensors, meta = load_checkpoint(_ckpt_stem(run_dir, step))
        except CheckpointError as e:
            add("problem", what, str(e))
            continue
        shas[step] = meta["sha256"]
        bad = []
        if int(meta.get("step", -1)) != step:
            bad.append(f"it records step {meta.get('step')!r}, not {step} (renamed or copied)")
        if wanted is not None:
            diff = config_diff(meta.get("config") or {}, wanted)
            if diff:
                bad.append(
                    "its recorded config differs from config.json (" + "; ".join(diff[:5]) + ")"
                )
        if model is not None:
            try:
                load_module_state(model, tensors, what)
            except CheckpointError as e:
                bad.append(str(e))
        if bad:
            add("problem", what, "; ".join(bad))
        else:
            add("ok", what, f"sha256 {meta['sha256'][:12]}…, weights fit config.json")
    if kind is not None:
        pass
    elif not steps and has_resume_state(run_dir):
        add("problem", "checkpoints", f"no weight checkpoint in {run_dir / CKPT_DIR}.")
    elif not steps:
        add(
            "note",
            "checkpoints",
            "none yet: the run stopped before its first checkpoint; --resume starts it.",
        )

    # -------------------------------------------------------------------- resume state
    resume_step = None
    if not has_resume_state(run_dir):
        if kind is None:
            add("note", "resume state", "none (format-1 runs and copies cannot resume).")
    else:
        try:
            tensors, meta = load_checkpoint(_ckpt_stem(run_dir, "resume"))
        except CheckpointError as e:
            add("problem", "resume state", str(e))
            meta = None
        if meta is not None and model is not None:
            # the very code --resume runs, into this run's model and optimiser
            try:
                resumable(model, config, tensors, meta)
            except CheckpointError as e:
                add("problem", "resume state", f"--resume would fail: {e}")
                meta = None
        if meta is not None and not isinstance(meta.get("step"), int):
            add("problem", "resume state", f"records step {meta.get('step')!r}, not a number")
            meta = None
        if meta is not None:
            resume_step = int(meta["step"])
            problems = []
            if wanted is not None and meta.get("config") is not None:
                diff = config_diff(meta["config"], wanted)
                if diff:
                    problems.append("written by a different config (" + "; ".join(diff[:5]) + ")")
            if config is not None and resume_step > config.train.steps:
                problems.append(f"step {resume_step} is past train.steps={config.train.steps}")
            raw = {k[4:]: v for k, v in tensors.items() if k.startswith("raw.")}
            if shas.get(resume_step) is not None:
                ck, _ = load_checkpoint(_ckpt_stem(run_dir, resume_step))
                if any(not ck[k].equal(v) for k, v in raw.items() if k in ck):
                    problems.append(f"its weights differ from checkpoint step {resume_step}'s")
            recorded = meta.get("checkpoints")
            try:
                recorded = None if recorded is None else {int(k): v for k, v in recorded.items()}
            except (AttributeError, TypeError, ValueError):
                problems.append(f"its checkpoint index {recorded!r:.60} is not step -> SHA-256")
                recorded = None
            if recorded is not None:
                for s, sha in sorted(recorded.items()):
                    if s not in steps:
                        problems.append(f"checkpoint step {s} it records is missing")
                    elif s in shas and shas[s] != sha:
                        problems.append(
                            f"checkpoint step {s} on disk is not the one it recorded (hash "
                            "differs: files from two runs are mixed)"
                        )
                for s in steps:
                    if s in recorded:
                        continue
                    if s > resume_step:
                        add(
                            "note",
                            f"checkpoint step {s}",
                            f"saved after the resume state (step {resume_step}) by an "
                            "interrupted run; --resume rewrites it.",
                        )
                    else:
                        problems.append(f"checkpoint step {s} is on disk but was never recorded")
            if "metrics" in meta and (run_dir / "metrics.csv").exists():
                mine = pd.DataFrame(meta["metrics"])
                try:
                    disk = pd.read_csv(run_dir / "metrics.csv")
                except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
                    problems.append(f"metrics.csv is unreadable ({e})")
                    disk = None
                if disk is not None and "step" in disk.columns:
                    head = disk[disk["step"] <= resume_step].reset_index(drop=True)
                    if not _frames_equal(head, mine.reset_index(drop=True)):
                        problems.append(
                            f"metrics.csv up to step {resume_step} differs from the metrics the "
                            "resume state recorded"
                        )
                    elif len(disk) > len(head):
                        add(
                            "note",
                            "metrics.csv",
                            f"has rows past the resume state (step {resume_step}) from an "
                            "interrupted run; --resume rewrites them.",
                        )
            if problems:
                add("problem", "resume state", "; ".join(problems))
            else:
                done = config is not None and resume_step == config.train.steps
                add(
                    "ok",
                    "resume state",
                    f"step {resume_step}{' (finished)' if done else ''}, consistent with "
                    "config, checkpoints and metrics",
                )

    out += _check_tables(run_dir, shas, nested)

    # ---------------------------------------------------------------- leftovers, lock
    stale = [
        p
        for p in run_dir.rglob("*.tmp")
        if p.name.startswith(".") and not any(p.is_relative_to(n) for n in nested)
    ]
    if stale:
        add(
            "note",
            "temporaries",
            f"{len(stale)} stale *.tmp file(s); the next writer removes them.",
        )
    lock = run_dir / LOCK_NAME
    if lock.exists() and _locked(lock):
        holder = lock.read_text(errors="replace").strip()
        add("note", "lock", f"in use by {holder}; files may change while you check.")
    return out


def _check_tables(run_dir: Path, shas: dict[int, str], nested: list[Path]) -> list[Finding]:
    """Every analysis table of ``run_dir`` (not of the runs ``nested`` in it) against its
    provenance record and the checkpoints ``shas`` (step -> SHA-256) on disk."""
    out: list[Finding] = []
    add = lambda level, what, detail: out.append(Finding(level, what, detail))  # noqa: E731
    dirs = {run_dir / "analyses", *(p.parent for p in run_dir.rglob(PROVENANCE))}
    for d in sorted(p for p in dirs if p.is_dir()):
        if CKPT_DIR in d.relative_to(run_dir).parts:
            continue
        hidden = any(part.startswith(".") for part in d.relative_to(run_dir).parts)
        if hidden or any(d.is_relative_to(n) for n in nested):
            continue
        prov = read_provenance(d)
        tables = sorted(d.glob("*.csv")) if d != run_dir else []
        for name in sorted(set(prov) | {p.name for p in tables}):
            rel = (d / name).relative_to(run_dir)
            path = d / name
            rec = prov.get(name)
            if rec is not None:
                if not path.exists():
                    add("problem", str(rel), "recorded in provenance.json but missing.")
                    continue
                if hashlib.sha256(path.read_bytes()).hexdigest() != rec.get("sha256"):
                    add(
                        "problem",
                        str(rel),
                        "changed since it was written (its hash differs from "
                        "provenance.json); recompute it.",
                    )
                    continue
                src = rec.get("source") or {}
                step = src.get("step")
                sha = src.get("checkpoint_sha256")
                if step is not None and step in shas and sha and shas[step] != sha:
                    add(
                        "problem",
                        str(rel),
                        f"computed from a step-{step} checkpoint that is "
                        "no longer the one on disk; recompute it.",
                    )
                else:
                    add("ok", str(rel), f"from step {step}" if step is not None else f"from {src}")
                continue
            try:
                col = pd.read_csv(path, usecols=["step"])["step"].unique()
            except (
                ValueError,
                pd.errors.ParserError,
                pd.errors.EmptyDataError,
                UnicodeDecodeError,
            ):
                col = None
            if col is not None and len(col) == 1:
                add("ok", str(rel), f"from step {int(col[0])} (its step column)")
            elif col is not None and len(col) > 1:
                add("ok", str(rel), f"over steps {int(col.min())}–{int(col.max())}")
            else:
                add("note", str(rel), "records no checkpoint step.")
    return out


def _locked(lock: Path) -> bool:
    import fcntl
    import os

    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")


def run(args: argparse.Namespace) -> int:
    findings = check_run(args.run_dir)
    problems = [f for f in findings if f.level == "problem"]
    if args.json:
        print(json.dumps([f.__dict__ for f in findings], indent=2))
    else:
        for f in findings:
            print(f)
        print(
            f"{args.run_dir}: {len(problems)} problem(s), "
            f"{sum(f.level == 'note' for f in findings)} note(s)."
        )
    return 1 if problems else 0
