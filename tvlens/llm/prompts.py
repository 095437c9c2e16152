"""Few-shot prompts, tokenisation that respects the tokenizer, and answer scoring.

A prompt is ``demo_1 SEP demo_2 SEP ... SEP query`` where a demo is ``query + answer`` of a
:class:`Template` (default ``"qa"``: ``"Q: {x}\nA:"`` + ``" {y}"``, examples separated by a
blank line, as in Todd et al.; ``"arrow"`` is ``"{x} ->"`` + ``" {y}"``).
Demonstrations and their order are drawn with a seeded generator and never contain the
query's own pair.

Answers are tokenised *in context*: the prompt and prompt + answer are both encoded and the
answer tokens are the suffix of the latter, so a leading space ends up where the tokenizer
puts it (``Ġcold`` for byte-level BPE, ``▁cold`` for SentencePiece). Scoring is either the
first answer token (``"first_token"``, as in Hendel et al. and Todd et al.) or the whole answer
under teacher forcing (``"exact"``: every answer token is the argmax, which is the same as
greedy decoding producing the answer).

Batches are right-padded; the query token (the last prompt token) of row ``b`` is at
``query_pos[b]``. For a causal model right padding changes nothing before the pad.

**BOS.** A prompt starts the way the model's own HF tokenizer starts a text (``bos="auto"``):
Gemma's tokenizer prepends ``<bos>``, SmolLM2's prepends nothing (it was pretrained on raw
text; TransformerBridge forces ``add_bos_token=True``, which puts SmolLM2's chat token
``<|im_start|>`` in front of every prompt). ``"always"`` / ``"never"`` override it.

**Speed.** :func:`run_prompts` batches prompts of similar length together (fewer pad
positions) and unembeds only the positions it scores (``logits_to_keep``), which matters for
Gemma's 262k-token unembedding.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tvlens.hooks.core import check_hook_names, model_device
from tvlens.hooks.rowwise import gather_rows_hook, store_rows_hook
from tvlens.llm.config import DEFAULT_TEMPLATE, TEMPLATES, Template
from tvlens.llm.tasks import NLTask

ScoreMode = Literal["first_token", "exact"]
HookBuilder = Callable[[Tensor, Tensor], list[tuple[str, Any]]]
log = logging.getLogger(__name__)


def get_template(template: str | Template) -> Template:
    if isinstance(template, Template):
        return template
    if template not in TEMPLATES:
        raise KeyError(f"unknown template {template!r}; choose one of {sorted(TEMPLATES)}.")
    return TEMPLATES[template]


@dataclass(frozen=True)
class Prompt:
    """One prompt: its text (ending at the query), the expected answer and its demos.

    ``target`` is the pair a *source* prompt serves (Hendel et al.'s ``S + x'`` is built for
    the zero-shot query ``x``); for ordinary prompts it is ``(query, answer)``.
    """

    task: str
    text: str
    query: str
    answer: str
    answer_text: str
    shots: int
    demos: tuple[tuple[str, str], ...] = ()
    target: tuple[str, str] | None = None


def make_prompt(
    task: NLTask,
    query: tuple[str, str],
    demos: Sequence[tuple[str, str]],
    template: str | Template = DEFAULT_TEMPLATE,
) -> Prompt:
    """A prompt from explicit demonstrations and a query pair."""
    t = get_template(template)
    parts = [t.demo(x, y) for x, y in demos] + [t.query.format(x=query[0])]
    return Prompt(
        task=task.name,
        text=t.separator.join(parts),
        query=query[0],
        answer=query[1],
        answer_text=t.answer.format(y=query[1]),
        shots=len(demos),
        demos=tuple(demos),
        target=(query[0], query[1]),
    )


def sample_prompts(
    task: NLTask,
    n_prompts: int,
    shots: int,
    template: str | Template = DEFAULT_TEMPLATE,
    seed: int = 0,
    corrupt: bool = False,
    dummy_query: bool = False,
) -> list[Prompt]:
    """``n_prompts`` prompts with ``shots`` demonstrations each, reproducible from ``seed``.

    Queries walk through a seeded permutation of the task's pairs (so the same seed gives the
    same queries for every shot count and for tasks sharing inputs). Demos are drawn from
    the other pairs. ``corrupt`` shuffles the demo labels (Todd et al.'s corrupted prompts).
    ``dummy_query`` replaces the query by another pair outside the demos while keeping the
    original query as the answer key (Hendel et al.'s source prompts, ``S + x'``).
    """
    n = len(task)
    if shots < 0 or shots + 1 + int(dummy_query) > n:
        raise ValueError(
            f"task {task.name!r} has {n} pairs; {shots} shots need at least "
            f"{shots + 1 + int(dummy_query)}."
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    prompts = []
    for i in range(n_prompts):
        q = int(order[i % n])
        pool = np.delete(np.arange(n), q)
        picked = rng.choice(pool, size=shots + int(dummy_query), replace=False)
        demos = [task.pairs[j] for j in picked[:shots]]
        if corrupt and shots > 1:
            labels = [y for _, y in demos]
            perm = rng.permutation(shots)
            demos = [(x, labels[p]) for (x, _), p in zip(demos, perm, strict=True)]
        query = task.pairs[q]
        if dummy_query:
            p = make_prompt(task, task.pairs[int(picked[-1])], demos, template)
            prompts.append(dataclasses.replace(p, target=(query[0], query[1])))
        else:
            prompts.append(make_prompt(task, query, demos, template))
    return prompts


@dataclass
class Encoded:
    """Right-padded ``prompt + answer`` tokens with the query position of every row."""

    tokens: Int[Tensor, "batch seq"]
    query_pos: Int[Tensor, " batch"]
    answers: list[list[int]]
    prompts: list[Prompt] = field(default_factory=list)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def first_answer(self) -> Int[Tensor, " batch"]:
        return torch.tensor([a[0] for a in self.answers])


BosPolicy = Literal["auto", "always", "never"]
_HF_BOS: dict[str, bool] = {}


def _detects_bos(tokenizer: Any) -> bool:
    ids = list(tokenizer("a")["input_ids"])
    bos = tokenizer.bos_token_id
    return len(ids) > 1 and bos is not None and ids[0] == bos


def hf_prepends_bos(tokenizer: Any) -> bool:
    """Whether the model's HF tokenizer, as shipped, starts a text with BOS.

    TransformerBridge reloads tokenizers with ``add_bos_token=True``, so the bridge's own
    tokenizer cannot say; the shipped one is reloaded (local files only) from
    ``tokenizer.name_or_path``. Falls back to the tokenizer's current behaviour.
    """
    key = str(getattr(tokenizer, "name_or_path", "") or "")
    if key not in _HF_BOS:
        shipped = None
        if key:
            try:
                from transformers import AutoTokenizer

                shipped = AutoTokenizer.from_pretrained(key, local_files_only=True)
            except Exception:  # noqa: BLE001 - not a local tokenizer: keep the given one
                shipped = None
        _HF_BOS[key] = _detects_bos(shipped if shipped is not None else tokenizer)
    return _HF_BOS[key]


def _wants_bos(tokenizer: Any, bos: BosPolicy) -> bool:
    if bos not in ("auto", "always", "never"):
        raise ValueError(f"bos={bos!r}; choose 'auto', 'always' or 'never'.")
    if bos == "auto":
        return hf_prepends_bos(tokenizer)
    if bos == "always" and tokenizer.bos_token_id is None:
        raise ValueError("bos='always' but the tokenizer has no BOS token; use 'never'.")
    return bos == "always"


def _ids(tokenizer: Any, text: str, with_bos: bool) -> list[int]:
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return [int(tokenizer.bos_token_id), *ids] if with_bos else ids


def answer_tokens(
    tokenizer: Any, prompt_text: str, answer_text: str, bos: BosPolicy = "auto"
) -> tuple[list[int], list[int]]:
    """``(prompt_ids, answer_ids)`` with the answer tokenised in context.

    When the tokenizer merges across the prompt/answer boundary (prompt ids are then no
    prefix of the joint encoding), the answer is encoded on its own instead. An answer whose
    first token is only whitespace (``" 42"`` → ``Ġ``, ``4``, ``2``) has that token moved to
    the prompt, so first-token scoring reads a token that differs between answers. ``bos``
    says whether the prompt starts with the BOS token (see the module docstring).
    """
    with_bos = _wants_bos(tokenizer, bos)
    p = _ids(tokenizer, prompt_text, with_bos)
    full = _ids(tokenizer, prompt_text + answer_text, with_bos)
    if full[: len(p)] == p and len(full) > len(p):
        a = full[len(p) :]
    else:
        a = list(tokenizer(answer_text, add_special_tokens=False)["input_ids"])
    if not a:
        raise ValueError(f"answer {answer_text!r} encodes to no tokens.")
    if len(a) > 1 and not tokenizer.decode(a[:1]).strip():
        # a bare space token (``Ġ`` before digits in Llama-3/SmolLM2, ``▁`` in Gemma) is the
        # same for every answer: it joins the prompt and the first *content* token is scored
        p, a = p + a[:1], a[1:]
    if not p:
        raise ValueError(f"prompt {prompt_text!r} encodes to no tokens; use bos='always'.")
    return p, a


def encode(tokenizer: Any, prompts: Sequence[Prompt], bos: BosPolicy = "auto") -> Encoded:
    """Tokenise ``prompts`` with their answers, right-padded with the pad (or EOS) token."""
    if not prompts:
        raise ValueError("no prompts to encode.")
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    rows, qpos, answers = [], [], []
    for pr in prompts:
        p, a = answer_tokens(tokenizer, pr.text, pr.answer_text, bos)
        rows.append(p + a)
        qpos.append(len(p) - 1)
        answers.append(a)
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), int(pad), dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.tensor(r)
    return Encoded(tokens, torch.tensor(qpos), answers, list(prompts))


@dataclass
class Scored:
    """Per-prompt results of one pass: correctness, P(first answer token), captures."""

    correct: Bool[Tensor, " n"]
    p_answer: Float[Tensor, " n"]
    states: dict[str, Float[Tensor, "n ..."]]

    @property
    def accuracy(self) -> float:
        return float(self.correct.float().mean())


def length_order(enc: Encoded) -> Int[Tensor, " n"]:
    """Prompt indices sorted by query position (stable): batches of similar length."""
    return torch.argsort(enc.query_pos, stable=True)


def prompt_batches(
    enc: Encoded,
    batch_size: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
    order: Int[Tensor, " n"] | None = None,
    answer_tokens_read: int | None = None,
) -> Iterator[tuple[Int[Tensor, " b"], Int[Tensor, "b seq"], Int[Tensor, " b"], list[list[int]]]]:
    """``(rows, tokens, query_pos, answers)`` per batch of the prompts in ``order`` (default:
    as given); tokens are cut to the batch's width: the query plus the answer tokens but the
    last (all that scoring reads), or only ``answer_tokens_read - 1`` of them."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; use a positive batch size.")
    n = len(enc)
    order = torch.arange(n) if order is None else order
    for start in tqdm(range(0, n, batch_size), disable=None if progress else True, leave=False):
        rows = order[start : start + batch_size]
        qpos = enc.query_pos[rows]
        answers = [enc.answers[int(i)] for i in rows]
        width = max(
            int(q) + (len(a) if answer_tokens_read is None else min(len(a), answer_tokens_read))
            for q, a in zip(qpos.tolist(), answers, strict=True)
        )
        yield rows, enc.tokens[rows, :width].to(device), qpos, answers


