"""``tvlens experiment decodability``: task decodability, its emergence, early vs late tuning.

One run (Han et al., arXiv 2412.12276), on the sparse-regression concept testbed by default:

1. train a model (or reuse the finished run in ``--out`` when its config matches; an
   interrupted one is resumed);
2. TD per layer × number of in-context examples at the final checkpoint: leave-one-out kNN
   (k = 10) and a logistic probe, each beside its chance level and a shuffled-label score;
3. TD against ICL performance per class × number of examples at the best layer, with the
   correlations (r, p) pooled, controlled for the number of examples, and across classes;
4. TD and ICL loss at every checkpoint (coupled emergence), their correlation across
   checkpoints and the steps at which each has covered half its change;
5. fine-tune the first vs the last half of the blocks from an early checkpoint with the same
   budget, over a few seeds.

Writes ``analyses/decodability*.csv`` (rendered by ``tvlens report RUN_DIR``),
``figures/*.html`` and the headline ``results.csv`` (one row per quoted number) into the run
directory. The paper's scale is a config change, e.g. ``--layers 12 --d-model 256
--set model.n_heads=8 --set family.dim=16 --set family.sparsity=4 --set family.seq_len=40
--steps 80000 --device cuda``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tvlens.analyses.common import save_analysis
from tvlens.analyses.decodability import (
    DEFAULT_K,
    DEFAULT_PER_CLASS,
    Label,
    collect_representations,
    labels_for,
    max_examples,
    n_label_classes,
)
from tvlens.analyses.dynamics import (
    decodability_dynamics,
    emergence_correlation,
    emergence_steps,
    group_scores,
    td_performance_correlation,
)
from tvlens.analyses.finetune import compare_finetuning, finetune_summary
from tvlens.experiments.train_cmd import add_config_arguments, config_from_args
from tvlens.io import save_csv
from tvlens.models import Run, RunConfig, list_checkpoints, load_run, train
from tvlens.registry import figure_functions
from tvlens.tasks import SPLITS, make_family
from tvlens.tasks.base import TaskFamily
from tvlens.viz.common import write_figures as _write_figures

log = logging.getLogger(__name__)

#: CPU defaults per family (docs/concepts.md B: D = 16, r = 4, 4 bases, K = 20 in the paper).
EXPERIMENT_DEFAULTS: dict[str, dict[str, dict]] = {
    "sparse_linreg": {
        # 4 concepts (orthonormal bases of R^5), 2-sparse tasks, 12 examples per prompt; a pool
        # of 4 major + 32 minor tasks (the minors share 90 % of the mass). The 4 majors have
        # one concept each: decoding their concept is the primary target.
        "family": {"dim": 5, "sparsity": 2, "seq_len": 24, "k": 5, "p_minor": 0.9},
        "model": {"n_layers": 4, "d_model": 64, "n_heads": 4, "d_mlp": 256},
        "train": {"steps": 4000, "lr": 3e-3, "eval_every": 500, "n_checkpoints": 12},
    },
}
_GENERIC = {"train": {"n_checkpoints": 12}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.set_defaults(family="sparse_linreg")
    parser.add_argument("--out", type=Path, help="run directory (default runs/decodability_FAMILY)")
    parser.add_argument(
        "--n-per-class", type=int, default=DEFAULT_PER_CLASS, help="prompts per task / concept"
    )
    parser.add_argument("--knn-k", type=int, default=DEFAULT_K, help="neighbours for LOO kNN")
    parser.add_argument(
        "--ft-steps", type=int, help="fine-tuning steps (default: 10%% of training)"
    )
    parser.add_argument("--ft-layers", type=int, help="blocks to fine-tune (default: half)")
    parser.add_argument("--ft-seeds", type=int, default=2, help="fine-tuning seeds per variant")
    parser.add_argument(
        "--ft-from",
        type=float,
        default=0.25,
        help="fine-tune from the checkpoint nearest this fraction of training",
    )
    parser.add_argument(
        "--decode",
        nargs="+",
        metavar="LABEL:SPLIT",
        help="what to decode, e.g. concept:major concept:ood (the first is the primary target "
        "used for dynamics, correlations and fine-tuning)",
    )
    parser.add_argument("--skip-dynamics", action="store_true", help="do not score checkpoints")
    parser.add_argument("--skip-finetune", action="store_true", help="do not fine-tune")


def experiment_config(args: argparse.Namespace) -> RunConfig:
    """The run config: the family's experiment defaults, then ``--config``/flags/``--set``."""
    return config_from_args(args, **EXPERIMENT_DEFAULTS.get(args.family, _GENERIC))


