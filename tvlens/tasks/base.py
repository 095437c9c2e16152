"""The task-family interface: a latent-task pool, a sampler and exact Bayes references.

Every family owns (in the spirit of Raventós et al.'s ``tasks.py``):

* a **pool** of ``M`` major and ``N_minor = 2**k`` minor tasks drawn from the prior, with
  mixture weights ``prior`` (majors share ``1 - p_minor``, minors share ``p_minor``);
* a **sampler** that is a pure function of ``(seed, step, split)``, so every batch can be
  regenerated exactly;
* the **per-task predictive** ``predictive(batch, params)``: each candidate task's next-token
  distribution (discrete) or mean (regression) at every position;
* the exact **retrieval** reference (posterior over the pool, and its predictive) and the
  **learning** reference (the prior-conjugate learner).

Analyses ask the family for these objects and never re-derive them.

Conventions. A batch holds ``T`` model positions. At position ``t`` the model has read
``inputs[:, : t + 1]`` and is scored on ``targets[:, t]`` where ``target_mask[:, t]`` is true.
The posterior at position ``t`` conditions on every scored target *before* ``t``.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tvlens.errors import ConfigError as ConfigError
from tvlens.tasks.registry import FAMILIES

Split = Literal["train", "major", "minor", "ood"]
SPLITS: tuple[str, ...] = ("train", "major", "minor", "ood")
Ability = Literal["sufficient_statistics", "bayes_predictive", "oracle_predictive"]
#: optional abilities a family may implement -> what they are, for error messages
ABILITIES: dict[str, str] = {
    "sufficient_statistics": "the learning reference's sufficient statistics",
    "bayes_predictive": "a structured-prior Bayes reference",
    "oracle_predictive": "an oracle reference",
}


class CapabilityError(NotImplementedError):
    """A family lacks an optional ability (:data:`ABILITIES`) that an analysis needs."""


@dataclass(frozen=True)
class Batch:
    """One batch of latent-task sequences.

    ``inputs`` is what the model (raw module or bridge) consumes: token ids ``[B, T]`` for
    discrete families, float features ``[B, T, d_in]`` for regression. ``task_ids`` index the
    pool (``-1`` for OOD draws); ``params`` are the generating task parameters per sequence.
    """

    inputs: Tensor
    targets: Tensor
    target_mask: Bool[Tensor, "batch pos"]
    task_ids: Int[Tensor, " batch"]
    params: Tensor
    split: str

    @property
    def size(self) -> int:
        return int(self.task_ids.shape[0])

    def take(self, index: Tensor | slice) -> Batch:
        """The sequences ``index`` selects (a boolean mask, indices or a slice), same split."""
        return Batch(
            self.inputs[index],
            self.targets[index],
            self.target_mask[index],
            self.task_ids[index],
            self.params[index],
            self.split,
        )

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            inputs=self.inputs.to(device),
            targets=self.targets.to(device),
            target_mask=self.target_mask.to(device),
            task_ids=self.task_ids.to(device),
            params=self.params.to(device),
            split=self.split,
        )


@dataclass(frozen=True)
class PoolConfig:
    """The fields every family reads: its task pool, mixture, length and seed.

    Each family declares its own frozen config as a subclass holding only the fields it
    reads (``DiceConfig``, ``LinRegConfig``, …) with its run defaults, validates them in
    :meth:`validate` and names it in ``config_class``; :func:`family_config` builds one from
    a name and fields. A run's ``config.json`` holds exactly these fields. ``k = -1`` means no
    minor tasks; otherwise there are ``2**k`` minor tasks sharing probability ``p_minor``.
    ``seq_len`` counts model positions (for regression, two per in-context example).
    """

    name: str = "dice"
    n_major: int = 3
    k: int = -1
    p_minor: float = 0.1
    seq_len: int = 64
    seed: int = 0

    @property
    def n_minor(self) -> int:
        return 0 if self.k < 0 else 2**self.k

    def validate(self) -> None:
        """Check the pool fields; a family's config extends this with its own fields."""
        from tvlens.validation import check_fields

        check_fields(self, "family")
        if self.name not in FAMILIES:
            raise ConfigError(
                f"family.name={self.name!r} is not a known task family; "
                f"choose one of {sorted(FAMILIES)}."
            )
        if self.n_major < 1:
            raise ConfigError(f"family.n_major={self.n_major} must be >= 1.")
        if self.k < -1:
            raise ConfigError(
                f"family.k={self.k} must be >= -1 (k = -1 means no minor tasks, "
                "otherwise there are 2**k minor tasks)."
            )
        if self.k > 20:
            raise ConfigError(
                f"family.k={self.k} would create 2**{self.k} minor tasks; use k <= 20."
            )
        if not 0.0 <= self.p_minor < 1.0:
            raise ConfigError(
                f"family.p_minor={self.p_minor} must lie in [0, 1): it is the total "
                "probability of the minor tasks."
            )
        if self.seq_len < 2:
            raise ConfigError(f"family.seq_len={self.seq_len} must be >= 2.")

    def to_dict(self) -> dict:
        return asdict(self)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class VocabConfig(PoolConfig):
    """Token families: the pool fields plus the number of symbols ``vocab``."""

    vocab: int = 6

    def validate(self) -> None:
        super().validate()
        _require(self.vocab >= 2, f"family.vocab={self.vocab} must be >= 2.")


