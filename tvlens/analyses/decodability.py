"""Task decodability (TD): how well the latent task can be read off a representation.

TD is the held-out accuracy of a classifier that predicts the latent task (or concept) from
the residual stream at (layer, query position) (Han et al., arXiv 2412.12276). The default
is the paper's protocol: about 100 prompts per class, the representation at the query token,
and **leave-one-out k-nearest-neighbours with k = 10** (a point is never its own
neighbour). A logistic-regression probe on a stratified train/test split is offered too.
Every score comes with its chance level (the majority-class rate) and, on request, a
shuffled-label baseline (the same classifier on permuted labels: an empirical chance).

Three entry points, from the most general to the most specific:

* :func:`decodability` — features ``[N, d]`` (torch or numpy) and labels → a DataFrame with
  one row per method. Use it on anything, e.g. an LLM's last-token residuals.
* :func:`decodability_table` — the sweep over layers × numbers of in-context examples, from
  an array ``[N, L, P, d]``, a cache of hook names (what :func:`tvlens.hooks.capture`
  returns) or one ``[N, L, d]`` array per example count (a separate prompt set per shot
  count, as for LLMs).
* :func:`task_decodability` — sample prompts from a task family, capture the residual stream
  of a model and run the sweep; :func:`analyse_decodability` does it for a trained run and
  writes ``analyses/decodability.csv``.

Library choice. kNN is written in **torch**: leave-one-out is exact when the diagonal of the
distance matrix is masked, and a whole sweep is a few matrix products. scikit-learn has the
same leave-one-out query (``NearestNeighbors.kneighbors()`` called without ``X`` excludes
each point itself, by index, so an exact duplicate still counts); the tests check that both
return the same neighbours. The torch version keeps the vote's tie-break (the class of the
nearer neighbour) explicit and runs on the tensors as they come. The probe uses
**scikit-learn**: a tested multinomial L-BFGS logistic regression, with the standardiser
inside a ``Pipeline`` so it is fitted on the training split only.

"Number of in-context examples" ``n`` maps to a position with :func:`example_positions`:
for token families position ``t`` has read ``t`` tokens after BOS (``n = t``); for
regression the query is the x-token of example ``n + 1``, at position ``2n``.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tvlens.hooks.core import as_bridge, capture, hook_name
from tvlens.options import Options, option
from tvlens.registry import driver
from tvlens.tasks.base import Batch, TaskFamily, derive_seed

log = logging.getLogger(__name__)

#: the paper's k for leave-one-out kNN
DEFAULT_K = 10
#: prompts per class in the paper's protocol
DEFAULT_PER_CLASS = 100
#: fraction of the prompts held out by the probe's stratified split
DEFAULT_TEST_FRAC = 0.3
METHODS: tuple[str, ...] = ("knn", "probe")
Method = Literal["knn", "probe"]
Label = Literal["task", "concept"]
ArrayLike = Tensor | np.ndarray


# ------------------------------------------------------------------------ classifiers
def _as_tensor(x: ArrayLike | Sequence, what: str) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().cpu()
    if isinstance(x, list | tuple):
        x = np.asarray(x)
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "biuf":
            raise ValueError(
                f"{what} must be numeric; got dtype {x.dtype}. Map class names to ids with "
                "np.unique(names, return_inverse=True)."
            )
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{what} must be a torch tensor or numpy array; got {type(x).__name__}.")


def _check_xy(x: ArrayLike, labels: ArrayLike) -> tuple[Tensor, Tensor]:
    """Features as float ``[n, d]`` and labels as long ``[n]``, or a clear error."""
    x = _as_tensor(x, "features")
    labels = _as_tensor(labels, "labels")
    if x.dim() != 2:
        raise ValueError(
            f"features must be [n, d] (one row per prompt); got shape {tuple(x.shape)}. "
            "Index one layer and position first, or use decodability_table for a sweep."
        )
    if labels.is_floating_point() and not bool((labels == labels.round()).all()):
        raise ValueError("labels must be integer class ids; map them with np.unique first.")
    labels = labels.long().flatten()
    if labels.shape[0] != x.shape[0]:
        raise ValueError(
            f"{x.shape[0]} feature rows but {labels.shape[0]} labels; pass one label per row."
        )
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(
            "labels must be >= 0; re-index them (e.g. np.unique(..., return_inverse=True))."
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError("features contain NaN or inf; check the captured activations.")
    return x.float(), labels


def knn_neighbours(
    x: Float[Tensor, "n d"],
    k: int = DEFAULT_K,
    metric: Literal["euclidean", "cosine"] = "euclidean",
) -> Int[Tensor, "n k"]:
    """Indices of each point's ``k`` nearest *other* points, nearest first.

    The diagonal of the distance matrix is masked, so a point is never its own neighbour
    (an exact duplicate of it, a different row, can be).
    """
    x = _as_tensor(x, "features").double()
    n = x.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k={k} neighbours need 1 <= k <= n - 1 = {n - 1}; lower k.")
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=-1)
    elif metric != "euclidean":
        raise ValueError(f"metric={metric!r}; choose 'euclidean' or 'cosine'.")
    # squared distances from the Gram matrix, in float64 (exact enough, and fast)
    sq = (x * x).sum(-1)
    dist = (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp_min(0)
    dist.fill_diagonal_(float("inf"))
    return dist.topk(k, largest=False).indices


def knn_loo_predict(
    x: Float[Tensor, "n d"],
    labels: Int[Tensor, " n"],
    k: int = DEFAULT_K,
    metric: Literal["euclidean", "cosine"] = "euclidean",
) -> Int[Tensor, " n"]:
    """Leave-one-out kNN: each point's label predicted by its ``k`` nearest *other* points.

    Votes are counted per class; a tie goes to the tied class with the nearer neighbour.
    """
    x, labels = _check_xy(x, labels)
    nbr = knn_neighbours(x, k, metric)
    n = x.shape[0]
    n_classes = int(labels.max()) + 1
    # one vote per neighbour, plus a rank-based tie-breaker worth less than one vote in all
    weight = 1.0 + (k - torch.arange(k, dtype=torch.float64)) / (k * (k + 1))
    votes = torch.zeros(n, n_classes, dtype=torch.float64)
    votes.scatter_add_(1, labels[nbr], weight.expand(n, k).contiguous())
    return votes.argmax(-1)


def knn_loo_accuracy(
    x: Float[Tensor, "n d"],
    labels: Int[Tensor, " n"],
    k: int = DEFAULT_K,
    metric: Literal["euclidean", "cosine"] = "euclidean",
) -> float:
    """Leave-one-out kNN accuracy: the paper's TD."""
    x, labels = _check_xy(x, labels)
    return float((knn_loo_predict(x, labels, k, metric) == labels).double().mean())


