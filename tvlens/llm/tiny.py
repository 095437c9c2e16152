"""Tiny, randomly initialised Llama / Gemma-2 checkpoints with a real tokenizer, built locally.

They stand in for pretrained models where no model hub is reachable: tests and the demo
notebook boot them by path through :func:`tvlens.llm.load`, exactly like a downloaded model.
On random weights the analyses' numbers mean nothing, but every code path runs.

The tokenizer is a BPE trained with ``tokenizers`` on the text of the shipped tasks, saved as a
``PreTrainedTokenizerFast``. The Llama one is byte-level (``Ġ`` marks a leading space, like
Llama-3); the Gemma-2 one uses a metaspace (``▁``, like Gemma's SentencePiece), so both
leading-space conventions are exercised by answer scoring.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

ARCHES = ("llama", "gemma2")
SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>"]


def task_corpus() -> list[str]:
    """Few-shot style lines over every shipped task, for training the tiny tokenizer."""
    from tvlens.llm.tasks import load_tasks

    lines = []
    for task in load_tasks("all"):
        lines.extend(f"{x} -> {y}" for x, y in task.pairs)
        lines.extend(f"Q: {x}\nA: {y}" for x, y in task.pairs[:5])
    return lines


def build_tokenizer(
    arch: str = "llama", corpus: Iterable[str] | None = None, vocab_size: int = 800
):
    """A ``PreTrainedTokenizerFast`` (BPE trained on ``corpus``) that prepends ``<bos>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    _check_arch(arch)
    corpus = list(task_corpus() if corpus is None else corpus)
    if arch == "llama":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
        tok.decoder = decoders.Metaspace(prepend_scheme="never")
        alphabet = sorted({c for line in corpus for c in line.replace(" ", "▁")})
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def build_tiny_checkpoint(
    path: str | Path,
    arch: str = "llama",
    vocab_words: Iterable[str] | None = None,
    n_layers: int = 2,
    d_model: int = 32,
    n_heads: int = 4,
    seed: int = 0,
) -> Path:
    """Write a random ``arch`` checkpoint + tokenizer to ``path`` (a HF model directory).

    ``vocab_words`` is the text the tokenizer is trained on (default: the shipped tasks).
    Returns the directory, which :func:`tvlens.llm.load` boots like any local model.
    """
    from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

    _check_arch(arch)
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}.")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(arch, vocab_words)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=max(1, n_heads // 2),
        head_dim=d_model // n_heads,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Gemma2ForCausalLM(Gemma2Config(**common, sliding_window=64))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _check_arch(arch: str) -> None:
    if arch not in ARCHES:
        raise ValueError(f"arch {arch!r} is not one of {ARCHES}.")
