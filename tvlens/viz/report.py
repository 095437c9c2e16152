"""One self-contained, offline HTML report for a run directory.

:func:`write_report` turns ``RUN_DIR`` into ``RUN_DIR/report.html``:

* plotly's JavaScript is inlined **once** in the page head and every figure reuses it. The
  page loads nothing from the network (no CDN, no MathJax, no web fonts), so it opens
  offline, from an e-mail attachment or behind a firewall. Style and the page's error
  recorder come from ``tvlens/viz/assets`` and are inlined too;
* a summary: the run's configuration, its final loss beside the retrieval, learning and
  true-task references per split (``metrics.csv``), the headline tables an experiment or the
  demo wrote at the run's root (``results.csv``, ``summary.csv``, ``demo.json``) and a list
  of the sections this run lacks, naming the tables that would fill them;
* one section per viz module (``tvlens.viz.<area>``) that registers, in its ``FIGURES``
  dict, a CSV the run holds: ``metrics.csv`` at the run's root (training curves) and
  ``analyses/<name>.csv`` (everything else). Viz modules that are not installed are skipped.
  A figure function that raises does not stop the report: its place shows an error box
  naming the file and the exception;
* a page-level recorder that writes every JavaScript error into the ``data-js-errors``
  attribute of ``<html>`` (and a visible banner) and every non-local resource the page
  fetched into ``data-external-requests``; the browser test reads both.
"""

from __future__ import annotations

import datetime as _dt
import html
import importlib
import importlib.resources
import json
import logging
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import plotly
import plotly.graph_objects as go
import plotly.offline

from tvlens.io import read_csv, save_text
from tvlens.registry import figure_modules

log = logging.getLogger(__name__)

#: viz modules scanned for ``SECTION`` / ``FIGURES``, in report order: the figure modules of
#: the analysis registry (:func:`tvlens.registry.figure_modules`); missing ones are skipped.
VIZ_MODULES: tuple[str, ...] = figure_modules()
ANALYSES = "analyses"
METRICS = "metrics"
REPORT_NAME = "report.html"
PLOT_CONFIG = {"displaylogo": False, "responsive": True}
#: tables at the run's root shown in the summary (file -> heading), when present
ROOT_TABLES: dict[str, str] = {
    "results.csv": "Headline results",
    "summary.csv": "Model vs exact references by position band",
}
ROOT_JSON: dict[str, str] = {"demo.json": "Demo verdict"}

FigureFn = Callable[[pd.DataFrame], go.Figure]


@dataclass
class Figure:
    """One rendered item of a section: a figure's HTML or an error box."""

    name: str
    source: str
    html: str
    error: str | None = None


@dataclass
class Section:
    """A report section: one viz module's figures for the CSVs this run holds."""

    module: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    note: str | None = None
    #: the section's finding, as sentences computed from the run (tvlens.viz.findings)
    findings: list[str] = field(default_factory=list)
    #: the sub-run the section belongs to (e.g. the demo's ``learning_k10``); "" for the run
    scope: str = ""

    @property
    def anchor(self) -> str:
        name = f"{self.scope} {self.module.rsplit('.', 1)[-1]}".strip().lower()
        return "sec-" + re.sub(r"[^a-z0-9]+", "-", name)


@dataclass
class Absent:
    """A viz module whose tables this run does not hold (listed in the summary)."""

    title: str
    wanted: list[str]


def asset(name: str) -> str:
    """The text of ``tvlens/viz/assets/<name>`` (shipped as package data)."""
    return (importlib.resources.files("tvlens.viz") / "assets" / name).read_text(encoding="utf-8")


def discover_results(run_dir: Path | str) -> dict[str, Path]:
    """Result tables of a run: ``metrics`` (the root metrics.csv) and ``analyses/*.csv``."""
    run_dir = Path(run_dir)
    found: dict[str, Path] = {}
    if (run_dir / "metrics.csv").exists():
        found[METRICS] = run_dir / "metrics.csv"
    for path in sorted((run_dir / ANALYSES).glob("*.csv")):
        if path.stem in found:
            log.warning("ignoring %s: its name clashes with the run's %s", path, found[path.stem])
            continue
        found[path.stem] = path
    return found


