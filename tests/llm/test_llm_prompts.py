"""Prompt building, tokenizer-aware answer tokens, padding, and scoring against closed forms."""

from __future__ import annotations

import pytest
import torch

from tvlens.llm.prompts import (
    TEMPLATES,
    answer_tokens,
    encode,
    make_prompt,
    nested_prompts,
    run_nested,
    run_prompts,
    sample_prompts,
    score_answers,
)
from tvlens.llm.tasks import load_task

ANTONYM = load_task("antonym")


def test_template_text():
    p = make_prompt(ANTONYM, ("hot", "cold"), [("big", "small"), ("up", "down")], "arrow")
    assert p.text == "big -> small\nup -> down\nhot ->"
    assert p.answer_text == " cold" and p.shots == 2 and p.target == ("hot", "cold")
    q = make_prompt(ANTONYM, ("hot", "cold"), [("big", "small")])  # the default: "qa"
    assert q.text == "Q: big\nA: small\n\nQ: hot\nA:"
    assert set(TEMPLATES) >= {"arrow", "qa", "colon", "io"}
    with pytest.raises(KeyError, match="unknown template"):
        make_prompt(ANTONYM, ("hot", "cold"), [], "nope")


def test_sampling_is_seeded_and_never_leaks_the_query():
    a = sample_prompts(ANTONYM, 30, 4, seed=3)
    assert a == sample_prompts(ANTONYM, 30, 4, seed=3)
    assert a != sample_prompts(ANTONYM, 30, 4, seed=4)
    pairs = set(ANTONYM.pairs)
    for p in a:
        assert len(p.demos) == 4 and len(set(p.demos)) == 4
        assert all(d in pairs for d in p.demos)
        assert (p.query, p.answer) not in p.demos
    # the same queries for every shot count
    assert [p.query for p in sample_prompts(ANTONYM, 30, 0, seed=3)] == [p.query for p in a]
    with pytest.raises(ValueError, match="pairs; 200 shots"):
        sample_prompts(ANTONYM, 1, 200)


def test_corrupted_and_dummy_query_prompts():
    clean = sample_prompts(ANTONYM, 20, 5, seed=1, corrupt=True)
    for p in clean:
        xs = [x for x, _ in p.demos]
        ys = sorted(y for _, y in p.demos)
        assert ys == sorted(dict(ANTONYM.pairs)[x] for x in xs)  # labels permuted
    zero = sample_prompts(ANTONYM, 20, 0, seed=1)
    source = sample_prompts(ANTONYM, 20, 5, seed=1, dummy_query=True)
    for z, s in zip(zero, source, strict=True):
        assert s.target == z.target and s.query != z.query
        assert z.query not in [x for x, _ in s.demos]


def test_answers_are_tokenised_in_context(bridges, arch):
    tok = bridges[arch].tokenizer
    p, a = answer_tokens(tok, "hot ->", " cold")
    assert tok.convert_ids_to_tokens(a[0]).startswith("Ġ" if arch == "llama" else "▁")
    assert tok.decode(a).strip() == "cold"
    assert p[0] == tok.bos_token_id
    assert list(tok("hot -> cold")["input_ids"]) == p + a


def test_encode_right_pads_and_marks_the_query(bridges):
    tok = bridges["llama"].tokenizer
    prompts = sample_prompts(ANTONYM, 6, 2, seed=0)
    enc = encode(tok, prompts)
    for i, pr in enumerate(prompts):
        p, a = answer_tokens(tok, pr.text, pr.answer_text)
        q = int(enc.query_pos[i])
        assert q == len(p) - 1
        assert enc.tokens[i, : q + 1].tolist() == p
        assert enc.tokens[i, q + 1 : q + 1 + len(a)].tolist() == a == enc.answers[i]
        assert (enc.tokens[i, q + 1 + len(a) :] == tok.pad_token_id).all()


def test_score_answers_on_planted_logits():
    logits = torch.zeros(3, 6, 10)
    qpos = torch.tensor([1, 2, 3])
    answers = [[4, 5], [7, 1], [2]]
    logits[0, 1, 4] = 1  # first token right, second wrong
    logits[0, 2, 0] = 1
    logits[1, 2, 7] = 1  # both right
    logits[1, 3, 1] = 1
    logits[2, 3, 9] = 1  # wrong
    assert score_answers(logits, qpos, answers).tolist() == [True, True, False]
    assert score_answers(logits, qpos, answers, "exact").tolist() == [False, True, False]


