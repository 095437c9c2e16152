"""``tvlens experiment two-modes``: retrieval vs learning across task diversity.

Trains one model per ``k`` (``2**k`` minor tasks; ``k = -1`` for none), runs every geometry
and steering analysis on each
(:func:`tvlens.analyses.two_modes.analyse_two_modes`), then the across-k results: OOD
projection R² against log2 N_minor and the mode heatmap over training step × log2 N_minor.
Everything lands in the experiment directory::

    EXP_DIR/k{k}/            one run directory per k (config, metrics, checkpoints, analyses/)
    EXP_DIR/results.csv      one row per k: the headline numbers (see :func:`headline`)
    EXP_DIR/analyses/*.csv   across-k tables (rendered by ``tvlens report EXP_DIR``)
    EXP_DIR/figures/*.html   the figures (plotly.min.js written once beside them)

Trained runs are reused: a ``k{k}`` directory whose config matches and whose final checkpoint
exists is loaded, not retrained (``--retrain`` forces training; an interrupted run resumes).
The CPU defaults are the demo model (4 layers, d_model 64, 1 500 steps); ``--jobs 2`` (the
default on CPU) trains two models at a time with one thread each, which fits the six-model
sweep into ~30 minutes on 2 cores. The reference sizes are a config change::

    tvlens experiment two-modes --family dice --layers 6 --d-model 128 --steps 30000 \\
        --set model.n_heads=2 --set model.d_mlp=512 --device cuda --jobs 1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tvlens.analyses.common import save_tables as _save_tables
from tvlens.analyses.two_modes import ANALYSIS_SEED_OFFSET as ANALYSIS_SEED_OFFSET
from tvlens.analyses.two_modes import analyse_two_modes, best_layer
from tvlens.experiments.train_cmd import add_config_arguments, config_from_args
from tvlens.io import save_text
from tvlens.models import Run, RunConfig, list_checkpoints, load_run, train
from tvlens.models.train import has_resume_state

log = logging.getLogger(__name__)

DEFAULT_KS = (-1, 0, 2, 4, 6, 8)
ANALYSES = "analyses"


# ---------------------------------------------------------------------- per-run analyses
def analyse_run(run: Run, *, save: bool = True, **options: Any) -> dict[str, pd.DataFrame]:
    """Deprecated alias of :func:`tvlens.analyses.two_modes.analyse_two_modes`."""
    return analyse_two_modes(run, save=save, **options)


def save_tables(tables: dict[str, pd.DataFrame], out: Path) -> list[Path]:
    """Write each table to ``out/<name>.csv`` atomically; returns the paths."""
    return _save_tables(tables, out)


def load_tables(run_dir: Path) -> dict[str, pd.DataFrame]:
    """The ``analyses/*.csv`` tables of a run directory, by name."""
    return {p.stem: pd.read_csv(p) for p in sorted((Path(run_dir) / ANALYSES).glob("*.csv"))}


# --------------------------------------------------------------------------- headline
def sweep_headline(tables: dict[str, pd.DataFrame], run: Any) -> dict:
    """:func:`headline` of one sweep trial (its registry entry's ``headline``): the axes
    ``k`` and ``n_minor`` are the sweep's own columns."""
    metrics = getattr(run, "metrics", None)
    row = headline(dict(tables), metrics if metrics is not None and len(metrics) else None)
    row.pop("k", None)
    row.pop("n_minor", None)
    return row


def headline(tables: dict[str, pd.DataFrame], metrics: pd.DataFrame | None = None) -> dict:
    """One row of headline numbers for a run (the columns of ``results.csv``).

    Layer choices are fixed in advance, never tuned on the outcome: ``best_layer`` (highest
    ID simplex R²) for the geometry, alignment, ablation and steering numbers, and the last
    layer as a second OOD reference point.
    """
    simplex = tables["simplex_fit"]
    best = best_layer(simplex)
    last = int(simplex["layer"].max())

    def pick(df: pd.DataFrame, col: str, **where: Any) -> float:
        sel = np.ones(len(df), dtype=bool)
        for key, val in where.items():
            sel &= (df[key] == val).to_numpy()
        vals = df.loc[sel, col]
        return float(vals.mean()) if len(vals) else float("nan")

    abl = tables["ablation"]
    steer = tables["steering"]
    conv = tables["convexity"]
    mixed = conv[(conv["alpha_max"] < 0.999) & (conv["layer"] == best)]
    row = {
        "k": int(simplex["k"].iloc[0]),
        "n_minor": 0 if simplex["k"].iloc[0] < 0 else 2 ** int(simplex["k"].iloc[0]),
        "best_layer": best,
        "id_simplex_r2": pick(simplex, "r2_task", layer=best, split="major"),
        "id_simplex_token_r2": pick(simplex, "r2_task_token", layer=best, split="major"),
        "id_anova_r2": pick(tables["anova_r2"], "r2_task", layer=best, split="major"),
        "minor_proj_r2": pick(simplex, "r2_affine", layer=best, split="minor"),
        "beta_posterior_corr": pick(tables["alignment_summary"], "corr", layer=best),
        "beta_posterior_tv": pick(tables["alignment_summary"], "tv", layer=best),
        "ood_proj_r2": pick(simplex, "r2_affine", layer=best, split="ood"),
        "ood_proj_r2_last_layer": pick(simplex, "r2_affine", layer=last, split="ood"),
        "ood_angle_deg": pick(tables["principal_angles"], "angle_deg", layer=best, split="ood"),
        "id_angle_deg": pick(tables["principal_angles"], "angle_deg", layer=best, split="major"),
    }
    for split in ("major", "minor", "ood"):
        row[f"ablate_{split}"] = pick(abl, "delta", layer=best, split=split, subspace="task")
        row[f"ablate_random_{split}"] = pick(
            abl, "delta", layer=best, split=split, subspace="random"
        )
    row["ablate_id_over_ood"] = row["ablate_major"] / row["ablate_ood"]
    if "paper_ood_r2" in tables:  # the reference code's definitions (paper_metrics)
        paper = tables["paper_ood_r2"]
        row["ood_r2_paper"] = pick(paper, "r2_paper", layer=best, split="ood")
        if "r2_paper_per_seq" in paper:  # the newest snapshot's per-sequence variant
            row["ood_r2_paper_per_seq"] = pick(paper, "r2_paper_per_seq", layer=best, split="ood")
        row["ood_r2_paper_last_layer"] = pick(paper, "r2_paper", layer=last, split="ood")
        row["minor_r2_paper"] = pick(paper, "r2_paper", layer=best, split="minor")
    if "paper_anova" in tables:
        pa = tables["paper_anova"]
        for col in ("task_vector_r2", "separability", "eta2_task", "eta2_token"):
            row[f"anova_{col}_paper"] = pick(pa, col, layer=best, split="major")
        row["anova_task_vector_r2_paper_minor"] = pick(
            pa, "task_vector_r2", layer=best, split="minor"
        )
    row["steer_unsteered_acc"] = pick(steer, "accuracy", condition="unsteered")
    row["steer_own_acc"] = pick(steer, "accuracy", condition="own", layer=best)
    row["steer_to_task_acc"] = pick(steer, "accuracy", condition="to_task", layer=best)
    row["convex_kl"] = float(mixed["div_mixture"].mean())
    row["convex_kl_geometric"] = float(mixed["div_geometric"].mean())
    row["convex_kl_mixture_to_vertex"] = float(mixed["div_mixture_vertex"].mean())
    if "modes" in tables:
        modes = tables["modes"]
        final = modes[modes["step"] == modes["step"].max()]
        for split in ("major", "ood"):
            row[f"mode_log_ratio_{split}"] = pick(final, "log_ratio", split=split)
    row["ablate_margin_major"] = row["ablate_major"] - row["ablate_random_major"]
    row["ablate_margin_ood"] = row["ablate_ood"] - row["ablate_random_ood"]
    row.update(baseline_headline(tables, best))
    if "reference_gap" not in tables and metrics is not None and not metrics.empty:
        # runs analysed before the reference-gap table: the training-time evaluation
        final = metrics[metrics["step"] == metrics["step"].max()]
        for split in ("major", "ood"):
            sel = final[final["split"] == split]
            if not sel.empty:
                row[f"gap_retrieval_{split}"] = float(sel["gap_retrieval"].mean())
                row[f"gap_learning_{split}"] = float(sel["gap_learning"].mean())
    return row


def baseline_headline(tables: dict[str, pd.DataFrame], best: int) -> dict[str, Any]:
    """The headline numbers' null baselines (:mod:`tvlens.analyses.baselines`) at layer
    ``best``: β–posterior alignment beside the one-hot true task (all and mixed
    positions), variance shares in the task and minor spans beside random subspaces and the
    top PCs, and, on the second half of the context, the model's loss gap to each
    reference beside the references' own gap."""
    row: dict[str, Any] = {}
    if "alignment_baselines" in tables:
        ab = tables["alignment_baselines"]
        sel = ab[ab["layer"] == best]
        if not sel.empty:
            r = sel.iloc[0]
            for col in ("corr_one_hot", "corr_mixed", "corr_one_hot_mixed", "tv_mixed",
                        "tv_one_hot_mixed", "tv_prior_mixed", "n_states_mixed"):  # fmt: skip
                row[f"beta_posterior_{col}"] = float(r[col])
    if "subspace_share" in tables:
        sh = tables["subspace_share"]
        for split in ("major", "minor", "ood"):
            for space in ("task", "minor"):
                sel = sh[(sh["layer"] == best) & (sh["split"] == split) & (sh["subspace"] == space)]
                if sel.empty:
                    continue
                r = sel.iloc[0]
                key = f"{split}_{space}_share"
                row[key] = float(r["share"])
                row[f"{key}_random"] = float(r["random_share"])
                row[f"{key}_random_sd"] = float(r["random_share_sd"])
                row[f"{key}_top"] = float(r["top_share"])
    if "reference_gap" in tables:
        gap = tables["reference_gap"]
        for split in ("major", "minor", "ood"):
            sel = gap[gap["split"] == split]
            if sel.empty:
                continue
            r = sel.iloc[-1]  # the last band: the second half of the context
            row["gap_band"] = str(r["band"])
            for col in ("gap_retrieval", "gap_learning", "ref_gap", "ref_kl", "div_retrieval",
                        "div_learning", "margin_loss", "margin_kl"):  # fmt: skip
                row[f"{col}_{split}"] = float(r[col])
            row[f"readable_{split}"] = bool(r["readable"])
            row[f"nearer_{split}"] = str(r["nearer"])
    return row


def across_k(per_k: dict[int, dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """Experiment-level tables: OOD projection R² vs log2 N_minor, the mode heatmap, and
    per-layer ablation and convexity summaries per k."""
    out: dict[str, pd.DataFrame] = {}
    simplex = pd.concat([t["simplex_fit"] for t in per_k.values()], ignore_index=True)
    simplex["log2_n_minor"] = simplex["k"]
    out["ood_r2_vs_k"] = simplex[
        ["k", "log2_n_minor", "layer", "split", "r2_affine", "r2_task", "frac_in"]
    ]
    paper = [t["paper_ood_r2"] for t in per_k.values() if "paper_ood_r2" in t]
    if paper:
        out["paper_ood_r2_vs_k"] = pd.concat(paper, ignore_index=True).assign(
            log2_n_minor=lambda d: d["k"]
        )
    modes = [t["modes"] for t in per_k.values() if "modes" in t]
    if modes:
        heat = pd.concat(modes, ignore_index=True)
        heat["log2_n_minor"] = heat["k"]
        out["mode_heatmap"] = heat
    abl = pd.concat([t["ablation"] for t in per_k.values()], ignore_index=True)
    out["ablation_vs_k"] = (
        abl.groupby(["k", "layer", "split", "subspace"], as_index=False)["delta"]
        .agg(delta="mean", delta_sd="std")
        .assign(log2_n_minor=lambda d: d["k"])
    )
    conv = pd.concat([t["convexity"] for t in per_k.values()], ignore_index=True)
    conv = conv[conv["alpha_max"] < 0.999]
    cols = ["div_mixture", "div_geometric", "div_vertex", "div_mixture_vertex"]
    out["convexity_vs_k"] = (
        conv.groupby(["k", "layer"], as_index=False)[cols]
        .mean()
        .assign(log2_n_minor=lambda d: d["k"])
    )
    return out


# --------------------------------------------------------------------------- running
def run_dir_for(exp_dir: Path, k: int, seed: int | None = None) -> Path:
    """``EXP_DIR/k{k}``; a seed other than the base config's adds ``_s{seed}``."""
    return Path(exp_dir) / (f"k{k}" if seed is None else f"k{k}_s{seed}")


def train_or_load(config: RunConfig, run_dir: Path, retrain: bool = False) -> Run:
    """Load a finished run with the same config from ``run_dir``, resume a partial one, or
    train a fresh one."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if retrain and run_dir.exists():
        shutil.rmtree(run_dir)
    if cfg_path.exists():
        saved = json.loads(cfg_path.read_text())
        if saved != config.to_dict():
            raise FileExistsError(
                f"{run_dir} holds a run with a different config; pass --retrain to replace "
                "it or choose another --out."
            )
        if config.train.steps in list_checkpoints(run_dir):
            log.info("reusing trained run %s", run_dir)
            return load_run(run_dir, config.train.steps)
        if has_resume_state(run_dir):
            log.info("resuming %s", run_dir)
            return train(config, run_dir, resume=True, progress=False)
        shutil.rmtree(run_dir)  # a config.json but no usable state: start over
    return train(config, run_dir, progress=False)


def sweep_configs(base: RunConfig, ks: Sequence[int]) -> dict[int, RunConfig]:
    """One config per k: ``base`` with ``family.k`` replaced."""
    out = {}
    for k in ks:
        d = base.to_dict()
        d["family"]["k"] = int(k)
        out[int(k)] = RunConfig.from_dict(d)
    return out


def run_sweep(
    base: RunConfig,
    exp_dir: Path,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    jobs: int = 1,
    threads: int | None = None,
    retrain: bool = False,
    analysis: dict | None = None,
    seeds: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Train and analyse one model per k (and per training seed in ``seeds``: the base
    config's seed in ``k{k}``, others in ``k{k}_s{seed}``, and then ``results_seeds.csv``
    holds each headline number's mean and sd over seeds), then write ``results.csv``, the across-k
    ``analyses/*.csv`` and ``figures/*.html`` into ``exp_dir``; returns the results table.

    This is a sweep (:func:`tvlens.experiments.sweep.run_trials`): one trial per k in
    ``exp_dir/k{k}``, each written atomically. A rerun runs only the missing ks (a run
    trained here by an older tvlens is reused and analysed), and a failed k is reported
    after the others have finished."""
    from tvlens.experiments.engines import LocalEngine
    from tvlens.experiments.sweep import Resources, Trial, run_trials

    exp_dir = Path(exp_dir)
    if jobs < 1:
        raise ValueError(f"jobs={jobs}; use at least 1 worker.")
    base_seed = int(base.train.seed)
    extra = [int(s) for s in (seeds or []) if int(s) != base_seed]
    runs: dict[Path, RunConfig] = {}
    for k, cfg in sweep_configs(base, ks).items():
        runs[run_dir_for(exp_dir, k)] = cfg
        for seed in extra:  # more training seeds: model, training and pool seeds
            runs[run_dir_for(exp_dir, k, seed)] = cfg.with_seed(seed)
    if retrain:
        for path in runs:
            shutil.rmtree(path, ignore_errors=True)
    resources = Resources(cpu=threads or 1)
    trials = [
        Trial.from_config(path.name, cfg, {"two_modes": analysis or {}}, resources)
        for path, cfg in runs.items()
    ]
    try:
        result = run_trials(trials, exp_dir, LocalEngine(jobs), name="two-modes")
    except FileExistsError as e:  # a finished k with another config
        raise FileExistsError(f"{e} Or pass --retrain to replace it.") from None
    if result.failed:
        errors = {r["trial"]: r["error"] for r in result.records if r["status"] != "done"}
        raise RuntimeError(
            f"{len(errors)} of {len(trials)} ks failed ({errors}); the others are in "
            f"{exp_dir / 'results.csv'}. Fix the cause and rerun: only the failed ks run."
        )
    return pd.read_csv(exp_dir / "results.csv")


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--ks",
        type=int,
        nargs="+",
        default=list(DEFAULT_KS),
        help="minor-task exponents: one model with 2**k minor tasks per k (-1: none)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="experiment directory (default runs/two_modes_FAMILY)",
    )
    parser.add_argument("--retrain", action="store_true", help="retrain runs that exist")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="training seeds per k (e.g. --seeds 0 1 2): results_seeds.csv then gives every "
        "headline number's mean ± sd over seeds (default: the config's seed only)",
    )
    parser.add_argument(
        "--n-eval", type=int, default=256, help="sequences per split for the analyses"
    )
    parser.add_argument(
        "--n-causal",
        type=int,
        default=96,
        help="sequences per split for ablation, steering and the mode diagnostic",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="models trained at once, each in its own process (default: 2 on CPU, 1 on GPU)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per job (default: cores / jobs)"
    )


def run(args: argparse.Namespace) -> int:
    if args.k is not None:
        raise ValueError("two-modes sweeps over k: pass --ks K [K ...] instead of --k.")
    config = config_from_args(args)
    out = args.out or Path(f"runs/two_modes_{config.family.name}")
    cpu = config.train.device == "cpu"
    jobs = args.jobs if args.jobs is not None else (min(2, len(args.ks)) if cpu else 1)
    if jobs < 1:
        raise ValueError(f"--jobs {jobs}: use at least 1 worker (jobs=0 is not allowed).")
    threads = args.threads or (max(1, (os.cpu_count() or 1) // jobs) if cpu else None)
    t0 = time.perf_counter()
    results = run_sweep(
        config,
        out,
        args.ks,
        jobs=jobs,
        threads=threads,
        retrain=args.retrain,
        analysis={"n_eval": args.n_eval, "n_causal": min(args.n_causal, args.n_eval)},
        seeds=args.seeds,
    )
    wall = time.perf_counter() - t0
    save_text(
        out / "experiment.json",
        json.dumps(
            {
                "family": config.family.name,
                "ks": list(args.ks),
                "jobs": jobs,
                "threads_per_job": threads,
                "wall_seconds": round(wall, 1),
                "config": config.to_dict(),
            },
            indent=2,
        ),
    )
    # each headline number beside its baseline (see docs/modes.md)
    cols = [
        "k",
        "seed",
        "best_layer",
        "id_simplex_r2",
        "beta_posterior_corr_mixed",
        "beta_posterior_corr_one_hot_mixed",
        "ood_task_share",
        "ood_task_share_random",
        "ablate_major",
        "ablate_random_major",
        "ablate_ood",
        "ablate_random_ood",
        "gap_retrieval_ood",
        "gap_learning_ood",
        "ref_gap_ood",
        "mode_log_ratio_ood",
    ]
    shown = results[[c for c in cols if c in results.columns]]
    print(shown.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"results: {out / 'results.csv'}  figures: {out / 'figures'}  ({wall:.0f} s)")
    return 0