def scored_positions(
    qpos: Int[Tensor, " b"], answers: Sequence[Sequence[int]], mode: ScoreMode = "first_token"
) -> tuple[Int[Tensor, " k"], Int[Tensor, "b n"]]:
    """The positions scoring reads, ``keep`` (sorted, unique), and per row the index into
    ``keep`` of its positions ``q, q+1, ..`` (clamped to the row's last answer token)."""
    n = 1 if mode == "first_token" else max(len(a) for a in answers)
    pos = [
        [int(q) + min(t, (1 if mode == "first_token" else len(a)) - 1) for t in range(n)]
        for q, a in zip(qpos.tolist(), answers, strict=True)
    ]
    keep = sorted({p for row in pos for p in row})
    where = {p: i for i, p in enumerate(keep)}
    return torch.tensor(keep), torch.tensor([[where[p] for p in row] for row in pos])


def logits_at(
    model: Any,
    tokens: Int[Tensor, "b seq"],
    keep: Int[Tensor, " k"],
    fwd_hooks: Sequence[tuple[str, Any]] = (),
) -> Float[Tensor, "b k vocab"]:
    """The bridge's logits at positions ``keep`` only: HF's ``logits_to_keep`` skips the
    unembedding elsewhere (exact: the unembedding acts position by position)."""
    kw = {"logits_to_keep": keep.to(tokens.device)}
    if fwd_hooks:
        return model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks), **kw)
    return model(tokens, **kw)


