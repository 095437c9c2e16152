"""``tvlens demo``: the main job on the embedded default.

Trains a small model on the dice family (3 major tasks, 32 symbols, no minor tasks: the
retrieval mode) on the CPU and, beside it, a learning-mode model
(:mod:`tvlens.experiments.demo_modes`), prints the main model's cross-entropy against the
exact retrieval and learning references per position band, runs the analyses, puts the two
models' headline numbers side by side with their null baselines and writes an offline HTML
report.
A finished run directory is reused (pass ``--retrain`` to start over); an interrupted one is
resumed.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import pandas as pd
import torch

from tvlens.experiments.demo_modes import DEMO_FAMILY, LEARNING_MIXTURE, LEARNING_TRAIN
from tvlens.experiments.train_cmd import add_config_arguments, config_from_args
from tvlens.io import save_csv, save_text
from tvlens.models import Run, RunConfig, load_run, train
from tvlens.models.evaluate import References, default_bands, eval_batches, predict

log = logging.getLogger(__name__)

SUMMARY_SIZE = 1024  # sequences per split for the printed summary
#: the main model's training: it reaches the retrieval reference on major tasks (second half
#: of the context) well within 0.01 nats by 500 steps; --steps / --set train.FIELD=...
#: override it (the learning model's steps: --learning-steps)
DEMO_TRAIN = {"steps": 500, "n_checkpoints": 8}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory")
    parser.add_argument("--retrain", action="store_true", help="delete --out and train again")
    parser.add_argument("--no-report", action="store_true", help="skip analyses and the report")
    parser.add_argument(
        "--learning-k",
        type=int,
        default=LEARNING_MIXTURE["k"],
        help="also train a model with 2**K minor tasks (the learning mode) in parallel, one "
        f"thread each, and report the two side by side (default {LEARNING_MIXTURE['k']})",
    )
    parser.add_argument(
        "--learning-p-minor",
        type=float,
        default=LEARNING_MIXTURE["p_minor"],
        help="share of the learning model's training sequences drawn from its minor tasks "
        f"(default {LEARNING_MIXTURE['p_minor']})",
    )
    parser.add_argument(
        "--learning-steps",
        type=int,
        default=LEARNING_TRAIN["steps"],
        help=f"training steps of the learning model (default {LEARNING_TRAIN['steps']})",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="training seeds per model; with 3 or more the side-by-side table shows mean ± sd "
        "over seeds (each extra seed costs about as much as the first)",
    )
    parser.add_argument(
        "--single", action="store_true", help="train only the main model (no learning model)"
    )


def summary(run: Run, size: int = SUMMARY_SIZE) -> pd.DataFrame:
    """Model vs reference cross-entropy per split × position band, with the gap's std. error."""
    fam = run.family
    batches = eval_batches(fam, size, seed=run.config.train.seed + 1, splits=["major", "ood"])
    rows = []
    for split, batch in batches.items():
        refs = References(fam, batch)
        pred = predict(run.model, fam, batch)
        model_loss = fam.prediction_loss(pred, batch)
        for lo, hi in default_bands(fam.seq_len):
            mask = batch.target_mask[:, lo:hi]
            n = mask.sum(1).clamp_min(1)
            per_seq = {
                "model": model_loss[:, lo:hi].sum(1) / n,
                **{k: v[:, lo:hi].sum(1) / n for k, v in refs.losses.items()},
            }
            gap = per_seq["model"] - per_seq["retrieval"]
            rows.append(
                {
                    "split": split,
                    "positions": f"{lo}-{hi}",
                    "model": per_seq["model"].mean().item(),
                    "retrieval": per_seq["retrieval"].mean().item(),
                    "learning": per_seq["learning"].mean().item(),
                    "true_task": per_seq["true"].mean().item(),
                    "gap_retrieval": gap.mean().item(),
                    "gap_se": (gap.std() / gap.numel() ** 0.5).item(),
                }
            )
    return pd.DataFrame(rows)


def _finished(run_dir: Path, config: RunConfig) -> bool:
    from tvlens.models import list_checkpoints

    steps = list_checkpoints(run_dir) if run_dir.exists() else []
    return bool(steps) and steps[-1] == config.train.steps


def analyse(run: Run) -> dict[str, float]:
    """Every analysis of :data:`tvlens.registry.DEMO` on the trained demo model
    (``analyses/*.csv``); returns seconds per analysis.

    Geometry, alignment, ablation, steering and the mode diagnostic (docs/concepts.md A), a
    denoising patching sweep, task decodability over layers, context and checkpoints, and
    the attention patterns the report draws.
    """
    from tvlens.experiments.demo_modes import DEMO_OPTIONS
    from tvlens.registry import DEMO, run_analyses

    _, seconds = run_analyses(run, DEMO, options=DEMO_OPTIONS)
    return seconds