def test_run_prompts_matches_one_prompt_at_a_time(bridges, arch):
    model = bridges[arch]
    enc = encode(model.tokenizer, sample_prompts(ANTONYM, 7, 3, seed=2))
    batched = run_prompts(model, enc, capture=["blocks.0.hook_resid_post"], batch_size=4)
    for i in range(len(enc)):
        q = int(enc.query_pos[i])
        ids = enc.tokens[i : i + 1, : q + 1]
        with torch.no_grad():
            logits, cache = model.run_with_cache(ids)
        probs = logits[0, -1].softmax(-1)
        first = enc.answers[i][0]
        assert batched.p_answer[i] == pytest.approx(float(probs[first]), abs=1e-5)
        assert bool(batched.correct[i]) == (int(logits[0, -1].argmax()) == first)
        torch.testing.assert_close(
            batched.states["blocks.0.hook_resid_post"][i],
            cache["blocks.0.hook_resid_post"][0, -1],
            atol=1e-5,
            rtol=0,
        )


class _CharTokenizer:
    """Every character is a token (so a leading space is a token of its own); BOS = 0."""

    bos_token_id, pad_token_id, eos_token_id, name_or_path = 0, 1, 1, ""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([0] if add_special_tokens else []) + [ord(c) for c in text]}

    def decode(self, ids):
        return "".join(chr(i) for i in ids if i > 1)


def test_a_bare_space_answer_token_joins_the_prompt_and_bos_policy():
    tok = _CharTokenizer()
    p, a = answer_tokens(tok, "7 ->", " 8")
    assert p == [0, *map(ord, "7 -> ")] and a == [ord("8")]  # the space is no answer token
    p, a = answer_tokens(tok, "7 ->", " 8", bos="never")
    assert p[0] == ord("7") and a == [ord("8")]
    p, _ = answer_tokens(tok, "7 ->", "8", bos="always")
    assert p == [0, *map(ord, "7 ->")]
    with pytest.raises(ValueError, match="bos="):
        answer_tokens(tok, "7 ->", " 8", bos="sometimes")


def test_exact_mode_reads_only_the_answer_positions(bridges, arch):
    model = bridges[arch]
    enc = encode(model.tokenizer, sample_prompts(ANTONYM, 5, 2, seed=4))
    scored = run_prompts(model, enc, mode="exact", batch_size=2)
    with torch.no_grad():
        logits = model(enc.tokens)
    expected = score_answers(logits, enc.query_pos, enc.answers, "exact")
    assert scored.correct.tolist() == expected.tolist()


def test_nested_prompts_are_text_prefixes_of_the_longest():
    ps = nested_prompts(ANTONYM, 5, (4, 1, 0, 2), seed=3)
    assert sorted(ps) == [0, 1, 2, 4]
    for i, longest in enumerate(ps[4]):
        assert longest == sample_prompts(ANTONYM, 5, 4, seed=3)[i]
        chain = [*longest.demos, (longest.query, longest.answer)]
        for s in (0, 1, 2):
            p = ps[s][i]
            assert p.shots == s and (p.query, p.answer) == chain[s]
            assert (longest.text + longest.answer_text).startswith(p.text + p.answer_text)


@pytest.mark.parametrize("mode", ["first_token", "exact"])
def test_run_nested_equals_a_separate_pass_per_shot_count(bridges, arch, mode):
    """One pass over the longest prompts gives every shot count's scores and states, equal
    to :func:`run_prompts` on each shot count's own prompts (causal attention)."""
    model = bridges[arch]
    names = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_mid"]
    encs = {
        s: encode(model.tokenizer, p)
        for s, p in nested_prompts(ANTONYM, 9, (0, 1, 3), seed=1).items()
    }
    got = run_nested(model, encs, capture=names, mode=mode, batch_size=4)
    for s, enc in encs.items():
        ref = run_prompts(model, enc, capture=names, mode=mode, batch_size=4)
        assert torch.equal(got[s].correct, ref.correct)
        torch.testing.assert_close(got[s].p_answer, ref.p_answer, atol=1e-5, rtol=0)
        for n in names:
            torch.testing.assert_close(got[s].states[n], ref.states[n], atol=1e-5, rtol=0)


def test_run_nested_runs_rows_that_are_no_token_prefix_on_their_own(llama):
    """A row whose tokens differ from its longest prompt (as when the tokenizer merges across
    the cut) is not read off the long pass: its scores are those of its own tokens."""
    encs = {
        s: encode(llama.tokenizer, p) for s, p in nested_prompts(ANTONYM, 6, (1, 4), seed=2).items()
    }
    short = encs[1]
    q = int(short.query_pos[2])
    short.tokens[2, q - 1] = (short.tokens[2, q - 1] + 7) % llama.cfg.d_vocab  # no longer a prefix
    got = run_nested(llama, encs, capture=["blocks.1.hook_resid_post"])
    ref = run_prompts(llama, short, capture=["blocks.1.hook_resid_post"])
    torch.testing.assert_close(got[1].p_answer, ref.p_answer, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        got[1].states["blocks.1.hook_resid_post"],
        ref.states["blocks.1.hook_resid_post"],
        atol=1e-5,
        rtol=0,
    )
