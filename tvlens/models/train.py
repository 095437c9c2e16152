"""The training loop: explicit and short (schedule, clipping, evaluation, checkpoints).

Training runs on the plain torch module (``TaskModel.raw``); the bridge shares its weights
and is used for analysis only. Batches are a pure function of ``(seed, step)``, so
``resume=True`` continues from ``checkpoints/resume`` and reproduces the uninterrupted run
bit for bit.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from tvlens.io import run_lock, save_csv, save_json
from tvlens.models.checkpoint import (
    CheckpointError,
    checkpoint_path,
    load_checkpoint,
    load_module_state,
    read_meta,
    save_checkpoint,
)
from tvlens.models.config import RunConfig
from tvlens.models.evaluate import References, eval_batches, reference_table
from tvlens.models.model import TaskModel
from tvlens.tasks import make_family
from tvlens.tasks.base import Batch, ConfigError, TaskFamily

log = logging.getLogger(__name__)

#: where no progress bar can be drawn (stderr not a terminal, not a notebook), training
#: logs its progress at this pace instead
LOG_EVERY_S = 30.0

CKPT_DIR = "checkpoints"
RESUME = "resume"


class NonFiniteLossError(RuntimeError):
    """The training loss (or gradient norm) became NaN or infinite."""


@dataclass
class Run:
    """A trained (or loaded) run: its directory, config, family, model and metrics."""

    dir: Path
    config: RunConfig
    family: TaskFamily
    model: TaskModel
    step: int
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    sha256: str | None = None  # of the weight checkpoint at ``step`` (None: none saved there)

    @property
    def source(self) -> dict:
        """Where results computed from this run come from: step and checkpoint hash."""
        return {"step": self.step, "checkpoint_sha256": self.sha256}

    @property
    def bridge(self):
        return self.model.bridge

    def checkpoint_steps(self) -> list[int]:
        return list_checkpoints(self.dir)

    def eval_batches(self, size: int | None = None) -> dict[str, Batch]:
        return eval_batches(
            self.family, size or self.config.train.eval_size, self.config.train.seed
        )


def checkpoint_schedule(steps: int, n: int) -> list[int]:
    """Log-spaced checkpoint steps in ``[0, steps]``, always including both ends."""
    if n <= 0:
        return [steps]
    pts = np.unique(np.round(np.geomspace(1, steps, max(n - 1, 1))).astype(int))
    return sorted({0, steps, *pts.tolist()})


def lr_at(step: int, cfg) -> float:
    """One-cycle schedule: linear warm-up to ``lr``, cosine decay to 1% of it."""
    warm = max(1, int(cfg.warmup_frac * cfg.steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    frac = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def train_step(
    module: torch.nn.Module,
    opt: torch.optim.Optimizer,
    family: TaskFamily,
    batch: Batch,
    *,
    lr: float,
    grad_clip: float,
) -> torch.Tensor:
    """One optimisation step of ``module`` on ``batch``; returns the (detached) loss.

    Raises :class:`NonFiniteLossError` before updating any weight when the loss or the
    gradient norm is NaN or infinite, so the module keeps its last finite state.
    """
    for group in opt.param_groups:
        group["lr"] = lr
    loss = family.loss(module(batch.inputs), batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in module.parameters() if p.grad is not None]
    if grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad) for p in params])
        )
    if not bool(torch.isfinite(loss) & torch.isfinite(norm)):
        opt.zero_grad(set_to_none=True)
        raise NonFiniteLossError(
            f"the loss became {loss.item()} (gradient norm {norm.item()}) at lr={lr:g}."
        )
    opt.step()
    return loss.detach()


def _ckpt_stem(run_dir: Path, name: str | int) -> Path:
    return run_dir / CKPT_DIR / (f"step_{name:06d}" if isinstance(name, int) else name)


def list_checkpoints(run_dir: Path | str) -> list[int]:
    """Steps of the weight checkpoints present in ``run_dir`` (not yet verified)."""
    ck = Path(run_dir) / CKPT_DIR
    names = {p.stem for p in ck.glob("step_*.safetensors")}
    names |= {p.stem for p in ck.glob("step_*.json")}  # format 1: a JSON sidecar per step
    return sorted(int(n.split("_")[1]) for n in names if n.split("_")[1].isdigit())


def resume_path(run_dir: Path | str) -> Path:
    """Where a run's resume state lives: one atomic file (weights, optimiser, metrics, index)."""
    return checkpoint_path(_ckpt_stem(Path(run_dir), RESUME))