def answer_probs(
    logits: Float[Tensor, "b seq vocab"], qpos: Int[Tensor, " b"], first: Int[Tensor, " b"]
) -> Float[Tensor, " b"]:
    """P(first answer token) at each row's query position (softmax in float32)."""
    b = torch.arange(logits.shape[0], device=logits.device)
    q, f = qpos.to(logits.device), first.to(logits.device)
    return logits[b, q].float().softmax(-1)[b, f]


def score_answers(
    logits: Float[Tensor, "b seq vocab"],
    qpos: Int[Tensor, " b"],
    answers: Sequence[Sequence[int]],
    mode: ScoreMode = "first_token",
) -> Bool[Tensor, " b"]:
    """Correctness per row: the first answer token is the argmax at the query
    (``first_token``), or every answer token is the argmax under teacher forcing
    (``exact``)."""
    ok = torch.zeros(len(answers), dtype=torch.bool)
    for j, (q, a) in enumerate(zip(qpos.tolist(), answers, strict=True)):
        n = 1 if mode == "first_token" else len(a)
        pred = logits[j, q : q + n].argmax(-1).cpu()
        ok[j] = bool((pred == torch.tensor(a[:n])).all())
    return ok


@torch.no_grad()
def run_prompts(
    model: Any,
    enc: Encoded,
    hooks: HookBuilder | None = None,
    capture: Sequence[str] = (),
    mode: ScoreMode = "first_token",
    batch_size: int = 16,
    progress: bool = False,
) -> Scored:
    """Run ``enc`` through ``model`` (a ``TransformerBridge``) and score the answers.

    ``hooks(rows, query_pos)`` returns TL ``fwd_hooks`` for the batch holding prompt indices
    ``rows`` (so per-prompt vectors can be patched); ``capture`` lists hook names whose
    activation at each row's query token is returned in ``Scored.states``.
    """
    if mode not in ("first_token", "exact"):
        raise ValueError(f"mode={mode!r}; choose 'first_token' or 'exact'.")
    capture = check_hook_names(model, capture)
    device = model_device(model)
    n = len(enc)
    correct = torch.zeros(n, dtype=torch.bool)
    probs = torch.zeros(n)
    stored: dict[str, Tensor] = {}
    read = 1 if mode == "first_token" else None
    batches = prompt_batches(enc, batch_size, device, progress, length_order(enc), read)
    for rows, tokens, qpos, answers in batches:
        store: dict[str, Tensor] = {}
        fwd = list(hooks(rows, qpos)) if hooks is not None else []
        fwd += [(name, store_rows_hook(store, qpos, key=name)) for name in capture]
        keep, where = scored_positions(qpos, answers, mode)
        kept = logits_at(model, tokens, keep, fwd)  # [b, k, vocab]
        local = kept[torch.arange(len(rows), device=kept.device)[:, None], where.to(kept.device)]
        first = torch.tensor([a[0] for a in answers])
        zero = torch.zeros(len(rows), dtype=torch.long)
        probs[rows] = answer_probs(local, zero, first).cpu()
        correct[rows] = score_answers(local, zero, answers, mode).cpu()
        for name in capture:
            if name not in stored:
                stored[name] = torch.zeros(n, *store[name].shape[1:])
            stored[name][rows] = store[name]
    return Scored(correct=correct, p_answer=probs, states=stored)