def _seed_dirs(run_dir: Path, name: str, seeds: int) -> list[Path]:
    """Run directories of one demo model per seed: seed 0 in ``run_dir/name`` (``name``
    empty: ``run_dir`` itself), the others under ``run_dir/seeds/``."""
    first = run_dir / name if name else run_dir
    return [first] + [run_dir / "seeds" / f"{name or 'main'}_s{s}" for s in range(1, seeds)]


def run(args: argparse.Namespace) -> int:
    from tvlens.experiments import demo_modes

    if args.seeds < 1:
        raise ValueError(f"--seeds {args.seeds}: train at least one seed per model.")
    config = config_from_args(
        args, family=dict(DEMO_FAMILY.get(args.family, {})), train=dict(DEMO_TRAIN)
    )
    run_dir: Path = args.out
    if args.retrain and run_dir.exists():
        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    c0 = time.process_time()
    seed0 = config.train.seed
    main_dirs = _seed_dirs(run_dir, "", args.seeds)
    learning = None
    if not args.single:  # the learning-mode models train beside this one, one thread each
        torch.set_num_threads(1)
        learning_cfg = demo_modes.with_k(config, args.learning_k, p_minor=args.learning_p_minor)
        d = learning_cfg.to_dict()
        d["train"]["steps"] = args.learning_steps
        learning_cfg = RunConfig.from_dict(d)
        learning_dirs = _seed_dirs(run_dir, f"learning_k{args.learning_k}", args.seeds)
        jobs = [(learning_cfg.with_seed(seed0 + s), path) for s, path in enumerate(learning_dirs)]
        learning = demo_modes.start(jobs, analyse=not args.no_report)
    if _finished(run_dir, config):
        log.info("%s already holds a finished run; reusing it (--retrain to start over)", run_dir)
        result = load_run(run_dir)
    else:
        resume = (run_dir / "config.json").exists()
        result = train(config, run_dir, resume=resume)
    train_s = time.perf_counter() - t0

    table = summary(result)
    save_csv(run_dir / "summary.csv", table)
    print(f"\nModel vs exact Bayesian references (cross-entropy, nats; {SUMMARY_SIZE} sequences):")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    second_half = table[(table.split == "major")].iloc[-1]
    verdict = {
        "family": config.family.name,
        "steps": config.train.steps,
        "train_seconds": round(train_s, 1),
        "threads": torch.get_num_threads(),
        "major_second_half_gap_nats": second_half.gap_retrieval,
        "gap_standard_error": second_half.gap_se,
        "within_0.05_nats": bool(abs(second_half.gap_retrieval) <= 0.05),
        "below_reference_beyond_noise": bool(second_half.gap_retrieval < -3 * second_half.gap_se),
    }
    print(
        f"\nMajor tasks, second half of the context: model − retrieval = "
        f"{verdict['major_second_half_gap_nats']:+.5f} ± {verdict['gap_standard_error']:.5f} nats "
        f"({'within' if verdict['within_0.05_nats'] else 'NOT within'} 0.05)."
    )
    if verdict["below_reference_beyond_noise"]:
        log.warning(
            "the model beats the exact retrieval reference beyond noise: check the reference"
        )
    if not args.no_report:
        verdict["analysis_seconds"] = analyse(result)
    # the main model's other seeds: trained and given the two-modes analyses only
    for s, path in enumerate(main_dirs[1:], start=1):
        demo_modes.train_and_analyse(
            config.with_seed(seed0 + s).to_dict(), str(path), not args.no_report,
            threads=torch.get_num_threads(),
        )  # fmt: skip
    verdict["main_cpu_seconds"] = round(time.process_time() - c0, 1)
    if learning is not None:
        pool, fut = learning
        verdict["learning_model"] = {
            "k": args.learning_k,
            "p_minor": args.learning_p_minor,
            "steps": args.learning_steps,
            "seeds": fut.result(),
        }
        pool.shutdown()
        if not args.no_report:
            both = demo_modes.side_by_side(
                {
                    f"k={config.family.k} (retrieval)": main_dirs,
                    f"k={args.learning_k} (learning)": learning_dirs,
                }
            )
            save_csv(run_dir / "analyses" / "demo_two_modes.csv", both)
            verdict["two_modes"] = demo_modes.verdict(both)
            print(
                f"\nThe two modes side by side (best layer of each model; {args.seeds} training "
                "seed(s), mean ± sd; [named null baseline]):"
            )
            print(demo_modes.format_side_by_side(both))
            print("\n" + verdict["two_modes"]["statement"])
    verdict["wall_seconds"] = round(time.perf_counter() - t0, 1)
    save_text(run_dir / "demo.json", json.dumps(verdict, indent=2))
    if not args.no_report:
        from tvlens.viz.report import write_report

        print(f"report: {write_report(run_dir)}")
    print(f"run directory: {run_dir}")
    return 0