def train_or_reuse(config: RunConfig, out: Path) -> Run:
    """Load the finished run in ``out``, resume an interrupted one, or train a new one."""
    cfg_path = out / "config.json"
    if cfg_path.exists():
        saved = json.loads(cfg_path.read_text())
        if saved != config.to_dict():
            raise FileExistsError(
                f"{out} holds a run with a different config; pass another --out or delete it."
            )
        if config.train.steps in list_checkpoints(out):
            log.info("reusing the finished run in %s", out)
            return load_run(out)
        return train(config, out, resume=True)
    return train(config, out)


def nearest_step(steps: list[int], target: float) -> int:
    """The checkpoint step closest to ``target`` (the earlier one on a tie)."""
    return min(steps, key=lambda s: (abs(s - target), s))


def write_figures(analyses: dict[str, pd.DataFrame], fig_dir: Path) -> list[Path]:
    """One HTML figure per table that the registry's decodability analyses can draw."""
    figures = figure_functions(["decodability", "dynamics", "decodability_experiment"])
    return _write_figures(analyses, fig_dir, figures)


def correlations(groups: pd.DataFrame, top: int) -> pd.DataFrame:
    """TD against ICL performance across classes × example counts (rows of ``groups``):
    pooled, controlled for the number of examples, and across classes at ``top`` examples;
    and TD against the loss gap to the Bayes (retrieval) reference, controlled for the
    number of examples (column ``y`` names the variable)."""
    rows = []
    layer = int(groups["layer"].iloc[0])
    with_ctx = groups[groups["n_examples"] >= 1]
    for y, over, d, within in (
        ("performance", "class x n_examples", with_ctx, None),
        ("performance", "class x n_examples, within n", with_ctx, "n_examples"),
        ("performance", f"class at n={top}", groups[groups["n_examples"] == top], None),
        ("gap_retrieval", "class x n_examples, within n", with_ctx, "n_examples"),
    ):
        for method in ("pearson", "spearman"):
            res = td_performance_correlation(d, "td", y, method, within=within)
            rows.append({"y": y, "over": over, "layer": layer, "method": method, **res})
    return pd.DataFrame(rows)


