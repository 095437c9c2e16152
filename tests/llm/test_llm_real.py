"""Real SmolLM2-135M weights (``tvlens llm get smollm2``): loading, ICL and task vectors.

These check that tvlens's LLM code does what the papers describe on a real model, where the
tiny random checkpoints cannot: the bridge reproduces the HF forward, the model learns the
``uppercase`` task in context, and Hendel task vectors carry that task into zero-shot
queries. Without the model they skip (``.ci/run`` installs it and makes them fail instead).
"""

from __future__ import annotations

import json

import pytest
import torch

from tvlens.llm import icl_table, load, load_task, task_vector_table
from tvlens.llm import weights as W

pytestmark = pytest.mark.slow

N_PROMPTS = 64


@pytest.fixture(scope="module")
def smol(smollm2_path):
    torch.manual_seed(0)
    return load(smollm2_path, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def uppercase():
    return load_task("uppercase")


def test_bridge_logits_equal_the_hf_forward(smol, smollm2_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = smol.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_vocab) == (30, 576, 9, 49152)
    manifest = json.loads((smollm2_path / W.MANIFEST).read_text())
    assert manifest["gguf"]["sha256"] == W.REGISTRY["smollm2"].sha256
    hf = AutoModelForCausalLM.from_pretrained(
        smollm2_path, attn_implementation="eager", dtype=torch.float32
    ).eval()
    shipped = AutoTokenizer.from_pretrained(smollm2_path)
    for text in ["hot -> cold\nbig -> small\ntall ->", "France -> Paris\nJapan ->"]:
        plain = shipped(text)["input_ids"]
        ids = smol.tokenizer(text, return_tensors="pt")["input_ids"]
        # the GGUF says add_bos_token = false and the converted tokenizer follows it; the
        # bridge's tokenizer (TransformerLens reloads it with add_bos_token=True) prepends the
        # BOS <|im_start|>; both encode the text itself the same way
        assert manifest["add_bos_token"] is False and plain[0] != shipped.bos_token_id
        assert ids[0].tolist() == [shipped.bos_token_id, *plain]
        with torch.no_grad():
            ours, ref = smol(ids), hf(ids).logits
        assert ours.shape == ref.shape == (1, ids.shape[1], 49152)
        assert (ours - ref).abs().max().item() <= 1e-4  # measured: 0.0


def test_icl_on_uppercase_rises_with_shots(smol, uppercase):
    df = icl_table(smol, [uppercase], shots=(0, 5), n_prompts=N_PROMPTS, seed=0)
    acc = dict(zip(df["shots"], df["accuracy"], strict=True))
    assert (df["n"] == N_PROMPTS).all()
    # measured (seed 0, 64 prompts): 0.00 at 0 shots, 0.80 at 5 shots; majority baseline 0.06
    assert acc[5] >= acc[0] + 0.4, acc
    assert acc[5] >= df["baseline"].max() + 0.4, df


def test_task_vectors_at_the_best_layer_beat_zero_shot(smol, uppercase):
    """Pick the best layer (every second layer; by accuracy, then the mean probability of the
    answer) on one set of prompts, then measure it on fresh ones (seed 1), so the selection
    cannot be what makes it beat zero-shot. With SmolLM2's template ("Q: x / A:", the
    function default) task vectors recover 64-95 % of the 5-shot accuracy at layers 19-22
    (README); with "x ->" they stay near 0.06, which the README's investigation explains."""
    layers = list(range(0, smol.cfg.n_layers, 2))
    sweep = task_vector_table(smol, uppercase, layers=layers, shots=5, n_prompts=32, seed=0)
    tv = sweep[sweep["condition"] == "task_vector"]
    assert tv["layer"].tolist() == layers
    best = int(tv.sort_values(["accuracy", "p_answer"], kind="stable").iloc[-1]["layer"])
    held = task_vector_table(smol, uppercase, layers=[best], shots=5, n_prompts=N_PROMPTS, seed=1)
    acc = dict(zip(held["condition"], held["accuracy"], strict=True))
    assert acc["icl"] >= acc["zero_shot"] + 0.4, (best, acc)  # the task is learnt in context
    assert acc["task_vector"] >= acc["zero_shot"] + 0.1, (best, acc)
