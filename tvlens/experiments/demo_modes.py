"""The demo's second model: the learning mode, trained beside the retrieval-mode model.

``tvlens demo`` trains its main model (no minor tasks, k = −1: retrieval) in the main
process and, at the same time, a model with ``2**k`` minor tasks (:data:`LEARNING_MIXTURE`)
in one worker process, one thread each. Both train on a family where the two references
differ on OOD tasks (:data:`DEMO_FAMILY`), so a model's OOD loss can place it in one mode or
the other. Both get the two-modes analyses; :func:`side_by_side` puts their headline numbers
next to each other, each beside its named null baseline from the same run and, with
``--seeds``, as mean ± sd over training seeds (``analyses/demo_two_modes.csv``, drawn in the
report), and :func:`verdict` says on which side of the references each model's OOD loss
sits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from tvlens.models import RunConfig, list_checkpoints, load_run, train

log = logging.getLogger(__name__)

#: analysis options of both demo models, sized for the 5-minute budget: the paper-style OOD
#: R² on 48 OOD tasks × 48 sequences and the token-forced ANOVA on 8 sequences per task
#: (copied once per symbol: 32 copies at 32 symbols); the sweeps and experiments keep the
#: paper's 128 × 128 and 32 per task
DEMO_OPTIONS: dict[str, dict] = {"two_modes": {"n_paper_tasks": 48, "n_anova": 8}}


@dataclass(frozen=True)
class Headline:
    """One headline number of the two-modes comparison and its named null baseline (a
    column of the same run's ``results`` row; empty when the number is its own contrast)."""

    metric: str
    description: str
    unit: str
    baseline: str = ""
    baseline_name: str = ""
    ceiling: str = ""


#: the numbers shown side by side, each beside its baseline (columns of a results row,
#: :func:`tvlens.experiments.two_modes.headline`)
HEADLINES: tuple[Headline, ...] = (
    Headline("gap_retrieval_ood", "OOD loss − retrieval reference", "nats",
             "learner_gap_ood", "the learner itself"),
    Headline("gap_learning_ood", "OOD loss − learning reference", "nats",
             "ref_gap_ood", "the retrieval reference itself"),
    Headline("margin_kl_ood", "OOD: KL(model‖retrieval) − KL(model‖learner)", "nats",
             "zero", "equidistant (0)"),
    Headline("mode_log_ratio_ood", "OOD mode log KL(ret)/KL(learn)", "log ratio",
             "zero", "equidistant (0)"),
    Headline("ood_task_share", "OOD variance share in the major-task subspace", "share",
             "ood_task_share_random", "random subspace, same rank", "ood_task_share_top"),
    Headline("ood_minor_share", "OOD variance share in the minor-task span", "share",
             "minor_minor_share", "held-out minor tasks (control)", "ood_minor_share_top"),
    Headline("ood_r2_paper", "OOD R², reference code (snapshot 7c5cab9)", "R²"),
    Headline("ood_r2_paper_per_seq", "OOD R², reference code (newest, per sequence)", "R²"),
    Headline("id_simplex_r2", "ID simplex R² (major tasks)", "R²"),
    Headline("beta_posterior_corr_mixed", "β–posterior corr, mixed-posterior positions",
             "corr", "beta_posterior_corr_one_hot_mixed", "one-hot true task"),
    Headline("beta_posterior_corr", "β–posterior corr, all positions", "corr",
             "beta_posterior_corr_one_hot", "one-hot true task"),
    Headline("ablate_major", "Δloss, task-subspace ablation, major", "nats",
             "ablate_random_major", "random subspace, same rank"),
    Headline("ablate_ood", "Δloss, task-subspace ablation, OOD", "nats",
             "ablate_random_ood", "random subspace, same rank"),
    Headline("convex_kl", "convex steering: KL to Σα p_k", "nats",
             "convex_kl_mixture_to_vertex", "a vertex instead of the mixture"),
)  # fmt: skip


#: the family both demo models train on: 32 symbols, so that the 2**k minor tasks cannot
#: cover the simplex and the two references differ by ~0.18 nats on OOD tasks (at the
#: default 6 symbols they differ by 0.04–0.05 at k ≥ 8, and no model can be placed)
DEMO_FAMILY: dict[str, dict[str, Any]] = {"dice": {"vocab": 32}}
#: the learning model's mixture (README, "Where the modes separate"): 2**10 minor tasks
#: that carry 90 % of the training sequences
LEARNING_MIXTURE: dict[str, Any] = {"k": 10, "p_minor": 0.9}
#: its training (the main model keeps DEMO_TRAIN): learning the Dirichlet learner takes
#: more steps than retrieving 3 tasks
LEARNING_TRAIN: dict[str, Any] = {"steps": 1500}


def with_k(config: RunConfig, k: int, **family: Any) -> RunConfig:
    """``config`` with ``family.k`` (and any other family fields given) replaced."""
    d = config.to_dict()
    d["family"].update(k=int(k), **family)
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
        # the second model's bar sits below the main model's (line 1); without a terminal
        # both log their progress every LOG_EVERY_S seconds
        run = train(cfg, out, resume=(out / "config.json").exists(), position=1)
    train_s = time.perf_counter() - t0
    if analyse:
        from tvlens.analyses.two_modes import analyse_two_modes

        analyse_two_modes(run, **DEMO_OPTIONS["two_modes"])
    log.info("trained and analysed %s in %.0f s", out, time.perf_counter() - t0)
    return {
        "train_seconds": round(train_s, 1),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(time.process_time() - c0, 1),
    }


def train_all(
    jobs: list[tuple[dict, str]], analyse: bool, threads: int = 1, log_level: int = logging.INFO
) -> list[dict]:
    """:func:`train_and_analyse` for each (config, run directory), one after the other. In
    the spawned worker, logging is set up as the command's (level ``log_level``), so the
    second model's progress and messages reach the same stderr."""
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    return [train_and_analyse(cfg, d, analyse, threads) for cfg, d in jobs]


def start(jobs: list[tuple[RunConfig, Path]], analyse: bool) -> tuple[ProcessPoolExecutor, Future]:
    """Start :func:`train_all` on ``jobs`` in one spawned worker process (one thread)."""
    pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"))
    payload = [(cfg.to_dict(), str(d)) for cfg, d in jobs]
    level = logging.getLogger().getEffectiveLevel()
    fut = pool.submit(train_all, payload, analyse, 1, level)
    return pool, fut


def run_headline(run_dir: Path) -> dict[str, float]:
    """The headline row of one analysed run (:func:`tvlens.experiments.two_modes.headline`)
    with the derived baselines :data:`HEADLINES` names."""
    from tvlens.experiments.two_modes import headline, load_tables

    tables = load_tables(Path(run_dir))
    if "simplex_fit" not in tables:
        raise FileNotFoundError(
            f"{run_dir} has no two-modes analyses (analyses/simplex_fit.csv); run the demo "
            "without --no-report."
        )
    metrics_path = Path(run_dir) / "metrics.csv"
    metrics = pd.read_csv(metrics_path) if metrics_path.exists() else None
    row = headline(tables, metrics)
    row["zero"] = 0.0
    if "ref_gap_ood" in row:
        row["learner_gap_ood"] = -row["ref_gap_ood"]
    return row


def _stat(heads: pd.DataFrame, col: str) -> tuple[float, float]:
    """Mean and standard deviation (NaN for one seed) of column ``col`` over seeds."""
    if not col or col not in heads:
        return float("nan"), float("nan")
    v = pd.to_numeric(heads[col], errors="coerce")
    return float(v.mean()), float(v.std()) if len(v) > 1 else float("nan")


def side_by_side(runs: dict[str, Sequence[Path] | Path]) -> pd.DataFrame:
    """One row per headline number and model (label -> its run directories, one per
    training seed): the mean over seeds, its standard deviation and the number of seeds,
    beside the named baseline (and, where one exists, the ceiling) measured in the same
    runs. Columns: metric, description, unit, model, value, value_sd, n_seeds, baseline,
    baseline_sd, baseline_name, ceiling, best_layer."""
    rows = []
    for label, dirs in runs.items():
        dirs = [dirs] if isinstance(dirs, (str, Path)) else list(dirs)
        heads = pd.DataFrame([run_headline(d) for d in dirs])
        for h in HEADLINES:
            value, sd = _stat(heads, h.metric)
            base, base_sd = _stat(heads, h.baseline)
            rows.append(
                {
                    "metric": h.metric,
                    "description": h.description,
                    "unit": h.unit,
                    "model": label,
                    "value": value,
                    "value_sd": sd,
                    "n_seeds": len(dirs),
                    "baseline": base,
                    "baseline_sd": base_sd,
                    "baseline_name": h.baseline_name,
                    "ceiling": _stat(heads, h.ceiling)[0],
                    "best_layer": ",".join(str(int(b)) for b in heads["best_layer"]),
                }
            )
    return pd.DataFrame(rows)


def _cell(value: float, sd: float) -> str:
    return f"{value:+.3f}" + (f" ± {sd:.3f}" if sd == sd else "")


def format_side_by_side(table: pd.DataFrame) -> str:
    """The side-by-side table as text: one line per headline number, each model's value
    (mean ± sd over seeds) and, in brackets, its baseline, named in the last column."""
    models = list(dict.fromkeys(table["model"]))
    out = []
    for _, g in table.groupby("metric", sort=False):
        g = g.set_index("model")
        first = g.iloc[0]
        row = {"headline": f"{first['description']} ({first['unit']})"}
        for m in models:
            r = g.loc[m]
            cell = _cell(r["value"], r["value_sd"])
            if first["baseline_name"]:
                cell += f" [{_cell(r['baseline'], r['baseline_sd'])}]"
            row[m] = cell
        row["[baseline]"] = first["baseline_name"] or "—"
        out.append(row)
    cols = list(out[0])
    width = {c: max(len(c), *(len(r[c]) for r in out)) for c in cols}
    lines = ["  ".join(c.ljust(width[c]) for c in cols)]
    lines += ["  ".join(r[c].ljust(width[c]) for c in cols) for r in out]
    return "\n".join(line.rstrip() for line in lines)


def verdict(table: pd.DataFrame) -> dict[str, Any]:
    """Where each model's OOD loss sits between the two references (second half of the
    context), and whether the references differ enough for the mode to be read: per model
    the gaps to each reference, the margin (|gap to retrieval| − |gap to the learner|;
    positive: nearer the learner) and the references' own gap, plus a one-line statement."""
    from tvlens.analyses.baselines import READABLE_NATS, place

    out: dict[str, Any] = {"models": {}}
    parts = []
    for model, g in table.groupby("model", sort=False):
        g = g.set_index("metric")
        ret = float(g.loc["gap_retrieval_ood", "value"])
        lrn = float(g.loc["gap_learning_ood", "value"])
        ref = float(g.loc["gap_learning_ood", "baseline"])
        margin, nearer = place(ret, lrn, ref)
        out["models"][model] = {
            "ood_gap_retrieval": ret,
            "ood_gap_learning": lrn,
            "ood_reference_gap": ref,
            "margin_nats": margin,
            "nearer": nearer,
        }
        where = (
            f"the references differ by only {ref:.3f} nats (< {READABLE_NATS}): the mode "
            "cannot be read"
            if nearer == "unreadable"
            else f"nearer {'the learner' if margin > 0 else 'retrieval'} by {abs(margin):.3f} nats"
        )
        parts.append(
            f"{model}: OOD loss {ret:+.3f} nats from retrieval, {lrn:+.3f} from the learner "
            f"(the references differ by {ref:.3f}): {where}."
        )
    out["statement"] = " ".join(parts)
    return out