def has_resume_state(run_dir: Path | str) -> bool:
    """Whether ``run_dir`` holds a resume state (format 2, or format 1's JSON sidecar)."""
    p = resume_path(run_dir)
    return p.exists() or p.with_suffix(".json").exists()


def recorded_checkpoints(run_dir: Path | str) -> dict[int, str] | None:
    """The weight checkpoints (step → SHA-256) the run's resume state records, or ``None``.

    The resume state is written after every checkpoint it lists, so this is the run's own
    account of what it saved; a listed step missing from disk was deleted afterwards.
    Format-1 resume states carry no index (``None``).
    """
    if not has_resume_state(run_dir):
        return None
    meta = read_meta(_ckpt_stem(Path(run_dir), RESUME))
    if "checkpoints" not in meta:
        return None
    return {int(k): v for k, v in meta["checkpoints"].items()}


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields where nested dicts ``a`` and ``b`` differ."""
    out = []
    for k in sorted(set(a) | set(b), key=str):
        va, vb = a.get(k, "<missing>"), b.get(k, "<missing>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} vs {vb!r}")
    return out


def _jsonable(config: RunConfig) -> dict:
    return json.loads(json.dumps(config.to_dict()))


def _check_device(device: str) -> None:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device={device!r} but this machine has no usable CUDA GPU "
            "(torch.cuda.is_available() is False); use --device cpu (train.device=cpu)."
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(
            f"train.device={device!r} but only {torch.cuda.device_count()} CUDA device(s) "
            "exist; pick an index below that."
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device={device!r} but MPS is not available; use cpu.")


def _optim_tensors(opt: torch.optim.Optimizer) -> tuple[dict, list]:
    sd = opt.state_dict()
    tensors = {
        f"optim.{idx}.{key}": (val if torch.is_tensor(val) else torch.tensor(val))
        for idx, st in sd["state"].items()
        for key, val in st.items()
    }
    return tensors, sd["param_groups"]


def _restore_optim(opt: torch.optim.Optimizer, tensors: dict, groups: list) -> None:
    state: dict[int, dict] = {}
    for name, val in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = val
    opt.load_state_dict({"state": state, "param_groups": groups})


def make_optimizer(raw: torch.nn.Module, tc: Any) -> torch.optim.Optimizer:
    """The optimiser a run trains ``raw`` with (from its ``train`` config ``tc``)."""
    return torch.optim.AdamW(
        raw.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.98)
    )


def restore_resume(
    raw: torch.nn.Module,
    opt: torch.optim.Optimizer,
    tensors: dict,
    meta: dict,
    what: str = "the resume state",
) -> tuple[int, list[dict] | None, dict[int, str]]:
    """Load a resume state (``tensors``, ``meta``) into ``raw`` and ``opt``.

    Returns its step, its metrics rows (``None`` for format 1, which keeps them in
    ``metrics.csv``) and its checkpoint index (step → SHA-256). Everything ``--resume``
    relies on is checked here, so :func:`tvlens.check_cmd.check_run` can use this same code
    to prove a run resumable; anything missing or not fitting is a
    :class:`~tvlens.models.checkpoint.CheckpointError` naming the field and the fix.
    """
    fix = "the file is damaged or was edited; train into a new directory (or restore a copy)."
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{what} records step {step!r}, not a whole number >= 0; {fix}")
    groups = meta.get("param_groups")
    want = opt.state_dict()["param_groups"]
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise CheckpointError(
            f"{what} records no optimiser param_groups (found {type(groups).__name__}); {fix}"
        )
    if len(groups) != len(want):
        raise CheckpointError(
            f"{what} records {len(groups)} optimiser param group(s), this run's optimiser has "
            f"{len(want)}; {fix}"
        )
    for i, (got, ref) in enumerate(zip(groups, want, strict=True)):
        missing = sorted(set(ref) - set(got))
        if missing:
            raise CheckpointError(f"{what}: optimiser param group {i} lacks {missing}; {fix}")
        if not isinstance(got["params"], list) or len(got["params"]) != len(ref["params"]):
            raise CheckpointError(
                f"{what}: optimiser param group {i} lists {got['params']!r:.60} as its "
                f"parameters, this run's optimiser has {len(ref['params'])}; {fix}"
            )
    metrics = meta.get("metrics")
    if metrics is not None and (
        not isinstance(metrics, list) or not all(isinstance(r, dict) for r in metrics)
    ):
        raise CheckpointError(f"{what}: its metrics are not a list of rows; {fix}")
    try:
        index = {int(k): str(v) for k, v in (meta.get("checkpoints") or {}).items()}
    except (AttributeError, TypeError, ValueError):
        raise CheckpointError(
            f"{what}: its checkpoint index {meta.get('checkpoints')!r:.80} is not step -> "
            f"SHA-256; {fix}"
        ) from None
    load_module_state(raw, {k[4:]: v for k, v in tensors.items() if k.startswith("raw.")}, what)
    try:
        _restore_optim(opt, tensors, groups)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        raise CheckpointError(
            f"{what}: its optimiser state does not load into this run's optimiser "
            f"({type(e).__name__}: {e}); {fix}"
        ) from None
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        st = opt.state.get(p)
        if not st:
            continue
        lacking = sorted({"step", "exp_avg", "exp_avg_sq"} - set(st))
        if lacking:
            raise CheckpointError(
                f"{what}: the optimiser state of parameter {i} lacks {lacking}; {fix}"
            )
        for key in ("exp_avg", "exp_avg_sq"):
            if tuple(st[key].shape) != tuple(p.shape):
                raise CheckpointError(
                    f"{what}: optimiser {key} of parameter {i} has shape "
                    f"{tuple(st[key].shape)}, the parameter {tuple(p.shape)}; {fix}"
                )
    return step, (list(metrics) if metrics is not None else None), index


def _write_metrics(run_dir: Path, rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    save_csv(run_dir / "metrics.csv", df)
    return df


def train(
    config: RunConfig,
    run_dir: Path | str,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
    position: int | None = None,
) -> Run:
    """Train a model on ``config.family`` and save metrics and checkpoints in ``run_dir``.

    The run holds an exclusive lock on ``run_dir`` throughout, so a second writer is
    refused. The resume state (``checkpoints/resume.safetensors``: weights, optimiser,
    metrics rows and the index of weight checkpoints) is one file written last at every
    evaluation, so a ``kill -9`` at any moment leaves a state that ``resume=True``
    continues bit for bit. ``stop_at`` ends the loop early (after saving the resume
    state), which is how tests interrupt a run. A non-finite loss stops training with
    :class:`NonFiniteLossError`.

    ``progress`` shows a tqdm bar (``tqdm.auto``: a widget in notebooks) where one can be
    drawn, and otherwise logs the step, loss and time left every :data:`LOG_EVERY_S`
    seconds at INFO; ``position`` is the bar's line (a second model trained beside
    another, as the demo does, draws on line 1).
    """
    run_dir = Path(run_dir)
    _check_device(config.train.device)
    with run_lock(run_dir, f"tvlens train, pid {os.getpid()}"):
        return _train_locked(config, run_dir, resume, progress, stop_at, position)


def _train_locked(
    config: RunConfig,
    run_dir: Path,
    resume: bool,
    progress: bool,
    stop_at: int | None,
    position: int | None = None,
) -> Run:
    tc = config.train
    torch.manual_seed(tc.seed)
    family = make_family(config.family)
    model = TaskModel(config.model, family).to(tc.device)
    opt = make_optimizer(model.raw, tc)
    start, rows, index = 0, [], {}
    cfg_path = run_dir / "config.json"
    wanted = _jsonable(config)
    resumed = False
    if resume:
        if cfg_path.exists():
            saved = RunConfig.load(cfg_path)
            diff = config_diff(_jsonable(saved), wanted)
            if diff:
                raise CheckpointError(
                    f"cannot resume {run_dir}: its config.json differs from the requested "
                    f"config ({'; '.join(diff[:5])}). Resume with the saved config "
                    "(tvlens train --resume --out RUN_DIR) or use a new directory."
                )
        if has_resume_state(run_dir):
            tensors, meta = load_checkpoint(_ckpt_stem(run_dir, RESUME))
            recorded = meta.get("config")
            if recorded is not None and config_diff(recorded, wanted):
                raise CheckpointError(
                    f"cannot resume {run_dir}: its resume state was written by a different "
                    f"config ({'; '.join(config_diff(recorded, wanted)[:5])}); config.json "
                    "was edited or the directory mixes two runs. Train into a new directory."
                )
            start, recorded_rows, index = restore_resume(
                model.raw, opt, tensors, meta, f"the resume state of {run_dir}"
            )
            if recorded_rows is not None:
                rows = recorded_rows
            elif (run_dir / "metrics.csv").exists():  # format 1 kept metrics beside it
                prev = pd.read_csv(run_dir / "metrics.csv")
                rows = prev[prev["step"] <= start].to_dict("records")
            resumed = True
            log.info("resumed %s at step %d", run_dir, start)
        else:
            later = [s for s in list_checkpoints(run_dir) if s > 0]
            if later:
                raise CheckpointError(
                    f"cannot resume {run_dir}: it holds weight checkpoints up to step "
                    f"{later[-1]} but no resume state (checkpoints/resume.safetensors). Load "
                    "it with load_run, or train into a new directory."
                )
            log.info("no resume state in %s yet; starting it from step 0", run_dir)
    elif cfg_path.exists() or list_checkpoints(run_dir) or has_resume_state(run_dir):
        raise FileExistsError(
            f"{run_dir} already holds a run; pass resume=True (--resume) to continue it "
            "or choose a new run directory."
        )
    if not cfg_path.exists():
        save_json(cfg_path, config.to_dict())

    ckpt_steps = set(checkpoint_schedule(tc.steps, tc.n_checkpoints))
    batches = eval_batches(family, tc.eval_size, tc.seed)
    refs = {s: References(family, b) for s, b in batches.items()}

    def save_weights(step: int) -> None:
        path = save_checkpoint(
            _ckpt_stem(run_dir, step),
            model.raw.state_dict(),
            {"step": step, "kind": "weights", "config": wanted},
        )
        index[step] = read_meta(path)["sha256"]

    def evaluate(step: int) -> None:
        table = reference_table(model, family, batches, refs=refs)
        for r in table.to_dict("records"):
            rows.append({"step": step, "lr": lr_at(max(step - 1, 0), tc), **r})

    def save_resume(step: int) -> None:
        """The run's one atomic unit, written last: everything needed to continue."""
        ot, groups = _optim_tensors(opt)
        tensors = {f"raw.{k}": v for k, v in model.raw.state_dict().items()} | ot
        meta = {
            "step": step,
            "kind": "resume",
            "param_groups": groups,
            "config": wanted,
            "metrics": rows,
            "checkpoints": {str(k): v for k, v in sorted(index.items())},
        }
        save_checkpoint(_ckpt_stem(run_dir, RESUME), tensors, meta)

    if resumed:
        _write_metrics(run_dir, rows)  # metrics.csv may run ahead of the state it resumed
    else:
        save_weights(0)
        evaluate(0)
        _write_metrics(run_dir, rows)
        save_resume(0)

    end = tc.steps if stop_at is None else min(stop_at, tc.steps)
    model.raw.train()
    desc = f"train {family.name} k={config.family.k}"
    bar = tqdm(
        range(start, end),
        desc=desc,
        disable=None if progress else True,
        initial=start,
        total=tc.steps,
        mininterval=2.0,
        position=position,
    )
    pace = _Pace(desc, start, tc.steps) if progress and bar.disable else None
    last_saved = start
    for step in bar:
        batch = family.sample("train", tc.batch_size, seed=tc.seed, step=step).to(tc.device)
        try:
            loss = train_step(
                model.raw, opt, family, batch, lr=lr_at(step, tc), grad_clip=tc.grad_clip
            )
        except NonFiniteLossError as e:
            raise NonFiniteLossError(
                f"training {run_dir} stopped at step {step}: {e} The resume state at step "
                f"{last_saved} and every checkpoint before it are kept. Lower train.lr "
                f"(now {tc.lr}) or set train.grad_clip (now {tc.grad_clip}), then train into "
                "a new directory."
            ) from None
        done = step + 1
        if done in ckpt_steps:
            save_weights(done)
        if done % tc.eval_every == 0 or done == tc.steps:
            evaluate(done)
            _write_metrics(run_dir, rows)
            save_resume(done)
            last_saved = done
            model.raw.train()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if pace is not None:
            pace.tick(done, loss)
    if end < tc.steps and end % tc.eval_every and end > start:
        save_resume(end)
    model.eval()
    return Run(run_dir, config, family, model, end, pd.DataFrame(rows), sha256=index.get(end))


