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
    draws: int = option(
        3, "independent prompt draws (the table's accuracy is the first; the others give "
        "its spread: draws_mean, draws_sd, min, max)", min=1,
    )  # fmt: skip

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


@dataclass(frozen=True)
class ModesOptions(Options):
    """Known vs in-context-only tasks: shares of the known-task subspace, principal angles,
    the ablation contrast (:mod:`tvlens.llm.modes`)."""

    section = "modes"
    basis_tasks: str = option(
        "antonym,uppercase,country_capital,english_french,next_number",
        "known tasks whose vectors span the known-task subspace",
    )
    heldout_tasks: str = option(
        "present_past,first_letter,singular_plural",
        "known tasks held out of the subspace (the control)",
    )
    novel_tasks: str = option("novel", "in-context-only tasks", flag="--novel-tasks")
    layers: tuple[int, ...] | None = option(None, _LAYERS_HELP, min=0)
    shots: int = option(8, "demonstrations of the prompts whose states are compared",
                        flag="--modes-shots", min=1)  # fmt: skip
    icl_shots: tuple[int, ...] = option(
        (0, 8),
        "shot counts of the learnt-in-context check",
        flag="--modes-icl-shots",
        min=0,
    )
    n_prompts: int = option(12, "prompts per task", flag="--modes-n-prompts", min=3)
    ablation_layers: tuple[int, ...] | None = option(
        None, "layers where the known subspace is projected out (default: the middle one)", min=0
    )
    learnt_margin: float = option(
        0.1, "a task counts as learnt in context when its accuracy at the most shots beats "
        "the majority baseline and zero shots by this much", min=0.0,
    )  # fmt: skip
    only_learnt: bool = option(
        True, "compare only the tasks done in context (off: every task, e.g. on a model that "
        "learns nothing, to see the geometry anyway)",
    )  # fmt: skip

    def check(self) -> None:
        from tvlens.llm.tasks import load_tasks

        basis = load_tasks(self.basis_tasks)
        if len(basis) < 2:
            raise ConfigError("modes.basis_tasks needs at least two tasks to span a subspace.")
        for field in ("heldout_tasks", "novel_tasks"):
            if len(load_tasks(getattr(self, field))) < 2:
                raise ConfigError(f"modes.{field} needs at least two tasks.")
        overlap = {t.name for t in basis} & {t.name for t in load_tasks(self.heldout_tasks)}
        if overlap:
            raise ConfigError(f"modes: {sorted(overlap)} are both basis and held-out tasks.")


@dataclass(frozen=True)
class ConvexSteeringOptions(Options):
    """Steering with α θ_A + (1 − α) θ_B against mixed demonstrations and the output mixture
    (:mod:`tvlens.llm.convex_steering`)."""

    section = "convex_steering"
    task_a: str = option("uppercase", "task A (its inputs are shared with task B)")
    task_b: str = option("first_letter", "task B")
    alphas: tuple[float, ...] = option((0.0, 0.25, 0.5, 0.75, 1.0), "mixing weights of A")
    layer: int | None = option(
        None, "patched layer (default: the best single-task layer of a sweep)", min=0,
        flag="--steering-layer",
    )  # fmt: skip
    shots: int = option(8, "demonstrations of the source and mixed prompts",
                        flag="--steering-shots", min=1)  # fmt: skip
    n_prompts: int = option(32, "zero-shot queries (and source prompts per task)",
                            flag="--steering-n-prompts", min=2)  # fmt: skip

    def check(self) -> None:
        from tvlens.llm.tasks import load_task

        a, b = load_task(self.task_a), load_task(self.task_b)
        if not set(a.inputs) & set(b.inputs):
            raise ConfigError(
                f"convex_steering: {a.name} and {b.name} share no inputs; pick two tasks on "
                "the same inputs (e.g. uppercase and first_letter)."
            )
        if any(not 0.0 <= x <= 1.0 for x in self.alphas) or not self.alphas:
            raise ConfigError(f"convex_steering.alphas={self.alphas} must lie in [0, 1].")
