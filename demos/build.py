"""Write the demo notebooks in ``demos/`` from the cells below (without outputs).

The notebooks are generated so that their code lives in one reviewable file and they are
committed clean: ``python demos/build.py`` rewrites them, and
``tests/demos/test_notebooks.py`` checks that the committed files match this script and
executes each one with nbclient. Every notebook uses small settings (seconds to train on a
CPU); the numbers they print are measured, not claimed, and at these sizes they are noisy.
The full-size experiments are ``tvlens demo`` and ``tvlens experiment ...``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

STDLIB = ("import warnings", "from pathlib import Path")
THIRD_PARTY = ("import pandas as pd", "import torch", "from tqdm import TqdmWarning")
SETUP = """\
warnings.filterwarnings("ignore", category=TqdmWarning)  # no ipywidgets: plain progress bars
torch.set_num_threads(1)  # models this small run fastest on one thread
pd.set_option("display.precision", 4)
RUNS = Path("runs")  # run directories are written here (relative to the notebook)
"""


def setup(stdlib: tuple[str, ...] = (), tvlens: tuple[str, ...] = ()) -> str:
    """The first code cell: every import at the top (grouped as ruff's isort wants), then
    the shared settings."""
    groups = [sorted(STDLIB + stdlib, key=_import_key), sorted(THIRD_PARTY, key=_import_key)]
    groups.append(sorted(tvlens, key=_import_key))
    return "\n\n".join("\n".join(g) for g in groups if g) + "\n\n" + SETUP


def _import_key(line: str) -> tuple[int, str]:
    return (line.startswith("from "), line.split()[1])


TWO_MODES = [
    new_markdown_cell(
        """\
# The two modes of task inference on dice

Small transformers trained on latent-task sequences infer the task in two ways
(docs/concepts.md, section A): **retrieval** of a known task (the hidden state is close to a convex
combination of task vectors, weighted by the posterior over the known tasks) and
**learning** of an unseen one (the states leave the task-vector plane). Which one dominates
depends on task diversity in training: `k` sets the number of minor tasks, `2**k`.

This notebook trains two tiny models on the dice family, one with no minor tasks (`k = -1`)
and one with 256 (`k = 8`), and measures on each:
1. the loss against the exact retrieval and learning references;
2. the simplex fit of hidden states on the task means, and the R² of OOD states on the task
   plane;
3. the alignment of the simplex weights β with the exact posterior;
4. the mode diagnostic log(KL to retrieval / KL to learning) over training.

The settings are tiny so that the notebook runs in about a minute on a laptop CPU; the
numbers are measured here, and at this size they are noisy. `tvlens experiment two-modes
--family dice` runs the full sweep over k (see the README for its results)."""
    ),
    new_code_cell(
        setup(
            tvlens=(
                "from tvlens.models import RunConfig, train",
                "from tvlens.viz.training import final_metrics, training_curves",
            )
        )
        + """
SETTINGS = dict(
    family={"seq_len": 32},
    model={"n_layers": 2, "d_model": 32, "n_heads": 2, "d_mlp": 64},
    train={"steps": 400, "batch_size": 32, "eval_every": 100, "eval_size": 128,
           "n_checkpoints": 4},
)
runs = {}
for k in (-1, 8):
    cfg = RunConfig.for_family("dice", **{**SETTINGS, "family": {**SETTINGS["family"], "k": k}})
    runs[k] = train(cfg, RUNS / f"two_modes_k{k}", progress=False)
    (runs[k].dir / "analyses").mkdir(exist_ok=True)
pd.concat({k: final_metrics(r.metrics) for k, r in runs.items()}, names=["k", "row"])"""
    ),
    new_markdown_cell(
        "Training curves of the `k = 8` model: model loss beside the retrieval and learning "
        "references, per split, and the divergence to each."
    ),
    new_code_cell("training_curves(runs[8].metrics)"),
    new_markdown_cell(
        """\
## Task vectors and the simplex fit

θ_k = h̄_k − mean_j h̄_j at `resid_post`, averaged over the last 16 positions. Hidden states
are fitted as convex combinations of the major-task means; `r2_affine` on OOD data is the R²
of the OOD states on the task plane (low or negative: they leave it)."""
    ),
    new_code_cell(
        """\
from tvlens.analyses.geometry import simplex_table
from tvlens.analyses.task_vectors import task_vectors

tvs, fits = {}, {}
for k, run in runs.items():
    tvs[k] = task_vectors(run.model, run.family, n_per_task=64)
    batches = {s: run.family.sample(s, 128, seed=11) for s in ("major", "ood")}
    fits[k] = simplex_table(run.model, run.family, tvs[k], batches)
    fits[k].to_csv(run.dir / "analyses" / "simplex_fit.csv", index=False)
fits = pd.concat(fits, names=["k", "row"]).reset_index(level=0)
fits.pivot_table(index=["k", "layer"], columns="split", values=["r2_task", "r2_affine"])"""
    ),
    new_markdown_cell(
        """\
## β against the exact posterior

At every position the simplex weights β_t are compared with the family's exact retrieval
posterior P(task | x≤t) over the major tasks (correlation, total variation, cosine)."""
    ),
    new_code_cell(
        """\
from tvlens.analyses.geometry import fit_beta

alignment = {}
for k, run in runs.items():
    fit = fit_beta(run.model, run.family, tvs[k], run.family.sample("major", 128, seed=12))
    alignment[k] = fit.summary()
    alignment[k].to_csv(run.dir / "analyses" / "alignment_summary.csv", index=False)
pd.concat(alignment, names=["k", "row"])"""
    ),
    new_markdown_cell(
        """\
## The mode diagnostic

log(KL(model ‖ retrieval) / KL(model ‖ learning)) per checkpoint and split: negative means
the model is closer to retrieval over the known tasks, positive closer to the
prior-conjugate learner. With two values of k this is a two-row slice of the heatmap over
training step × log2 N_minor that the full experiment draws."""
    ),
    new_code_cell(
        """\
from tvlens.analyses.modes import mode_heatmap_table
from tvlens.viz.geometry import mode_heatmap

modes = mode_heatmap_table({k: r.dir for k, r in runs.items()}, n=128)
for k, run in runs.items():
    modes[modes["k"] == k].to_csv(run.dir / "analyses" / "modes.csv", index=False)
mode_heatmap(modes)"""
    ),
    new_code_cell(
        'modes[modes["step"] == modes["step"].max()].pivot_table(index="k", columns="split", '
        'values="log_ratio")'
    ),
    new_markdown_cell(
        "A 3-D view of the `k = 8` model's last-layer states at the last position: the task "
        "plane (x, y) with the major-task vertices, and the main direction off the plane (z)."
    ),
    new_code_cell(
        """\
from tvlens.analyses.geometry import geometry_points
from tvlens.viz.geometry import geometry_scatter

run = runs[8]
batches = {s: run.family.sample(s, 100, seed=13) for s in ("major", "ood")}
points = geometry_points(run.model, tvs[8], batches, layer=run.model.n_layers - 1)
points.to_csv(run.dir / "analyses" / "geometry_points.csv", index=False)
geometry_scatter(points)"""
    ),
    new_markdown_cell(
        """\
Attention patterns of the `k = 8` model on one major-task sequence, as a circuitsvis widget
(hover a token to see where it attends). circuitsvis loads its JavaScript from a CDN when the
machine is online and otherwise inlines a 1.3 MB bundle into each widget; the HTML report
draws the same table with plotly instead, so it works offline."""
    ),
    new_code_cell(
        """\
from tvlens.viz.attention import attention_patterns, attention_view

attention = attention_patterns(runs[8], split="major", seed=0)
attention_view(attention, layer=runs[8].model.n_layers - 1)"""
    ),
    new_markdown_cell(
        "Finally, an offline HTML report of the `k = 8` run: training curves, the tables saved "
        "above under `analyses/`, and attention patterns (computed by the report)."
    ),
    new_code_cell(
        """\
from tvlens.viz.report import write_report

print(write_report(runs[8].dir))"""
    ),
]

PATCHING_STEERING = [
    new_markdown_cell(
        """\
# Activation patching and steering on dice

One tiny dice model, two interventions:

* **activation patching** (denoising): run a sequence of task 1, patch in activations from a
  sequence of task 0 one (layer, position) or (layer, head) at a time, and measure how far the
  last prediction moves towards task 0. `tvlens.analyses.patching.patch_sweep` equals
  `transformer_lens.patching` and skips what a patch cannot change;
* **steering**: replace the task-subspace part of the residual by a task vector θ_k, or by a
  convex mixture Σ α_k θ_k, and compare the prediction with task k's true distribution and
  with the α-mixture of the tasks' distributions.

Small settings (about a minute on a CPU); the numbers are measured here and noisy."""
    ),
    new_code_cell(
        setup(tvlens=("from tvlens.models import RunConfig, train",))
        + """
cfg = RunConfig.for_family(
    "dice",
    family={"seq_len": 32},
    model={"n_layers": 2, "d_model": 32, "n_heads": 2, "d_mlp": 64},
    train={"steps": 400, "batch_size": 32, "eval_every": 100, "eval_size": 128,
           "n_checkpoints": 2},
)
run = train(cfg, RUNS / "patching_steering", progress=False)
run.model.eval()
family = run.family
(run.dir / "analyses").mkdir(exist_ok=True)"""
    ),
    new_markdown_cell(
        """\
## Patching

Clean: 16 sequences of task 0; corrupted: 16 of task 1. The metric is how much the model's
last prediction prefers task 0's distribution to task 1's: E_{v ~ model}[log p₀(v) − log p₁(v)],
normalised so that 0 is the corrupted run and 1 the clean run."""
    ),
    new_code_cell(
        """\
from tvlens.analyses.patching import patch_sweep
from tvlens.analyses.task_vectors import sample_tasks
from tvlens.viz.patching import patching_heatmap

clean = sample_tasks(family, torch.tensor([0]), 16, seed=1)
corrupted = sample_tasks(family, torch.tensor([1]), 16, seed=2)
log_ratio = family.pool[0].log() - family.pool[1].log()  # log p0(v) - log p1(v), [V]


def prefers_task0(logits):
    probs = family.output_to_prediction(logits[:, -1])  # the model's last prediction
    return (probs * log_ratio).sum(-1).mean()


def normalised(df):
    lo, hi = df.attrs["corrupted_value"], df.attrs["clean_value"]
    return df.assign(value=(df["value"] - lo) / (hi - lo))


resid = normalised(patch_sweep(run.model, clean.inputs, corrupted.inputs, prefers_task0,
                               "resid_pre", metric_positions=-1))
heads = normalised(patch_sweep(run.model, clean.inputs, corrupted.inputs, prefers_task0,
                               "z", by="head", metric_positions=-1))
resid.to_csv(run.dir / "analyses" / "patching_resid_pre.csv", index=False)
heads.to_csv(run.dir / "analyses" / "patching_heads.csv", index=False)
patching_heatmap(resid, "Denoising blocks.{l}.hook_resid_pre: share of the clean effect restored")"""
    ),
    new_code_cell(
        'patching_heatmap(heads, "Denoising head outputs (all positions): share restored")'
    ),
    new_markdown_cell(
        """\
## Steering along the task simplex

Task vectors at every layer; then, per layer, steer major-task sequences to each task k
(task-ID accuracy = the share of positions whose prediction is closest to task k), and to
convex mixtures α (divergence of the steered prediction from Σ α_k p_k)."""
    ),
    new_code_cell(
        """\
from tvlens.analyses.steering import convexity_table, steering_table
from tvlens.analyses.task_vectors import task_vectors
from tvlens.viz.steering import convexity_check, steering_accuracy

tv = task_vectors(run.model, family, n_per_task=64)
batch = family.sample("major", 96, seed=3)
layers = list(range(run.model.n_layers))
steer = steering_table(run.model, family, tv, batch, layers)
convex = convexity_table(run.model, family, tv, batch, layers)
steer.to_csv(run.dir / "analyses" / "steering.csv", index=False)
convex.to_csv(run.dir / "analyses" / "convexity.csv", index=False)
steer.groupby(["layer", "condition"])[["accuracy", "div_target"]].mean()"""
    ),
    new_code_cell("steering_accuracy(steer)"),
    new_code_cell("convexity_check(convex)"),
    new_markdown_cell(
        "The run directory now holds these tables under `analyses/`; the report draws them "
        "with the same figure functions, offline."
    ),
    new_code_cell(
        """\
from tvlens.viz.report import write_report

print(write_report(run.dir))"""
    ),
]

LLM = [
    new_markdown_cell(
        """\
# Task vectors in a pretrained language model

The same questions, asked of a real model through TransformerLens's `TransformerBridge`:
few-shot (ICL) accuracy on the antonym task, and Hendel et al.'s task vectors (the last-token
residual of a few-shot prompt, patched into a zero-shot query, layer by layer).

