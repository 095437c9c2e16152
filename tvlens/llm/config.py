"""Settings of an LLM run (:class:`LLMConfig`) and the prompt templates it names, kept free
of heavy imports so that building the ``tvlens`` command line stays cheap."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


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


ANALYSES = ("icl", "task_vectors", "function_vectors", "decodability", "geometry")
#: prompts per task for decodability: half the paper's N = 100, which keeps the default
#: run of SmolLM2 / Gemma-3-270M on 2 CPU cores inside 10 / 20 minutes (``--n-td 100``
#: for the paper's size)
DEFAULT_PER_TASK = 50
#: shot counts for decodability (0 shots makes prompts of tasks sharing inputs identical)
DEFAULT_TD_SHOTS = (1, 2, 4, 8)
#: the prompt template of models tvlens has not measured: Todd et al.'s "Q: x / A: y". The
#: template decides whether task vectors work at all on small models: SmolLM2's work with
#: "qa" and barely with "x ->", Gemma-3-270M's the other way round (README, "Why task
#: vectors were weak"), so ``template="auto"`` takes a registered model's own
DEFAULT_TEMPLATE = "qa"


def resolve_template(template: str, model: str) -> str:
    """``template``, or for ``"auto"`` the one measured best on registered ``model``
    (:func:`tvlens.llm.weights.recommended_template`: ``qa`` for SmolLM2, ``arrow`` for
    Gemma-3-270M), else :data:`DEFAULT_TEMPLATE`."""
    if template != "auto":
        return template
    from tvlens.llm.weights import recommended_template

    return recommended_template(model) or DEFAULT_TEMPLATE


@dataclass
class LLMConfig:
    """Settings of one LLM run (defaults are sized for a GPU and a 2B–8B model)."""

    tasks: str = "antonym"  # tasks for ICL, task vectors and function vectors
    td_tasks: str = "pos,bitwise,null"  # tasks for decodability and geometry (grouped)
    analyses: tuple[str, ...] = ANALYSES
    icl_shots: tuple[int, ...] = (0, 1, 2, 4, 8)
    n_prompts: int = 50  # prompts per task for ICL, task vectors, FV mean and evaluation
    td_shots: tuple[int, ...] = DEFAULT_TD_SHOTS
    n_td: int = DEFAULT_PER_TASK  # prompts per task for decodability
    tv_shots: int = 5
    fv_shots: int = 10
    n_ie: int = 25  # shuffled-label prompts for the head indirect effects
    k_heads: int = 10
    n_mixture: int = 20  # prompts per mixing proportion
    layers: tuple[int, ...] | None = None  # layers for the sweeps (default: all)
    template: str = "auto"  # "auto": the registered model's template, else DEFAULT_TEMPLATE
    mode: str = "first_token"
    point: str = "resid_post"
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [a for a in self.analyses if a not in ANALYSES]
        if bad:
            raise ValueError(f"unknown analyses {bad}; choose from {list(ANALYSES)}.")
        for name in ("n_prompts", "n_td", "n_ie", "k_heads", "n_mixture", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1.")
        shots = (*self.icl_shots, *self.td_shots, self.tv_shots, self.fv_shots)
        if any(s < 0 for s in shots) or not self.td_shots or not self.icl_shots:
            raise ValueError("shot counts must be non-negative and the shot lists non-empty.")
        if self.n_td <= 10 and "decodability" in self.analyses:
            raise ValueError(f"n_td={self.n_td}: kNN with k = 10 needs more than 10 prompts.")
        if self.template != "auto" and self.template not in TEMPLATES:
            raise ValueError(f"template={self.template!r}; choose auto, {', '.join(TEMPLATES)}.")
        if self.mode not in ("first_token", "exact"):
            raise ValueError(f"mode={self.mode!r}; choose 'first_token' or 'exact'.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
