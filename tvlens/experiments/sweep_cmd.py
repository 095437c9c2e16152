"""``tvlens sweep CONFIG --out DIR``: run a declarative sweep locally or on Ray.

The config (JSON or YAML) names the families, ks, seeds, model sizes, training steps,
analyses and per-trial resources (:mod:`tvlens.experiments.sweep`). ``--engine local`` (the
default) needs nothing beyond tvlens; ``--engine ray`` starts an embedded Ray, and with
``--address auto`` or ``--address ray://HOST:PORT`` it joins a cluster. A rerun into the same
``--out`` runs only the trials that are missing or failed.

This module imports nothing heavy at the top, so ``tvlens sweep --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """\
a sweep config (YAML; the same keys in JSON):
  name: dice-two-modes
  families: [dice]                 # task families
  ks: [-1, 0, 2, 4, 6, 8]          # 2**k minor tasks; -1: none
  seeds: [0, 1]                    # each sets model.seed, train.seed, family.seed
  model: {n_layers: 4, d_model: 64}   # or models: {NAME: {...}, ...}
  family: {seq_len: 64}            # optional, shared by every family
  train: {steps: 1500}             # train.device defaults to cuda when resources.gpu > 0
  analyses: [two_modes]            # registry names, or {NAME: {option: value}}
  resources: {cpu: 1, gpu: 0}      # per trial
  trial_dir: "{family}_{model}_k{k}_s{seed}"

examples:
  tvlens sweep sweeps/dice_two_modes.yaml --out runs/sweep_dice
  tvlens sweep sweeps/dice_two_modes.yaml --out runs/sweep_dice --engine ray
  tvlens sweep sweeps/dice_two_modes_reference.yaml --out /shared/dice_ref --engine ray --address auto
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("config", type=Path, metavar="CONFIG", help="sweep config (.json/.yaml)")
    parser.add_argument("--out", type=Path, required=True, help="sweep directory")
    parser.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this machine, no Ray needed (default); ray: Ray tasks",
    )
    parser.add_argument(
        "--address",
        help="with --engine ray: join a cluster (auto, or ray://HOST:PORT) instead of "
        "starting an embedded Ray",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        help="with --engine local: trials at once (default: cores / resources.cpu; 1 on GPU)",
    )
    parser.add_argument(
        "--num-cpus", type=int, help="with --engine ray and no --address: CPUs of the embedded Ray"
    )
    parser.add_argument(
        "--num-gpus", type=int, help="with --engine ray and no --address: GPUs of the embedded Ray"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="--out holds another sweep: move its summaries (results.csv, sweep.json, "
        "analyses/, figures/) aside into OUT/replaced-TIMESTAMP/ and run this one (nothing is "
        "deleted)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="list the trials (and which are done); run nothing"
    )


def run(args: argparse.Namespace) -> int:
    from tvlens.experiments.engines import make_engine
    from tvlens.experiments.sweep import SweepSpec, completed, folder_conflict, run_sweep

    spec = SweepSpec.load(args.config)
    trials = spec.trials()
    if args.dry_run:
        conflict = folder_conflict(args.out, trials, spec) if args.out.exists() else None
        if conflict:
            print(
                f"{conflict}: running this would be refused (use a new --out, or --force to "
                "move the old summaries aside).",
                file=sys.stderr,
            )
            return 1
        done = completed(args.out, trials) if args.out.exists() else {}
        for t in trials:
            state = "done" if t.id in done else "todo"
            grid = "".join(f" {name}={v}" for name, v in t.grid)
            print(
                f"{state}  {t.id}  (family={t.family} model={t.model} k={t.k} seed={t.seed}{grid})"
            )
        print(f"{len(trials)} trials, {len(done)} done, {len(trials) - len(done)} to run")
        return 0
    engine = make_engine(
        args.engine,
        address=args.address,
        jobs=args.jobs,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
    )
    result = run_sweep(
        spec,
        args.out,
        engine,
        config_text=args.config.read_text(encoding="utf-8"),
        force=args.force,
    )
    print(
        f"sweep {spec.name}: {len(trials)} trials — ran {len(result.ran)}, "
        f"skipped {len(result.skipped)} already done, failed {len(result.failed)} "
        f"({result.seconds:.0f} s, engine {engine.name})"
    )
    print(f"results: {args.out / 'results.csv'}")
    if result.failed:
        by_id = {r["trial"]: r for r in result.records}
        for tid in result.failed:
            print(f"  failed {tid}: {by_id.get(tid, {}).get('error', '?')}", file=sys.stderr)
        print(
            f"{len(result.failed)} trial(s) failed (tracebacks in {args.out / '.partial'}/"
            "TRIAL/error.txt); fix the cause and rerun the same command: only the missing "
            "trials run.",
            file=sys.stderr,
        )
        return 1
    return 0