`MODEL` is a hub id or a local model directory: `google/gemma-2-2b` unless the environment
variable `TVLENS_MODEL` names another. Gemma-2-2B has 2.6 B parameters (≈ 5.2 GB in bf16 on a
GPU, ≈ 10.5 GB in float32 on a CPU) and is gated on the hub (accept its licence and log in
first). When it cannot be loaded (no hub, `HF_HUB_OFFLINE=1`, no access), the notebook falls
back to a **tiny random Llama** checkpoint built locally by `tvlens.llm.tiny`: every code path
runs, but its accuracies are those of random weights and mean nothing."""
    ),
    new_code_cell(
        setup(
            stdlib=("import os",),
            tvlens=(
                "from tvlens.llm.load import LoadError, load",
                "from tvlens.llm.tiny import build_tiny_checkpoint",
            ),
        )
        + """
MODEL = os.environ.get("TVLENS_MODEL", "google/gemma-2-2b")
try:
    model = load(MODEL)
    source = MODEL
except LoadError as e:
    print(f"{MODEL} could not be loaded ({str(e).splitlines()[0]})")
    path = build_tiny_checkpoint(RUNS / "tiny-llama", arch="llama", n_layers=2, d_model=64)
    model = load(path, device="cpu")
    source = f"tiny random llama at {path} (numbers below mean nothing)"