def headline(
    td: pd.DataFrame,
    groups: pd.DataFrame,
    correlation: pd.DataFrame,
    dynamics: pd.DataFrame | None,
    emergence: pd.DataFrame | None,
    finetune: pd.DataFrame | None,
    best_layer: int,
) -> pd.DataFrame:
    """The numbers the README quotes, one row each: quantity, target, layer, n_examples,
    value, chance, shuffled, p, n, note. The first target in ``td`` is the primary one: its
    whole TD-vs-examples curve at ``best_layer`` is listed; other targets give their last
    point, trend and maximum."""
    rows: list[dict] = []
    top = int(td["n_examples"].max())
    if "label" not in td:
        td = td.assign(label="", split="")
    targets = list(dict.fromkeys(zip(td["label"], td["split"], strict=True)))
    for i, (label, split) in enumerate(targets):
        target = f"{label}:{split}" if label else ""
        for method, g in td[(td["label"] == label) & (td["split"] == split)].groupby(
            "method", sort=False
        ):
            at = g[g["layer"] == best_layer].sort_values("n_examples")
            if i == 0:  # the whole curve for the primary target
                for _, r in at.iterrows():
                    rows.append(
                        {
                            "quantity": f"td_{method}",
                            "target": target,
                            "layer": best_layer,
                            "n_examples": r["n_examples"],
                            "value": r["td"],
                            "chance": r["chance"],
                            "shuffled": r.get("shuffled", np.nan),
                        }
                    )
            else:
                r = at.iloc[-1]
                rows.append(
                    {
                        "quantity": f"td_{method}",
                        "target": target,
                        "layer": best_layer,
                        "n_examples": r["n_examples"],
                        "value": r["td"],
                        "chance": r["chance"],
                        "shuffled": r.get("shuffled", np.nan),
                    }
                )
            res = td_performance_correlation(at, "n_examples", "td", method="spearman")
            rows.append(
                {
                    "quantity": f"td_{method}_vs_n_examples_spearman",
                    "target": target,
                    "layer": best_layer,
                    "value": res["r"],
                    "p": res["p"],
                    "n": res["n"],
                }
            )
            best = g.loc[g["td"].idxmax()]
            rows.append(
                {
                    "quantity": f"td_{method}_max",
                    "target": target,
                    "layer": best["layer"],
                    "n_examples": best["n_examples"],
                    "value": best["td"],
                    "chance": best["chance"],
                    "shuffled": best.get("shuffled", np.nan),
                }
            )
    at_top = groups[groups["n_examples"] == top]
    w = at_top["n"] / at_top["n"].sum()
    for col in [c for c in groups.columns if c == "performance" or c.startswith("perf_")]:
        name = "model" if col == "performance" else col.removeprefix("perf_")
        rows.append(
            {
                "quantity": f"icl_performance_{name}",
                "n_examples": top,
                "value": float((at_top[col] * w).sum()),
                "note": "1 - loss / context-free loss",
            }
        )
    for _, r in correlation.iterrows():
        rows.append(
            {
                "quantity": f"td_{r.get('y', 'performance')}_r[{r['over']}]",
                "layer": r.get("layer"),
                "n_examples": r.get("n_examples", np.nan),
                "value": r["r"],
                "p": r["p"],
                "n": r["n"],
                "note": r.get("method", "pearson"),
            }
        )
    if dynamics is not None and not dynamics.empty:
        d = dynamics[
            (dynamics["n_examples"] == dynamics["n_examples"].max())
            & (dynamics["layer"] == best_layer)
            & (dynamics["method"] == "knn")
        ].sort_values("step")
        first, last = d.iloc[0], d.iloc[-1]
        n_dyn = int(d["n_examples"].iloc[0])
        for tag, r in (("first", first), ("last", last)):
            rows.append(
                {
                    "quantity": f"td_{tag}_checkpoint",
                    "layer": best_layer,
                    "n_examples": n_dyn,
                    "value": r["td"],
                    "chance": r["chance"],
                    "note": f"step {int(r['step'])}",
                }
            )
            rows.append(
                {
                    "quantity": f"icl_loss_{tag}_checkpoint",
                    "value": r["icl_loss"],
                    "note": f"step {int(r['step'])}",
                }
            )
        res = td_performance_correlation(d, "td", "icl_loss")
        rows.append(
            {
                "quantity": "td_vs_icl_loss_over_checkpoints_r",
                "layer": best_layer,
                "n_examples": n_dyn,
                "value": res["r"],
                "p": res["p"],
                "n": res["n"],
            }
        )
    if emergence is not None and not emergence.empty:
        e = emergence[emergence["layer"] == best_layer].iloc[0]
        for col in ("td_half_step", "loss_half_step"):
            rows.append(
                {
                    "quantity": col,
                    "layer": best_layer,
                    "n_examples": e["n_examples"],
                    "value": e[col],
                }
            )
    if finetune is not None and not finetune.empty:
        s = finetune_summary(finetune)
        start = finetune[finetune["variant"] == "start"]
        start = start[start["n_examples"] == start["n_examples"].max()]
        note = f"from step {int(finetune['start_step'].iloc[0])}, {int(finetune['ft_steps'].iloc[0])} steps"
        rows.append(
            {
                "quantity": "finetune_start_td_mean_over_layers",
                "value": start["td"].mean(),
                "note": note,
            }
        )
        rows.append({"quantity": "finetune_start_icl_loss", "value": start["icl_loss"].iloc[0]})
        for _, r in s.iterrows():
            v = r["variant"]
            blocks = finetune.loc[finetune["variant"] == v, "blocks"].iloc[0]
            for col in ("d_td", "td", "icl_loss", "d_icl_loss"):
                rows.append(
                    {
                        "quantity": f"finetune_{v}_{col}"
                        + ("_mean_over_layers" if "td" in col else ""),
                        "value": r[f"{col}_mean"],
                        "n": r[f"{col}_count"],
                        "note": f"blocks {blocks}; sd over seeds {r[f'{col}_std']:.3g}",
                    }
                )
    return pd.DataFrame(rows)


def decode_targets(args: argparse.Namespace, family: TaskFamily) -> list[tuple[Label, str]]:
    """``(label, split)`` pairs to decode, from ``--decode LABEL:SPLIT ...`` or the defaults:
    for concept families the concepts of the major tasks (the primary target) and of fresh
    OOD tasks; otherwise the identities of the major tasks."""
    if args.decode:
        targets = []
        for item in args.decode:
            label, sep, split = item.partition(":")
            if not sep or label not in ("task", "concept") or split not in SPLITS:
                raise ValueError(
                    f"--decode {item!r} must look like LABEL:SPLIT with LABEL task or concept "
                    f"and SPLIT one of {SPLITS}, e.g. concept:ood."
                )
            targets.append((label, split))
        return targets  # type: ignore[return-value]
    return family.decoding_targets()  # type: ignore[return-value]