def nested_prompts(
    task: NLTask,
    n_prompts: int,
    shots: Sequence[int],
    template: str | Template = DEFAULT_TEMPLATE,
    seed: int = 0,
) -> dict[int, list[Prompt]]:
    """Prompts for every shot count in ``shots`` that are prefixes of one another.

    Prompt ``i`` at ``s`` shots is the first ``s`` demonstrations of prompt ``i`` at
    ``max(shots)`` shots (:func:`sample_prompts`) followed by the input of its
    ``(s + 1)``-th: in a causal model its query-token state and logits are those of the long
    prompt at that position, so :func:`run_nested` scores every shot count in one pass.
    Queries of the longest prompts walk through the task's pairs as in
    :func:`sample_prompts`; shorter ones query a demonstration of the longest.
    """
    shots = sorted({int(s) for s in shots})
    if not shots or shots[0] < 0:
        raise ValueError(f"shots={shots}: give one or more non-negative shot counts.")
    longest = sample_prompts(task, n_prompts, shots[-1], template, seed)
    out = {shots[-1]: longest}
    for s in shots[:-1]:
        chains = [(*p.demos, (p.query, p.answer)) for p in longest]
        out[s] = [make_prompt(task, c[s], c[:s], template) for c in chains]
    return out


def _subset(enc: Encoded, rows: Sequence[int]) -> Encoded:
    idx = torch.as_tensor(list(rows), dtype=torch.long)
    prompts = [enc.prompts[i] for i in rows] if enc.prompts else []
    return Encoded(enc.tokens[idx], enc.query_pos[idx], [enc.answers[i] for i in rows], prompts)


