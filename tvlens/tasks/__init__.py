"""Latent-task families, samplers and exact Bayesian references.

``registry`` maps family names to their classes (``FAMILIES``, imported on first lookup);
``base`` holds the family interface, ``PoolConfig`` (the fields every family reads; each
family's config extends it with its own), ``family_config`` (a family's config by name), ``Batch`` and ``make_family``; each family (``dice``,
``markov``, ``linreg``, ``sparse_linreg``, ``dyck``) lives in its own module with its own
config dataclass, and answers for its own token layout (query positions, labels, current
tokens, context-free loss), so no code outside ``tasks/`` branches on the family's kind. Names
are re-exported lazily so that ``import tvlens.tasks`` imports no torch.
"""

from tvlens._lazy import lazy_exports
from tvlens.tasks.registry import FAMILIES as FAMILIES
from tvlens.tasks.registry import register_family as register_family

_EXPORTS = {
    "SPLITS": "tvlens.tasks.base",
    "Batch": "tvlens.tasks.base",
    "ConfigError": "tvlens.tasks.base",
    "FamilyConfig": "tvlens.tasks.base",
    "family_config": "tvlens.tasks.base",
    "CapabilityError": "tvlens.tasks.base",
    "ABILITIES": "tvlens.tasks.base",
    "DyckConfig": "tvlens.tasks.dyck",
    "TaskFamily": "tvlens.tasks.base",
    "derive_seed": "tvlens.tasks.base",
    "make_family": "tvlens.tasks.base",
    "PoolConfig": "tvlens.tasks.base",
    "Dice": "tvlens.tasks.dice",
    "DiceConfig": "tvlens.tasks.dice",
    "MarkovConfig": "tvlens.tasks.markov",
    "LinRegConfig": "tvlens.tasks.linreg",
    "SparseLinRegConfig": "tvlens.tasks.sparse_linreg",
    "LinReg": "tvlens.tasks.linreg",
    "Markov": "tvlens.tasks.markov",
    "SparseLinReg": "tvlens.tasks.sparse_linreg",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted([*_EXPORTS, "FAMILIES", "register_family"])
