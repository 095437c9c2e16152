"""Latent-task families, samplers and exact Bayesian references."""

from tvlens.tasks.base import SPLITS, Batch, ConfigError, FamilyConfig, TaskFamily, derive_seed
from tvlens.tasks.dice import Dice
from tvlens.tasks.linreg import LinReg
from tvlens.tasks.markov import Markov
from tvlens.tasks.sparse_linreg import SparseLinReg

FAMILIES: dict[str, type[TaskFamily]] = {
    "dice": Dice,
    "markov": Markov,
    "linreg": LinReg,
    "sparse_linreg": SparseLinReg,
}


def make_family(config: FamilyConfig | None = None, **overrides) -> TaskFamily:
    """Build a task family from a config (or keyword overrides of the default config)."""
    from dataclasses import replace

    config = replace(config or FamilyConfig(), **overrides)
    config.validate()
    return FAMILIES[config.name](config)


__all__ = [
    "FAMILIES",
    "SPLITS",
    "Batch",
    "ConfigError",
    "Dice",
    "FamilyConfig",
    "LinReg",
    "Markov",
    "SparseLinReg",
    "TaskFamily",
    "derive_seed",
    "make_family",
]
