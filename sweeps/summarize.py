"""Print the README tables of finished sweeps (``tvlens sweep CONFIG --out DIR``).

Usage::

    python sweeps/summarize.py runs/sweep_markov [runs/sweep_linreg ...]
    python sweeps/summarize.py --png docs/figures runs/sweep_markov   # + README figures

For each sweep directory: the two-modes headline numbers by k (tvlens's definitions beside
the reference code's, ``results.csv``), the sufficient-statistic probes by k (every trial's
``analyses/probes.csv`` and ``probe_angles.csv``), and for a sweep without two-modes
analyses (the Raventós sweep) the final model loss beside both references on major-task and
OOD sequences (each trial's ``metrics.csv``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from tvlens.io import read_csv, to_markdown

#: results.csv column -> README label
HEADLINE = {
    "best_layer": "best layer",
    "id_simplex_r2": "ID simplex R²",
    "ood_proj_r2": "OOD plane R² (tvlens)",
    "ood_r2_paper": "OOD R² (paper)",
    "anova_task_vector_r2_paper": "ANOVA R² (paper)",
    "anova_separability_paper": "separability (paper)",
    "mode_log_ratio_major": "mode log ratio, major",
    "mode_log_ratio_ood": "mode log ratio, OOD",
    "ablate_major": "ablation Δ major",
    "ablate_ood": "ablation Δ OOD",
    "convex_kl": "convex KL",
    "gap_learning_ood": "OOD − learning",
    "gap_retrieval_ood": "OOD − retrieval",
}


def md(df: pd.DataFrame) -> str:
    return to_markdown(df, digits=3)


def trials(sweep: Path) -> pd.DataFrame:
    """One row per finished trial: its axes and headline numbers (from ``trial.json``, so a
    sweep still running can be summarised too)."""
    rows = []
    for path in sorted(sweep.glob("*/trial.json")):
        rec = json.loads(path.read_text())
        if rec.get("status") == "done":
            rows.append({k: v for k, v in rec.items() if not isinstance(v, dict | list)}
                        | (rec.get("headline") or {}))  # fmt: skip
    return pd.DataFrame(rows).sort_values([c for c in ("n_major", "k") if rows and c in rows[0]])


def headline(sweep: Path) -> str | None:
    res = trials(sweep)
    if res.empty:
        return None
    cols = [c for c in HEADLINE if c in res.columns]
    if len(cols) <= 1:
        return None
    keys = [c for c in ("n_major", "k") if c in res.columns and res[c].nunique() > 1] or ["k"]
    return md(res[keys + cols].rename(columns=HEADLINE))


def probes(sweep: Path) -> str | None:
    rows = []
    for trial in sorted(p for p in sweep.iterdir() if (p / "analyses" / "probes.csv").exists()):
        pr = read_csv(trial / "analyses" / "probes.csv")
        ang = read_csv(trial / "analyses" / "probe_angles.csv")
        k = int(pr["k"].iloc[0])
        for split, g in pr.groupby("split"):
            row = {"k": k, "split": split}
            for view, gv in g.groupby("view"):
                row[view] = float(gv.groupby("layer")["r2"].mean().max())
            a = ang[ang["split"] == split] if "split" in ang.columns else ang
            row["angle (°)"] = (
                float(a["angle_deg"].mean()) if "angle_deg" in a.columns else float("nan")
            )
            rows.append(row)
    if not rows:
        return None
    return md(pd.DataFrame(rows).sort_values(["split", "k"]))


def references(sweep: Path) -> str | None:
    rows = []
    for trial in sorted(p for p in sweep.iterdir() if (p / "metrics.csv").exists()):
        m = read_csv(trial / "metrics.csv")
        last = m[m["step"] == m["step"].max()]
        rec = (
            json.loads((trial / "trial.json").read_text())
            if (trial / "trial.json").exists()
            else {}
        )
        row = {"trial": trial.name, **{k: rec[k] for k in ("n_major", "k") if k in rec}}
        for split, g in last.groupby("split"):
            for col, label in (("loss", "model"), ("loss_retrieval", "retrieval"),
                               ("loss_learning", "learning")):  # fmt: skip
                if col in g.columns:
                    row[f"{split} {label}"] = float(g[col].mean())
        rows.append(row)
    if not rows:
        return None
    df = pd.DataFrame(rows)
    return md(df.sort_values([c for c in ("n_major", "k") if c in df.columns]))


#: across-k figures of a two-modes sweep drawn for the README (``--png``)
README_FIGURES = ("paper_ood_r2_vs_k", "ood_r2_vs_k", "mode_heatmap")


def png(sweep: Path, out_dir: Path, width: int = 1000, height: int = 480) -> list[Path]:
    """Screenshots of the sweep's own figure pages (``DIR/figures/*.html``) by headless
    Chromium, as ``out_dir/<sweep>_<figure>.png``."""
    from tvlens.viz.common import screenshot

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in README_FIGURES:
        page = sweep / "figures" / f"{name}.html"
        if page.is_file():
            written.append(screenshot(page, out_dir / f"{sweep.name}_{name}.png", width, height))
            print(f"wrote {written[-1]}")
    return written


def main(argv: list[str]) -> int:
    out_png = None
    if argv[:1] == ["--png"]:
        out_png, argv = Path(argv[1]), argv[2:]
    for arg in argv:
        if out_png is not None:
            png(Path(arg), out_png)
        sweep = Path(arg)
        print(f"## {sweep}")
        for name, fn in (("two modes", headline), ("probes", probes), ("references", references)):
            text = fn(sweep)
            if text:
                print(f"\n{name}:\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