def _read_len(enc: Encoded, i: int, mode: ScoreMode) -> int:
    """Tokens row ``i`` needs in front of its last scored position, inclusive."""
    return int(enc.query_pos[i]) + (1 if mode == "first_token" else len(enc.answers[i]))


@torch.no_grad()
def run_nested(
    model: Any,
    encs: dict[int, Encoded],
    capture: Sequence[str] = (),
    mode: ScoreMode = "first_token",
    batch_size: int = 16,
    progress: bool = False,
    atol: float = 1e-4,
) -> dict[int, Scored]:
    """:func:`run_prompts` for each shot count of ``encs`` (from :func:`nested_prompts`),
    from one pass over the longest prompts.

    Row ``i`` of a shorter shot count is read off the longest prompt ``i`` where its tokens
    (prompt and scored answer tokens) are a prefix of it; rows the tokenizer merged across
    the boundary are run on their own. Logits come from the last block's output at the
    scored positions only (:func:`tvlens.hooks.suffix.unembed`); the first batch checks
    that against the bridge's own logits and falls back to separate passes if they differ.
    """
    from tvlens.hooks.suffix import unembed

    if mode not in ("first_token", "exact"):
        raise ValueError(f"mode={mode!r}; choose 'first_token' or 'exact'.")
    if not encs:
        raise ValueError("no shot counts to run.")
    capture = check_hook_names(model, capture)
    smax = max(encs)
    full = encs[smax]
    n = len(full)
    if any(len(e) != n for e in encs.values()):
        raise ValueError(
            f"every shot count needs {n} prompts, got {[len(e) for e in encs.values()]}."
        )
    shots = sorted(encs)
    inside: dict[int, list[bool]] = {}
    for s in shots:
        e, flags = encs[s], []
        for i in range(n):
            k = _read_len(e, i, mode)
            flags.append(
                k <= full.tokens.shape[1] and bool((e.tokens[i, :k] == full.tokens[i, :k]).all())
            )
        inside[s] = flags
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    n_read = 1 if mode == "first_token" else max(len(a) for e in encs.values() for a in e.answers)
    correct = {s: torch.zeros(n, dtype=torch.bool) for s in shots}
    probs = {s: torch.zeros(n) for s in shots}
    stored: dict[int, dict[str, Tensor]] = {s: {} for s in shots}
    device = model_device(model)
    order = length_order(full)
    checked = False
    for start in tqdm(range(0, n, batch_size), disable=None if progress else True, leave=False):
        rows = order[start : start + batch_size].tolist()
        ok = [[inside[s][i] for s in shots] for i in rows]
        width = max(
            _read_len(encs[s], i, mode)
            for i, flags in zip(rows, ok, strict=True)
            for s, f in zip(shots, flags, strict=True)
            if f
        )
        # per row × shot: the query position (or that of the longest prompt when not inside)
        q = torch.tensor(
            [
                [
                    int(encs[s].query_pos[i]) if f else int(full.query_pos[i])
                    for s, f in zip(shots, fl, strict=True)
                ]
                for i, fl in zip(rows, ok, strict=True)
            ]
        )
        lens = torch.tensor(
            [[len(encs[s].answers[i]) if mode == "exact" else 1 for s in shots] for i in rows]
        )
        t = torch.arange(n_read)
        read = (q[:, :, None] + torch.minimum(t, lens[:, :, None] - 1)).clamp(max=width - 1)
        store: dict[str, Tensor] = {}
        fwd = [(name, gather_rows_hook(store, name, q)) for name in capture]
        fwd.append((last, gather_rows_hook(store, last, read)))
        if not checked:  # the bridge's own logits at one position, to check ours against
            fwd.append(
                (last, gather_rows_hook(store, "check", torch.full((len(rows), 1), width - 1)))
            )
        tokens = full.tokens[rows, :width].to(device)
        ref = logits_at(model, tokens, torch.tensor([width - 1]), fwd)[:, 0]
        final = store[last].view(len(rows), len(shots), n_read, -1)
        logits = unembed(model, final)  # [b, shots, n_read, vocab]
        if not checked:
            ours = unembed(model, store["check"][:, 0])
            if not torch.allclose(ours.float(), ref.float(), atol=atol, rtol=1e-4):
                log.warning(
                    "run_nested: the last block's output does not reproduce the bridge's "
                    "logits (max |diff| %.2e); running every shot count separately.",
                    float((ours.float() - ref.float()).abs().max()),
                )
                return {
                    s: run_prompts(
                        model, encs[s], capture=capture, mode=mode, batch_size=batch_size
                    )
                    for s in shots
                }
            checked = True
        for j, s in enumerate(shots):
            local = logits[:, j]  # [b, n_read, vocab]
            answers = [encs[s].answers[i] for i in rows]
            first = torch.tensor([a[0] for a in answers])
            zero = torch.zeros(len(rows), dtype=torch.long)
            idx = torch.tensor(rows)
            probs[s][idx] = answer_probs(local, zero, first).cpu()
            correct[s][idx] = score_answers(local, zero, answers, mode).cpu()
            for name in capture:
                value = store[name].view(len(rows), len(shots), -1)[:, j].float().cpu()
                if name not in stored[s]:
                    stored[s][name] = torch.zeros(n, value.shape[-1])
                stored[s][name][idx] = value
    out = {}
    for s in shots:
        alone = [i for i in range(n) if not inside[s][i]]
        if alone:
            log.info(
                "run_nested: %d of %d prompts at %d shots are not token prefixes of "
                "their longest prompt; running them on their own.",
                len(alone),
                n,
                s,
            )
            sub = run_prompts(
                model, _subset(encs[s], alone), capture=capture, mode=mode, batch_size=batch_size
            )
            idx = torch.tensor(alone)
            correct[s][idx], probs[s][idx] = sub.correct, sub.p_answer
            for name in capture:
                stored[s].setdefault(name, torch.zeros(n, sub.states[name].shape[-1]))
                stored[s][name][idx] = sub.states[name]
        out[s] = Scored(correct=correct[s], p_answer=probs[s], states=stored[s])
    return out


