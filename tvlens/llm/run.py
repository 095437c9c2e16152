"""Run every LLM analysis on one model and write a run directory the report reads.

Layout (the same as a synthetic run's, so ``tvlens report RUN_DIR`` works on both)::

    RUN_DIR/config.json                 model, settings, library versions
    RUN_DIR/analyses/llm_icl.csv        ICL accuracy by task × shots
    RUN_DIR/analyses/llm_task_vectors.csv       Hendel task vectors: accuracy by layer
    RUN_DIR/analyses/llm_fv_heads.csv           indirect effect of every head
    RUN_DIR/analyses/llm_function_vectors.csv   function vector: accuracy by layer
    RUN_DIR/analyses/llm_decodability.csv       TD by group × method × layer × shots
    RUN_DIR/analyses/llm_td_icl.csv             per-task TD beside ICL accuracy
    RUN_DIR/analyses/llm_td_correlation.csv     TD–ICL correlation by group × layer
    RUN_DIR/analyses/llm_pca.csv                PCA of last-token states by task
    RUN_DIR/analyses/llm_mixture.csv            simplex weights of mixed-task prompts
    RUN_DIR/analyses/llm_simplex.csv            simplex / subspace R² by split
    RUN_DIR/function_vectors.safetensors        one function vector per task

``config.json`` also records the wall time of each analysis (``timings_s``), which the
README's measured results and ``benchmarks/llm.py`` quote.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pandas as pd

from tvlens.llm.config import LLMConfig, resolve_template
from tvlens.llm.decodability import (
    decodability_by_shots,
    td_icl_correlation,
    td_icl_table,
)
from tvlens.llm.function_vectors import function_vector_analysis
from tvlens.llm.geometry import mixture_geometry, pca_table
from tvlens.llm.icl import icl_accuracy
from tvlens.llm.task_vectors import task_vector_sweep
from tvlens.llm.tasks import load_tasks, task_groups
from tvlens.models.checkpoint import atomic_write_text

log = logging.getLogger(__name__)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("tvlens", "transformer-lens", "transformers", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "?"
    return out


def save_table(df: pd.DataFrame, run_dir: Path, name: str) -> Path:
    """Write ``df`` to ``run_dir/analyses/<name>.csv`` atomically."""
    path = Path(run_dir) / "analyses" / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, df.to_csv(index=False))
    return path


def run_llm(
    model: Any,
    run_dir: str | Path,
    config: LLMConfig | None = None,
    model_name: str = "?",
    progress: bool = False,
) -> dict[str, pd.DataFrame]:
    """Run the analyses in ``config.analyses`` on ``model`` (a bridge from
    :func:`tvlens.llm.load`) and write ``run_dir``; returns the tables by CSV name.

    Earlier ``llm_*`` tables in ``run_dir`` are removed first, so the directory only holds
    this run's results.
    """
    cfg = config or LLMConfig()
    cfg = dataclasses.replace(cfg, template=resolve_template(cfg.template, model_name))
    run_dir = Path(run_dir)
    tasks = load_tasks(cfg.tasks)  # validate every input before anything is deleted
    if {"decodability", "geometry"} & set(cfg.analyses):
        load_tasks(cfg.td_tasks)
    run_dir.mkdir(parents=True, exist_ok=True)
    stale = [*(run_dir / "analyses").glob("llm_*.csv"), run_dir / "function_vectors.safetensors"]
    for path in stale:  # a rerun must not leave tables of analyses it did not redo
        path.unlink(missing_ok=True)
    meta = {
        "kind": "llm",
        "model": {
            "name": model_name,
            "n_layers": int(model.cfg.n_layers),
            "n_heads": int(model.cfg.n_heads),
            "d_model": int(model.cfg.d_model),
            "dtype": str(getattr(model.cfg, "dtype", "?")),
            "device": str(getattr(model.cfg, "device", "?")),
        },
        "llm": cfg.to_dict(),
        "versions": _versions(),
    }
    timings: dict[str, float] = {}
    meta["timings_s"] = timings

    def write_meta() -> None:
        text = json.dumps(meta, indent=2, default=str) + "\n"
        atomic_write_text(run_dir / "config.json", text)

    write_meta()
    common = {"template": cfg.template, "seed": cfg.seed, "batch_size": cfg.batch_size}
    tables: dict[str, pd.DataFrame] = {}
    layers = list(cfg.layers) if cfg.layers is not None else None

    def keep(name: str, df: pd.DataFrame) -> None:
        tables[name] = df
        log.info("wrote %s", save_table(df, run_dir, name))

    clock = [time.perf_counter()]

    def lap(stage: str) -> None:
        now = time.perf_counter()
        timings[stage] = round(now - clock[0], 2)
        clock[0] = now
        log.info("%s took %.1f s", stage, timings[stage])
        write_meta()

    if "icl" in cfg.analyses:
        keep(
            "llm_icl",
            icl_accuracy(
                model,
                tasks,
                cfg.icl_shots,
                cfg.n_prompts,
                mode=cfg.mode,
                progress=progress,
                **common,
            ),
        )
        lap("icl")
    if "task_vectors" in cfg.analyses:
        frames = [
            task_vector_sweep(
                model,
                t,
                layers,
                cfg.tv_shots,
                cfg.n_prompts,
                mode=cfg.mode,
                point=cfg.point,
                progress=progress,
                **common,
            )
            for t in tasks
        ]
        keep("llm_task_vectors", pd.concat(frames, ignore_index=True))
        lap("task_vectors")
    if "function_vectors" in cfg.analyses:
        heads, sweeps, vectors = [], [], {}
        for t in tasks:
            res = function_vector_analysis(
                model,
                t,
                k_heads=cfg.k_heads,
                shots=cfg.fv_shots,
                n_mean=cfg.n_prompts,
                n_ie=cfg.n_ie,
                n_eval=cfg.n_prompts,
                layers=layers,
                mode=cfg.mode,
                point=cfg.point,
                progress=progress,
                **common,
            )
            heads.append(res.heads)
            sweeps.append(res.sweep)
            vectors[t.name] = res.vector.float().contiguous()
        keep("llm_fv_heads", pd.concat(heads, ignore_index=True))
        keep("llm_function_vectors", pd.concat(sweeps, ignore_index=True))
        from safetensors.torch import save_file

        save_file(vectors, str(run_dir / "function_vectors.safetensors"))
        lap("function_vectors")
    if "decodability" in cfg.analyses or "geometry" in cfg.analyses:
        tables |= _decodability_and_geometry(model, run_dir, cfg, layers, progress, keep)
        lap("+".join(a for a in ("decodability", "geometry") if a in cfg.analyses))
    return tables


def _decodability_and_geometry(
    model: Any,
    run_dir: Path,
    cfg: LLMConfig,
    layers: Sequence[int] | None,
    progress: bool,
    keep: Any,
) -> dict[str, pd.DataFrame]:
    groups = task_groups(load_tasks(cfg.td_tasks))
    if not groups:
        raise ValueError(
            f"td_tasks={cfg.td_tasks!r} gives no group of two or more tasks of one family; "
            "pass e.g. 'pos,null' or 'bitwise'."
        )
    with_td = "decodability" in cfg.analyses
    with_geo = "geometry" in cfg.analyses
    geo_shots = max(cfg.td_shots) if with_td else max(cfg.td_shots[-1], 1)
    td, per, icl, pca, mix, simplex = [], [], [], [], [], []
    for group, members in groups.items():
        res = decodability_by_shots(
            model,
            members,
            cfg.td_shots if with_td else (geo_shots,),
            cfg.n_td,
            layers,
            cfg.template,
            cfg.seed,
            cfg.point,
            mode=cfg.mode,
            batch_size=cfg.batch_size,
            keep_states=(geo_shots,) if with_geo else (),
            group=group,
            progress=progress,
        )
        td.append(res.td)
        per.append(res.per_task)
        icl.append(res.icl)
        if with_geo:
            states = res.states[geo_shots]
            names = [t.name for t in res.tasks]
            pca.append(pca_table(states, res.labels, names, res.layers, group=group))
            m, s = mixture_geometry(
                model,
                res.tasks,
                states,
                res.labels,
                res.layers,
                geo_shots,
                n_prompts=cfg.n_mixture,
                template=cfg.template,
                seed=cfg.seed,
                point=cfg.point,
                batch_size=cfg.batch_size,
                group=group,
            )
            mix.append(m)
            simplex.append(s)
    out: dict[str, pd.DataFrame] = {}
    if with_td:
        table = td_icl_table(pd.concat(per, ignore_index=True), pd.concat(icl, ignore_index=True))
        for name, df in (
            ("llm_decodability", pd.concat(td, ignore_index=True)),
            ("llm_td_icl", table),
            ("llm_td_correlation", td_icl_correlation(table)),
        ):
            keep(name, df)
            out[name] = df
    if with_geo:
        for name, df in (
            ("llm_pca", pd.concat(pca, ignore_index=True)),
            ("llm_mixture", pd.concat(mix, ignore_index=True)),
            ("llm_simplex", pd.concat(simplex, ignore_index=True)),
        ):
            keep(name, df)
            out[name] = df
    return out


def summary(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One line per headline number of a run (for the CLI)."""
    rows = []
    if "llm_icl" in tables:
        for r in tables["llm_icl"].itertuples():
            rows.append((f"ICL {r.task} {r.shots}-shot", r.accuracy))
    for name, cond in (
        ("llm_task_vectors", "task_vector"),
        ("llm_task_vectors", "mean_task_vector"),
        ("llm_function_vectors", "function_vector"),
    ):
        if name in tables:
            d = tables[name]
            for task, g in d[d["condition"] == cond].groupby("task"):
                best = g.loc[g["accuracy"].idxmax()]
                rows.append((f"{cond} {task} best layer {int(best['layer'])}", best["accuracy"]))
    if "llm_decodability" in tables:
        d = tables["llm_decodability"]
        d = d[(d["method"] == "knn") & (d["n_examples"] == d["n_examples"].max())]
        for group, g in d.groupby("group"):
            best = g.loc[g["td"].idxmax()]
            rows.append(
                (
                    f"TD {group} ({int(best['n_examples'])} shots) peak layer "
                    f"{int(best['layer'])} (chance {best['chance']:.2f})",
                    best["td"],
                )
            )
    return pd.DataFrame(rows, columns=["measure", "value"])