def run(args: argparse.Namespace) -> int:
    t0 = time.time()
    config = experiment_config(args)
    out: Path = args.out or Path("runs") / f"decodability_{config.family.name}"
    fam0 = make_family(config.family)
    targets = decode_targets(args, fam0)
    sizes = {t: args.n_per_class * n_label_classes(fam0, *t) for t in targets}
    for (label, split), n in sizes.items():
        labels_for(fam0, fam0.sample(split, 1), label)  # fails early on an impossible target
        if args.n_per_class < 2 or n <= args.knn_k:
            raise ValueError(
                f"--n-per-class {args.n_per_class} gives {n} prompts, too few for leave-one-out "
                f"kNN with k={args.knn_k} and a stratified probe split; use --n-per-class >= "
                f"{max(2, args.knn_k // 2 + 1)} (the paper uses {DEFAULT_PER_CLASS})."
            )
    run_ = train_or_reuse(config, out)
    family, model = run_.family, run_.model
    t_train = time.time() - t0
    top = max_examples(family)
    torch.manual_seed(0)
    primary = targets[0]
    ev = {"label": primary[0], "split": primary[1], "n": sizes[primary], "k": args.knn_k}

    # 1. TD per layer × number of examples, final checkpoint, for every target
    n_examples = (
        list(range(top + 1))
        if top <= 24
        else sorted({0, *np.unique(np.round(np.geomspace(1, top, 16)).astype(int)).tolist()})
    )
    frames, reps = [], None
    for label, split in targets:
        r = collect_representations(
            model, family, label=label, split=split, n=sizes[(label, split)], n_examples=n_examples
        )
        reps = reps or r  # the primary target's prompts feed the per-class scores
        df = r.decode(k=args.knn_k, shuffled=True, progress=True)
        df.insert(0, "split", split)
        df.insert(0, "label", label)
        frames.append(df)
    td = pd.concat(frames, ignore_index=True)
    td.insert(0, "step", run_.step)
    main_td = td[(td["label"] == primary[0]) & (td["split"] == primary[1])]
    knn_top = main_td[(main_td["method"] == "knn") & (main_td["n_examples"] == top)]
    best_layer = int(knn_top.loc[knn_top["td"].idxmax(), "layer"])

    # 2. TD vs ICL performance per class × number of examples, at the best layer
    groups = group_scores(reps, model, family, layer=best_layer, k=args.knn_k)
    correlation = correlations(groups, top)

    # 3. dynamics over checkpoints
    dynamics = emergence = None
    if not args.skip_dynamics:
        dyn_n = sorted({0, top // 4, top // 2, top})
        dynamics = decodability_dynamics(out, n_examples=dyn_n, **ev)
        em = emergence_correlation(dynamics)
        em = em.assign(method="pearson", y="icl_performance")
        correlation = pd.concat([correlation, em], ignore_index=True)
        emergence = emergence_steps(dynamics)

    # 4. early vs late fine-tuning from an early checkpoint, same budget
    finetune = None
    if not args.skip_finetune:
        start = nearest_step(list_checkpoints(out), args.ft_from * config.train.steps)
        finetune = compare_finetuning(
            out,
            step=start,
            n_layers=args.ft_layers,
            steps=args.ft_steps or max(1, config.train.steps // 10),
            seeds=tuple(range(args.ft_seeds)),
            n_examples=sorted({top // 2, top}),
            **ev,
        )

    analyses = {
        "decodability": td,
        "decodability_groups": groups,
        "decodability_correlation": correlation,
    }
    if dynamics is not None:
        analyses["decodability_dynamics"] = dynamics
        analyses["decodability_emergence"] = emergence
    if finetune is not None:
        analyses["decodability_finetune"] = finetune
    for name, df in analyses.items():
        save_analysis(df, out / "analyses", name)
    write_figures(analyses, out / "figures")
    results = headline(td, groups, correlation, dynamics, emergence, finetune, best_layer)
    wall = time.time() - t0
    timing = pd.DataFrame(
        [
            {"quantity": "wall_seconds_total", "value": wall},
            {"quantity": "wall_seconds_training", "value": t_train},
            {"quantity": "torch_threads", "value": torch.get_num_threads()},
        ]
    )
    results = pd.concat([results, timing], ignore_index=True)
    save_csv(out / "results.csv", results)
    with pd.option_context("display.max_rows", 300, "display.width", 200):
        print(results.to_string(index=False, float_format=lambda x: f"{x:.4g}", na_rep=""))
    print(f"results: {out / 'results.csv'}  figures: {out / 'figures'}  ({wall:.0f} s)")
    return 0
