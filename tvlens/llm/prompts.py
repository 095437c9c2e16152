"""Few-shot prompts, tokenisation that respects the tokenizer, and answer scoring.

A prompt is ``demo_1 SEP demo_2 SEP ... SEP query`` where a demo is ``query + answer`` of a
:class:`Template` (default ``"{x} ->"`` + ``" {y}"``, examples separated by a newline).
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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tvlens.hooks.core import check_hook_names
from tvlens.llm.tasks import NLTask

ScoreMode = Literal["first_token", "exact"]
HookBuilder = Callable[[Tensor, Tensor], list[tuple[str, Any]]]


@dataclass(frozen=True)
class Template:
    """How one example is written: ``query`` holds ``{x}``, ``answer`` holds ``{y}``."""

    name: str
    query: str = "{x} ->"
    answer: str = " {y}"
    separator: str = "\n"

    def demo(self, x: str, y: str) -> str:
        return self.query.format(x=x) + self.answer.format(y=y)


TEMPLATES: dict[str, Template] = {
    "arrow": Template("arrow", "{x} ->", " {y}", "\n"),
    "qa": Template("qa", "Q: {x}\nA:", " {y}", "\n\n"),
    "colon": Template("colon", "{x}:", " {y}", "\n"),
    "io": Template("io", "Input: {x}\nOutput:", " {y}", "\n\n"),
}


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
    template: str | Template = "arrow",
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
    template: str | Template = "arrow",
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


def answer_tokens(
    tokenizer: Any, prompt_text: str, answer_text: str
) -> tuple[list[int], list[int]]:
    """``(prompt_ids, answer_ids)`` with the answer tokenised in context.

    When the tokenizer merges across the prompt/answer boundary (prompt ids are then no
    prefix of the joint encoding), the answer is encoded on its own instead.
    """
    p = list(tokenizer(prompt_text)["input_ids"])
    full = list(tokenizer(prompt_text + answer_text)["input_ids"])
    if full[: len(p)] == p and len(full) > len(p):
        a = full[len(p) :]
    else:
        a = list(tokenizer(answer_text, add_special_tokens=False)["input_ids"])
    if not a:
        raise ValueError(f"answer {answer_text!r} encodes to no tokens.")
    return p, a


def encode(tokenizer: Any, prompts: Sequence[Prompt]) -> Encoded:
    """Tokenise ``prompts`` with their answers, right-padded with the pad (or EOS) token."""
    if not prompts:
        raise ValueError("no prompts to encode.")
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    rows, qpos, answers = [], [], []
    for pr in prompts:
        p, a = answer_tokens(tokenizer, pr.text, pr.answer_text)
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


def prompt_batches(
    enc: Encoded, batch_size: int, device: torch.device | str = "cpu", progress: bool = False
) -> Iterator[tuple[Int[Tensor, " b"], Int[Tensor, "b seq"], Int[Tensor, " b"], list[list[int]]]]:
    """``(rows, tokens, query_pos, answers)`` per batch; tokens are cut to the batch's width
    (the query plus the answer tokens but the last, all that scoring reads)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; use a positive batch size.")
    n = len(enc)
    for start in tqdm(range(0, n, batch_size), disable=None if progress else True, leave=False):
        rows = torch.arange(start, min(start + batch_size, n))
        qpos = enc.query_pos[rows]
        answers = [enc.answers[int(i)] for i in rows]
        width = max(int(q) + len(a) for q, a in zip(qpos.tolist(), answers, strict=True))
        yield rows, enc.tokens[rows, :width].to(device), qpos, answers


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


def _store_query_hook(store: dict[str, Tensor], key: str, qpos: Int[Tensor, " b"]) -> Any:
    """Keep ``act[b, qpos[b]]`` (float32, CPU) under ``key``: the *requested* name, since
    TL aliases (``attn.hook_z`` is ``attn.o.hook_in``) report another ``hook.name``."""

    def hook(act: Tensor, hook: Any = None) -> None:
        rows = torch.arange(act.shape[0], device=act.device)
        store[key] = act[rows, qpos.to(act.device)].detach().float().cpu()

    return hook


def model_device(model: Any) -> torch.device:
    """Where inputs go: ``cfg.device`` (the embedding's device when split), else the
    first parameter's."""
    dev = getattr(getattr(model, "cfg", None), "device", None)
    if dev is not None:
        return torch.device(dev)
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


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
    correct, probs = [], []
    stored: dict[str, list[Tensor]] = {n: [] for n in capture}
    for rows, tokens, qpos, answers in prompt_batches(enc, batch_size, device, progress):
        store: dict[str, Tensor] = {}
        fwd = list(hooks(rows, qpos)) if hooks is not None else []
        fwd += [(name, _store_query_hook(store, name, qpos)) for name in capture]
        logits = model.run_with_hooks(tokens, fwd_hooks=fwd) if fwd else model(tokens)
        first = torch.tensor([a[0] for a in answers])
        probs.append(answer_probs(logits, qpos, first).cpu())
        ok = score_answers(logits, qpos, answers, mode)
        correct.append(ok.cpu())
        for name in capture:
            stored[name].append(store[name])
    return Scored(
        correct=torch.cat(correct),
        p_answer=torch.cat(probs),
        states={k: torch.cat(v) for k, v in stored.items()},
    )


def tokenizer_of(model: Any) -> Any:
    """The bridge's tokenizer, with a clear error when the model has none."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError(
            "this model has no tokenizer; load it with tvlens.llm.load (which keeps the HF "
            "tokenizer) or pass a model directory that contains one."
        )
    return tok
