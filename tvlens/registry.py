"""The one registry of analyses: each maps to its driver, options, tables, figures, headline.

Every kind of run goes through it: a trained synthetic :class:`~tvlens.models.Run`
(``kind = "trained"``) and a pretrained model's :class:`~tvlens.llm.LLMRun` (``kind =
"llm"``). An analysis is one module holding

* its options, one frozen dataclass (:class:`tvlens.options.Options`), from which the
  keyword arguments, their validation, the ``tvlens llm`` flags and the recorded config are
  generated, and
* its driver, a function ``body(run, options, progress) -> {table: DataFrame}`` wrapped by
  :func:`driver`, which makes it ``analyse(run, out_dir=None, *, save=True, progress=False,
  **options)`` and writes every table through :mod:`tvlens.io` with a provenance record
  (where the run came from, the analysis and its options);

plus its entry here (or a :func:`register` call in the module, for a plug-in) and its figure
module, whose ``FIGURES[table]`` draw the CSVs and never run a model. ``tvlens demo`` runs
:data:`DEMO` and ``tvlens llm`` runs :data:`LLM` through :func:`run_analyses`; a sweep
reads an entry's ``headline`` for its ``results.csv`` row; the report draws one section per
figure module in :func:`figure_modules` order.

Entries name modules as strings and import them on use, so reading the registry (the
report, ``tvlens --help``) imports no model code. Entries without a driver are tables that a
command writes itself (``tvlens train``'s ``metrics.csv``, an experiment's across-run
tables). Plug-ins (a module that calls :func:`register` and
:func:`tvlens.tasks.register_family`) are imported by :func:`load_plugins` from the
``TVLENS_PLUGINS`` environment variable (comma-separated module names).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # pragma: no cover
    from tvlens.options import Options

log = logging.getLogger(__name__)

Kind = Literal["trained", "llm"]
KINDS: tuple[str, ...] = ("trained", "llm")


def _import(target: str | Any) -> Any:
    """The object named ``"module:attr"`` (or ``target`` itself when it is not a string)."""
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Analysis:
    """One registry entry.

    ``driver`` is ``"module:function"`` (or the function; ``None`` for tables a command
    writes itself); ``tables`` the CSV stems it writes under ``analyses/``; ``figures`` the
    viz modules whose ``FIGURES`` draw them; ``options`` its :class:`~tvlens.options.
    Options` class (``"module:Class"``; default: the driver's own); ``headline`` a function
    ``(tables, run) -> {column: number}`` giving the numbers a sweep puts in
    ``results.csv``; ``kind`` the run it analyses (``"trained"`` or ``"llm"``); ``across``
    a function building across-run tables from a sweep's runs (two_modes: across k).
    """

    name: str
    driver: str | Callable[..., Any] | None
    tables: tuple[str, ...]
    figures: tuple[str, ...]
    summary: str = ""
    options: str | type | None = None
    headline: str | Callable[..., Any] | None = None
    kind: Kind = "trained"
    across: str | Callable[..., Any] | None = None

    @property
    def key(self) -> str:
        """The registry key: the name, prefixed ``llm:`` for pretrained-model analyses."""
        return self.name if self.kind == "trained" else f"{self.kind}:{self.name}"

    def load_driver(self) -> Callable[..., dict[str, Any]]:
        """The driver function (imports its module)."""
        if self.driver is None:
            raise ValueError(
                f"analysis {self.name!r} has no run-level driver: its tables are written by "
                "a command (see the registry entry's summary)."
            )
        return _import(self.driver)

    def options_class(self) -> type[Options]:
        """The options dataclass (imports its module; the driver's when not named)."""
        if self.options is not None:
            return _import(self.options)
        return self.load_driver().options  # type: ignore[attr-defined]

    def headline_numbers(self, tables: Mapping[str, Any], run: Any) -> dict[str, Any]:
        """The numbers a sweep writes for this analysis (``{}`` without a headline)."""
        return dict(_import(self.headline)(tables, run)) if self.headline else {}

    def across_function(self) -> Callable[..., Any] | None:
        """The across-run summary function (``None`` without one)."""
        return _import(self.across) if self.across else None

    def figure_functions(self) -> dict[str, Callable[..., Any]]:
        """Table name -> figure function, for this analysis's tables."""
        out: dict[str, Callable[..., Any]] = {}
        for module in self.figures:
            figures = getattr(importlib.import_module(module), "FIGURES", {})
            out.update({t: fn for t, fn in figures.items() if t in self.tables})
        return out


def _entry(
    name: str,
    driver: str | None,
    tables: Iterable[str],
    figures: Iterable[str],
    summary: str,
    **more: Any,
) -> Analysis:
    return Analysis(name, driver, tuple(tables), tuple(figures), summary, **more)


#: analysis name -> entry, in report order
ANALYSES: dict[str, Analysis] = {
    a.key: a
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
            headline="tvlens.experiments.two_modes:sweep_headline",
            across="tvlens.experiments.two_modes:across_k",
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
            headline="tvlens.analyses.decodability:headline",
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
            "icl",
            "tvlens.llm.icl:analyse_icl",
            ["llm_icl"],
            ["tvlens.viz.llm"],
            "a pretrained model's ICL accuracy by task × shots",
            options="tvlens.llm.config:ICLOptions",
            headline="tvlens.llm.icl:headline",
            kind="llm",
        ),
        _entry(
            "task_vectors",
            "tvlens.llm.task_vectors:analyse_task_vectors",
            ["llm_task_vectors"],
            ["tvlens.viz.llm"],
            "Hendel et al.'s task vectors (and mean vectors) patched into zero-shot queries, "
            "by layer",
            options="tvlens.llm.config:TaskVectorOptions",
            headline="tvlens.llm.task_vectors:headline",
            kind="llm",
        ),
        _entry(
            "function_vectors",
            "tvlens.llm.function_vectors:analyse_function_vectors",
            ["llm_fv_heads", "llm_function_vectors"],
            ["tvlens.viz.llm"],
            "Todd et al.'s head indirect effects and function vectors, by layer",
            options="tvlens.llm.config:FunctionVectorOptions",
            headline="tvlens.llm.function_vectors:headline",
            kind="llm",
        ),
        _entry(
            "decodability",
            "tvlens.llm.decodability:analyse_decodability",
            ["llm_decodability", "llm_td_icl", "llm_td_correlation"],
            ["tvlens.viz.llm"],
            "task decodability by group × layer × shots and its correlation with ICL",
            options="tvlens.llm.config:DecodabilityOptions",
            headline="tvlens.llm.decodability:headline",
            kind="llm",
        ),
        _entry(
            "geometry",
            "tvlens.llm.geometry:analyse_geometry",
            ["llm_pca", "llm_mixture", "llm_simplex"],
            ["tvlens.viz.llm"],
            "PCA of query states and the simplex fit of mixed-demonstration prompts",
            options="tvlens.llm.config:GeometryOptions",
            kind="llm",
        ),
        _entry(
            "modes",
            "tvlens.llm.modes:analyse_modes",
            ["llm_modes_icl", "llm_modes_share", "llm_modes_angles", "llm_modes_ablation"],
            ["tvlens.viz.llm"],
            "known vs in-context-only tasks: learnt in context, shares of the known-task "
            "subspace, principal angles, ablation contrast",
            options="tvlens.llm.config:ModesOptions",
            headline="tvlens.llm.modes:headline",
            kind="llm",
        ),
        _entry(
            "convex_steering",
            "tvlens.llm.convex_steering:analyse_convex_steering",
            ["llm_convex_steering", "llm_steering_layers"],
            ["tvlens.viz.llm"],
            "steering with α θ_A + (1 − α) θ_B against mixed demonstrations and the output mixture",
            options="tvlens.llm.config:ConvexSteeringOptions",
            headline="tvlens.llm.convex_steering:headline",
            kind="llm",
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
#: what ``tvlens llm`` runs on a pretrained model by default, in order (decodability
#: before geometry, which reuses its query states)
LLM: tuple[str, ...] = ("icl", "task_vectors", "function_vectors", "decodability", "geometry")
#: registered LLM analyses outside the default run (``--analyses ...,modes,convex_steering``):
#: on SmolLM2 with 2 CPU cores they add minutes beyond its 10-minute budget (docs/llm.md)
LLM_OPT_IN: tuple[str, ...] = ("modes", "convex_steering")


def register(analysis: Analysis) -> Analysis:
    """Add (or replace) an entry, e.g. for a plug-in analysis; returns it."""
    if analysis.kind not in KINDS:
        raise ValueError(f"kind={analysis.kind!r}; choose one of {list(KINDS)}.")
    ANALYSES[analysis.key] = analysis
    return analysis


def get(name: str, kind: Kind = "trained") -> Analysis:
    """The entry for analysis ``name`` of runs of ``kind``, with a clear error listing the
    known ones."""
    load_plugins()
    key = name if kind == "trained" else f"{kind}:{name}"
    try:
        return ANALYSES[key]
    except KeyError:
        raise KeyError(
            f"unknown analysis {name!r} for {kind} runs; choose one of {names(kind)}."
        ) from None


def names(kind: Kind = "trained", *, with_driver: bool = True) -> list[str]:
    """The analyses of runs of ``kind`` (by default only those with a driver)."""
    load_plugins()
    return [
        a.name
        for a in ANALYSES.values()
        if a.kind == kind and (a.driver is not None or not with_driver)
    ]


def run_kind(run: Any) -> Kind:
    """``"llm"`` for an :class:`~tvlens.llm.LLMRun`, else ``"trained"``."""
    return getattr(run, "kind", "trained")


def figure_modules() -> tuple[str, ...]:
    """Every viz module the registry names, in registry order (the report's sections)."""
    return tuple(dict.fromkeys(m for a in ANALYSES.values() for m in a.figures))


def figure_functions(names: Iterable[str] | None = None) -> dict[str, Callable[..., Any]]:
    """Table name -> figure function over the trained-run analyses ``names`` (default: every
    entry of either kind)."""
    out: dict[str, Callable[..., Any]] = {}
    entries = ANALYSES.values() if names is None else [get(n) for n in names]
    for entry in entries:
        out.update(entry.figure_functions())
    return out


def run_analyses(
    run: Any,
    names: Iterable[str] | None = None,
    out_dir: Path | str | None = None,
    options: Mapping[str, Mapping[str, Any] | Options] | None = None,
    *,
    progress: bool = False,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Run the drivers of ``names`` on ``run`` (a trained Run or an LLMRun; default
    :data:`DEMO` or :data:`LLM`); returns (tables by table name, seconds by analysis).

    ``options[name]`` are that analysis's options (a mapping or its Options instance); every
    one is validated before the first analysis starts, so a typo fails at once.
    """
    kind = run_kind(run)
    names = list((DEMO if kind == "trained" else LLM) if names is None else names)
    options = dict(options or {})
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise KeyError(f"options given for {unknown}, which are not run; run {names}.")
    entries = [get(n, kind) for n in names]
    built = {a.name: a.options_class().build(options.get(a.name)) for a in entries}
    tables: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for entry in entries:
        fn = entry.load_driver()
        t0 = time.perf_counter()
        log.info("analysis: %s", entry.name)
        tables.update(fn(run, out_dir, options=built[entry.name], progress=progress))
        seconds[entry.name] = round(time.perf_counter() - t0, 1)
        if hasattr(run, "record_timing"):
            run.record_timing(entry.name, seconds[entry.name])
    return tables, seconds


# --------------------------------------------------------------------------- drivers
def driver(
    name: str, options: type[Options], kind: Kind = "trained"
) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    """Wrap ``body(run, options, progress) -> {table: DataFrame}`` as analysis ``name``'s
    driver ``analyse(run, out_dir=None, *, options=None, save=True, progress=False,
    **option_values)``.

    The wrapper validates the options (:meth:`Options.build`), runs the body, and writes
    every table to ``out_dir/<table>.csv`` (default ``RUN_DIR/analyses``) through
    :mod:`tvlens.io`, recording in ``provenance.json`` where the run came from (a
    checkpoint's step and hash, or a model's weights hash and prompt settings), the analysis
    and its options. ``save=False`` only returns the tables.
    """

    def wrap(body: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        @functools.wraps(body)
        def analyse(
            run: Any,
            out_dir: Path | str | None = None,
            *,
            options: Options | Mapping[str, Any] | None = None,
            save: bool = True,
            progress: bool = False,
            **values: Any,
        ) -> dict[str, Any]:
            if run_kind(run) != kind:
                raise TypeError(
                    f"analysis {name!r} analyses {kind} runs; got a {run_kind(run)} run "
                    f"({type(run).__name__})."
                )
            opts = options_cls.build(options, **values)
            if hasattr(run, "record"):  # an LLM run records every analysis's options
                run.record(name, opts)
            tables = dict(body(run, opts, progress) or {})
            if save and tables:
                write_tables(run, tables, out_dir, analysis=name, options=opts)
            return tables

        options_cls = options
        analyse.options = options_cls  # type: ignore[attr-defined]
        analyse.analysis = name  # type: ignore[attr-defined]
        params = [
            inspect.Parameter("run", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("out_dir", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
            *(
                inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d)
                for n, d in options_cls().to_dict().items()
            ),
            inspect.Parameter("options", inspect.Parameter.KEYWORD_ONLY, default=None),
            inspect.Parameter("save", inspect.Parameter.KEYWORD_ONLY, default=True),
            inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=False),
        ]
        analyse.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        return analyse

    return wrap


def write_tables(
    run: Any,
    tables: Mapping[str, Any],
    out_dir: Path | str | None = None,
    *,
    analysis: str,
    options: Options | None = None,
) -> list[Path]:
    """Write each table to ``out_dir/<table>.csv`` (default ``RUN_DIR/analyses``) with its
    provenance: the run's ``source``, the analysis and its options."""
    from tvlens.io import save_csv

    directory = Path(out_dir) if out_dir is not None else Path(run.dir) / "analyses"
    source = getattr(run, "source", None)
    record = {"analysis": analysis, "options": options.to_dict() if options else {}}
    paths = []
    for table, df in tables.items():
        paths.append(
            save_csv(
                directory / f"{table}.csv",
                df,
                source=source if isinstance(source, dict) else None,
                record=record,
            )
        )
        log.info("wrote %s", paths[-1])
    return paths


# --------------------------------------------------------------------------- plug-ins
_PLUGINS_LOADED: set[str] = set()


def load_plugins() -> list[str]:
    """Import the plug-in modules named in ``$TVLENS_PLUGINS`` (comma-separated), once each;
    a plug-in registers its analyses (:func:`register`) and families
    (:func:`tvlens.tasks.register_family`) when imported. Returns the modules imported now."""
    wanted = [m.strip() for m in os.environ.get("TVLENS_PLUGINS", "").split(",") if m.strip()]
    new = [m for m in wanted if m not in _PLUGINS_LOADED]
    for module in new:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ImportError(
                f"TVLENS_PLUGINS names {module!r}, which cannot be imported ({e}); fix the "
                "module name or put its folder on PYTHONPATH."
            ) from e
        _PLUGINS_LOADED.add(module)
    return new
