"""In-context-learning accuracy of a pretrained LM by number of shots."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from tvlens.llm.config import DEFAULT_TEMPLATE, ICLOptions
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
from tvlens.llm.tasks import NLTask, load_tasks
from tvlens.registry import driver


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


def icl_table(
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


@driver("icl", ICLOptions, kind="llm")
def analyse_icl(run: Any, o: ICLOptions, progress: bool) -> dict[str, pd.DataFrame]:
    """ICL accuracy of ``run``'s model by task × shots (``llm_icl``)."""
    s = run.settings
    table = icl_table(
        run.model,
        load_tasks(o.tasks),
        o.shots,
        o.n_prompts,
        mode=s.mode,
        progress=progress,
        **run.prompt_kwargs,
    )
    return {"llm_icl": table}


def headline(tables: dict[str, pd.DataFrame], run: Any = None) -> dict[str, float]:
    """ICL accuracy of every task × shot count."""
    return {
        f"ICL {r.task} {r.shots}-shot (majority {r.baseline:.2f})": r.accuracy
        for r in tables["llm_icl"].itertuples()
    }


#: deprecated name of :func:`icl_table` (kept for one release)
icl_accuracy = icl_table