def load_registry(module: str) -> tuple[str, dict[str, Any]] | None:
    """``(SECTION, FIGURES)`` of a viz module, or ``None`` when the module does not exist."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            log.debug("viz module %s not present; skipped", module)
            return None
        raise
    figures = getattr(mod, "FIGURES", None)
    if not isinstance(figures, dict):
        raise TypeError(f"{module} must define FIGURES: dict[str, Callable[[DataFrame], Figure]]")
    return str(getattr(mod, "SECTION", module.rsplit(".", 1)[-1].title())), figures


def _error_box(title: str, detail: str) -> str:
    return (
        f'<div class="error-box"><strong>{html.escape(title)}</strong>'
        f"<pre>{html.escape(detail)}</pre></div>"
    )


def _fig_id(module: str, name: str, index: int = 0) -> str:
    suffix = f"-{index}" if index else ""
    return "fig-" + re.sub(r"[^A-Za-z0-9_-]+", "-", f"{module.rsplit('.', 1)[-1]}-{name}{suffix}")


def render_figure(
    module: str, name: str, path: Path, fn: FigureFn, rel: str, index: int = 0
) -> Figure:
    """Run one figure function on its CSV; any failure becomes an error box, not a crash."""
    try:
        df = read_csv(path)
        fig = fn(df)
        if not isinstance(fig, go.Figure):
            raise TypeError(
                f"{getattr(fn, '__name__', fn)} returned {type(fig).__name__}, not a plotly Figure"
            )
        body = fig.to_html(
            full_html=False,
            include_plotlyjs=False,
            include_mathjax=False,
            div_id=_fig_id(module, name, index),
            config=PLOT_CONFIG,
        )
        return Figure(
            name, rel, f'<div class="plot-wrap" data-csv="{html.escape(rel)}">{body}</div>'
        )
    except Exception as e:  # noqa: BLE001 — one broken analysis must not sink the report
        log.warning("report: figure for %s failed: %s: %s", rel, type(e).__name__, e)
        detail = f"{type(e).__name__}: {e}"
        return Figure(name, rel, _error_box(f"Could not draw {rel} ({module})", detail), detail)


def _csv_name(name: str) -> str:
    return "metrics.csv" if name == METRICS else f"{ANALYSES}/{name}.csv"


def build_sections(
    run_dir: Path,
    results: dict[str, Path],
    modules: Sequence[str] = VIZ_MODULES,
    scope: str = "",
) -> tuple[list[Section], set[str], list[Absent]]:
    """Sections for every registered CSV the run holds, the names rendered, and the modules
    (installed, but with none of their tables in this run) that got no section. ``scope``
    names a sub-run (its figure ids and anchors carry it, so they stay unique)."""
    sections: list[Section] = []
    used: set[str] = set()
    absent: list[Absent] = []
    for module in modules:
        try:
            registry = load_registry(module)
        except Exception as e:  # noqa: BLE001 — a broken viz module gets an error box
            log.warning("report: cannot import %s: %s: %s", module, type(e).__name__, e)
            detail = f"{type(e).__name__}: {e}"
            sec = Section(module, module)
            sec.figures.append(
                Figure("", module, _error_box(f"Cannot import {module}", detail), detail)
            )
            sections.append(sec)
            continue
        if registry is None:
            continue
        title, figures = registry
        sec = Section(module, title, scope=scope)
        for name, fns in figures.items():
            if name not in results:
                continue
            used.add(name)
            rel = results[name].relative_to(run_dir).as_posix()
            for i, fn in enumerate(fns if isinstance(fns, list | tuple) else [fns]):
                fid = f"{scope}-{name}" if scope else name
                sec.figures.append(render_figure(module, fid, results[name], fn, rel, i))
        if sec.figures:
            sections.append(sec)
        else:
            absent.append(Absent(title, [_csv_name(n) for n in figures]))
    return sections, used, absent


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out |= _flatten(value, name + ".")
        else:
            out[name] = value
    return out


def _table(df: pd.DataFrame, caption: str | None = None) -> str:
    body = df.to_html(
        index=False,
        border=0,
        classes="table",
        float_format=lambda x: f"{x:.4f}",
        na_rep="",
        escape=True,
    )
    cap = f'<p class="caption">{html.escape(caption)}</p>' if caption else ""
    return body + cap


def _plain(v: Any) -> str:
    """A setting's value as text: floats to 3 significant digits, lists item by item."""
    from tvlens.viz.findings import fmt

    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, float):
        return fmt(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_plain(x) for x in v) + "]"
    if isinstance(v, dict):
        return json.dumps(v)
    return str(v)


