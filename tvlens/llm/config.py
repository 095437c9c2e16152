"""The options of every LLM analysis and the settings of an LLM run (:class:`LLMSettings`),
and the prompt templates they name."""

from __future__ import annotations

from dataclasses import dataclass

from tvlens.errors import ConfigError
from tvlens.options import Options, option


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


# ----------------------------------------------------------------------------- options
# Each LLM analysis declares its options here, once (a light module: ``tvlens llm`` builds
# its flags from these classes without importing torch). Fields with the same flag and
# default share one flag (``--task``, ``--layers``, ``--n-prompts``).
_TASKS_HELP = (
    "task(s): names, a family (word, pos, bitwise, null), 'all', or a task JSON path; "
    "comma-separated"
)
_LAYERS_HELP = "layers to sweep"


def _check_tasks(options: Options) -> None:
    """Read the options' task spec now (names, families, JSON files), so a bad one fails
    before any analysis runs or any earlier result is cleared."""
    from tvlens.llm.tasks import load_tasks

    load_tasks(options.tasks)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class LLMSettings(Options):
    """How every analysis of one LLM run writes and scores prompts (recorded in the run's
    ``config.json`` and in every table's provenance)."""

    section = "llm"
    template: str = option(
        "auto",
        "prompt template: auto (the one measured best for a registered model, "
        f"{DEFAULT_TEMPLATE} otherwise) or one of {', '.join(TEMPLATES)}",
        choices=("auto", *TEMPLATES),
    )
    mode: str = option("first_token", "answer scoring", choices=("first_token", "exact"))
    point: str = option("resid_post", "hook point of the states and patches")
    batch_size: int = option(16, "prompts per forward pass", min=1)
    seed: int = option(0, "seed of every prompt draw")


@dataclass(frozen=True)
class ICLOptions(Options):
    """ICL accuracy by task × shots."""

    section = "icl"
    tasks: str = option("antonym", _TASKS_HELP, flag="--task")
    shots: tuple[int, ...] = option((0, 1, 2, 4, 8), "ICL shot counts", min=0)
    n_prompts: int = option(50, "prompts per task", min=1)

    def check(self) -> None:
        if not self.shots:
            raise ConfigError("icl.shots is empty; give at least one shot count.")
        _check_tasks(self)


@dataclass(frozen=True)
class TaskVectorOptions(Options):
    """Hendel et al.'s task vectors patched into zero-shot queries, by layer."""

    section = "task_vectors"
    tasks: str = option("antonym", _TASKS_HELP, flag="--task")
    layers: tuple[int, ...] | None = option(None, _LAYERS_HELP, min=0)
    shots: int = option(5, "demonstrations of the source prompts", flag="--tv-shots", min=0)
    n_prompts: int = option(50, "prompts per task", min=1)

    def check(self) -> None:
        _check_tasks(self)


@dataclass(frozen=True)
class FunctionVectorOptions(Options):
    """Todd et al.'s function vectors: head indirect effects, then the vector by layer."""

    section = "function_vectors"
    tasks: str = option("antonym", _TASKS_HELP, flag="--task")
    layers: tuple[int, ...] | None = option(None, _LAYERS_HELP, min=0)
    shots: int = option(10, "demonstrations per prompt", flag="--fv-shots", min=0)
    n_prompts: int = option(50, "prompts per task (mean activations and evaluation)", min=1)
    n_ie: int = option(25, "shuffled-label prompts for the head indirect effects", min=1)
    k_heads: int = option(10, "heads in the function vector", min=1)

    def check(self) -> None:
        _check_tasks(self)


@dataclass(frozen=True)
class DecodabilityOptions(Options):
    """Task decodability by group × layer × shots, and its correlation with ICL."""

    section = "decodability"
    tasks: str = option("pos,bitwise,null", "tasks (grouped by family)", flag="--td-tasks")
    layers: tuple[int, ...] | None = option(None, _LAYERS_HELP, min=0)
    shots: tuple[int, ...] = option(DEFAULT_TD_SHOTS, "shot counts", flag="--td-shots", min=0)
    n_prompts: int = option(DEFAULT_PER_TASK, "prompts per task", flag="--n-td", min=1)

    def check(self) -> None:
        _check_tasks(self)
        if not self.shots:
            raise ConfigError("decodability.shots is empty; give at least one shot count.")
        if self.n_prompts <= 10:
            raise ConfigError(
                f"decodability.n_prompts={self.n_prompts}: kNN with k = 10 needs more than "
                "10 prompts per task (--n-td)."
            )


@dataclass(frozen=True)
class GeometryOptions(Options):
    """PCA of query states by task and the simplex fit of mixed-demonstration prompts."""

    section = "geometry"
    tasks: str = option("pos,bitwise,null", "tasks (grouped by family)", flag="--td-tasks")
    layers: tuple[int, ...] | None = option(None, _LAYERS_HELP, min=0)
    shots: int = option(
        max(DEFAULT_TD_SHOTS), "demonstrations per prompt", flag="--geometry-shots", min=1
    )
    n_prompts: int = option(DEFAULT_PER_TASK, "prompts per task", flag="--n-td", min=1)
    n_mixture: int = option(20, "prompts per mixing proportion", min=1)

    def check(self) -> None:
        _check_tasks(self)
