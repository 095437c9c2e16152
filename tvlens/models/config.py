"""Configs for models, training and whole runs, validated at construction."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from tvlens.tasks.base import ConfigError, PoolConfig, family_config
from tvlens.validation import check_fields


@dataclass
class ModelConfig:
    """A small TL-native transformer: pre-norm, rotary positions by default."""

    n_layers: int = 4
    d_model: int = 64
    n_heads: int = 4
    d_mlp: int = 256
    positional: Literal["rotary", "standard"] = "rotary"
    normalization: Literal["LN", "RMS", "LNPre", "RMSPre"] = "LN"
    act_fn: str = "gelu"
    n_ctx: int | None = None
    seed: int = 0

    def validate(self, seq_len: int | None = None, d_in: int | None = None) -> None:
        check_fields(self, "model")
        for name in ("n_layers", "d_model", "n_heads", "d_mlp"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name}={getattr(self, name)} must be >= 1.")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"model.d_model={self.d_model} is not divisible by model.n_heads="
                f"{self.n_heads}; pick d_model as a multiple of n_heads."
            )
        if self.positional not in ("rotary", "standard"):
            raise ConfigError(
                f"model.positional={self.positional!r}; choose 'rotary' or 'standard'."
            )
        if self.positional == "rotary" and (self.d_model // self.n_heads) % 2:
            raise ConfigError(
                f"model.d_model / model.n_heads = {self.d_model // self.n_heads} must be even "
                "for rotary positions."
            )
        if self.normalization not in ("LN", "RMS", "LNPre", "RMSPre"):
            raise ConfigError(
                f"model.normalization={self.normalization!r}; choose LN, RMS, LNPre or RMSPre."
            )
        if seq_len is not None and self.n_ctx is not None and seq_len > self.n_ctx:
            raise ConfigError(
                f"family.seq_len={seq_len} is longer than model.n_ctx={self.n_ctx}; "
                "raise model.n_ctx or shorten the sequences."
            )
        if d_in is not None and d_in == self.d_model:
            raise ConfigError(
                f"model.d_model={self.d_model} equals the regression token width {d_in}; "
                "the read-in needs them to differ: change model.d_model."
            )

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


@dataclass
class TrainConfig:
    """AdamW with a one-cycle schedule (linear warm-up, cosine decay) and clipping."""

    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_size: int = 256
    n_checkpoints: int = 16
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        check_fields(self, "train")
        for name in ("steps", "batch_size", "eval_every", "eval_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be >= 1.")
        if self.lr <= 0:
            raise ConfigError(f"train.lr={self.lr} must be > 0.")
        if not 0 <= self.warmup_frac < 1:
            raise ConfigError(f"train.warmup_frac={self.warmup_frac} must lie in [0, 1).")
        if self.n_checkpoints < 0:
            raise ConfigError(f"train.n_checkpoints={self.n_checkpoints} must be >= 0.")
        for name in ("weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ConfigError(
                    f"train.{name}={getattr(self, name)} must be >= 0 (0 turns it off)."
                )
        try:
            import torch

            torch.device(self.device)
        except (RuntimeError, ValueError):
            raise ConfigError(
                f"train.device={self.device!r} is not a torch device; use 'cpu', 'cuda', "
                "'cuda:0' or 'mps'."
            ) from None


@dataclass
class RunConfig:
    """A whole run: the task family, the model and the training schedule."""

    family: PoolConfig = field(default_factory=family_config)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def for_family(cls, name: str, **sections: dict[str, Any]) -> RunConfig:
        """A config with ``name``'s defaults (its config class's), updated by
        ``family=``/``model=``/``train=`` dicts."""
        return cls.from_dict({**sections, "family": {**sections.get("family", {}), "name": name}})

    def validate(self) -> None:
        from tvlens.tasks import FAMILIES

        for name, kind in (
            ("family", PoolConfig),
            ("model", ModelConfig),
            ("train", TrainConfig),
        ):
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(
                    f"config section {name!r} must be a {kind.__name__}; got "
                    f"{type(getattr(self, name)).__name__}."
                )
        self.family.validate()
        self.train.validate()
        d_in = FAMILIES[self.family.name].d_in_for(self.family)  # the family owns its layout
        self.model.validate(seq_len=self.family.seq_len, d_in=d_in)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_seed(self, seed: int) -> RunConfig:
        """This config with its model, training and task-pool seeds set to ``seed``, as a
        sweep's seed axis sets them."""
        d = self.to_dict()
        for section in ("model", "train", "family"):
            d[section]["seed"] = int(seed)
        return RunConfig.from_dict(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """A validated config from a JSON-like dict; missing sections take their defaults."""
        if not isinstance(d, dict):
            raise ConfigError(
                f"a config must be a JSON object with sections family, model and train; got "
                f"{'null' if d is None else type(d).__name__}. Start from a run's config.json "
                "or `RunConfig.for_family(name).to_dict()`."
            )

        def build(kind: type, name: str) -> Any:
            raw = d.get(name, {})
            if not isinstance(raw, dict):
                raise ConfigError(
                    f"config section {name!r} must be a JSON object of fields; got "
                    f"{'null' if raw is None else type(raw).__name__}."
                )
            raw = dict(raw)
            known = {f.name for f in fields(kind)}
            unknown = sorted(set(raw) - known)
            if unknown:
                raise ConfigError(
                    f"unknown field(s) {unknown} in section {name!r}; "
                    f"valid fields are {sorted(known)}."
                )
            return kind(**raw)

        unknown = sorted(set(d) - {"family", "model", "train"})
        if unknown:
            raise ConfigError(f"unknown config section(s) {unknown}; use family, model, train.")
        fam = d.get("family", {})
        if not isinstance(fam, dict):
            raise ConfigError(
                "config section 'family' must be a JSON object of fields; got "
                f"{'null' if fam is None else type(fam).__name__}."
            )
        fam = dict(fam)
        return cls(
            family=family_config(fam.pop("name", "dice"), **fam),
            model=build(ModelConfig, "model"),
            train=build(TrainConfig, "train"),
        )

    def save(self, path: Path) -> None:
        """Write the config as JSON, atomically (the mode follows the umask)."""
        from tvlens.io import save_json

        save_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path | str) -> RunConfig:
        """Read and validate a config JSON; every error names ``path`` and the fix."""
        d = load_config_dict(path)
        try:
            return cls.from_dict(d)
        except (ConfigError, TypeError) as e:  # TypeError: a family's own config refused
            raise ConfigError(f"{path}: {e}") from None


def load_config_dict(path: Path | str) -> dict[str, Any]:
    """The JSON object in config file ``path``, with errors that name the file and the fix."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(
            f"{path} is a directory, not a config file; pass a config JSON such as "
            f"{path / 'config.json'}."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; check the path.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path} ({e}).") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); fix or regenerate it.") from None
    if not isinstance(d, dict):
        raise ConfigError(
            f"{path} must hold a JSON object with sections family, model and train; it holds "
            f"{'null' if d is None else type(d).__name__}. Start from a run's config.json."
        )
    return d
