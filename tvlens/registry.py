"""The one registry of analyses: each maps to its driver, the tables it writes, its figures.

An analysis ``NAME`` is ``tvlens/analyses/NAME.py``: pure functions returning DataFrames
plus one run-level driver with one signature,

    analyse_NAME(run, out_dir=None, *, seed=..., **options) -> dict[str, DataFrame]

that writes every table it returns to ``out_dir/<table>.csv`` (default
``RUN_DIR/analyses``). Its figures are ``FIGURES[<table>]`` of the viz modules named here,
which draw those CSVs and never run a model. ``tvlens demo`` runs :data:`DEMO` through
:func:`run_analyses`; the experiments write their figures with :func:`figure_functions`; the
report draws one section per viz module in :func:`figure_modules` order. Adding an analysis
is its module, its entry here, and its tests.

Entries name modules as strings and import them on use, so reading the registry (the
report, ``tvlens --help``) imports no model code. Entries without a driver are tables that a
command writes itself (``tvlens train``'s ``metrics.csv``, an experiment's across-run tables,
``tvlens llm``'s ``llm_*.csv``).
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Analysis:
    """One registry entry: ``driver`` (``"module:function"`` or ``None``), the CSV stems it
    writes under ``analyses/``, and the viz modules whose ``FIGURES`` draw them."""

    name: str
    driver: str | None
    tables: tuple[str, ...]
    figures: tuple[str, ...]
    summary: str = ""

    def load_driver(self) -> Callable[..., dict[str, Any]]:
        """The driver function (imports its module)."""
        if self.driver is None:
            raise ValueError(
                f"analysis {self.name!r} has no run-level driver: its tables are written by "
                "a command (see the registry entry's summary)."
            )
        module, fn = self.driver.split(":")
        return getattr(importlib.import_module(module), fn)

    def figure_functions(self) -> dict[str, Callable[..., Any]]:
        """Table name -> figure function, for this analysis's tables."""
        out: dict[str, Callable[..., Any]] = {}
        for module in self.figures:
            figures = getattr(importlib.import_module(module), "FIGURES", {})
            out.update({t: fn for t, fn in figures.items() if t in self.tables})
        return out


def _entry(
    name: str, driver: str | None, tables: Iterable[str], figures: Iterable[str], summary: str
) -> Analysis:
    return Analysis(name, driver, tuple(tables), tuple(figures), summary)


#: analysis name -> entry, in report order
ANALYSES: dict[str, Analysis] = {
    a.name: a
    for a in (
        _entry(
            "training",
            None,
            ["metrics"],
            ["tvlens.viz.training"],
            "loss and the exact references over training (written by tvlens train)",
        ),
        _entry(
            "two_modes",
            "tvlens.analyses.two_modes:analyse_two_modes",
            [
                "task_vectors",
                "anova_r2",
                "simplex_fit",
                "alignment",
                "alignment_summary",
                "alignment_baselines",
                "subspace_share",
                "reference_gap",
                "beta_posterior",
                "principal_angles",
                "geometry_points",
                "ablation",
                "modes",
                "geometry_training",
                "steering",
                "convexity",
                "paper_ood_r2",
                "paper_anova",
            ],
            ["tvlens.viz.geometry", "tvlens.viz.steering", "tvlens.viz.paper"],
            "task vectors, simplex geometry, posterior alignment, ablation, steering, modes",
        ),
        _entry(
            "two_modes_sweep",
            None,
            [
                "results",
                "ood_r2_vs_k",
                "mode_heatmap",
                "ablation_vs_k",
                "convexity_vs_k",
                "paper_ood_r2_vs_k",
            ],
            ["tvlens.viz.geometry", "tvlens.viz.steering", "tvlens.viz.paper"],
            "across-k tables of tvlens experiment two-modes",
        ),
        _entry(
            "demo",
            None,
            ["demo_two_modes"],
            ["tvlens.viz.paper"],
            "the demo's retrieval and learning models side by side (written by tvlens demo)",
        ),
        _entry(
            "probes",
            "tvlens.analyses.probes:analyse_probes",
            ["probes", "probe_angles"],
            ["tvlens.viz.paper"],
            "linear probes for the learning reference's sufficient statistics, in and off "
            "the task subspace",
        ),
        _entry(
            "decodability",
            "tvlens.analyses.decodability:analyse_decodability",
            ["decodability"],
            ["tvlens.viz.decodability"],
            "task decodability per layer × number of examples",
        ),
        _entry(
            "dynamics",
            "tvlens.analyses.dynamics:analyse_dynamics",
            ["decodability_dynamics"],
            ["tvlens.viz.decodability"],
            "decodability and ICL loss over the run's checkpoints",
        ),
        _entry(
            "decodability_experiment",
            None,
            [
                "decodability_groups",
                "decodability_correlation",
                "decodability_finetune",
                "decodability_emergence",
            ],
            ["tvlens.viz.decodability"],
            "tables of tvlens experiment decodability (correlations, fine-tuning)",
        ),
        _entry(
            "patching",
            "tvlens.analyses.patching:analyse_patching",
            ["patching_resid_pre", "patching_heads"],
            ["tvlens.viz.patching"],
            "denoising activation patching by layer × position and layer × head",
        ),
        _entry(
            "llm",
            None,
            [
                "llm_icl",
                "llm_task_vectors",
                "llm_function_vectors",
                "llm_fv_heads",
                "llm_decodability",
                "llm_td_icl",
                "llm_td_correlation",
                "llm_pca",
                "llm_mixture",
                "llm_simplex",
            ],
            ["tvlens.viz.llm"],
            "pretrained-model analyses (written by tvlens llm)",
        ),
        _entry(
            "attention",
            "tvlens.analyses.attention:analyse_attention",
            ["attention"],
            ["tvlens.viz.attention"],
            "attention patterns of the chosen heads on one sequence",
        ),
    )
}

#: what ``tvlens demo`` runs on its trained model, in order
DEMO: tuple[str, ...] = ("two_modes", "patching", "decodability", "dynamics", "attention")


def register(analysis: Analysis) -> None:
    """Add (or replace) an entry, e.g. for a plug-in analysis."""
    ANALYSES[analysis.name] = analysis


def get(name: str) -> Analysis:
    """The entry for ``name``, with a clear error listing the known ones."""
    try:
        return ANALYSES[name]
    except KeyError:
        raise KeyError(f"unknown analysis {name!r}; choose one of {sorted(ANALYSES)}.") from None


def figure_modules() -> tuple[str, ...]:
    """Every viz module the registry names, in registry order (the report's sections)."""
    return tuple(dict.fromkeys(m for a in ANALYSES.values() for m in a.figures))


def figure_functions(names: Iterable[str] | None = None) -> dict[str, Callable[..., Any]]:
    """Table name -> figure function over the analyses ``names`` (default: all)."""
    out: dict[str, Callable[..., Any]] = {}
    for name in ANALYSES if names is None else names:
        out.update(get(name).figure_functions())
    return out


def run_analyses(
    run: Any,
    names: Iterable[str] = DEMO,
    out_dir: Path | str | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Run the drivers of ``names`` on ``run``; returns (tables by table name, seconds by
    analysis). ``options[name]`` are keyword arguments for that driver."""
    options = options or {}
    tables: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for name in names:
        driver = get(name).load_driver()
        t0 = time.perf_counter()
        log.info("analysis: %s", name)
        tables.update(driver(run, out_dir, **dict(options.get(name, {}))))
        seconds[name] = round(time.perf_counter() - t0, 1)
    return tables, seconds
