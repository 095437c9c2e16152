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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from tvlens.models.checkpoint import (
    CheckpointError,
    atomic_write_text,
    load_checkpoint,
    load_module_state,
    save_checkpoint,
)
from tvlens.models.config import RunConfig
from tvlens.models.evaluate import References, eval_batches, reference_table
from tvlens.models.model import TaskModel
from tvlens.tasks import make_family
from tvlens.tasks.base import Batch, TaskFamily

log = logging.getLogger(__name__)

CKPT_DIR = "checkpoints"
RESUME = "resume"


@dataclass
class Run:
    """A trained (or loaded) run: its directory, config, family, model and metrics."""

    dir: Path
    config: RunConfig
    family: TaskFamily
    model: TaskModel
    step: int
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)

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
    """One optimisation step of ``module`` on ``batch``; returns the (detached) loss."""
    for group in opt.param_groups:
        group["lr"] = lr
    loss = family.loss(module(batch.inputs), batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
    opt.step()
    return loss.detach()


def _ckpt_stem(run_dir: Path, name: str | int) -> Path:
    return run_dir / CKPT_DIR / (f"step_{name:06d}" if isinstance(name, int) else name)


def list_checkpoints(run_dir: Path) -> list[int]:
    """Steps of the complete weight checkpoints in ``run_dir``."""
    return sorted(int(p.stem.split("_")[1]) for p in (Path(run_dir) / CKPT_DIR).glob("step_*.json"))


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


def _write_metrics(run_dir: Path, rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    atomic_write_text(run_dir / "metrics.csv", df.to_csv(index=False))
    return df


def train(
    config: RunConfig,
    run_dir: Path | str,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
) -> Run:
    """Train a model on ``config.family`` and save metrics and checkpoints in ``run_dir``.

    ``stop_at`` ends the loop early (after saving the resume state), which is how tests
    interrupt a run; ``resume=True`` then continues it.
    """
    run_dir = Path(run_dir)
    tc = config.train
    torch.manual_seed(tc.seed)
    family = make_family(config.family)
    model = TaskModel(config.model, family).to(tc.device)
    opt = torch.optim.AdamW(
        model.raw.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.98)
    )
    start, rows = 0, []
    cfg_path = run_dir / "config.json"
    if resume:
        if not cfg_path.exists():
            raise CheckpointError(f"cannot resume: {cfg_path} is missing. Start a fresh run.")
        saved = RunConfig.load(cfg_path)
        if saved.to_dict() != config.to_dict():
            raise CheckpointError(
                f"cannot resume {run_dir}: its config.json differs from the requested config. "
                "Resume with the saved config (tvlens train --resume RUN_DIR) or use a new dir."
            )
        tensors, meta = load_checkpoint(_ckpt_stem(run_dir, RESUME))
        load_module_state(
            model.raw,
            {k[4:]: v for k, v in tensors.items() if k.startswith("raw.")},
            "resume checkpoint",
        )
        _restore_optim(opt, tensors, meta["param_groups"])
        start = int(meta["step"])
        if (run_dir / "metrics.csv").exists():
            prev = pd.read_csv(run_dir / "metrics.csv")
            rows = prev[prev["step"] <= start].to_dict("records")
        log.info("resumed %s at step %d", run_dir, start)
    else:
        if list_checkpoints(run_dir) or (run_dir / "metrics.csv").exists():
            raise FileExistsError(
                f"{run_dir} already holds a run; pass resume=True (--resume) to continue it "
                "or choose a new run directory."
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cfg_path, json.dumps(config.to_dict(), indent=2))

    ckpt_steps = set(checkpoint_schedule(tc.steps, tc.n_checkpoints))
    batches = eval_batches(family, tc.eval_size, tc.seed)
    refs = {s: References(family, b) for s, b in batches.items()}

    def save_weights(step: int) -> None:
        save_checkpoint(
            _ckpt_stem(run_dir, step),
            model.raw.state_dict(),
            {"step": step, "kind": "weights", "config": config.to_dict()},
        )

    def evaluate(step: int) -> None:
        table = reference_table(model, family, batches, refs=refs)
        for r in table.to_dict("records"):
            rows.append({"step": step, "lr": lr_at(max(step - 1, 0), tc), **r})

    def save_resume(step: int) -> None:
        ot, groups = _optim_tensors(opt)
        tensors = {f"raw.{k}": v for k, v in model.raw.state_dict().items()} | ot
        save_checkpoint(
            _ckpt_stem(run_dir, RESUME), tensors, {"step": step, "param_groups": groups}
        )

    if start == 0:
        save_weights(0)
        evaluate(0)
        _write_metrics(run_dir, rows)

    end = tc.steps if stop_at is None else min(stop_at, tc.steps)
    model.raw.train()
    bar = tqdm(
        range(start, end),
        desc=f"train {family.name}",
        disable=None if progress else True,
        initial=start,
        total=tc.steps,
        mininterval=2.0,
    )
    for step in bar:
        batch = family.sample("train", tc.batch_size, seed=tc.seed, step=step).to(tc.device)
        loss = train_step(model.raw, opt, family, batch, lr=lr_at(step, tc), grad_clip=tc.grad_clip)
        done = step + 1
        if done % tc.eval_every == 0 or done == tc.steps:
            evaluate(done)
            _write_metrics(run_dir, rows)
            save_resume(done)
            model.raw.train()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if done in ckpt_steps:
            save_weights(done)
    if end < tc.steps and end % tc.eval_every:
        save_resume(end)
    model.eval()
    return Run(run_dir, config, family, model, end, pd.DataFrame(rows))


def load_run(run_dir: Path | str, step: int | None = None) -> Run:
    """Load a run directory at checkpoint ``step`` (default: the latest)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise CheckpointError(
            f"{run_dir} is not a tvlens run directory (no config.json); train one with "
            "`tvlens train` or `tvlens demo`."
        )
    config = RunConfig.load(cfg_path)
    steps = list_checkpoints(run_dir)
    if not steps:
        raise CheckpointError(f"{run_dir} holds no complete checkpoint; train or resume it.")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise CheckpointError(f"no checkpoint at step {step} in {run_dir}; available: {steps}.")
    family = make_family(config.family)
    model = TaskModel(config.model, family)
    tensors, meta = load_checkpoint(_ckpt_stem(run_dir, step))
    if meta.get("config", {}).get("model") != config.to_dict()["model"]:
        raise CheckpointError(
            f"checkpoint step {step} was saved with a different model config than "
            f"{cfg_path}; the run directory is mixed up — retrain it."
        )
    load_module_state(model.raw, tensors, f"checkpoint step {step}")
    model.eval()
    metrics_path = run_dir / "metrics.csv"
    metrics = pd.read_csv(metrics_path) if metrics_path.exists() else pd.DataFrame()
    return Run(run_dir, config, family, model, step, metrics)
