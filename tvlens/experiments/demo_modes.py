"""The demo's second model: the learning mode, trained beside the retrieval-mode model.

``tvlens demo`` trains its main model (no minor tasks, k = −1: retrieval) in the main
process and, at the same time, a model with ``2**k`` minor tasks (default k = 8: learning)
in one worker process, one thread each. Both get the two-modes analyses; :func:`side_by_side`
then puts their headline numbers next to each other (``analyses/demo_two_modes.csv``, drawn
in the report): OOD states on the task plane or off it (tvlens's projection R², the share
of the norm inside the plane and the paper-style R²), the mode diagnostic, convex steering
and the subspace ablation.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pandas as pd
import torch

from tvlens.models import RunConfig, list_checkpoints, load_run, train

log = logging.getLogger(__name__)

#: analysis options of both demo models: the paper-style OOD R² on 64 OOD tasks × 64
#: sequences (the sweeps and experiments keep the paper's 128 × 128)
DEMO_OPTIONS: dict[str, dict] = {"two_modes": {"n_paper_tasks": 64}}

#: headline columns shown side by side (name in results.csv -> label)
COLUMNS: dict[str, str] = {
    "ood_proj_r2": "OOD projection R² on the task plane (tvlens)",
    "ood_frac_in": "OOD share of the norm inside the task subspace",
    "ood_r2_paper": "OOD R², paper definition",
    "id_simplex_r2": "ID simplex R²",
    "mode_log_ratio_major": "mode log KL(ret)/KL(learn), major",
    "mode_log_ratio_ood": "mode log KL(ret)/KL(learn), OOD",
    "convex_kl": "convex steering KL to Σα p_k",
    "convex_kl_geometric": "convex steering KL to the geometric mixture",
    "ablate_major": "Δloss, task-subspace ablation, major",
    "ablate_ood": "Δloss, task-subspace ablation, OOD",
    "ablate_random_major": "Δloss, random-subspace ablation, major",
    "ablate_id_over_ood": "ablation Δ major / Δ OOD",
    "gap_learning_ood": "OOD loss − learning reference (nats)",
    "gap_retrieval_ood": "OOD loss − retrieval reference (nats)",
}


def with_k(config: RunConfig, k: int) -> RunConfig:
    """``config`` with ``family.k`` replaced."""
    d = config.to_dict()
    d["family"]["k"] = int(k)
    return RunConfig.from_dict(d)


def train_and_analyse(config: dict, run_dir: str, analyse: bool, threads: int = 1) -> dict:
    """Train (or reuse a finished) run and run the two-modes analyses on it; returns wall
    and CPU seconds. Runs in the worker process."""
    torch.set_num_threads(threads)
    cfg = RunConfig.from_dict(config)
    out = Path(run_dir)
    t0, c0 = time.perf_counter(), time.process_time()
    steps = list_checkpoints(out) if out.exists() else []
    if steps and steps[-1] == cfg.train.steps:
        run = load_run(out)
    else:
        run = train(cfg, out, resume=(out / "config.json").exists(), progress=False)
    train_s = time.perf_counter() - t0
    if analyse:
        from tvlens.experiments.two_modes import analyse_run

        analyse_run(run, **DEMO_OPTIONS["two_modes"])
    return {
        "train_seconds": round(train_s, 1),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(time.process_time() - c0, 1),
    }


def start(config: RunConfig, run_dir: Path, analyse: bool) -> tuple[ProcessPoolExecutor, Future]:
    """Start :func:`train_and_analyse` in one spawned worker process (one thread)."""
    pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"))
    fut = pool.submit(train_and_analyse, config.to_dict(), str(run_dir), analyse, 1)
    return pool, fut


def side_by_side(runs: dict[str, Path]) -> pd.DataFrame:
    """One row per headline number, one column per run (label -> run directory), from each
    run's ``analyses/*.csv`` and ``metrics.csv``. Columns: metric, description, then one
    per run."""
    from tvlens.experiments.two_modes import best_layer, headline, load_tables

    cols: dict[str, dict[str, float]] = {}
    for label, run_dir in runs.items():
        tables = load_tables(Path(run_dir))
        if "simplex_fit" not in tables:
            raise FileNotFoundError(
                f"{run_dir} has no two-modes analyses (analyses/simplex_fit.csv); run the demo "
                "without --no-report."
            )
        metrics_path = Path(run_dir) / "metrics.csv"
        metrics = pd.read_csv(metrics_path) if metrics_path.exists() else None
        row = headline(tables, metrics)
        simplex = tables["simplex_fit"]
        best = best_layer(simplex)
        ood = simplex[(simplex["split"] == "ood") & (simplex["layer"] == best)]
        row["ood_frac_in"] = float(ood["frac_in"].mean()) if len(ood) else float("nan")
        cols[label] = row
    rows = []
    for name, desc in COLUMNS.items():
        rows.append({"metric": name, "description": desc,
                     **{label: r.get(name, float("nan")) for label, r in cols.items()}})  # fmt: skip
    rows.append({"metric": "best_layer", "description": "layer of the numbers above",
                 **{label: r.get("best_layer") for label, r in cols.items()}})  # fmt: skip
    return pd.DataFrame(rows)