print("model:", source, "| layers:", model.cfg.n_layers, "| d_model:", model.cfg.d_model)"""
    ),
    new_code_cell(
        """\
from tvlens.llm.icl import icl_accuracy
from tvlens.llm.tasks import load_task
from tvlens.viz.llm import icl_by_shots

task = load_task("antonym")
print(task.description, "| e.g.", task.pairs[:3])
icl = icl_accuracy(model, [task], shots=(0, 1, 4), n_prompts=24)
display(icl)
icl_by_shots(icl)"""
    ),
    new_markdown_cell(
        "Task vectors by layer: accuracy of zero-shot queries whose last-token residual at "
        "layer ℓ is replaced by the few-shot prompt's, beside zero-shot and full ICL."
    ),
    new_code_cell(
        """\
from tvlens.llm.task_vectors import task_vector_sweep
from tvlens.viz.llm import task_vector_by_layer

tv = task_vector_sweep(model, task, shots=4, n_prompts=24)
display(tv.pivot_table(index="layer", columns="condition", values="accuracy"))
task_vector_by_layer(tv)"""
    ),
    new_markdown_cell(
        """\
## Every LLM analysis into a run directory, and its report

An `LLMRun` pairs the model with a run directory; `run_analyses` runs the registered LLM
analyses on it (ICL, task vectors, function vectors with heads chosen by causal indirect
effect, task decodability and geometry), each with its own options, and writes
`analyses/llm_*.csv` with their provenance; the report draws them offline. The options here
are small; `tvlens llm --model NAME --out DIR` runs the defaults."""
    ),
    new_code_cell(
        """\