def tokenizer_of(model: Any) -> Any:
    """The bridge's tokenizer, with a clear error when the model has none."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError(
            "this model has no tokenizer; load it with tvlens.llm.load (which keeps the HF "
            "tokenizer) or pass a model directory that contains one."
        )
    return tok


class _Stop(Exception):
    """Raised by a hook to end a forward early (only its input was wanted)."""


def _first_resid(model: Any, tokens: Int[Tensor, "b seq"]) -> Float[Tensor, "b seq d"]:
    """``blocks.0.hook_resid_pre`` of ``tokens`` without running the blocks."""
    got: dict[str, Tensor] = {}

    def grab(act: Tensor, hook: Any = None) -> None:
        got["x"] = act.detach()
        raise _Stop

    try:
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_pre", grab)])
    except _Stop:
        pass
    if "x" not in got:
        raise RuntimeError("blocks.0.hook_resid_pre did not fire; this bridge is unsupported.")
    return got["x"]


class QueryReplay:
    """One batch of prompts, run once, then rerun from any layer with hooks acting at each
    row's query token; only the query token is unembedded.

    With ``engine="auto"`` the reruns go through the patching engine's
    :class:`~tvlens.hooks.suffix.BridgeSuffixRunner`: blocks before the hooked layer are not
    rerun, and (when the runner verified it exact) neither are positions before the batch's
    first query token, whose keys and values come from the unpatched run. Otherwise, or when
    the runner refuses, every rerun is a full ``run_with_hooks`` forward. Hooks are built by
    the caller for positions :attr:`pos` (suffix-relative or absolute, one per stacked row).
    """

    def __init__(
        self,
        model: Any,
        tokens: Int[Tensor, "b seq"],
        qpos: Int[Tensor, " b"],
        engine: Literal["auto", "full"] = "auto",
    ) -> None:
        if engine not in ("auto", "full"):
            raise ValueError(f"engine={engine!r}; choose 'auto' or 'full'.")
        self.model, self.tokens, self.qpos = model, tokens, qpos.cpu()
        self.keep = torch.unique(self.qpos)  # sorted
        self.where = torch.searchsorted(self.keep, self.qpos)
        b = torch.arange(len(qpos))
        self.runner: Any = None
        self.resid: dict[int, Tensor] = {}
        self.p0, self.how = 0, "full"
        if engine == "auto":
            from tvlens.hooks.suffix import BridgeSuffixRunner

            runner = BridgeSuffixRunner(model)
            n = model.cfg.n_layers

            def saver(layer: int):
                def hook(act: Tensor, hook: Any = None) -> None:
                    self.resid.setdefault(layer, act.detach())  # the recorded forward's

                return hook

            hooks = [(f"blocks.{i}.hook_resid_pre", saver(i)) for i in range(n)]
            with model.hooks(fwd_hooks=hooks):
                logits = runner.prepare(tokens, _first_resid(model, tokens), positions=self.keep)
            if runner.replay_ok:
                self.runner = runner
                self.p0 = int(self.qpos.min()) if runner.suffix_ok else 0
                self.how = "suffix" if self.p0 else "replay"
        else:
            logits = logits_at(model, tokens, self.keep)
        self.base: Float[Tensor, "b vocab"] = logits[b, self.where.to(logits.device)]

    @property
    def pos(self) -> Int[Tensor, " b"]:
        """Where each row's query token sits in the tensors hooks see."""
        return self.qpos - self.p0 if self.runner is not None else self.qpos

    def run(self, layer: int, fwd_hooks: Sequence[tuple[str, Any]], copies: int = 1) -> Tensor:
        """Query-token logits ``[copies · b, vocab]`` with ``fwd_hooks`` on (hooks at
        ``layer`` or later), for ``copies`` stacked copies of the batch (copy-major)."""
        pos = self.pos.repeat(copies)
        if self.runner is not None and (copies == 1 or self.runner.batch_ok):
            x = self.resid[layer][:, self.p0 :]
            if copies > 1:
                x = x.repeat(copies, 1, 1)
            out = self.runner.run(x, layer, self.p0, copies, fwd_hooks, read_rows=pos[:, None])
            return out[:, 0]
        tokens = self.tokens.repeat(copies, 1) if copies > 1 else self.tokens
        kept = logits_at(self.model, tokens, self.keep, fwd_hooks)
        return kept[torch.arange(len(pos)), self.where.repeat(copies).to(kept.device)]