def _key_values(d: dict[str, Any]) -> pd.DataFrame:
    """A flat dict as a four-column (setting, value, setting, value) grid."""
    flat = _flatten(d)
    items = [(k, _plain(v)) for k, v in flat.items()]
    half = (len(items) + 1) // 2
    left, right = items[:half], items[half:] + [("", "")] * (2 * half - len(items))
    return pd.DataFrame(
        [(a, b, c, e) for (a, b), (c, e) in zip(left, right, strict=True)],
        columns=["setting", "value", "setting ", "value "],
    ).astype(str)


def _guarded(title: str, make: Callable[[], str]) -> str:
    try:
        return make()
    except Exception as e:  # noqa: BLE001 — a bad table must not sink the report
        return _error_box(title, f"{type(e).__name__}: {e}")


def _json_table(path: Path) -> pd.DataFrame:
    data = json.loads(path.read_text())
    return _key_values(data if isinstance(data, dict) else {path.stem: data})


def _root_table(path: Path, heading: str, read: Callable[[Path], pd.DataFrame]) -> str:
    return f"<h3>{html.escape(heading)}</h3>" + _table(read(path), f"source: {path.name}")


def _some(names: Sequence[str], n: int = 3) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def summary_html(run_dir: Path, results: dict[str, Path], absent: Sequence[Absent] = ()) -> str:
    """Configuration, final loss vs each reference, root-level tables, and missing sections."""
    parts = []
    cfg_path = run_dir / "config.json"
    if cfg_path.exists():

        def config() -> str:
            cfg = json.loads(cfg_path.read_text())
            return "<h3>Configuration</h3>" + _table(
                _key_values(cfg if isinstance(cfg, dict) else {"config": cfg})
            )

        parts.append(_guarded("Could not read config.json", config))
    else:
        parts.append('<p class="muted">No config.json in this run directory.</p>')
    if METRICS in results:

        def final() -> str:
            from tvlens.viz.training import final_metrics

            return "<h3>Final evaluation</h3>" + _table(
                final_metrics(pd.read_csv(results[METRICS])),
                "loss: the model's loss; loss_retrieval / loss_learning / loss_true: the exact "
                "retrieval (posterior over the training pool), learning (prior-conjugate) and "
                "true-task references; gap_*: model loss minus that reference; div_*: "
                "divergence from the model to that reference (KL in nats, squared error for "
                "regression).",
            )

        parts.append(_guarded("Could not summarise metrics.csv", final))
    roots = [(n, h, _json_table) for n, h in ROOT_JSON.items()]
    roots += [(n, h, pd.read_csv) for n, h in ROOT_TABLES.items()]
    for name, heading, read in roots:
        path = run_dir / name
        if path.exists():
            parts.append(
                _guarded(
                    f"Could not read {name}",
                    partial(_root_table, path, heading, read),
                )
            )
    if absent:
        items = "".join(
            f"<li><strong>{html.escape(a.title)}</strong>: none of "
            f"{html.escape(_some(a.wanted))}</li>"
            for a in absent
        )
        parts.append(f'<h3>Not in this run</h3><ul class="muted">{items}</ul>')
    return "\n".join(parts)


