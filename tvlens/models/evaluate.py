"""Score a model against its family's exact references, by split and position band."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import Tensor

from tvlens.tasks.base import Batch, TaskFamily

EVAL_SEED = 1_000_003  # evaluation batches never coincide with training batches


def eval_batches(
    family: TaskFamily, size: int, seed: int = 0, splits: Sequence[str] | None = None
) -> dict[str, Batch]:
    """Fixed evaluation batches: major, minor (when the mixture has minors) and OOD."""
    splits = splits or ["major", "minor", "ood"]
    return {
        s: family.sample(s, size, seed=EVAL_SEED + seed)
        for s in splits
        if not (s == "minor" and family.n_minor == 0)
    }


@torch.no_grad()
def predict(model: torch.nn.Module, family: TaskFamily, batch: Batch, chunk: int = 256) -> Tensor:
    """The model's prediction (probabilities or means) for ``batch``, in chunks."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outs = [
        family.output_to_prediction(model(batch.inputs[i : i + chunk].to(device))).cpu()
        for i in range(0, batch.size, chunk)
    ]
    model.train(was_training)
    return torch.cat(outs)


class References:
    """The family's references for one batch, computed once and reused across steps."""

    def __init__(self, family: TaskFamily, batch: Batch) -> None:
        self.family, self.batch = family, batch
        self.preds = {
            "retrieval": family.retrieval_predictive(batch),
            "learning": family.learning_predictive(batch),
            "true": family.true_predictive(batch),
        }
        self.losses = {k: family.prediction_loss(v, batch) for k, v in self.preds.items()}

    def score(self, pred: Tensor, bands: Sequence[tuple[int, int]] | None = None) -> list[dict]:
        """Rows of mean loss and divergence to each reference, per position band."""
        fam, b = self.family, self.batch
        t = b.targets.shape[1]
        bands = bands or [(0, t)]
        per_pos = {
            "loss": fam.prediction_loss(pred, b),
            **{f"loss_{k}": v for k, v in self.losses.items()},
            "div_retrieval": fam.divergence(pred, self.preds["retrieval"]) * b.target_mask,
            "div_learning": fam.divergence(pred, self.preds["learning"]) * b.target_mask,
        }
        rows = []
        for lo, hi in bands:
            n = b.target_mask[:, lo:hi].sum().clamp_min(1)
            row = {"split": b.split, "band": f"{lo}-{hi}"}
            row.update({k: float(v[:, lo:hi].sum() / n) for k, v in per_pos.items()})
            row["gap_retrieval"] = row["loss"] - row["loss_retrieval"]
            row["gap_learning"] = row["loss"] - row["loss_learning"]
            rows.append(row)
        return rows


def default_bands(seq_len: int) -> list[tuple[int, int]]:
    """Early, first half and second half of the context."""
    q = max(1, seq_len // 8)
    return [(0, q), (q, seq_len // 2), (seq_len // 2, seq_len)]


def reference_table(
    model: torch.nn.Module,
    family: TaskFamily,
    batches: dict[str, Batch],
    bands: Sequence[tuple[int, int]] | None = None,
    refs: dict[str, References] | None = None,
) -> pd.DataFrame:
    """Model loss beside the retrieval, learning and true-task references, per split × band."""
    from tvlens.validation import check_batch_family, check_nonempty

    check_nonempty(batches, "batches", "at least one split -> Batch, e.g. {'major': batch}")
    for split, batch in batches.items():
        check_batch_family(batch, family, f"batches[{split!r}]")
    refs = refs or {s: References(family, b) for s, b in batches.items()}
    rows = []
    for split, batch in batches.items():
        rows += refs[split].score(predict(model, family, batch), bands)
    return pd.DataFrame(rows)
