"""In-context-learning accuracy of a pretrained LM by number of shots."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from tvlens.llm.config import DEFAULT_TEMPLATE
from tvlens.llm.prompts import (
    Encoded,
    Scored,
    ScoreMode,
    Template,
    encode,
    run_prompts,
    sample_prompts,
    tokenizer_of,
)
from tvlens.llm.tasks import NLTask


def majority_baseline(enc: Encoded) -> float:
    """Accuracy of always answering the commonest first answer token among the queries
    (what a model that ignores the input could reach)."""
    firsts = enc.first_answer.tolist()
    return Counter(firsts).most_common(1)[0][1] / len(firsts)


def icl_row(task: NLTask, shots: int, enc: Encoded, scored: Scored) -> dict:
    """One row of the ICL table."""
    return {
        "task": task.name,
        "family": task.family,
        "shots": int(shots),
        "accuracy": scored.accuracy,
        "p_answer": float(scored.p_answer.mean()),
        "baseline": majority_baseline(enc),
        "n": len(enc),
    }


def icl_accuracy(
    model: Any,
    tasks: Sequence[NLTask],
    shots: Sequence[int] = (0, 1, 2, 4, 8),
    n_prompts: int = 50,
    template: str | Template = DEFAULT_TEMPLATE,
    seed: int = 0,
    mode: ScoreMode = "first_token",
    batch_size: int = 16,
    progress: bool = False,
) -> pd.DataFrame:
    """Accuracy by task and shot count: columns ``task, family, shots, accuracy, p_answer,
    baseline, n``.

    ``p_answer`` is the mean probability of the first answer token; ``baseline`` is
    :func:`majority_baseline`. The same queries are used for every shot count.
    """
    tok = tokenizer_of(model)
    rows = []
    grid = [(t, s) for t in tasks for s in shots]
    for task, s in tqdm(grid, desc="ICL", disable=None if progress else True):
        enc = encode(tok, sample_prompts(task, n_prompts, s, template, seed))
        scored = run_prompts(model, enc, mode=mode, batch_size=batch_size)
        rows.append(icl_row(task, s, enc, scored))
    return pd.DataFrame(rows)