def stratified_split(
    labels: Int[Tensor, " n"] | np.ndarray,
    test_frac: float = DEFAULT_TEST_FRAC,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint, sorted train/test indices with every class on both sides, in proportion."""
    from sklearn.model_selection import train_test_split

    y = np.asarray(_as_tensor(labels, "labels")).ravel()
    if not 0 < test_frac < 1:
        raise ValueError(f"test_frac={test_frac} must lie in (0, 1).")
    counts = np.bincount(y)
    small = np.flatnonzero((counts > 0) & (counts < 2))
    if small.size:
        raise ValueError(
            f"classes {small.tolist()} have fewer than 2 examples; a stratified split needs "
            "at least one per side: sample more prompts per class."
        )
    n_classes = int((counts > 0).sum())
    n_test = int(np.ceil(test_frac * y.size))
    if n_test < n_classes or y.size - n_test < n_classes:
        raise ValueError(
            f"{y.size} prompts cannot be split {1 - test_frac:.0%}/{test_frac:.0%} with all "
            f"{n_classes} classes on both sides; sample more prompts or change test_frac."
        )
    idx = np.arange(y.size)
    train, test = train_test_split(idx, test_size=test_frac, stratify=y, random_state=seed)
    return np.sort(train), np.sort(test)


def probe_predict(
    x: Float[Tensor, "n d"],
    labels: Int[Tensor, " n"],
    test_frac: float = DEFAULT_TEST_FRAC,
    seed: int = 0,
    reg: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit a logistic-regression probe (L2, inverse strength ``reg``) on a stratified train
    split; return ``(test_indices, predictions)``. The scaler sees the training rows only."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, labels = _check_xy(x, labels)
    train, test = stratified_split(labels, test_frac, seed)
    xs, ys = x.double().numpy(), labels.numpy()
    if np.unique(ys[train]).size < 2:
        return test, np.full(test.shape, ys[train][0])
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=reg, max_iter=1000))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        probe.fit(xs[train], ys[train])
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        log.debug("probe did not fully converge (n=%d, d=%d)", len(train), xs.shape[1])
    return test, probe.predict(xs[test])


def probe_accuracy(
    x: Float[Tensor, "n d"],
    labels: Int[Tensor, " n"],
    test_frac: float = DEFAULT_TEST_FRAC,
    seed: int = 0,
    reg: float = 1.0,
) -> float:
    """Held-out accuracy of the logistic-regression probe."""
    test, pred = probe_predict(x, labels, test_frac, seed, reg)
    y = np.asarray(_as_tensor(labels, "labels")).ravel()
    return float((pred == y[test]).mean())


def chance_level(labels: Int[Tensor, " n"] | np.ndarray) -> float:
    """The majority-class rate: the accuracy of always guessing the commonest label."""
    counts = torch.bincount(_as_tensor(labels, "labels").long().flatten())
    return float(counts.max() / counts.sum())


def _score(
    method: str,
    x: Tensor,
    y: Tensor,
    k: int,
    metric: Literal["euclidean", "cosine"],
    test_frac: float,
    seed: int,
) -> float:
    if method == "knn":
        return knn_loo_accuracy(x, y, k, metric)
    if method == "probe":
        return probe_accuracy(x, y, test_frac, seed)
    raise ValueError(f"method={method!r}; choose from {METHODS}.")


def decodability(
    features: Float[ArrayLike, "n d"],
    labels: Int[ArrayLike, " n"],
    methods: Sequence[Method] = METHODS,
    *,
    k: int = DEFAULT_K,
    metric: Literal["euclidean", "cosine"] = "euclidean",
    test_frac: float = DEFAULT_TEST_FRAC,
    seed: int = 0,
    shuffled: bool = False,
) -> pd.DataFrame:
    """TD of one set of representations, one row per method.

    Columns: method, td, chance, (shuffled), n, n_classes, k. ``chance`` is the
    majority-class rate; ``shuffled`` is the same classifier's score on permuted labels.
    """
    x, y = _check_xy(features, labels)
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"method={method!r}; choose from {METHODS}.")
    perm = None
    if shuffled:
        g = torch.Generator().manual_seed(derive_seed("shuffle", seed) % (2**63))
        perm = y[torch.randperm(y.shape[0], generator=g)]
    rows = []
    for method in methods:
        row: dict[str, Any] = {
            "method": method,
            "td": _score(method, x, y, k, metric, test_frac, seed),
            "chance": chance_level(y),
        }
        if perm is not None:
            row["shuffled"] = _score(method, x, perm, k, metric, test_frac, seed)
        row |= {
            "n": int(y.shape[0]),
            "n_classes": int(y.unique().numel()),
            "k": k if method == "knn" else np.nan,
        }
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ sweeps
_LAYER_RE = re.compile(r"^blocks\.(\d+)\.")


def _stack_cache(cache: Mapping[str, Tensor]) -> tuple[Tensor, list[int]]:
    """A cache of hook names ``blocks.{l}.…`` → ``[N, P, d]`` as ``[N, L, P, d]``."""
    layers = []
    for name in cache:
        m = _LAYER_RE.match(str(name))
        if m is None:
            raise ValueError(
                f"cache key {name!r} is not a per-layer hook name like 'blocks.3.hook_resid_post'; "
                "pass an array [N, L, P, d] with layers= instead."
            )
        layers.append(int(m.group(1)))
    if len(set(layers)) != len(layers):
        raise ValueError(
            f"the cache holds several hook points per layer ({list(cache)}); keep one point."
        )
    acts = [_as_tensor(cache[name], f"cache[{name!r}]") for name in cache]
    shapes = {tuple(a.shape) for a in acts}
    if len(shapes) != 1 or acts[0].dim() != 3:
        raise ValueError(f"cache entries must all be [N, P, d]; got shapes {sorted(shapes)}.")
    order = np.argsort(layers)
    return torch.stack([acts[i] for i in order], 1), sorted(layers)


def decodability_table(
    reps: Float[ArrayLike, "n layer pos d"] | Mapping[Any, ArrayLike],
    labels: Int[ArrayLike, " n"] | Mapping[int, ArrayLike],
    *,
    layers: Sequence[int] | None = None,
    n_examples: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    methods: Sequence[Method] = METHODS,
    k: int = DEFAULT_K,
    metric: Literal["euclidean", "cosine"] = "euclidean",
    test_frac: float = DEFAULT_TEST_FRAC,
    seed: int = 0,
    shuffled: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """TD for every layer × number of examples, one tidy row per (method, layer, n_examples).

    ``reps`` is one of

    * an array ``[N, L, P, d]``: one prompt set, ``P`` query positions (``n_examples`` and
      ``positions`` label them; both default to ``0..P-1``);
    * a cache ``{hook name: [N, P, d]}`` such as :func:`tvlens.hooks.capture` returns
      (layers are read from the names);
    * ``{n_examples: [N_n, L, d]}``: a separate prompt set per example count, with
      ``labels`` one array for all or ``{n_examples: [N_n]}``.

    Columns: method, layer, n_examples, pos, td, chance, (shuffled), n, n_classes, k.
    """
    if isinstance(reps, Mapping) and reps and all(isinstance(key, str) for key in reps):
        stacked, cache_layers = _stack_cache(reps)  # type: ignore[arg-type]
        layers = cache_layers if layers is None else layers
        reps = stacked
    if isinstance(reps, Mapping):
        return _per_count_table(
            reps, labels, layers, methods, k, metric, test_frac, seed, shuffled, progress
        )
    if isinstance(labels, Mapping):
        raise ValueError(
            "labels per example count need reps per example count too ({n: [N, L, d]})."
        )
    x = _as_tensor(reps, "reps")
    if x.dim() != 4:
        raise ValueError(
            f"reps must be [n, layer, pos, d]; got shape {tuple(x.shape)}. For one query "
            "position per prompt pass x[:, :, None] or {n_examples: x}."
        )
    _, n_layers, n_pos, _ = x.shape
    layers = list(range(n_layers)) if layers is None else list(layers)
    positions = list(range(n_pos)) if positions is None else list(positions)
    n_examples = positions if n_examples is None else list(n_examples)
    if len(layers) != n_layers or len(positions) != n_pos or len(n_examples) != n_pos:
        raise ValueError(
            f"reps has {n_layers} layers and {n_pos} positions but got {len(layers)} layer "
            f"labels, {len(positions)} positions and {len(n_examples)} n_examples."
        )
    grid = [(li, pi) for li in range(n_layers) for pi in range(n_pos)]
    frames = []
    for li, pi in tqdm(grid, desc="decodability", disable=None if progress else True):
        df = decodability(
            x[:, li, pi],
            labels,
            methods,
            k=k,
            metric=metric,
            test_frac=test_frac,
            seed=seed,
            shuffled=shuffled,
        )
        df.insert(1, "layer", layers[li])
        df.insert(2, "n_examples", n_examples[pi])
        df.insert(3, "pos", positions[pi])
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values(["method", "layer", "n_examples"], kind="stable", ignore_index=True)


def _per_count_table(
    reps: Mapping[Any, ArrayLike],
    labels: ArrayLike | Mapping[int, ArrayLike],
    layers: Sequence[int] | None,
    methods: Sequence[Method],
    k: int,
    metric: Literal["euclidean", "cosine"],
    test_frac: float,
    seed: int,
    shuffled: bool,
    progress: bool,
) -> pd.DataFrame:
    frames = []
    for n_ex, r in reps.items():
        x = _as_tensor(r, f"reps[{n_ex}]")
        if x.dim() != 3:
            raise ValueError(
                f"reps[{n_ex}] must be [N, L, d] (last-token states per layer); got "
                f"{tuple(x.shape)}."
            )
        if isinstance(labels, Mapping):
            if n_ex not in labels:
                raise ValueError(f"labels has no entry for n_examples={n_ex}.")
            lab = labels[n_ex]
        else:
            lab = labels
        df = decodability_table(
            x[:, :, None],
            lab,
            layers=layers,
            n_examples=[int(n_ex)],
            positions=[-1],
            methods=methods,
            k=k,
            metric=metric,
            test_frac=test_frac,
            seed=seed,
            shuffled=shuffled,
            progress=progress,
        )
        frames.append(df)
    if not frames:
        raise ValueError("reps is empty; pass at least one example count.")
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values(["method", "layer", "n_examples"], kind="stable", ignore_index=True)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per method: the best (layer, n_examples) cell and the TD-vs-examples trend.

    Columns: method, best_layer, best_n_examples, best_td, chance, td_first_n, td_last_n
    (at the best layer: fewest and most examples).
    """
    rows = []
    for method, g in table.groupby("method", sort=False):
        top = g.loc[g["td"].idxmax()]
        at = g[g["layer"] == top["layer"]].sort_values("n_examples")
        rows.append(
            {
                "method": method,
                "best_layer": int(top["layer"]),
                "best_n_examples": int(top["n_examples"]),
                "best_td": float(top["td"]),
                "chance": float(top["chance"]),
                "td_first_n": float(at["td"].iloc[0]),
                "td_last_n": float(at["td"].iloc[-1]),
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------- representations
def max_examples(family: TaskFamily) -> int:
    """The largest number of in-context examples a query position can follow
    (:attr:`TaskFamily.max_examples <tvlens.tasks.base.TaskFamily.max_examples>`)."""
    return family.max_examples


def example_positions(family: TaskFamily, n_examples: Sequence[int]) -> list[int]:
    """Query position after ``n`` in-context examples (the family's own layout)."""
    return family.query_positions(n_examples)


def default_n_examples(family: TaskFamily, n: int = 12) -> list[int]:
    """About ``n`` example counts from 0 to the maximum, denser at the start."""
    top = max_examples(family)
    grid = np.unique(np.round(np.geomspace(1, top + 1, n)).astype(int) - 1)
    return sorted(set(grid.tolist()) | {0, top})


def default_label(family: TaskFamily) -> tuple[Label, str]:
    """What to decode, and from which split: the concepts of fresh (OOD) tasks for concept
    families, otherwise the identities of the major tasks (the family decides)."""
    return family.default_decoding()  # type: ignore[return-value]


def labels_for(family: TaskFamily, batch: Batch, label: Label) -> Int[Tensor, " batch"]:
    """Latent labels of ``batch``: pool task ids or concept ids."""
    if label not in ("task", "concept"):
        raise ValueError(f"label={label!r}; choose 'task' or 'concept'.")
    return family.labels(batch, label)


def n_label_classes(family: TaskFamily, label: Label, split: str) -> int:
    """How many classes ``label`` has on ``split``: concepts, or the split's pool tasks."""
    return family.n_label_classes(label, split)


@dataclass
class Representations:
    """Residual-stream states ``reps [N, L, P, d]`` with their labels and coordinates."""

    reps: Float[Tensor, "n layer pos d"]
    labels: Int[Tensor, " n"]
    layers: list[int]
    n_examples: list[int]
    positions: list[int]
    batch: Batch
    label: str
    split: str
    point: str

    def decode(self, **kwargs: Any) -> pd.DataFrame:
        """:func:`decodability_table` of these states at their own layers, example counts and
        positions; ``kwargs`` are its other options (``methods``, ``k``, ``seed``, …)."""
        return decodability_table(
            self.reps,
            self.labels,
            layers=self.layers,
            n_examples=self.n_examples,
            positions=self.positions,
            **kwargs,
        )


def collect_representations(
    model: Any,
    family: TaskFamily,
    *,
    label: Label | None = None,
    split: str | None = None,
    n: int | None = None,
    n_examples: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    point: str = "resid_post",
    seed: int = 0,
    batch_size: int = 256,
) -> Representations:
    """Sample prompts from ``family`` and capture ``point`` at every layer × query position.

    ``model`` is a :class:`~tvlens.models.TaskModel`, a run, or a bridge. ``n`` defaults to
    100 prompts per class (the paper's N). The prompts depend only on ``(family, seed)``,
    so two models (checkpoints, fine-tunes) are scored on the same prompts.
    """
    default_lab, default_split = default_label(family)
    label = label or default_lab
    split = split or (default_split if label == default_lab else "major")
    bridge = as_bridge(model)
    layers = list(range(bridge.cfg.n_layers)) if layers is None else list(layers)
    n_examples = default_n_examples(family) if n_examples is None else list(n_examples)
    positions = example_positions(family, n_examples)
    if n is None:
        n_classes = n_label_classes(family, label, split)
        n = DEFAULT_PER_CLASS * n_classes
        if n > 20_000:
            raise ValueError(
                f"{n_classes} {label} classes × {DEFAULT_PER_CLASS} prompts is too many for "
                "the default; pass n= explicitly or decode split='major'."
            )
    batch = family.sample(split, n, seed=derive_seed("decodability", seed) % (2**31))
    labels = labels_for(family, batch, label)
    names = [hook_name(layer, point) for layer in layers]
    acts = capture(bridge, batch.inputs, names, positions, batch_size)
    reps = torch.stack([acts[name] for name in names], dim=1)
    return Representations(reps, labels, layers, n_examples, positions, batch, label, split, point)


def task_decodability_table(
    model: Any,
    family: TaskFamily,
    *,
    label: Label | None = None,
    split: str | None = None,
    n: int | None = None,
    n_examples: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    methods: Sequence[Method] = METHODS,
    point: str = "resid_post",
    k: int = DEFAULT_K,
    seed: int = 0,
    shuffled: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """TD of a model on prompts sampled from ``family``, per layer × number of examples.

    Columns: label, split, point, then those of :func:`decodability_table`.
    """
    r = collect_representations(
        model,
        family,
        label=label,
        split=split,
        n=n,
        n_examples=n_examples,
        layers=layers,
        point=point,
        seed=seed,
    )
    df = r.decode(methods=methods, k=k, seed=seed, shuffled=shuffled, progress=progress)
    df.insert(0, "label", r.label)
    df.insert(1, "split", r.split)
    df.insert(2, "point", point)
    return df


@dataclass(frozen=True)
class DecodabilityOptions(Options):
    """Options of :func:`analyse_decodability` (and of :func:`~tvlens.analyses.dynamics.
    analyse_dynamics`, which reads ``seed`` and ``n``)."""

    section = "decodability"
    seed: int = option(0, "seed of the probe sequences and the kNN / probe splits")
    n_examples: tuple[int, ...] | None = option(
        None, "in-context examples before each read-out (default: a log grid)", min=0
    )
    methods: tuple[str, ...] = option(METHODS, "decoders", choices=METHODS)
    n: int | None = option(None, "sequences per class (default: the family's)", min=2)


@driver("decodability", DecodabilityOptions)
def analyse_decodability(
    run: Any, o: DecodabilityOptions, progress: bool
) -> dict[str, pd.DataFrame]:
    """TD of a trained :class:`~tvlens.models.Run` at its current step
    (``decodability.csv``). TD and ICL loss over the run's checkpoints are
    :func:`tvlens.analyses.dynamics.analyse_dynamics` (its own registry entry).
    """
    df = task_decodability_table(
        run.model,
        run.family,
        n=o.n,
        n_examples=o.n_examples,
        methods=o.methods,
        seed=o.seed,
        shuffled=True,
    )
    df.insert(0, "step", run.step)
    return {"decodability": df}


def headline(tables: Mapping[str, pd.DataFrame], run: Any = None) -> dict[str, float]:
    """A sweep's ``results.csv`` numbers: per decoder, the best TD, where, and at the most
    examples, beside chance."""
    if "decodability" not in tables:
        return {}
    out = {}
    for _, r in summarise(tables["decodability"]).iterrows():
        for col in ("best_layer", "best_n_examples", "best_td", "chance", "td_last_n"):
            out[f"td_{r['method']}_{col}"] = r[col]
    return out


#: deprecated name of :func:`task_decodability_table` (kept for one release)
task_decodability = task_decodability_table
