"""Tiny seeded configs that train in seconds (imported by tests as ``from tiny import ...``)."""

from __future__ import annotations

from tvlens.models import RunConfig


def tiny_config(family: str = "dice", steps: int = 12, **family_kw) -> RunConfig:
    fam = {"seq_len": 8 if family != "linreg" else 10, **family_kw}
    return RunConfig.for_family(
        family,
        family=fam,
        model={"n_layers": 2, "d_model": 16, "n_heads": 2, "d_mlp": 32},
        train={
            "steps": steps,
            "batch_size": 8,
            "eval_every": 4,
            "eval_size": 16,
            "n_checkpoints": 4,
        },
    )
