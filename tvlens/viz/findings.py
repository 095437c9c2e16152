"""Findings in words: the sentences each report section opens with, computed from the run.

Every number in a finding is read from the run's own tables, beside the null baseline the
analysis measured in the same run, and each claim is said to be supported or *not*
supported by the rule written next to it here; nothing is typed in by hand. The numbers
and baselines are those of :func:`tvlens.experiments.two_modes.headline` (layer chosen in
advance: the highest ID simplex R²) and :data:`tvlens.experiments.demo_modes.HEADLINES`;
where a model's loss sits between the two references is
:func:`tvlens.analyses.baselines.place` (through :func:`~tvlens.experiments.demo_modes.verdict`
for the two-modes comparison). :func:`section_findings` returns, per viz module, the
sentences of one run directory.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)


def fmt(x: float, digits: int = 3) -> str:
    """``x`` to ``digits`` significant digits (``n/a`` for a missing number)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{float(x):.{digits}g}"


@dataclass(frozen=True)
class Claim:
    """A claim read off one :data:`~tvlens.experiments.demo_modes.HEADLINES` number: it is
    supported when the number beats its named baseline in the direction ``higher``."""

    metric: str
    module: str
    higher: bool
    holds: str
    fails: str


GEOMETRY = "tvlens.viz.geometry"
STEERING = "tvlens.viz.steering"

CLAIMS: tuple[Claim, ...] = (
    Claim("ood_task_share", GEOMETRY, True,
          "OOD states vary inside the major-task subspace more than in a random subspace of "
          "the same rank",
          "OOD states vary no more inside the major-task subspace than in a random subspace "
          "of the same rank"),
    Claim("ood_minor_share", GEOMETRY, True,
          "OOD states use the minor-task span at least as much as held-out minor tasks do",
          "OOD states use the minor-task span less than held-out minor tasks do"),
    Claim("beta_posterior_corr_mixed", GEOMETRY, True,
          "where the exact posterior is still mixed, the simplex weights β follow it better "
          "than the one-hot true task does",
          "where the exact posterior is still mixed, the simplex weights β follow it no "
          "better than the one-hot true task does"),
    Claim("ablate_major", GEOMETRY, True,
          "ablating the task subspace costs major tasks more loss than ablating a random "
          "subspace of the same rank",
          "ablating the task subspace costs major tasks no more loss than a random subspace "
          "of the same rank"),
    Claim("ablate_ood", GEOMETRY, True,
          "ablating the task subspace costs OOD tasks more loss than a random subspace",
          "ablating the task subspace costs OOD tasks no more loss than a random subspace"),
    Claim("convex_kl", STEERING, False,
          "steering to Σα_k θ_k gives a prediction nearer the mixture Σα_k p_k than a vertex "
          "of the simplex is",
          "steering to Σα_k θ_k gives a prediction no nearer the mixture Σα_k p_k than a "
          "vertex of the simplex is"),
)  # fmt: skip


def claim_sentences(
    values: Mapping[str, tuple[float, float]], module: str | None = None
) -> list[str]:
    """One sentence per :data:`CLAIMS` entry (of ``module``, if given) whose number and
    baseline ``values[metric] = (value, baseline)`` are known: supported or not, and by
    which numbers."""
    from tvlens.experiments.demo_modes import HEADLINES

    heads = {h.metric: h for h in HEADLINES}
    out = []
    for c in CLAIMS:
        if (module is not None and c.module != module) or c.metric not in values:
            continue
        value, base = values[c.metric]
        if any(isinstance(v, float) and math.isnan(v) for v in (value, base)):
            continue
        h = heads[c.metric]
        holds = value > base if c.higher else value < base
        verdict = "Supported" if holds else "Not supported"
        out.append(
            f"{verdict}: {c.holds if holds else c.fails} ({h.description}: {fmt(value)} "
            f"{h.unit}; {h.baseline_name}: {fmt(base)})."
        )
    return out