#: fields of the flat config of tvlens < 0.5, which every family's config.json carried
_LEGACY_FIELDS = ("vocab", "dim", "noise", "n_concepts", "sparsity", "extra")


def family_config(name: str = "dice", **fields_: object) -> PoolConfig:
    """The config of family ``name`` with its run defaults, updated by ``fields_``.

    Unknown fields raise :class:`ConfigError` naming the family's valid ones, so a field of
    another family (``dim`` for dice) or a typo is never silently ignored. A legacy flat
    config (with an ``extra`` dict, as tvlens < 0.5 wrote) is read by dropping the fields
    its family does not have and moving ``extra``'s keys into fields.
    """
    if not isinstance(name, str) or name not in FAMILIES:
        raise ConfigError(
            f"family.name={name!r} is not a known task family; choose one of {sorted(FAMILIES)}."
        )
    cls = config_class(name)
    valid = {f.name for f in fields(cls)}
    if "extra" in fields_:  # legacy flat config: its unused fields carry no information
        extra = fields_.pop("extra")
        if not isinstance(extra, dict):
            raise ConfigError(f"family.extra must be a JSON object; got {type(extra).__name__}.")
        fields_ = {k: v for k, v in fields_.items() if k in valid or k not in _LEGACY_FIELDS}
        fields_.update(extra)
    unknown = sorted(set(fields_) - valid)
    if unknown:
        raise ConfigError(
            f"unknown field(s) {unknown} for family {name!r}; valid fields are {sorted(valid)}."
        )
    config = cls(name=name, **fields_)
    config.validate()
    return config


def config_class(name: str) -> type[PoolConfig]:
    """The config dataclass of family ``name`` (its ``config_class``)."""
    return FAMILIES[name].config_class


def FamilyConfig(name: str = "dice", **fields_: object) -> PoolConfig:  # noqa: N802
    """Deprecated: use :func:`family_config` (a family's config holds only its own fields)."""
    import warnings

    warnings.warn(
        "FamilyConfig is deprecated; use tvlens.tasks.family_config(name, **fields).",
        DeprecationWarning,
        stacklevel=2,
    )
    return family_config(name, **fields_)


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts: sampling is a pure function of its key."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def generator(*parts: object) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(derive_seed(*parts))
    return g


def exclusive_cumsum(x: Float[Tensor, "batch pos k"]) -> Float[Tensor, "batch pos k"]:
    """Sum over positions strictly before each position."""
    return torch.cumsum(x, dim=1) - x


def _expand_params(params: Tensor, batch_size: int, n_param_dims: int) -> Tensor:
    """Accept params as ``[K, ...]`` (shared) or ``[B, K, ...]`` and return ``[B, K, ...]``."""
    if params.dim() == n_param_dims + 1:
        return params.unsqueeze(0).expand(batch_size, *params.shape)
    if params.dim() == n_param_dims + 2 and params.shape[0] == batch_size:
        return params
    raise ValueError(
        f"params must have shape [K, ...] or [batch={batch_size}, K, ...] with "
        f"{n_param_dims} trailing task dims; got {tuple(params.shape)}."
    )


