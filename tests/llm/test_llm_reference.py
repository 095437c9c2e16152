"""tvlens's task vectors and function vectors agree with an independent reference (plain HF
forward hooks, one prompt at a time; :mod:`tvlens.llm.reference`), layer by layer and head by
head, on tiny random checkpoints and (slow) on real SmolLM2-135M weights."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tvlens.llm import function_vectors as fv
from tvlens.llm import reference as ref
from tvlens.llm.function_vectors import CORRUPT_SEED_OFFSET
from tvlens.llm.prompts import sample_prompts
from tvlens.llm.task_vectors import task_vector_table
from tvlens.llm.tasks import load_task

ANTONYM = load_task("antonym")
UPPER = load_task("uppercase")


def _compare_tv(model, hf, task, layers, shots, n, atol):
    ours = task_vector_table(model, task, layers, shots, n, batch_size=4)
    zero = sample_prompts(task, n, 0)
    source = sample_prompts(task, n, shots, dummy_query=True)
    theirs = ref.reference_task_vectors(hf, zero, source, layers)
    for cond in ("zero_shot", "task_vector"):
        a = ours[ours["condition"] == cond].set_index("layer")
        b = theirs[theirs["condition"] == cond].set_index("layer")
        np.testing.assert_allclose(a["p_answer"], b.loc[a.index, "p_answer"], atol=atol)
        np.testing.assert_allclose(a["accuracy"], b.loc[a.index, "accuracy"], atol=1e-9)
    return ours, theirs


@pytest.fixture(scope="module")
def hf_models(tiny_dirs):
    return {arch: ref.load_hf(path) for arch, path in tiny_dirs.items()}


def test_task_vectors_agree_with_the_reference(bridges, hf_models, arch):
    model, hf = bridges[arch], hf_models[arch]
    layers = list(range(model.cfg.n_layers))
    ours, _ = _compare_tv(model, hf, ANTONYM, layers, shots=3, n=6, atol=1e-5)
    tv = ours[ours["condition"] == "task_vector"]["p_answer"].to_numpy()
    zs = ours[ours["condition"] == "zero_shot"]["p_answer"].to_numpy()
    assert not np.allclose(tv, zs)  # the patch changed something: the comparison has teeth


def test_function_vectors_agree_with_the_reference(bridges, hf_models, arch):
    model, hf = bridges[arch], hf_models[arch]
    layers = list(range(model.cfg.n_layers))
    clean = sample_prompts(ANTONYM, 6, 3)
    z_ours = fv.query_head_outputs(model, ANTONYM, shots=3, n_prompts=6)
    z_ref = ref.query_head_outputs(hf, clean)
    torch.testing.assert_close(z_ours, z_ref, atol=1e-5, rtol=0)
    z_mean = z_ours.mean(0)
    ie = fv.head_indirect_effects(model, ANTONYM, z_mean, shots=3, n_prompts=5, batch_size=3)
    corrupted = sample_prompts(ANTONYM, 5, 3, seed=CORRUPT_SEED_OFFSET, corrupt=True)
    ie_ref = ref.reference_head_ie(hf, corrupted, z_ref.mean(0), layers)
    merged = ie.merge(ie_ref, on=["layer", "head"], suffixes=("", "_ref"))
    assert len(merged) == len(ie) == model.cfg.n_layers * model.cfg.n_heads
    np.testing.assert_allclose(merged["ie"], merged["ie_ref"], atol=1e-6)
    assert merged["ie"].abs().max() > 1e-6
    heads = fv.top_heads(ie, 3)
    vec = fv.function_vector(model, z_ours, heads)
    vec_ref = ref.reference_function_vector(hf, z_ref, heads)
    torch.testing.assert_close(vec, vec_ref, atol=1e-5, rtol=1e-5)
    sweep = fv.function_vector_sweep(model, ANTONYM, 20 * vec, layers, n_prompts=6, shots=3)
    sweep_ref = ref.reference_function_vector_sweep(
        hf, sample_prompts(ANTONYM, 6, 0), 20 * vec, layers
    )
    for cond in ("zero_shot", "function_vector"):
        a = sweep[sweep["condition"] == cond].set_index("layer")["p_answer"]
        b = sweep_ref[sweep_ref["condition"] == cond].set_index("layer")["p_answer"]
        np.testing.assert_allclose(a, b.loc[a.index], atol=1e-5)


def test_gemma_head_contributions_sum_to_the_normalised_attention_output(bridges):
    """With a post-attention norm, Σ_h c_h is what the attention adds to the residual
    (resid_mid − resid_pre), while Σ_h z_h W_O (before the norm) is not."""
    model = bridges["gemma2"]
    ids = model.tokenizer("hot -> cold\nbig ->", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        _, cache = model.run_with_cache(ids)
    n_layers = model.cfg.n_layers
    z = torch.stack([cache[f"blocks.{i}.attn.hook_z"][0, -1] for i in range(n_layers)])[None]
    contrib = fv.head_contributions(model, z)[0]
    raw = fv.head_outputs(model, z)[0]
    for i in range(n_layers):
        added = (
            cache[f"blocks.{i}.hook_resid_mid"][0, -1] - cache[f"blocks.{i}.hook_resid_pre"][0, -1]
        )
        torch.testing.assert_close(contrib[i].sum(0), added, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(raw[i].sum(0), added, atol=1e-3)
    with pytest.raises(ValueError, match="per-prompt head outputs"):
        fv.function_vector(model, z[0], [(0, 0)])


def test_reference_rejects_unpaired_prompts(hf_models):
    zero = sample_prompts(ANTONYM, 3, 0)
    with pytest.raises(ValueError, match="pair up"):
        ref.reference_task_vectors(hf_models["llama"], zero, zero[:2], [0])


@pytest.mark.slow
def test_real_smollm2_task_and_function_vectors_agree_with_the_reference(request):
    """Measured 2026-12-01 (shared machine, load ~20): passes in about 12 minutes."""
    env = os.environ.get("TVLENS_SMOLLM2")  # a local folder, e.g. converted by hand
    path = Path(env) if env else request.getfixturevalue("smollm2_path")
    from tvlens.llm.load import load

    torch.manual_seed(0)
    model = load(path, device="cpu", dtype="float32")
    hf = ref.load_hf(path)
    layers = [3, 9, 15]
    ours, _ = _compare_tv(model, hf, UPPER, layers, shots=5, n=8, atol=2e-4)
    z = fv.query_head_outputs(model, UPPER, shots=5, n_prompts=4)
    z_ref = ref.query_head_outputs(hf, sample_prompts(UPPER, 4, 5))
    torch.testing.assert_close(z, z_ref, atol=2e-4, rtol=1e-3)
    ie = fv.head_indirect_effects(model, UPPER, z.mean(0), shots=5, n_prompts=3, layers=[9])
    corrupted = sample_prompts(UPPER, 3, 5, seed=CORRUPT_SEED_OFFSET, corrupt=True)
    ie_ref = ref.reference_head_ie(hf, corrupted, z_ref.mean(0), [9])
    merged = ie.merge(ie_ref, on=["layer", "head"], suffixes=("", "_ref"))
    np.testing.assert_allclose(merged["ie"], merged["ie_ref"], atol=2e-4)
    assert isinstance(ours, pd.DataFrame)