def query_scores(
    logits: Float[Tensor, "b vocab"], first: Int[Tensor, " b"]
) -> tuple[Bool[Tensor, " b"], Float[Tensor, " b"]]:
    """First-token correctness (argmax) and P(first answer token) from query-token logits."""
    first = first.to(logits.device)
    probs = logits.float().softmax(-1)
    p = probs.gather(1, first[:, None])[:, 0]
    return (logits.argmax(-1) == first).cpu(), p.cpu()


@torch.no_grad()
def layer_sweep(
    model: Any,
    enc: Encoded,
    layers: Sequence[int],
    hooks_at: Callable[[int, Tensor, Tensor], list[tuple[str, Any]]],
    batch_size: int = 16,
    engine: Literal["auto", "full"] = "auto",
    progress: bool = False,
    desc: str = "layers",
    mode: ScoreMode = "first_token",
) -> dict[int, Scored]:
    """Scores of ``enc`` with ``hooks_at(layer, rows, pos)`` on, for each layer.

    ``hooks_at`` returns hooks acting on ``layer`` (or later) for prompts ``rows`` whose query
    tokens sit at ``pos``. For first-token scoring each batch runs once and is rerun from each
    layer by :class:`QueryReplay`; the result equals :func:`run_prompts` with the same hooks,
    which is what other modes run, one full pass per layer.
    """
    if mode != "first_token":
        return {
            layer: run_prompts(
                model,
                enc,
                hooks=lambda idx, qpos, layer=layer: hooks_at(layer, idx, qpos),
                mode=mode,
                batch_size=batch_size,
            )
            for layer in tqdm(layers, desc=desc, disable=None if progress else True)
        }
    n = len(enc)
    correct = {layer: torch.zeros(n, dtype=torch.bool) for layer in layers}
    probs = {layer: torch.zeros(n) for layer in layers}
    n_batches = -(-n // batch_size)
    bar = tqdm(total=n_batches * len(layers), desc=desc, disable=None if progress else True)
    device = model_device(model)
    for rows, tokens, qpos, answers in prompt_batches(
        enc, batch_size, device, order=length_order(enc), answer_tokens_read=1
    ):
        first = torch.tensor([a[0] for a in answers])
        replay = QueryReplay(model, tokens, qpos, engine)
        for layer in layers:
            ok, p = query_scores(replay.run(layer, hooks_at(layer, rows, replay.pos)), first)
            correct[layer][rows], probs[layer][rows] = ok, p
            bar.update(1)
    bar.close()
    return {layer: Scored(correct[layer], probs[layer], {}) for layer in layers}
