"""The two modes (docs/concepts.md A): task vectors, their geometry, steering and the mode diagnostic.

:func:`analyse_two_modes` is the run-level driver: it builds the task vectors once and runs
every geometry analysis on them (ANOVA R², the simplex fit, posterior alignment, principal
angles, the 3-D view, subspace ablation, steering, convexity, the paper's definitions) and,
over the run's checkpoints, the mode diagnostic and the geometry over training. The pure
functions live in :mod:`~tvlens.analyses.task_vectors`, :mod:`~tvlens.analyses.geometry`,
:mod:`~tvlens.analyses.steering`, :mod:`~tvlens.analyses.modes` and
:mod:`~tvlens.analyses.paper_metrics`. ``tvlens experiment two-modes`` runs it once per k.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from tvlens.analyses.baselines import alignment_baselines, reference_gap_table, share_table
from tvlens.analyses.geometry import (
    ablation_table,
    fit_beta,
    geometry_over_training,
    geometry_points,
    principal_angle_table,
    simplex_table,
)
from tvlens.analyses.modes import mode_table
from tvlens.analyses.paper_metrics import paper_anova, paper_ood_r2
from tvlens.analyses.steering import convexity_table, steering_table
from tvlens.analyses.task_vectors import anova_table, task_vectors
from tvlens.models.evaluate import eval_batches
from tvlens.models.train import list_checkpoints
from tvlens.options import Options, option
from tvlens.registry import driver
from tvlens.tasks.base import Batch, ConfigError

if TYPE_CHECKING:
    from tvlens.models import Run

log = logging.getLogger(__name__)

#: seed offset of the analysis batches (held out from the training-time evaluation batches)
ANALYSIS_SEED_OFFSET = 1


@dataclass(frozen=True)
class TwoModesOptions(Options):
    """Options of :func:`analyse_two_modes`."""

    section = "two_modes"
    seed: int | None = option(
        None, "seed of the analysis batches (default: the run's training seed + 1)"
    )
    n_eval: int = option(256, "sequences per split for the geometry", min=2)
    n_causal: int = option(96, "sequences for ablation, steering and the modes", min=1)
    n_training: int = option(64, "sequences per split at each checkpoint", min=2)
    n_per_task: int = option(64, "sequences per task for the task vectors", min=1)
    n_random: int = option(5, "random subspaces of the ablation control", min=1)
    layers: tuple[int, ...] | None = option(None, "layers (default: every layer)", min=0)
    modes: bool = option(True, "the mode diagnostic and geometry over checkpoints")
    n_paper_tasks: int = option(128, "OOD tasks (and sequences each) of the paper metric", min=2)
    n_anova: int = option(32, "sequences per task of the token-forced ANOVA", min=2)

    def check(self) -> None:
        if self.n_causal > self.n_eval:
            raise ConfigError(
                f"two_modes.n_causal={self.n_causal} exceeds n_eval={self.n_eval}; lower n_causal."
            )


@driver("two_modes", TwoModesOptions)
def analyse_two_modes(run: Run, o: TwoModesOptions, progress: bool) -> dict[str, pd.DataFrame]:
    """Every task-vector analysis of docs/concepts.md (A) on a trained run; writes
    ``out_dir/<name>.csv`` (default ``RUN_DIR/analyses``; nothing when ``save=False``) and
    returns the tables by name. ``seed`` defaults to the run's training seed + 1, held out
    from training and from the task-vector estimate.

    Tables: ``task_vectors`` (θ norms of the majors and ≤ 8 minors), ``anova_r2`` (task /
    task + token R² per layer), ``simplex_fit`` (simplex, task + token and affine-plane R², norms in / orthogonal, per
    layer × split), ``alignment`` and ``alignment_summary`` (β_t against the exact
    posterior), ``beta_posterior`` (scatter sample), ``principal_angles``,
    ``geometry_points`` (3-D view at the best layer), ``ablation`` (task subspace vs
    ``n_random`` random subspaces of equal rank), ``steering``, ``convexity``, and over the
    run's checkpoints ``modes`` (the mode diagnostic) and ``geometry_training`` (the simplex
    table per step); the last two are skipped when ``modes=False``. The null baselines
    (:mod:`tvlens.analyses.baselines`): ``alignment_baselines`` (one-hot and prior β beside
    the model's, on all and on mixed-posterior positions), ``subspace_share`` (variance
    shares in the major and minor task spans beside random subspaces and top PCs of equal
    rank) and ``reference_gap`` (the references' own gap beside the model's distance to
    each, per split × band). ``paper_ood_r2`` and
    ``paper_anova`` hold the reference code's definitions (:mod:`tvlens.analyses.
    paper_metrics`; ``n_paper_tasks`` OOD tasks × as many sequences each; ``n_anova``
    sequences per task for the token-forced ANOVA, each copied once per symbol).

    The best layer — where the major-task states fit the simplex best — picks the layer of
    the 3-D view and of the β scatter. The geometry uses ``n_eval`` sequences per split; the
    interventions (ablation, steering, convexity) and the mode diagnostic, which need one
    forward pass per condition, use the first ``n_causal`` of them, and the geometry over
    training ``n_training`` sequences per split at each checkpoint. All are drawn with seeds
    held out from training and from the task-vector estimate. On the demo model this takes
    about 10 s on 2 idle CPU cores (17 s on one thread).
    """
    fam, model = run.family, run.model
    model.eval()
    seed = run.config.train.seed + ANALYSIS_SEED_OFFSET if o.seed is None else o.seed
    n_eval, n_causal, n_per_task = o.n_eval, o.n_causal, o.n_per_task
    batches = eval_batches(fam, n_eval, seed=seed)
    small = {name: _head(b, n_causal) for name, b in batches.items()}
    t0 = time.perf_counter()
    tv = task_vectors(
        model,
        fam,
        o.layers,
        tasks="all",
        max_minor=8,
        n_per_task=n_per_task,
        seed=seed,
        progress=progress,
    )
    tables: dict[str, pd.DataFrame] = {"task_vectors": tv.to_frame()}
    tables["anova_r2"] = anova_table(model, fam, tv.layers, seed=seed + 1)
    # the reference code's definitions, beside tvlens's (paper_metrics)
    tables["paper_ood_r2"] = paper_ood_r2(
        model, fam, tv.layers, n_tasks=o.n_paper_tasks, n_per_task=o.n_paper_tasks, seed=seed
    )
    tables["paper_anova"] = paper_anova(model, fam, tv.layers, n_per_task=o.n_anova, seed=seed + 2)
    tables["simplex_fit"] = simplex_table(model, fam, tv, batches)
    best = best_layer(tables["simplex_fit"])
    fit = fit_beta(model, fam, tv, batches["major"])
    tables["alignment"] = fit.by_position()
    tables["alignment_summary"] = fit.summary()
    tables["alignment_baselines"] = alignment_baselines(fit)
    tables["beta_posterior"] = fit.points(best)
    tables["subspace_share"] = share_table(model, tv, batches, seed=seed)
    tables["reference_gap"] = reference_gap_table(model, fam, batches)
    tables["principal_angles"] = principal_angle_table(model, tv, batches)
    tables["geometry_points"] = geometry_points(model, tv, batches, best)
    tables["ablation"] = ablation_table(
        model,
        fam,
        small,
        {layer: tv.basis(layer) for layer in tv.layers},
        point=tv.point,
        n_random=o.n_random,
        seed=seed,
    )
    tables["steering"] = steering_table(model, fam, tv, small["major"], tv.layers)
    tables["convexity"] = convexity_table(model, fam, tv, small["major"], tv.layers)
    if o.modes and list_checkpoints(run.dir):
        tables["modes"] = mode_table(run.dir, n=n_causal, seed=seed, progress=progress)
        tables["geometry_training"] = geometry_over_training(
            run.dir, n=o.n_training, n_per_task=n_per_task // 2, seed=seed, progress=progress
        )
    for df in tables.values():
        if "k" not in df.columns:
            df.insert(0, "k", fam.config.k)
    log.info("analysed %s in %.1f s (best layer %d)", run.dir, time.perf_counter() - t0, best)
    return tables


def _head(batch: Batch, n: int) -> Batch:
    """The first ``n`` sequences of ``batch``."""
    return batch.take(slice(0, n))


def best_layer(simplex: pd.DataFrame, split: str = "major") -> int:
    """The layer where ``split``'s states fit the task simplex best (highest simplex R²)."""
    rows = simplex[simplex["split"] == split]
    if rows.empty:
        raise ValueError(f"the simplex table has no {split!r} rows; fit it on a {split} batch.")
    return int(rows.loc[rows["r2_task"].idxmax(), "layer"])