def _headline_values(row: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    from tvlens.experiments.demo_modes import HEADLINES

    return {
        h.metric: (float(row[h.metric]), float(row[h.baseline]))
        for h in HEADLINES
        if h.baseline and h.metric in row and h.baseline in row
    }


def geometry_sentences(row: Mapping[str, float]) -> list[str]:
    """The layer the numbers are read at and the OOD geometry, from a headline row."""
    out = [
        f"Numbers are read at layer {int(row['best_layer'])}, the layer of highest ID simplex "
        f"R² ({fmt(row.get('id_simplex_r2'))}; chosen before looking at any OOD number)."
    ]
    if "ood_proj_r2" in row:
        out.append(
            f"OOD states: projection R² on the major-task plane {fmt(row['ood_proj_r2'])} "
            "(1: on the plane; 0 or below: the plane explains no more than their own mean), "
            f"mean principal angle to the task subspace {fmt(row.get('ood_angle_deg'))}° "
            f"(major tasks: {fmt(row.get('id_angle_deg'))}°)."
        )
    return out


def mode_statement(run_dir: Path, label: str = "The model") -> list[str]:
    """Where the run's OOD loss sits between the references
    (:func:`~tvlens.experiments.demo_modes.verdict` of its side-by-side row)."""
    from tvlens.experiments.demo_modes import side_by_side, verdict

    return [verdict(side_by_side({label: [run_dir]}))["statement"]]


def two_modes_sentences(table: pd.DataFrame) -> list[str]:
    """The demo's two models side by side (``demo_two_modes.csv``): the verdict on each
    model's mode, then each model's claims against their baselines."""
    from tvlens.experiments.demo_modes import verdict

    out = [verdict(table)["statement"]]
    for model, g in table.groupby("model", sort=False):
        g = g.set_index("metric")
        values = {m: (float(r["value"]), float(r["baseline"])) for m, r in g.iterrows()}
        claims = claim_sentences(values)
        if claims:
            out.append(f"{model}: " + " ".join(claims))
    return out


def training_sentences(metrics: pd.DataFrame) -> list[str]:
    """The final evaluation per split: the model's loss beside both references and which
    one it sits nearer (:func:`~tvlens.analyses.baselines.place`)."""
    from tvlens.analyses.baselines import READABLE_NATS, place
    from tvlens.viz.training import final_metrics

    last = final_metrics(metrics)
    need = {"loss", "loss_retrieval", "loss_learning"}
    if not need <= set(last.columns):
        return []
    out = []
    for _, r in last.iterrows():
        ret, lrn = r["loss"] - r["loss_retrieval"], r["loss"] - r["loss_learning"]
        ref = r["loss_retrieval"] - r["loss_learning"]
        margin, nearer = place(ret, lrn, ref)
        where = (
            f"the references differ by only {fmt(ref)} (< {READABLE_NATS}), so this split "
            "cannot place the model"
            if nearer == "unreadable"
            else f"nearer the {'learning' if nearer == 'learning' else 'retrieval'} reference "
            f"by {fmt(abs(margin))}"
        )
        out.append(
            f"At step {int(r['step'])}, {r['split']} sequences: loss {fmt(r['loss'])} nats, "
            f"{ret:+.3g} from the retrieval reference and {lrn:+.3g} from the learning one; "
            f"{where}."
        )
    return out


def decodability_sentences(df: pd.DataFrame) -> list[str]:
    """The best task decodability per method against its chance level."""
    if not {"method", "td", "chance", "layer", "n_examples"} <= set(df.columns):
        return []
    out = []
    for method, g in df.groupby("method", sort=False):
        best = g.loc[g["td"].idxmax()]
        above = best["td"] > best["chance"]
        out.append(
            f"{method}: task decodability peaks at {fmt(best['td'])} (layer "
            f"{int(best['layer'])}, {int(best['n_examples'])} examples) against chance "
            f"{fmt(best['chance'])}: {'above' if above else 'not above'} chance."
        )
    return out


def patching_sentences(df: pd.DataFrame) -> list[str]:
    """Where patching restores most of the clean task (fraction recovered)."""
    if "recovered" not in df.columns or df["recovered"].isna().all():
        return []
    best = df.loc[df["recovered"].idxmax()]
    where = ", ".join(f"{c} {int(best[c])}" for c in ("layer", "pos", "head") if c in df)
    return [
        f"Patching the clean run's activation at {where} restores {fmt(best['recovered'])} of "
        "the clean task (1: all of it; 0: none, the corrupted run's own level)."
    ]


def llm_sentences(tables: Mapping[str, pd.DataFrame]) -> list[str]:
    """ICL accuracy at the most shots against the majority baseline, and the best layer of
    the task vectors against zero-shot accuracy, per task."""
    out = []
    icl = tables.get("llm_icl")
    if icl is not None and {"task", "shots", "accuracy", "baseline"} <= set(icl.columns):
        top = icl[icl["shots"] == icl["shots"].max()]
        for _, r in top.iterrows():
            above = r["accuracy"] > r["baseline"]
            out.append(
                f"{r['task']}: {int(r['shots'])}-shot ICL accuracy {fmt(r['accuracy'])} vs "
                f"majority baseline {fmt(r['baseline'])} ({'above' if above else 'not above'})."
            )
    tv = tables.get("llm_task_vectors")
    if tv is not None and {"task", "layer", "condition", "accuracy"} <= set(tv.columns):
        for task, g in tv.groupby("task", sort=False):
            patched = g[g["condition"] == "task_vector"]
            zero = g[g["condition"] == "zero_shot"]["accuracy"]
            if patched.empty or zero.empty:
                continue
            best = patched.loc[patched["accuracy"].idxmax()]
            above = best["accuracy"] > zero.mean()
            out.append(
                f"{task}: the task vector patched at layer {int(best['layer'])} gives accuracy "
                f"{fmt(best['accuracy'])} vs zero-shot {fmt(zero.mean())} "
                f"({'above' if above else 'not above'})."
            )
    return out


def modes_sentences(tables: Mapping[str, pd.DataFrame]) -> list[str]:
    """Known vs in-context-only tasks: which are done in context, where their states lie
    relative to the known-task subspace (beside a random one), what its ablation costs each
    set, and whether steering with a task-vector mixture mixes or switches."""
    out = []
    icl = tables.get("llm_modes_icl")
    if icl is not None and "learnt" in icl:
        top = icl[(icl["shots"] == icl["shots"].max()) & (icl["set"] != "basis")]
        for set_, g in top.groupby("set", sort=False):
            done = g[g["learnt"].astype(bool)]["task"].tolist()
            out.append(
                f"{set_}: {len(done)} of {len(g)} tasks done in context at "
                f"{int(g['shots'].iloc[0])} shots (above majority and zero shots): "
                f"{', '.join(done) or 'none'}."
            )
    share = tables.get("llm_modes_share")
    if share is not None and not share.empty:
        s = share[share["level"] == "states"]
        cols = ["share", "random_share"] + (["shuffled_share"] if "shuffled_share" in s else [])
        by = s.groupby("set")[cols].mean()
        if {"heldout_known", "novel"} <= set(by.index):
            h, n = by.loc["heldout_known"], by.loc["novel"]
            if "shuffled_share" in by:
                out.append(
                    f"Surface control: with their labels shuffled (same tokens, no mapping) the "
                    f"held-out known prompts put {fmt(h['shuffled_share'])} and the "
                    f"in-context-only prompts {fmt(n['shuffled_share'])} in the subspace; the "
                    f"mapping's own part is {fmt(h['share'] - h['shuffled_share'])} and "
                    f"{fmt(n['share'] - n['shuffled_share'])}."
                )
            wins = (
                s.pivot_table(index="layer", columns="set", values="share")
                .eval("heldout_known > novel")
                .mean()
            )
            verdict = "Supported" if h["share"] > n["share"] else "Not supported"
            if (
                "shuffled_share" in by
                and max(
                    abs(h["share"] - h["shuffled_share"]), abs(n["share"] - n["shuffled_share"])
                )
                < 0.05
            ):
                verdict = "Not a test of the claim (the label-shuffled prompts explain the shares)"
            if "compared" in s and s["compared"].str.startswith("all (fewer").any():
                verdict = "Not testable (fewer than two tasks done in context; all compared)"
            out.append(
                f"{verdict}: held-out known tasks put {fmt(h['share'])} of their variance in "
                f"the known-task subspace (mean over layers; random subspace "
                f"{fmt(h['random_share'])}), in-context-only tasks {fmt(n['share'])} (random "
                f"{fmt(n['random_share'])}); held-out known above in-context-only at "
                f"{round(100 * wins)} % of layers. The paper's claim predicts known inside, "
                "in-context-only outside."
            )
    ab = tables.get("llm_modes_ablation")
    if ab is not None and not ab.empty:
        d = ab.groupby(["set", "condition"])["drop"].mean()
        try:
            hk, hr = d[("heldout_known", "known_subspace")], d[("heldout_known", "random_subspace")]
            nk, nr = d[("novel", "known_subspace")], d[("novel", "random_subspace")]
        except KeyError:
            pass
        else:
            verdict = "Supported" if hk - hr > nk - nr else "Not supported"
            out.append(
                f"{verdict}: ablating the known-task subspace lowers held-out known accuracy "
                f"by {fmt(hk)} (random subspace {fmt(hr)}) and in-context-only accuracy by "
                f"{fmt(nk)} (random {fmt(nr)}); the claim predicts the known tasks hurt more."
            )
    steer = tables.get("llm_convex_steering")
    if steer is not None and not steer.empty:
        from tvlens.llm.convex_steering import switch_index

        half = steer[steer["alpha"] == 0.5].set_index("condition")["p_a"]
        idx = switch_index(steer)
        if {"task_vector_mix", "output_mix"} <= set(half.index):
            kind = "a mixture" if idx < 0.15 else "closer to a switch" if idx > 0.3 else "between"
            out.append(
                f"Steering with ½ θ_A + ½ θ_B gives P(A) {fmt(half['task_vector_mix'])} against "
                f"{fmt(half['output_mix'])} for the mixture of the two outputs"
                + (
                    f" and {fmt(half['demo_mix'])} for mixed demonstrations"
                    if "demo_mix" in half
                    else ""
                )
                + f"; switch index {fmt(idx)} (0 convex, 0.5 a step): {kind}."
            )
            nv = steer[steer["alpha"] == 0.5].set_index("condition").get("p_neither")
            if nv is not None:
                lost = nv["task_vector_mix"] > nv["output_mix"] + 0.1
                out.append(
                    f"P(neither answer) at ½: {fmt(nv['task_vector_mix'])} steered vs "
                    f"{fmt(nv['output_mix'])} for the output mixture: "
                    + ("the mixed vector loses both tasks." if lost else "no excess loss.")
                )
    return out


def _read(results: Mapping[str, Path], name: str) -> pd.DataFrame | None:
    path = results.get(name)
    return pd.read_csv(path) if path is not None else None


def section_findings(run_dir: Path | str, results: Mapping[str, Path]) -> dict[str, list[str]]:
    """Viz module -> the sentences its section opens with, for the run ``run_dir`` whose
    tables are ``results`` (:func:`tvlens.viz.report.discover_results`). A finding that
    cannot be computed is logged and left out; it never stops the report."""
    run_dir = Path(run_dir)
    out: dict[str, list[str]] = {}

    def add(module: str, make: Callable[[], list[str]]) -> None:
        try:
            sentences = make()
        except Exception as e:  # noqa: BLE001 — a finding must not sink the report
            log.warning("report: no findings for %s (%s: %s)", module, type(e).__name__, e)
            return
        if sentences:
            out.setdefault(module, []).extend(sentences)

    if "metrics" in results:
        add("tvlens.viz.training", lambda: training_sentences(_read(results, "metrics")))
    if "simplex_fit" in results:
        from tvlens.experiments.demo_modes import run_headline

        try:
            row = run_headline(run_dir)
        except Exception as e:  # noqa: BLE001 — tables of another analysis set
            log.debug("no headline row for %s: %s", run_dir, e)
            row = None
        if row is not None:
            values = _headline_values(row)
            add(GEOMETRY, lambda: geometry_sentences(row))
            if "reference_gap" in results:
                add(GEOMETRY, lambda: mode_statement(run_dir))
            add(GEOMETRY, lambda: claim_sentences(values, GEOMETRY))
            add(STEERING, lambda: claim_sentences(values, STEERING))
    if "decodability" in results:
        add(
            "tvlens.viz.decodability",
            lambda: decodability_sentences(_read(results, "decodability")),
        )
    for name in ("patching_resid_pre", "patching_heads"):
        if name in results:
            add("tvlens.viz.patching", lambda n=name: patching_sentences(_read(results, n)))
    llm = {n: _read(results, n) for n in ("llm_icl", "llm_task_vectors") if n in results}
    if llm:
        add("tvlens.viz.llm", lambda: llm_sentences(llm))
    names = ("llm_modes_icl", "llm_modes_share", "llm_modes_ablation", "llm_convex_steering")
    modes = {n: _read(results, n) for n in names if n in results}
    if modes:
        add("tvlens.viz.llm", lambda: modes_sentences(modes))
    return out
