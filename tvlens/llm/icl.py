"""In-context-learning accuracy of a pretrained LM by number of shots."""

from __future__ import annotations

import math
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


def binomial_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson's 95 % interval of a proportion ``hits / n`` (sound near 0 and 1, unlike the
    normal approximation)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_columns(scored: Scored) -> dict[str, float]:
    """Accuracy with its binomial interval (``ci_low``, ``ci_high``) and mean P(answer)."""
    n = int(scored.correct.numel())
    lo, hi = binomial_interval(int(scored.correct.sum()), n)
    return {
        "accuracy": scored.accuracy,
        "ci_low": lo,
        "ci_high": hi,
        "p_answer": float(scored.p_answer.mean()),
        "n": n,
    }


def icl_row(task: NLTask, shots: int, enc: Encoded, scored: Scored) -> dict:
    """One row of the ICL table (accuracy with its binomial interval, majority baseline)."""
    return {
        "task": task.name,
        "family": task.family,
        "shots": int(shots),
        **accuracy_columns(scored),
        "baseline": majority_baseline(enc),
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
    kw = {**run.prompt_kwargs, "mode": s.mode, "progress": progress}
    tasks = load_tasks(o.tasks)
    table = icl_table(run.model, tasks, o.shots, o.n_prompts, **kw)
    if o.draws > 1:  # other prompt draws of the same size: the spread a single draw hides
        draws = [table] + [
            icl_table(run.model, tasks, o.shots, o.n_prompts, **{**kw, "seed": s.seed + 1000 * i})
            for i in range(1, o.draws)
        ]
        acc = pd.concat([d["accuracy"] for d in draws], axis=1)
        table["draws_mean"] = acc.mean(axis=1)
        table["draws_sd"] = acc.std(axis=1)
        table["draws_min"] = acc.min(axis=1)
        table["draws_max"] = acc.max(axis=1)
        table["n_draws"] = o.draws
    return {"llm_icl": table}


def headline(tables: dict[str, pd.DataFrame], run: Any = None) -> dict[str, float]:
    """ICL accuracy of every task × shot count."""
    return {
        f"ICL {r.task} {r.shots}-shot (majority {r.baseline:.2f})": r.accuracy
        for r in tables["llm_icl"].itertuples()
    }


#: deprecated name of :func:`icl_table` (kept for one release)
icl_accuracy = icl_table