from tvlens import run_analyses
from tvlens.llm import LLMRun
from tvlens.viz.report import write_report

small = {
    "icl": {"tasks": "antonym", "shots": (0, 1, 4), "n_prompts": 16},
    "task_vectors": {"tasks": "antonym", "shots": 4, "n_prompts": 16},
    "function_vectors": {"tasks": "antonym", "shots": 4, "n_prompts": 16, "n_ie": 8, "k_heads": 4},
    "decodability": {"tasks": "bitwise,null", "shots": (1, 4), "n_prompts": 20},
    "geometry": {"tasks": "bitwise,null", "shots": 4, "n_prompts": 20, "n_mixture": 8},
}
run = LLMRun(model, RUNS / "llm", name=source)
tables, seconds = run_analyses(run, small, options=small)
sorted(tables)"""
    ),
    new_markdown_cell(
        "Attention patterns of the heads that the function-vector analysis selected (largest "
        "causal indirect effect), on one few-shot prompt; saved where the report finds them."
    ),
    new_code_cell(
        """\
from tvlens.llm.prompts import make_prompt
from tvlens.viz.attention import attention_figure, prompt_attention, save_attention

selected = tables["llm_fv_heads"].query("selected")
heads = list(zip(selected["layer"], selected["head"], strict=True))
prompt = make_prompt(task, task.pairs[3], task.pairs[:3])
attention = prompt_attention(model, prompt.text, heads=heads)
save_attention(attention, RUNS / "llm")
attention_figure(attention)"""
    ),
    new_code_cell('print(write_report(RUNS / "llm"))'),
]

NOTEBOOKS: dict[str, list] = {
    "01_two_modes_dice.ipynb": TWO_MODES,
    "02_patching_and_steering.ipynb": PATCHING_STEERING,
    "03_llm_task_vectors.ipynb": LLM,
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` with no outputs, Python 3 kernel metadata."""
    nb = new_notebook(cells=NOTEBOOKS[name])
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{Path(name).stem[:2]}-{i:02d}"  # stable ids: no diff on rebuild
    return nb


def main(out_dir: Path = HERE) -> list[Path]:
    """Write every notebook into ``out_dir`` and format its code with the project's ruff
    settings (CI runs ``ruff format --check`` on notebooks too)."""
    paths = []
    for name in NOTEBOOKS:
        path = out_dir / name
        nbformat.write(build(name), path)
        paths.append(path)
    config = HERE.parent / "pyproject.toml"
    cmd = [sys.executable, "-m", "ruff", "format", "--quiet", "--config", str(config)]
    subprocess.run([*cmd, *map(str, paths)], check=True)
    return paths


if __name__ == "__main__":
    for p in main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(p)