def _read_metrics(path: Path) -> pd.DataFrame:
    """A run's ``metrics.csv`` (empty if absent); an empty, garbled or foreign file is a
    :class:`CheckpointError` naming it and the fix, not a pandas traceback."""
    if not path.exists():
        return pd.DataFrame()
    fix = (
        "it was damaged or replaced; `tvlens train --resume --out RUN_DIR` rewrites it from "
        "the resume state (or delete it to load the model without training curves)."
    )
    try:
        metrics = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise CheckpointError(f"{path} is empty; {fix}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable CSV ({e}); {fix}") from None
    missing = [c for c in ("step",) if c not in metrics.columns]
    if missing:
        raise CheckpointError(
            f"{path} is not a tvlens metrics table (no {missing} column; it has "
            f"{list(metrics.columns)[:6]}); {fix}"
        )
    return metrics


class _Pace:
    """Progress as log lines, every :data:`LOG_EVERY_S` seconds and at the last step (for
    training where no bar can be drawn: stderr not a terminal, e.g. a pipe or a job log)."""

    def __init__(self, desc: str, start: int, total: int) -> None:
        self.desc, self.start, self.total = desc, start, total
        self.t0 = self.last = time.monotonic()

    def tick(self, done: int, loss: torch.Tensor) -> None:
        now = time.monotonic()
        if now - self.last < LOG_EVERY_S and done < self.total:
            return
        self.last = now
        rate = (done - self.start) / max(now - self.t0, 1e-9)
        left = (self.total - done) / rate if rate > 0 else float("nan")
        log.info(
            "%s: step %d/%d (%.0f%%), loss %.4f, %.0f s elapsed, ~%.0f s left",
            self.desc, done, self.total, 100 * done / self.total, loss.item(),
            now - self.t0, left,
        )  # fmt: skip