class TaskFamily(ABC):
    """Base class: a latent-task family with its pool, sampler and references."""

    name: str = ""
    kind: Literal["discrete", "regression"] = "discrete"
    #: number of trailing dims of one task's parameter tensor
    param_dims: int = 1
    #: what :meth:`divergence` measures: ``kl`` (distributions) or ``sq_err`` (means)
    divergence_name: str = "kl"
    #: the family's own config dataclass (the fields it reads, with its run defaults)
    config_class: type[PoolConfig] = PoolConfig

    def __init__(self, config: PoolConfig) -> None:
        if type(config) is not self.config_class:
            raise ConfigError(
                f"{type(self).__name__} needs a {self.config_class.__name__}; got "
                f"{type(config).__name__}. Build it with family_config({self.name!r}, ...)."
            )
        config.validate()
        self.config = config
        g = generator("pool", self.name, config.seed)
        n = config.n_major + config.n_minor
        self.pool: Tensor = self.sample_prior(n, g)
        self.prior: Float[Tensor, " k"] = self._mixture_weights()

    # --------------------------------------------------------- optional abilities
    def has(self, ability: Ability) -> bool:
        """Whether this family implements optional ``ability`` (see :data:`ABILITIES`)."""
        if ability not in ABILITIES:
            raise ValueError(f"unknown ability {ability!r}; choose one of {list(ABILITIES)}.")
        return getattr(type(self), ability) is not getattr(TaskFamily, ability)

    def require(self, ability: Ability, needed_by: str) -> None:
        """Raise :class:`CapabilityError` now if ``needed_by`` needs an ability this family
        lacks, before any work is done."""
        if not self.has(ability):
            raise CapabilityError(
                f"{needed_by} needs {ABILITIES[ability]}, which family {self.name!r} does not "
                f"define; use a family that does ({self._families_with(ability)}) or give "
                f"{type(self).__name__} a {ability}() method."
            )

    @staticmethod
    def _families_with(ability: Ability) -> str:
        names = [
            n for n in FAMILIES if getattr(FAMILIES[n], ability) is not getattr(TaskFamily, ability)
        ]
        return ", ".join(names) or "none"

    def sufficient_statistics(self, batch: Batch) -> Float[Tensor, "batch pos s"]:
        """The learning reference's sufficient statistics before each position, normalised
        per observation (optional: :mod:`tvlens.analyses.probes` needs it)."""
        raise CapabilityError(f"family {self.name!r} defines no sufficient statistics.")

    def bayes_predictive(self, batch: Batch) -> Tensor:
        """The Bayes predictive under a structured prior (optional: concept families)."""
        raise CapabilityError(f"family {self.name!r} defines no structured-prior reference.")

    def oracle_predictive(self, batch: Batch) -> Tensor:
        """The predictive of a learner told each sequence's latent group (optional)."""
        raise CapabilityError(f"family {self.name!r} defines no oracle reference.")

    # ----------------------------------------------------------------- interface
    @abstractmethod
    def sample_prior(self, n: int, g: torch.Generator) -> Tensor:
        """``n`` fresh task parameters from the prior."""

    def ood_params(self, n: int, g: torch.Generator) -> Tensor:
        """``n`` out-of-distribution task parameters: by default fresh draws from the prior
        (a family may exclude its pool, as Dyck does, or draw elsewhere, as linreg's balls
        around the major tasks)."""
        return self.sample_prior(n, g)

    @abstractmethod
    def generate(self, params: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Sequences for per-sequence ``params [B, ...]``: ``(inputs, targets, target_mask)``."""

    @abstractmethod
    def predictive(self, batch: Batch, params: Tensor) -> Tensor:
        """Each candidate task's prediction at every position.

        ``params`` is ``[K, ...]`` or ``[B, K, ...]``. Returns ``[B, T, K, V]`` probabilities
        (discrete) or ``[B, T, K]`` means (regression).
        """

    @abstractmethod
    def target_loglik(self, batch: Batch, params: Tensor) -> Float[Tensor, "batch pos k"]:
        """log p_k(target_t | context) at scored positions, 0 elsewhere."""

    @abstractmethod
    def learning_predictive(self, batch: Batch) -> Tensor:
        """The prior-conjugate learner's prediction, ``[B, T, V]`` or ``[B, T]``."""

    # ------------------------------------------------------------------ sizes
    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    @property
    def n_major(self) -> int:
        return self.config.n_major

    @property
    def n_minor(self) -> int:
        return self.config.n_minor

    @property
    def n_tasks(self) -> int:
        return self.n_major + self.n_minor

    @property
    def d_vocab(self) -> int:
        """Input vocabulary (discrete) — regression uses a linear read-in instead."""
        return self.config.vocab + 1  # + BOS

    @property
    def d_out(self) -> int:
        """Width of the model's read-out: V logits, or one scalar for regression."""
        return self.config.vocab

    @property
    def d_in(self) -> int | None:
        """Feature width of regression tokens; ``None`` for token families."""
        return self.d_in_for(self.config)

    @classmethod
    def d_in_for(cls, config: PoolConfig) -> int | None:
        """:attr:`d_in` of the family ``config`` would build, without building it (config
        validation needs it before the pool exists)."""
        return None

    # -------------------------------------------------------------- sampling
    def _mixture_weights(self) -> Tensor:
        m, n = self.n_major, self.n_minor
        if n == 0:
            return torch.full((m,), 1.0 / m)
        p = self.config.p_minor
        return torch.cat([torch.full((m,), (1 - p) / m), torch.full((n,), p / n)])

    def task_ids_for(self, split: str, n: int, g: torch.Generator) -> Tensor:
        if split == "train":
            return torch.multinomial(self.prior, n, replacement=True, generator=g)
        if split == "major":
            return torch.randint(0, self.n_major, (n,), generator=g)
        if split == "minor":
            if self.n_minor == 0:
                raise ValueError(
                    "split='minor' needs minor tasks, but this family has k = -1; "
                    "set family.k >= 0 or sample 'major' / 'ood'."
                )
            return torch.randint(self.n_major, self.n_tasks, (n,), generator=g)
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}.")

    def sample(self, split: str, n: int, *, seed: int = 0, step: int = 0) -> Batch:
        """``n`` sequences of ``split``; a pure function of ``(family, seed, step, split)``.

        ``train`` draws tasks from the mixture, ``major``/``minor`` uniformly among those
        tasks, and ``ood`` fresh tasks from the prior (never in the pool).
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}.")
        from tvlens.validation import check_int

        n = check_int(n, "n", min_value=1)
        g = generator("sample", self.name, self.config.seed, seed, step, split)
        if split == "ood":
            ids = torch.full((n,), -1, dtype=torch.long)
            params = self.ood_params(n, g)
        else:
            ids = self.task_ids_for(split, n, g)
            params = self.pool[ids]
        inputs, targets, mask = self.generate(params, g)
        return Batch(inputs, targets, mask, ids, params, split)

    # ------------------------------------------------------------ references
    def retrieval_posterior(self, batch: Batch) -> Float[Tensor, "batch pos k"]:
        """Exact P(task = k | context before t) over the pool, with the mixture prior."""
        ll = self.target_loglik(batch, self.pool)
        logits = torch.log(self.prior).to(ll) + exclusive_cumsum(ll)
        return torch.softmax(logits, dim=-1)

    def mix(self, weights: Float[Tensor, "batch pos k"], per_task: Tensor) -> Tensor:
        """Mixture of per-task predictions ``per_task`` ([B,T,K,V] or [B,T,K]) by ``weights``."""
        if per_task.dim() == 4:
            return torch.einsum("btk,btkv->btv", weights, per_task)
        return torch.einsum("btk,btk->bt", weights, per_task)

    def retrieval_predictive(self, batch: Batch) -> Tensor:
        """Posterior-weighted prediction of the pool tasks (dMMSE for regression)."""
        return self.mix(self.retrieval_posterior(batch), self.predictive(batch, self.pool))

    def true_predictive(self, batch: Batch) -> Tensor:
        """The generating task's own prediction for each sequence."""
        per = self.predictive(batch, batch.params.unsqueeze(1))
        return per[:, :, 0]

    # ------------------------------------------------------------------- layout
    # The family answers for its own token layout, so analyses never branch on its kind.
    #: latent labels this family can decode (``task``: pool ids; families with concepts add
    #: ``concept``)
    label_kinds: tuple[str, ...] = ("task",)

    @property
    def max_examples(self) -> int:
        """The largest number of in-context examples a query position can follow (one
        token is one example here)."""
        return self.seq_len - 1

    def query_positions(self, n_examples: Sequence[int]) -> list[int]:
        """The query position after ``n`` in-context examples, for each ``n``."""
        top = self.max_examples
        bad = [n for n in n_examples if not 0 <= n <= top]
        if bad:
            raise ValueError(
                f"n_examples {bad} out of range for {self.name} (seq_len={self.seq_len}); "
                f"use 0..{top}."
            )
        return [self._query_position(int(n)) for n in n_examples]

    def _query_position(self, n: int) -> int:
        return n

    def default_decoding(self) -> tuple[str, str]:
        """What to decode, and from which split, by default: the major tasks' identities
        here (families with concepts: the concepts of fresh tasks)."""
        return "task", "major"

    def decoding_targets(self) -> list[tuple[str, str]]:
        """The ``(label, split)`` pairs the decodability experiment decodes by default."""
        return [self.default_decoding()]

    def labels(self, batch: Batch, label: str = "task") -> Int[Tensor, " batch"]:
        """Latent labels of ``batch``: pool task ids (``task``) or another of
        :attr:`label_kinds`."""
        if label not in self.label_kinds:
            what = "concepts" if label == "concept" else f"{label!r} labels"
            raise ValueError(
                f"family {self.name!r} has no {what}; use label= one of {self.label_kinds}, "
                "or for concepts a concept family such as sparse_linreg."
            )
        if bool((batch.task_ids < 0).any()):
            raise ValueError(
                "task labels need pool tasks, but this batch has OOD sequences (task id -1); "
                "sample split 'major', 'minor' or 'train', or decode label='concept'."
            )
        return batch.task_ids.clone()

    def n_label_classes(self, label: str, split: str) -> int:
        """How many classes ``label`` has on ``split``: the split's pool tasks here."""
        if label not in self.label_kinds:
            raise ValueError(f"family {self.name!r} has no {label!r} labels.")
        return {"major": self.n_major, "minor": self.n_minor}.get(split, self.n_tasks)

    def current_tokens(self, batch: Batch) -> Int[Tensor, "batch pos"]:
        """The token the model reads at each position (the input id here)."""
        return batch.inputs.long()

    def token_labels(self, inputs: Tensor) -> list[str]:
        """Readable labels for the positions of one sequence (symbols, ``BOS``)."""
        bos = getattr(self, "bos", None)
        return ["BOS" if int(v) == bos else str(int(v)) for v in inputs.tolist()]

    def as_batch(self, inputs: Tensor) -> Tensor:
        """Inputs of one sequence (``[pos]``) or of a batch, as a batch."""
        return inputs.unsqueeze(0) if inputs.dim() == 1 else inputs

    def context_free_loss(self, batch: Batch) -> Float[Tensor, "batch pos"]:
        """Loss of a predictor that ignores the context: the uniform distribution, log V."""
        return torch.full(batch.target_mask.shape, math.log(self.d_out)) * batch.target_mask

    def geometric_mix(
        self, weights: Float[Tensor, "batch pos k"], per_task: Tensor
    ) -> Tensor | None:
        """softmax(Σ_k w_k log p_k), the logit-space mixture; ``None`` where predictions are
        means (regression), for which it is not defined."""
        logp = per_task.clamp_min(1e-12).log()
        return torch.softmax(torch.einsum("btk,btkv->btv", weights, logp), dim=-1)

    def error_summaries(self, divergence: Tensor) -> dict[str, float]:
        """Extra readable summaries of a :meth:`divergence` tensor (regression adds RMSE)."""
        return {}

    # ------------------------------------------------------------------ scoring
    def output_to_prediction(self, output: Tensor) -> Tensor:
        """Model read-out → prediction: probabilities ``[B,T,V]`` or means ``[B,T]``."""
        if self.kind == "regression":
            return output[..., 0]
        return torch.softmax(output.float(), dim=-1)

    def loss(self, output: Tensor, batch: Batch, per_position: bool = False) -> Tensor:
        """Training loss of a model read-out: cross-entropy (nats) or squared error."""
        mask = batch.target_mask
        if self.kind == "regression":
            err = (output[..., 0] - torch.nan_to_num(batch.targets)) ** 2
        else:
            err = F.cross_entropy(
                output.flatten(0, 1).float(), batch.targets.flatten(), reduction="none"
            ).view_as(batch.targets)
        err = err * mask
        if per_position:
            return err
        return err.sum() / mask.sum().clamp_min(1)

    def prediction_loss(self, pred: Tensor, batch: Batch) -> Float[Tensor, "batch pos"]:
        """Per-position loss of a *prediction* (probabilities or means), 0 where unscored."""
        if self.kind == "regression":
            err = (pred - torch.nan_to_num(batch.targets)) ** 2
        else:
            p = pred.gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)
            err = -torch.log(p.clamp_min(1e-12))
        return err * batch.target_mask

    def divergence(self, pred: Tensor, ref: Tensor) -> Float[Tensor, "batch pos"]:
        """KL(pred ‖ ref) in nats for distributions; squared difference of means otherwise."""
        if self.kind == "regression":
            return (pred - ref) ** 2
        p = pred.clamp_min(1e-12)
        return (p * (p.log() - ref.clamp_min(1e-12).log())).sum(-1)

    def __repr__(self) -> str:
        c = self.config
        return (
            f"{type(self).__name__}(n_major={c.n_major}, n_minor={self.n_minor}, "
            f"p_minor={c.p_minor}, seq_len={c.seq_len})"
        )


def make_family(config: PoolConfig | None = None, **overrides: object) -> TaskFamily:
    """Build a task family from its config, or from ``name=`` and fields
    (``make_family(name="dice", vocab=32)``); ``overrides`` update ``config``."""
    if config is None:
        config = family_config(**overrides)  # type: ignore[arg-type]
    elif overrides:
        d = {**config.to_dict(), **overrides}
        config = family_config(d.pop("name"), **d)
    return FAMILIES[config.name](config)
