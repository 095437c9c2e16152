"""Every LLM analysis end to end on the tiny random checkpoints.

On random weights the numbers mean nothing, so these tests check shapes, labels,
determinism and invariants that hold for any weights (e.g. a task vector patched after the
last layer reproduces the source prompt's prediction exactly).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tvlens.analyses.decodability import decodability
from tvlens.hooks.suffix import unembed
from tvlens.llm import function_vectors as fv
from tvlens.llm.decodability import decodability_by_shots, td_icl_correlation_table, td_icl_table
from tvlens.llm.geometry import mixture_geometry, mixture_prompts, pca_table
from tvlens.llm.icl import icl_table
from tvlens.llm.prompts import encode, run_prompts, sample_prompts
from tvlens.llm.task_vectors import task_vector_table
from tvlens.llm.tasks import load_task, load_tasks, task_groups

ANTONYM = load_task("antonym")


def test_icl_accuracy_table(bridges):
    model = bridges["gemma2"]
    df = icl_table(model, load_tasks("antonym,uppercase"), shots=(0, 2), n_prompts=6)
    assert list(df.columns) == [
        "task",
        "family",
        "shots",
        "accuracy",
        "ci_low",
        "ci_high",
        "p_answer",
        "n",
        "baseline",
    ]
    assert (df["ci_low"] <= df["accuracy"]).all() and (df["accuracy"] <= df["ci_high"]).all()
    assert df[["task", "shots"]].values.tolist() == [
        ["antonym", 0],
        ["antonym", 2],
        ["uppercase", 0],
        ["uppercase", 2],
    ]
    assert df["accuracy"].between(0, 1).all() and df["p_answer"].between(0, 1).all()
    assert (df["n"] == 6).all()
    again = icl_table(model, load_tasks("antonym,uppercase"), shots=(0, 2), n_prompts=6)
    pd.testing.assert_frame_equal(df, again)


def test_task_vector_after_the_last_layer_reproduces_the_source_prediction(bridges, arch):
    model = bridges[arch]
    last = model.cfg.n_layers - 1
    df = task_vector_table(model, ANTONYM, shots=3, n_prompts=8, seed=5)
    assert len(df) == 4 * model.cfg.n_layers
    assert set(df["condition"]) == {"zero_shot", "icl", "task_vector", "mean_task_vector"}
    # zero-shot and ICL rows are the same at every layer
    for cond in ("zero_shot", "icl"):
        assert df[df["condition"] == cond]["p_answer"].nunique() == 1
    # closed form: patching resid_post of the last layer at the query leaves only the final
    # norm + unembedding, so the patched prediction is the source prompt's own prediction
    tok = model.tokenizer
    zero = encode(tok, sample_prompts(ANTONYM, 8, 0, seed=5))
    source = encode(tok, sample_prompts(ANTONYM, 8, 3, seed=5, dummy_query=True))
    probs, states = [], []
    for i in range(len(zero)):
        q = int(source.query_pos[i])
        with torch.no_grad():
            logits, cache = model.run_with_cache(source.tokens[i : i + 1, : q + 1])
        probs.append(float(logits[0, -1].softmax(-1)[zero.answers[i][0]]))
        states.append(cache[f"blocks.{last}.hook_resid_post"][0, -1])
    row = df[(df["condition"] == "task_vector") & (df["layer"] == last)].iloc[0]
    assert row["p_answer"] == pytest.approx(float(np.mean(probs)), abs=1e-5)
    # the mean task vector: every query gets the prediction of the mean source state
    with torch.no_grad():
        mean_probs = unembed(model, torch.stack(states).mean(0)).softmax(-1)
    expected = float(np.mean([float(mean_probs[a[0]]) for a in zero.answers]))
    row = df[(df["condition"] == "mean_task_vector") & (df["layer"] == last)].iloc[0]
    assert row["p_answer"] == pytest.approx(expected, abs=1e-5)


def test_head_outputs_sum_to_the_attention_output(bridges):
    model = bridges["llama"]  # no post-attention norm: attn_out = Σ_h z_h W_O[h]
    ids = model.tokenizer("hot -> cold\nbig ->", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        _, cache = model.run_with_cache(ids)
    z = torch.stack([cache[f"blocks.{layer}.attn.hook_z"][0, -1] for layer in range(2)])
    outs = fv.head_outputs(model, z)
    assert outs.shape == (2, model.cfg.n_heads, model.cfg.d_model)
    for layer in range(2):
        torch.testing.assert_close(
            outs[layer].sum(0), cache[f"blocks.{layer}.hook_attn_out"][0, -1], atol=1e-5, rtol=0
        )
    heads = [(0, 1), (1, 3)]
    torch.testing.assert_close(fv.function_vector(model, z, heads), outs[0, 1] + outs[1, 3])


def test_head_indirect_effects_replay_equals_full_forwards(bridges, arch):
    model = bridges[arch]
    z = fv.mean_head_outputs(model, ANTONYM, shots=3, n_prompts=6)
    assert z.shape == (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head)
    kw = dict(shots=3, n_prompts=5, batch_size=3)
    fast = fv.head_indirect_effects(model, ANTONYM, z, **kw)
    full = fv.head_indirect_effects(model, ANTONYM, z, engine="full", **kw)
    assert len(fast) == model.cfg.n_layers * model.cfg.n_heads
    assert set(fast["engine"]) <= {"replay", "suffix"} and set(full["engine"]) == {"full"}
    np.testing.assert_allclose(fast["ie"], full["ie"], atol=1e-6)
    np.testing.assert_allclose(fast["ie"], fast["p_patched"] - fast["p_corrupted"], atol=1e-12)
    assert fast["ie"].abs().max() > 0  # patching a head changes the prediction
    with pytest.raises(ValueError, match="compute it with mean_head_outputs"):
        fv.head_indirect_effects(model, ANTONYM, z[:1], **kw)


def test_top_heads_ranks_by_indirect_effect():
    ie = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "ie": [0.1, 0.3, 0.3, -0.2]})
    assert fv.top_heads(ie, 3) == [(0, 1), (1, 0), (0, 0)]
    with pytest.raises(ValueError, match="k=5 heads"):
        fv.top_heads(ie, 5)


def test_function_vector_pipeline_and_zero_vector_invariant(bridges):
    model = bridges["llama"]
    res = fv.function_vector_analysis(
        model, ANTONYM, k_heads=3, shots=3, n_mean=6, n_ie=4, n_eval=6
    )
    assert res.vector.shape == (model.cfg.d_model,)
    assert res.heads["selected"].sum() == 3
    assert sorted(res.heads.loc[res.heads["selected"], "rank"]) == [0, 1, 2]
    top = res.heads.sort_values("ie", ascending=False).head(3)
    assert set(top["rank"]) == {0, 1, 2}
    assert set(res.sweep["condition"]) == {"zero_shot", "icl", "function_vector"}
    assert (res.sweep["k_heads"] == 3).all()
    zero = fv.function_vector_sweep(
        model, ANTONYM, torch.zeros(model.cfg.d_model), n_prompts=6, shots=3
    )
    a = zero[zero["condition"] == "function_vector"]["p_answer"].to_numpy()
    b = zero[zero["condition"] == "zero_shot"]["p_answer"].to_numpy()
    np.testing.assert_allclose(a, b, atol=1e-7)
    big = fv.function_vector_sweep(model, ANTONYM, 50 * res.vector, n_prompts=6, shots=3)
    moved = big[big["condition"] == "function_vector"]["p_answer"].to_numpy()
    assert not np.allclose(moved, b, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[d_model\]"):
        fv.function_vector_sweep(model, ANTONYM, torch.zeros(3), n_prompts=2)


@pytest.fixture(scope="module")
def td_result(bridges):
    groups = task_groups(load_tasks("pos_first_noun,pos_first_verb,pos_first_adjective,null"))
    assert list(groups) == ["pos"]
    return decodability_by_shots(
        bridges["llama"], groups["pos"], shots=(1, 2), n_per_task=12, keep_states=(2,), group="pos"
    )


def test_decodability_tables(td_result, bridges):
    r = td_result
    n_layers = bridges["llama"].cfg.n_layers
    assert [t.name for t in r.tasks] == [
        "pos_first_noun",
        "pos_first_verb",
        "pos_first_adjective",
        "null",
    ]
    assert len(r.td) == 2 * n_layers * 2  # methods × layers × shots
    assert set(r.td["method"]) == {"knn", "probe"} and set(r.td["n_examples"]) == {1, 2}
    assert (r.td["chance"] == 0.25).all() and (r.td["n_classes"] == 4).all()
    assert r.td["td"].between(0, 1).all()
    assert len(r.per_task) == 4 * 2 * n_layers and len(r.icl) == 4 * 2
    assert r.states[2].shape == (48, n_layers, bridges["llama"].cfg.d_model)
    assert r.labels.tolist() == [c for c in range(4) for _ in range(12)]
    # the table's kNN TD is the analyses module's TD on the same states ...
    for li in range(n_layers):
        want = decodability(r.states[2][:, li], r.labels, ("knn",))["td"].item()
        got = r.td.query("method == 'knn' and n_examples == 2 and layer == @li")["td"].item()
        assert got == pytest.approx(want)
        # ... and, with equal class sizes, the mean of the per-task recalls
        per = r.per_task.query("shots == 2 and layer == @li")["td_task"].mean()
        assert per == pytest.approx(want)


def test_decodability_is_deterministic(td_result, bridges):
    groups = task_groups(load_tasks("pos_first_noun,pos_first_verb,pos_first_adjective,null"))
    again = decodability_by_shots(
        bridges["llama"], groups["pos"], shots=(1, 2), n_per_task=12, group="pos"
    )
    pd.testing.assert_frame_equal(again.td, td_result.td)
    pd.testing.assert_frame_equal(again.icl, td_result.icl)


def test_td_icl_correlation_closed_form():
    rows = []
    for layer in (0, 1):
        for i, task in enumerate("abcd"):
            x = 0.1 * i + 0.05 * layer
            rows.append(
                {
                    "group": "g",
                    "task": task,
                    "family": "pos",
                    "shots": 1,
                    "layer": layer,
                    "td_task": x,
                    "accuracy": 2 * x + 0.1 if layer == 0 else 0.3,
                }
            )
    rows.append(
        {
            "group": "g",
            "task": "null",
            "family": "null",
            "shots": 1,
            "layer": 0,
            "td_task": 0.9,
            "accuracy": 0.0,
        }
    )
    corr = td_icl_correlation_table(pd.DataFrame(rows))
    assert corr["n_points"].tolist() == [4, 4]  # null left out
    assert corr.loc[0, "r"] == pytest.approx(1.0) and corr.loc[0, "r2"] == pytest.approx(1.0)
    assert corr.loc[0, "spearman"] == pytest.approx(1.0)
    assert np.isnan(corr.loc[1, "r"])  # constant accuracy: undefined


def test_td_icl_table_merges_accuracy(td_result):
    table = td_icl_table(td_result.per_task, td_result.icl)
    assert len(table) == len(td_result.per_task)
    assert table["accuracy"].notna().all()
    corr = td_icl_correlation_table(table)
    assert set(corr["layer"]) == {0, 1} and (corr["n_points"] == 6).all()


def test_pca_table_invariants(td_result):
    r = td_result
    names = [t.name for t in r.tasks]
    df = pca_table(r.states[2], r.labels, names, r.layers, group="pos")
    assert len(df) == 48 * len(r.layers)
    for _, g in df.groupby("layer"):
        assert g[["pc1", "pc2"]].mean().abs().max() < 1e-4
        assert 0 <= g["explained2"].iloc[0] <= g["explained1"].iloc[0] <= 1
        assert g["explained1"].iloc[0] + g["explained2"].iloc[0] <= 1 + 1e-9
    assert df["task"].tolist()[:12] == ["pos_first_noun"] * 12
    # planted: points on one axis → one component explains everything
    x = torch.zeros(10, 1, 4)
    x[:, 0, 2] = torch.arange(10.0)
    planted = pca_table(x, torch.zeros(10, dtype=torch.long), ["a"], [0])
    assert planted["explained1"].iloc[0] == pytest.approx(1.0)
    assert planted["pc1"].abs().tolist() == pytest.approx(np.abs(np.arange(10) - 4.5).tolist())


def test_mixture_prompts_composition():
    a, b = load_task("pos_first_noun"), load_task("pos_first_verb")
    for alpha, n_a in ((0.0, 0), (0.5, 2), (0.75, 3), (1.0, 4)):
        for p in mixture_prompts(a, b, alpha, 4, 5, seed=1):
            from_a = sum(dict(a.pairs)[x] == y for x, y in p.demos)
            from_b = sum(dict(b.pairs)[x] == y for x, y in p.demos)
            inputs = [x for x, _ in p.demos] + [p.query]
            assert len(set(inputs)) == 5
            # a demo can satisfy both rules when its first noun is its first verb: never here
            assert (from_a, from_b) == (n_a, 4 - n_a)
    with pytest.raises(ValueError, match="alpha"):
        mixture_prompts(a, b, 1.5, 4, 1)


def test_mixture_geometry_tables(td_result, bridges):
    r = td_result
    mix, simplex = mixture_geometry(
        bridges["llama"], r.tasks, r.states[2], r.labels, r.layers, 2, n_prompts=4, group="pos"
    )
    assert set(simplex["split"]) == {"pure", "mixture", "null"}
    assert len(simplex) == 3 * len(r.layers)
    assert simplex["projection_r2"].le(1 + 1e-9).all()
    assert simplex.query("split == 'mixture'")[["corr", "tv"]].notna().all().all()
    sums = mix.groupby(["layer", "alpha"])["beta_mean"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-9)  # β on the simplex
    assert (mix["beta_mean"] >= 0).all()
    assert set(mix["vertex"]) == {"pos_first_noun", "pos_first_verb", "pos_first_adjective"}
    exp = mix.query("vertex == 'pos_first_noun'").set_index(["layer", "alpha"])["expected"]
    assert exp.xs(0, level="layer").tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert (mix.query("vertex == 'pos_first_adjective'")["expected"] == 0).all()
    with pytest.raises(ValueError, match="two different non-Null tasks"):
        mixture_geometry(bridges["llama"], r.tasks, r.states[2], r.labels, r.layers, 2, pair=(0, 3))


def test_run_prompts_capture_uses_requested_names(bridges):
    enc = encode(bridges["gemma2"].tokenizer, sample_prompts(ANTONYM, 3, 1))
    st = run_prompts(bridges["gemma2"], enc, capture=["blocks.1.attn.hook_z"]).states
    assert st["blocks.1.attn.hook_z"].shape == (3, 4, 8)


def test_suffix_engine_is_exact_past_gemmas_sliding_window(bridges):
    """Prompts longer than the tiny Gemma-2's 64-token sliding window: the head IE still
    runs as a suffix (prefix K/V cached) and equals full forwards."""
    model = bridges["gemma2"]
    enc = encode(model.tokenizer, sample_prompts(ANTONYM, 4, 14, seed=5))
    assert int(enc.query_pos.min()) > 64
    z = fv.mean_head_outputs(model, ANTONYM, shots=14, n_prompts=3)
    kw = dict(shots=14, n_prompts=4, batch_size=4, layers=[1])
    fast = fv.head_indirect_effects(model, ANTONYM, z, **kw)
    full = fv.head_indirect_effects(model, ANTONYM, z, engine="full", **kw)
    assert set(fast["engine"]) == {"suffix"}
    assert sorted(fast["layer"].unique()) == [1]  # only the requested layer is swept
    np.testing.assert_allclose(fast["ie"], full["ie"], atol=1e-6)


def test_run_llm_records_stage_timings_and_restricts_the_head_sweep(bridges, tmp_path):
    import json

    from tvlens.llm.run import LLMRun
    from tvlens.registry import run_analyses

    options = {
        "icl": {"shots": (0, 2), "n_prompts": 4},
        "function_vectors": {"n_prompts": 4, "n_ie": 3, "k_heads": 2, "shots": 2, "layers": [1]},
    }
    run = LLMRun(bridges["llama"], tmp_path, name="tiny")
    tables, _ = run_analyses(run, ["icl", "function_vectors"], options=options)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert set(meta["timings_s"]) == {"icl", "function_vectors"}
    assert all(v >= 0 for v in meta["timings_s"].values())
    assert set(tables["llm_fv_heads"]["layer"]) == {1}  # --layers limits the head IE too


def test_tables_read_back_keep_the_null_task(tmp_path):
    """pandas reads the string "null" as NaN; tvlens.io.read_csv (the report's reader) does
    not, so the Null task and split survive a write and read."""
    from tvlens.io import read_csv, save_csv

    df = pd.DataFrame({"task": ["null", "antonym"], "split": ["null", "pure"], "r2": [0.5, None]})
    save_csv(tmp_path / "t.csv", df)
    assert pd.read_csv(tmp_path / "t.csv")["task"].isna().sum() == 1  # the trap
    back = read_csv(tmp_path / "t.csv")
    assert back["task"].tolist() == ["null", "antonym"] and back["split"].tolist()[0] == "null"
    assert back["r2"].isna().tolist() == [False, True]