def load_run(run_dir: Path | str, step: int | None = None) -> Run:
    """Load a run directory at checkpoint ``step`` (default: the latest the run recorded).

    The config in ``config.json`` must equal the one recorded in the checkpoint, and the
    checkpoint must be the one the run's resume state lists for that step; otherwise the
    directory is mixed up and :class:`CheckpointError` says how. Without ``step``, a
    recorded checkpoint missing from disk is an error, never a silent fall-back to an older
    step. The step loaded is logged and kept in ``Run.step``.
    """
    from tvlens.validation import check_int

    if step is not None:
        step = check_int(step, "step", min_value=0)
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise CheckpointError(
            f"{run_dir} is not a tvlens run directory (no config.json); train one with "
            "`tvlens train` or `tvlens demo`."
        )
    config = RunConfig.load(cfg_path)
    steps = list_checkpoints(run_dir)
    try:
        recorded = recorded_checkpoints(run_dir)
    except CheckpointError as e:
        log.warning("%s; checkpoints in %s cannot be cross-checked against it", e, run_dir)
        recorded = None
    if recorded:
        missing = sorted(set(recorded) - set(steps))
        if step is None and missing:
            older = [s for s in steps if s < missing[-1]]
            raise CheckpointError(
                f"{run_dir}: checkpoint step(s) {missing} recorded by the run are missing from "
                f"{run_dir / CKPT_DIR}; refusing to fall back to an older step silently. Load "
                f"one explicitly with load_run(run_dir, step=N)"
                f"{f' (available: {older})' if older else ''}, or retrain."
            )
        if step is None:
            step = max(recorded)
    if not steps:
        raise CheckpointError(f"{run_dir} holds no complete checkpoint; train or resume it.")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise CheckpointError(f"no checkpoint at step {step} in {run_dir}; available: {steps}.")
    family = make_family(config.family)
    model = TaskModel(config.model, family)
    tensors, meta = load_checkpoint(_ckpt_stem(run_dir, step))
    if int(meta.get("step", step)) != step:
        raise CheckpointError(
            f"{_ckpt_stem(run_dir, step)} holds step {meta.get('step')}, not {step}; the "
            "file was renamed or copied from elsewhere — retrain or restore it."
        )
    if recorded and step in recorded and recorded[step] != meta["sha256"]:
        raise CheckpointError(
            f"checkpoint step {step} in {run_dir} is not the one this run saved (its SHA-256 "
            "differs from the resume state's record): the directory mixes files from two "
            "runs. Retrain it, or check it with `tvlens check`."
        )
    diff = config_diff(meta.get("config") or {}, _jsonable(config))
    if diff:
        raise CheckpointError(
            f"{cfg_path} does not match the config recorded in checkpoint step {step} "
            f"({'; '.join(diff[:5])}): config.json was edited or belongs to another run. "
            "Restore the original config.json (the checkpoint's own copy is shown by "
            "`tvlens check RUN_DIR`) or retrain."
        )
    load_module_state(model.raw, tensors, f"checkpoint step {step}")
    model.eval()
    log.debug("loaded %s at step %d (checkpoints: %s)", run_dir, step, steps)
    metrics = _read_metrics(run_dir / "metrics.csv")
    return Run(run_dir, config, family, model, step, metrics, sha256=meta["sha256"])