class NotAReportFolderError(ValueError):
    """The folder is not a tvlens run, sweep or LLM run, or its run cannot be loaded."""


def _found(folder: Path, n: int = 6) -> str:
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    except OSError as e:
        return f"(unreadable: {e})"
    if not names:
        return "nothing (it is empty)"
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def report_kind(run_dir: Path | str) -> str:
    """What ``run_dir`` is: ``"run"`` (a tvlens training run that :func:`load_run` accepts),
    ``"llm"`` (``config.json`` with ``"kind": "llm"``), ``"sweep"`` (``sweep.json``, or a
    ``results.csv`` beside trial/run folders) or ``"experiment"`` (``analyses/`` that tvlens
    wrote, with its ``provenance.json``). Anything else
    raises :class:`NotAReportFolderError` naming what the folder holds, before anything is
    written there."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"run directory {run_dir} does not exist; train one with `tvlens train` or "
            "`tvlens demo`, or pass an existing run directory."
        )
    refuse = f"{run_dir} is not a tvlens run, sweep or LLM run"
    cfg_path = run_dir / "config.json"
    if cfg_path.is_file():
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise NotAReportFolderError(f"{refuse}: its config.json is not JSON ({e}).") from None
        if not isinstance(cfg, dict):
            raise NotAReportFolderError(
                f"{refuse}: its config.json holds a {type(cfg).__name__}, not a run config."
            )
        kind = cfg.get("kind")
        if kind == "llm":
            return "llm"
        if kind is not None:
            raise NotAReportFolderError(
                f"{refuse}: its config.json is of kind {kind!r}; the report knows tvlens "
                "runs, sweeps and LLM runs (kind 'llm')."
            )
        if "model_type" in cfg or "architectures" in cfg:
            raise NotAReportFolderError(
                f"{refuse}: it is a Hugging Face model folder (config.json with model_type "
                f"{cfg.get('model_type')!r}). Run `tvlens llm --model {run_dir} --out RUN_DIR` "
                "and report RUN_DIR."
            )
        sections = {"family", "model", "train"}
        if not cfg or set(cfg) - sections or not all(isinstance(v, dict) for v in cfg.values()):
            raise NotAReportFolderError(
                f"{refuse}: its config.json holds {sorted(cfg)}, not a run config (sections "
                f"{sorted(sections)}). (`tvlens report` also checks that the run loads.)"
            )
        return "run"
    if (run_dir / "sweep.json").is_file():
        return "sweep"
    if (run_dir / "results.csv").is_file() and any(
        (d / "config.json").is_file() or (d / "trial.json").is_file()
        for d in run_dir.iterdir()
        if d.is_dir()
    ):
        return "sweep"
    from tvlens.io import PROVENANCE

    if (run_dir / "analyses" / PROVENANCE).is_file():
        return "experiment"  # tables tvlens wrote (an experiment's across-run analyses)
    raise NotAReportFolderError(
        f"{refuse}: it holds {_found(run_dir)}, but no tvlens config.json (a run), "
        "sweep.json (a sweep) or results.csv beside run folders (an experiment). Pass the "
        "folder that `tvlens train`, `tvlens sweep`, `tvlens experiment` or `tvlens llm` wrote."
    )


def report_path(run_dir: Path | str, out: Path | str | None = None) -> Path:
    """Where the report of ``run_dir`` goes: ``out``, or ``run_dir/report.html``; a folder
    given as ``out`` is refused with the fix."""
    path = Path(out) if out is not None else Path(run_dir) / REPORT_NAME
    if path.is_dir():
        raise IsADirectoryError(
            f"--out {path} is a folder; the report is one HTML file: pass a file name such as "
            f"{path / REPORT_NAME}."
        )
    return path


def write_report(
    run_dir: Path | str,
    out: Path | str | None = None,
    *,
    modules: Sequence[str] = VIZ_MODULES,
    attention: bool | None = None,
    title: str | None = None,
    notes: Mapping[str, str] | None = None,
) -> Path:
    """Write one self-contained offline ``report.html`` for ``run_dir`` and return its path.

    The report only reads tables: it never loads a model. ``tvlens report`` computes a
    missing attention table first (:func:`tvlens.analyses.attention.ensure_attention`).
    ``notes`` maps a viz module to a message shown at the top of its section (e.g. why a
    table could not be computed). ``attention`` is deprecated and ignored.
    """
    if attention is not None:
        warnings.warn(
            "write_report(attention=...) is deprecated and ignored: the report never runs a "
            "model; call tvlens.analyses.attention.ensure_attention(run_dir) first.",
            DeprecationWarning,
            stacklevel=2,
        )
    run_dir = Path(run_dir)
    report_kind(run_dir)  # a foreign folder is refused before anything is written
    out = report_path(run_dir, out)
    results = discover_results(run_dir)
    notes = dict(notes or {})
    roots = [n for n in ("config.json", *ROOT_TABLES, *ROOT_JSON) if (run_dir / n).exists()]
    if not results and not roots:
        raise FileNotFoundError(
            f"{run_dir} holds no config.json, metrics.csv, results.csv or analyses/*.csv; it "
            "is not a tvlens run directory."
        )
    sections, used, absent = build_sections(run_dir, results, modules)
    for sec in sections:
        sec.note = notes.pop(sec.module, None)
    for module, note in notes.items():
        sections.append(Section(module, module.rsplit(".", 1)[-1].title(), note=note))
    other = {n: p for n, p in results.items() if n not in used}
    sections = with_findings(run_dir, results, sections, modules)

    page = render_page(
        run_dir,
        results,
        sections,
        other,
        title or f"tvlens report: {run_dir.resolve().name}",
        absent,
    )
    save_text(out, page)
    n_fig = sum(f.error is None for s in sections for f in s.figures)
    n_err = sum(f.error is not None for s in sections for f in s.figures)
    log.info("wrote %s (%d figures, %d errors, %d sections)", out, n_fig, n_err, len(sections))
    return out


#: the demo's side-by-side table: drawn in its own section, first, with the verdict
TWO_MODES = "demo_two_modes"


def sub_runs(run_dir: Path) -> list[Path]:
    """Runs a tvlens command wrote inside ``run_dir`` (the demo's second model,
    ``learning_k<K>``): direct sub-folders with a ``config.json`` and result tables."""
    return [
        d
        for d in sorted(p for p in run_dir.iterdir() if p.is_dir())
        if (d / "config.json").is_file() and discover_results(d)
    ]


def _run_label(run_dir: Path, name: str) -> str:
    try:
        k = json.loads((run_dir / "config.json").read_text())["family"]["k"]
    except (OSError, ValueError, KeyError, TypeError):
        return name
    return f"{name} (k = {k}: {'no' if int(k) < 0 else 2 ** int(k)} minor tasks)"


def with_findings(
    run_dir: Path, results: dict[str, Path], sections: list[Section], modules: Sequence[str]
) -> list[Section]:
    """``sections`` opened by their findings (:func:`tvlens.viz.findings.section_findings`),
    plus, when the run holds sub-runs (the demo's second model), each sub-run's sections
    with its own findings and, first, the two models side by side with the verdict."""
    from tvlens.viz.findings import section_findings, two_modes_sentences

    found = section_findings(run_dir, results)
    for sec in sections:
        sec.findings = found.get(sec.module, [])
    subs = sub_runs(run_dir)
    if subs:
        main = _run_label(run_dir, "main model")
        for sec in sections:
            sec.title = f"{main}: {sec.title}"
    for sub in subs:
        sub_results = discover_results(sub)
        found = section_findings(sub, sub_results)
        label = _run_label(sub, sub.name)
        for sec in build_sections(sub, sub_results, modules, scope=sub.name)[0]:
            sec.title = f"{label}: {sec.title}"
            sec.findings = found.get(sec.module, [])
            for fig in sec.figures:
                fig.source = f"{sub.name}/{fig.source}"
            sections.append(sec)
    if TWO_MODES in results:
        both = Section("two_modes", "The two modes side by side")
        for sec in sections:
            both.figures += [f for f in sec.figures if f.name == TWO_MODES]
            sec.figures = [f for f in sec.figures if f.name != TWO_MODES]
        try:
            both.findings = two_modes_sentences(read_csv(results[TWO_MODES]))
        except Exception as e:  # noqa: BLE001 — a finding must not sink the report
            log.warning("report: no two-modes findings: %s: %s", type(e).__name__, e)
        sections = [both] + [s for s in sections if s.figures or s.note]
    return sections


def _inline_script(js: str) -> str:
    """``js`` safe inside ``<script>``: a literal ``</script`` would end the element early."""
    return re.sub(r"</(script)", r"<\\/\1", js, flags=re.IGNORECASE)


def render_page(
    run_dir: Path,
    results: dict[str, Path],
    sections: list[Section],
    other: dict[str, Path],
    title: str,
    absent: Sequence[Absent] = (),
) -> str:
    """The full HTML document (plotly inlined once, no external resources)."""
    toc = ['<li><a href="#summary">Summary</a></li>']
    toc += [f'<li><a href="#{s.anchor}">{html.escape(s.title)}</a></li>' for s in sections]
    if other:
        toc.append('<li><a href="#sec-other">Other results</a></li>')
    body = [
        '<section id="summary"><h2>Summary</h2>',
        summary_html(run_dir, results, absent),
        "</section>",
    ]
    for sec in sections:
        body.append(f'<section id="{sec.anchor}"><h2>{html.escape(sec.title)}</h2>')
        if sec.note:
            body.append(_error_box(sec.title, sec.note))
        if sec.findings:
            items = "".join(f"<li>{html.escape(f)}</li>" for f in sec.findings)
            body.append(f'<div class="finding"><strong>Finding</strong><ul>{items}</ul></div>')
        for fig in sec.figures:
            body.append(fig.html)
            body.append(f'<p class="source">source: {html.escape(fig.source)}</p>')
        body.append("</section>")
    if other:
        rows = []
        for path in other.values():
            try:
                df = read_csv(path)
                rows.append((path.relative_to(run_dir).as_posix(), len(df), ", ".join(df.columns)))
            except Exception as e:  # noqa: BLE001
                rows.append((path.relative_to(run_dir).as_posix(), -1, f"unreadable: {e}"))
        body.append('<section id="sec-other"><h2>Other results</h2>')
        body.append("<p>Tables no viz module registers a figure for:</p>")
        body.append(_table(pd.DataFrame(rows, columns=["file", "rows", "columns"])))
        body.append("</section>")
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="tvlens">
<title>{html.escape(title)}</title>
<script>{_inline_script(asset("report.js"))}</script>
<style>{asset("report.css")}</style>
<!-- plotly.js {plotly.__version__} (inlined once; the page loads nothing from the network) -->
<script type="text/javascript">{_inline_script(plotly.offline.get_plotlyjs())}</script>
</head>
<body>
<div id="js-errors" class="error-box" hidden></div>
<header><h1>{html.escape(title)}</h1>
<div class="meta">{html.escape(str(run_dir))} · written {now} · plotly.js inlined, works offline
</div></header>
<main>
<nav class="toc"><strong>Contents</strong><ol>{"".join(toc)}</ol></nav>
{chr(10).join(body)}
</main>
</body>
</html>
"""
