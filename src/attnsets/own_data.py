"""Explain your own data: bags with bag labels but no instance labels.

1. `load_bags` (a CSV / Parquet file or a DataFrame: one row per instance, a bag-id column, a
   label column, feature columns) or `bags_from_arrays` (a list of (n_i, d) arrays + labels)
   -> `OwnBags`.
2. `explain_own_data` splits the bags (seeded, stratified by label) into train / val / test,
   trains an ensemble on train (early stopping on val), explains every bag of the chosen splits
   with every member, and returns a per-instance table (consensus score, rank spread, top-k
   votes) and a per-bag table with a label-free reliability signal: how much the members agree.
3. `agreement_vs_truth` measures, on synthetic data with known witnesses, how well that
   agreement signal tracks the true importance AUROC (see docs/own_data.md for the formulas).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from attnsets.data import BagSplit, ComponentSpec, DatasetSpec, SetDataset, make_dataset
from attnsets.data.spec import SPLITS
from attnsets.errors import SpecError, SpecErrors
from attnsets.metrics import combine_scores, normalise_per_bag, per_bag_auroc
from attnsets.metrics.importance import average_ranks
from attnsets.models import ModelSpec
from attnsets.tables import TABLE_FORMATS, write_table
from attnsets.training import TrainSpec, fit_ensemble

#: Training used when `explain_own_data(training=None)`.
OWN_DATA_TRAINING: dict[str, Any] = {"epochs": 30, "batch_size": 16, "lr": 0.002,
                                     "weight_decay": 0.0001, "patience": 6}
DEFAULT_MODEL = ModelSpec(pooling="attention", embed_dim=32)
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)



# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class OwnBags:
    """Bags without instance labels, stored flat: bag i owns rows offsets[i]:offsets[i+1].

    instances: (total, d) float32; offsets: (B+1,) int64; labels: (B,) int64 class ids
    0..C-1 (class_names[c] is the original label value); bag_ids: (B,) the original bag ids;
    rows: (total,) int64 row of each instance in the source table (or its index in its array).
    """

    instances: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    bag_ids: np.ndarray
    class_names: list[str]
    feature_names: list[str]
    rows: np.ndarray
    ignored_columns: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def _read_table(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        return source
    if not isinstance(source, str | Path):
        raise SpecError("source", type(source).__name__,
                        "a .csv or .parquet path, or a pandas DataFrame")
    path = Path(source).expanduser()
    if path.suffix.lower() not in TABLE_FORMATS or not path.is_file():
        raise SpecError("source", str(source),
                        f"an existing file ending in one of {list(TABLE_FORMATS)}")
    try:
        return pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - every reader failure means the same to the user
        raise SpecError("source", str(path), f"a readable {path.suffix} file ({err})") from None


def load_bags(source: str | Path | pd.DataFrame, bag_column: str, label_column: str,
              feature_columns: Sequence[str] | None = None) -> OwnBags:
    """Read a table with one row per instance into bags.

    bag_column: the bag id of each row (rows of a bag need not be contiguous; bags keep the
    order of their first row, instances their row order). label_column: the bag label, equal on
    every row of a bag. feature_columns: the instance features; None = every other numeric
    column (non-numeric ones are skipped and listed in `ignored_columns`).
    """
    frame = _read_table(source)
    frame = frame.set_axis([str(c) for c in frame.columns], axis=1)
    present = list(frame.columns)
    for name, value in (("bag_column", bag_column), ("label_column", label_column)):
        if value not in present:
            raise SpecError(name, value, f"one of the columns {present}")
    if bag_column == label_column:
        raise SpecError("label_column", label_column, "a column other than bag_column")
    ignored: list[str] = []
    if feature_columns is None:
        others = [c for c in present if c not in (bag_column, label_column)]
        # An entirely empty column (e.g. text that a CSV reader turned into NaN) says nothing.
        features = [c for c in others if _numeric(frame[c]) and frame[c].notna().any()]
        ignored = [c for c in others if c not in features]
        if not features:
            raise SpecError("feature_columns", None,
                            "numeric feature columns; the table has no numeric column besides "
                            f"the bag and label columns (skipped as non-numeric or empty: "
                            f"{ignored})")
    else:
        if isinstance(feature_columns, str) or not isinstance(feature_columns, Sequence) \
                or len(feature_columns) == 0:
            raise SpecError("feature_columns", feature_columns, "None or a non-empty list of "
                                                                "column names")
        features = [str(c) for c in feature_columns]
        missing = [c for c in features if c not in present]
        if missing:
            raise SpecError("feature_columns", missing, f"columns of the table {present}")
        clash = [c for c in features if c in (bag_column, label_column)]
        if clash:
            raise SpecError("feature_columns", clash, "feature columns other than the bag and "
                                                      "label columns")
        for c in features:
            if not _numeric(frame[c]):
                raise SpecError("feature_columns", c, f"numeric columns; {c!r} has dtype "
                                                      f"{frame[c].dtype} (drop or encode it)")
    for name, column in (("bag_column", bag_column), ("label_column", label_column)):
        n_missing = int(frame[column].isna().sum())
        if n_missing:
            raise SpecError(name, column, f"a column without missing values ({n_missing} "
                                          "missing)")
    values = frame[features].to_numpy(dtype=np.float64)
    _check_finite(values, features)
    bag_codes, bag_ids = pd.factorize(frame[bag_column], sort=False)
    labels_per_bag = frame.groupby(bag_codes, sort=True)[label_column].nunique()
    mixed = np.flatnonzero(labels_per_bag.to_numpy() > 1)
    if len(mixed):
        examples = []
        for code in mixed[:3]:
            bag_labels = sorted(map(str, frame.loc[bag_codes == code, label_column].unique()))
            examples.append(f"bag {bag_ids[code]!r} has labels {bag_labels}")
        raise SpecError("label_column", label_column,
                        f"one label per bag; {len(mixed)} bag(s) have several: "
                        + "; ".join(examples))
    first_row = np.unique(bag_codes, return_index=True)[1]
    return _own_bags(values, bag_codes, np.asarray(bag_ids),
                     frame[label_column].to_numpy()[first_row], features, ignored)


def _numeric(column: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(column.dtype))


def _check_finite(values: np.ndarray, names: Sequence[str]) -> None:
    finite = np.isfinite(values)
    if not finite.all():
        column = int(np.flatnonzero(~finite.all(axis=0))[0])
        raise SpecError("feature_columns", names[column],
                        f"finite feature values; column {names[column]!r} has "
                        f"{int((~finite[:, column]).sum())} missing or infinite value(s)")


def _own_bags(values: np.ndarray, bag_codes: np.ndarray, bag_ids: np.ndarray,
              bag_labels: np.ndarray, feature_names: Sequence[str],
              ignored: Sequence[str]) -> OwnBags:
    """Group rows by bag code (0..B-1, in order of first appearance) into an OwnBags."""
    try:
        classes, label_ids = np.unique(bag_labels, return_inverse=True)
    except TypeError:
        raise SpecError("label_column", "mixed types", "labels of one type (so they sort)"
                        ) from None
    if len(classes) < 2:
        raise SpecError("labels", [str(c) for c in classes],
                        f"at least two classes among the bags (found {len(classes)})")
    order = np.argsort(bag_codes, kind="stable")
    sizes = np.bincount(bag_codes, minlength=len(bag_ids))
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return OwnBags(values[order].astype(np.float32), offsets, label_ids.astype(np.int64),
                   bag_ids, [str(c) for c in classes], [str(n) for n in feature_names],
                   order.astype(np.int64), list(ignored))


def bags_from_arrays(bags: Sequence[np.ndarray], labels: Sequence[Any],
                     bag_ids: Sequence[Any] | None = None,
                     feature_names: Sequence[str] | None = None) -> OwnBags:
    """Bags from a list of (n_i, d) arrays (n_i >= 1, one d for all) and one label per bag.
    bag_ids default to 0..B-1; `rows` holds each instance's index within its array."""
    if isinstance(bags, np.ndarray) and bags.ndim == 3:
        bags = list(bags)
    if not isinstance(bags, Sequence) or len(bags) == 0:
        raise SpecError("bags", type(bags).__name__, "a non-empty list of (n_i, d) arrays")
    arrays = [np.asarray(b) for b in bags]
    bad = [i for i, a in enumerate(arrays) if a.ndim != 2 or a.shape[0] < 1]
    if bad:
        raise SpecError(f"bags[{bad[0]}]", f"array of shape {arrays[bad[0]].shape}",
                        "a 2-d (n_i, d) array with n_i >= 1 instances")
    dims = sorted({a.shape[1] for a in arrays})
    if len(dims) > 1:
        raise SpecError("bags", f"feature dimensions {dims}", "the same d in every bag")
    if not all(np.issubdtype(a.dtype, np.number) or a.dtype == bool for a in arrays):
        raise SpecError("bags", "non-numeric arrays", "numeric feature arrays")
    label_array = np.asarray(labels)
    if label_array.shape != (len(arrays),):
        raise SpecError("labels", f"{label_array.shape} values", f"one label per bag "
                                                                  f"({len(arrays)})")
    names = [f"f{j}" for j in range(dims[0])] if feature_names is None else \
        [str(n) for n in feature_names]
    if len(names) != dims[0]:
        raise SpecError("feature_names", list(names), f"{dims[0]} names, one per feature")
    ids = np.arange(len(arrays)) if bag_ids is None else np.asarray(bag_ids)
    if ids.shape != (len(arrays),) or len(pd.unique(ids)) != len(ids):
        raise SpecError("bag_ids", list(ids), f"{len(arrays)} distinct ids, one per bag")
    values = np.concatenate(arrays).astype(np.float64)
    _check_finite(values, names)
    sizes = np.array([len(a) for a in arrays])
    codes = np.repeat(np.arange(len(arrays)), sizes)
    own = _own_bags(values, codes, ids, label_array, names, [])
    # Within-array positions are more useful than global row numbers for array input.
    return dataclasses.replace(own, rows=np.arange(len(codes)) - np.repeat(own.offsets[:-1], sizes))


# --------------------------------------------------------------------------- splitting


def rows_of(offsets: np.ndarray, bags: np.ndarray) -> np.ndarray:
    """The flat rows of `bags` (in that order) in a CSR layout with these offsets."""
    sizes = offsets[1:][bags] - offsets[:-1][bags]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    return np.arange(int(sizes.sum())) + np.repeat(offsets[:-1][bags] - starts, sizes)


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(f) for f in fractions) if isinstance(fractions, Sequence) else ()
    if len(values) != 3 or min(values) <= 0 or abs(sum(values) - 1.0) > 1e-6:
        raise SpecError("fractions", fractions, "three positive fractions (train, val, test) "
                                                "summing to 1")
    return values  # type: ignore[return-value]


def split_assignment(labels: np.ndarray, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                     seed: int = 0) -> np.ndarray:
    """(B,) split id per bag (0 train, 1 val, 2 test), stratified by label and seeded.

    Each class is shuffled and cut at the rounded cumulative fractions; if val or test ends up
    empty it takes one bag from the largest class's train share."""
    train_f, val_f, _ = _check_fractions(fractions)
    labels = np.asarray(labels)
    if len(labels) < 3:
        raise SpecError("bags", len(labels), "at least 3 bags (one per split)")
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.floor(np.array([train_f, train_f + val_f]) * len(members) + 0.5).astype(int)
        cuts = np.maximum(cuts, 1)  # every class gets at least one training bag
        assignment[members] = np.searchsorted(cuts, np.arange(len(members)), side="right")
    for split in (1, 2):
        if not (assignment == split).any():
            train = np.flatnonzero(assignment == 0)
            counts = np.bincount(labels[train])
            donor = train[labels[train] == int(np.argmax(counts))]
            if len(donor) < 2:
                raise SpecError("bags", len(labels), "enough bags for one in each of train, "
                                                     "val and test while every class keeps a "
                                                     "training bag")
            assignment[donor[-1]] = split
    return assignment


def split_bags(data: OwnBags, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0,
               standardize: bool = True) -> SetDataset:
    """A SetDataset of train / val / test BagSplits (`split_assignment`). standardize: z-score
    every feature with the mean and sd of the *training* instances (constant features are only
    centred). Instance evidence is unknown: stored as all zeros (never score against it).
    metadata["bag_index"][split] maps a split's bag i back to data's bag index."""
    assignment = split_assignment(data.labels, fractions, seed)
    bag_of_row = np.repeat(np.arange(len(data)), data.sizes)
    instances = data.instances.astype(np.float64)
    if standardize:
        train_rows = assignment[bag_of_row] == 0
        mean = instances[train_rows].mean(axis=0)
        sd = instances[train_rows].std(axis=0)
        instances = (instances - mean) / np.where(sd > 0, sd, 1.0)
    instances = instances.astype(np.float32)
    splits = {}
    bag_index: dict[str, list[int]] = {}
    for split_id, name in enumerate(SPLITS):
        chosen = np.flatnonzero(assignment == split_id)
        rows = rows_of(data.offsets, chosen)
        sizes = data.sizes[chosen]
        splits[name] = BagSplit(
            instances[rows], np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            data.labels[chosen], np.full(len(rows), -1, dtype=np.int64),
            np.zeros((len(rows), data.n_classes), dtype=np.int8))
        bag_index[name] = chosen.tolist()
    spec = DatasetSpec(ComponentSpec("own_data", {"features": list(data.feature_names)}),
                       ComponentSpec("given_labels", {"classes": list(data.class_names)}),
                       bags={name: len(split) for name, split in splits.items()}, seed=int(seed))
    return SetDataset(spec, splits, data.n_classes, "vector", (instances.shape[1],),
                      list(data.class_names), 0,
                      {"bag_index": bag_index, "standardized": bool(standardize)})


# --------------------------------------------------------------------------- agreement


@dataclass(frozen=True)
class Agreement:
    """Label-free agreement of K members' scores (K, B, N) over each bag's real instances.

    Per bag (B,): rank_agreement = mean pairwise Spearman correlation (NaN when a member's scores
    are constant in the bag or the bag has < 2 instances); top_k_overlap = mean pairwise
    |T_a & T_b| / k with T_a member a's k top-scored instances; k = max(1, ceil(top_fraction *
    n_b)). Per instance (B, N), 0 at padding: consensus = combine_scores mean_normalised;
    rank_mean / rank_spread = mean and max - min over members of the rank normalised to [0, 1]
    (1 = top of the bag); top_k_votes = share of members with the instance in their top k."""

    rank_agreement: np.ndarray
    top_k_overlap: np.ndarray
    k: np.ndarray
    consensus: np.ndarray
    rank_mean: np.ndarray
    rank_spread: np.ndarray
    top_k_votes: np.ndarray


def agreement(scores: Any, mask: Any, top_fraction: float = 0.1) -> Agreement:
    """Agreement signals of member scores ``(K, B, N)`` (K >= 2) over ``mask: (B, N)``; see
    `Agreement`. Vectorised over members and bags."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[0] < 2:
        raise SpecError("scores", f"array of shape {arr.shape}", "a (K, B, N) array, K >= 2 "
                                                                 "members")
    mask_arr = np.asarray(mask, dtype=bool)
    if mask_arr.shape != arr.shape[1:]:
        raise SpecError("mask", f"array of shape {mask_arr.shape}", f"shape {arr.shape[1:]}")
    if isinstance(top_fraction, bool) or not 0 < top_fraction <= 1:
        raise SpecError("top_fraction", top_fraction, "a fraction in (0, 1]")
    if not np.isfinite(arr[:, mask_arr]).all():
        raise SpecError("scores", "non-finite values at real instances", "finite scores")
    n_members, n_bags, n = arr.shape
    arr = np.where(mask_arr, arr, 0.0)
    sizes = mask_arr.sum(axis=1)
    flat_mask = np.broadcast_to(mask_arr, arr.shape).reshape(-1, n)
    ranks = average_ranks(arr.reshape(-1, n), flat_mask).reshape(arr.shape)
    ranks = np.where(mask_arr, ranks, 0.0)

    # Spearman = Pearson of ranks. With z_a the centred ranks of member a scaled to unit norm,
    # sum over pairs a != b of z_a . z_b = |sum_a z_a|^2 - K (each |z_a| = 1).
    centred = np.where(mask_arr, ranks - ranks.sum(axis=2, keepdims=True)
                       / np.maximum(sizes, 1)[None, :, None], 0.0)
    norms = np.sqrt((centred ** 2).sum(axis=2))  # (K, B)
    defined = (norms > 0).all(axis=0) & (sizes >= 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        unit = centred / norms[..., None]
        pair_sum = (unit.sum(axis=0) ** 2).sum(axis=1) - n_members
        rank_agreement = np.where(defined, pair_sum / (n_members * (n_members - 1)), np.nan)

    k = np.maximum(1, np.ceil(top_fraction * sizes - 1e-9)).astype(np.int64)
    # Position of each instance in its member's descending order; ties keep the bag's order,
    # identically for every member, so identical scores give identical top-k sets.
    order = np.argsort(np.where(mask_arr, -arr, np.inf), axis=2, kind="stable")
    position = np.empty_like(order)
    np.put_along_axis(position, order, np.broadcast_to(np.arange(n), order.shape), axis=2)
    in_top = (position < k[None, :, None]) & mask_arr  # (K, B, N)
    votes = in_top.sum(axis=0)  # (B, N)
    # sum over pairs a != b of |T_a & T_b| = sum_i c_i (c_i - 1), c_i = members choosing i.
    overlap = (votes * (votes - 1)).sum(axis=1) / (n_members * (n_members - 1) * k)

    normalised_ranks = normalise_per_bag(arr.reshape(-1, n), flat_mask, "rank").reshape(arr.shape)
    consensus = combine_scores(arr, mask_arr, "mean_normalised")
    return Agreement(rank_agreement, np.where(sizes > 0, overlap, np.nan), k, consensus,
                     np.where(mask_arr, normalised_ranks.mean(axis=0), 0.0),
                     np.where(mask_arr, normalised_ranks.max(axis=0)
                              - normalised_ranks.min(axis=0), 0.0),
                     np.where(mask_arr, votes / n_members, 0.0))


# --------------------------------------------------------------------------- explaining


def descending_rank(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(B, N) int64 rank within each bag, 1 = highest score; tied instances share the best rank
    of their group (1 + number of strictly higher scores). 0 at padding."""
    keyed = np.where(mask, -np.asarray(scores, dtype=np.float64), np.inf)
    order = np.argsort(keyed, axis=1, kind="stable")
    ordered = np.take_along_axis(keyed, order, axis=1)
    starts = np.ones(ordered.shape, dtype=bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    position = np.broadcast_to(np.arange(ordered.shape[1]), ordered.shape)
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=1)
    ranks = np.empty(ordered.shape, dtype=np.int64)
    np.put_along_axis(ranks, order, first + 1, axis=1)
    return np.where(mask, ranks, 0)


@dataclass
class OwnDataResult:
    """instances: one row per explained instance; bags: one row per explained bag (columns in
    docs/own_data.md); metrics: ensemble bag metrics per split; ensemble: the trained members;
    dataset: the split data they were trained on; scores: (K, B, N) member scores, mask (B, N)
    and split / bag_position per row of the padded arrays, for further analysis."""

    instances: pd.DataFrame
    bags: pd.DataFrame
    metrics: dict[str, dict[str, float]]
    ensemble: Any
    dataset: SetDataset
    method: str
    arrays: dict[str, np.ndarray]

    def write(self, directory: str | Path, fmt: str = "csv") -> tuple[Path, Path]:
        """Write instances.<fmt> and bags.<fmt> (fmt csv or parquet) into `directory`."""
        if fmt not in ("csv", "parquet"):
            raise SpecError("fmt", fmt, "'csv' or 'parquet'")
        directory = Path(directory)
        return (write_table(self.instances, directory / f"instances.{fmt}"),
                write_table(self.bags, directory / f"bags.{fmt}"))


def _train_spec(training: TrainSpec | Mapping[str, Any] | None, seed: int) -> TrainSpec:
    if training is None or isinstance(training, Mapping):
        return TrainSpec.from_dict({**OWN_DATA_TRAINING, **dict(training or {}), "seed": seed},
                                   "training")
    if isinstance(training, TrainSpec):
        return dataclasses.replace(training, seed=seed)
    raise SpecError("training", type(training).__name__, "None, a TrainSpec or a table of "
                                                         "TrainSpec fields")


def _member_outputs(members: Sequence[Any], split: BagSplit, method: str, seed: int,
                    batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores (K, B, N), probs (K, B, C), mask (B, N)) over a whole split, padded to its
    largest bag; each bag explained for its own label."""
    from attnsets.assess import padded_batches
    from attnsets.explain import explain

    options = {"seed": seed} if method in ("random", "shapley") else {}
    batches = padded_batches(split, batch_size)
    scores, probs = [], []
    for batch in batches:
        scores.append(np.stack([explain(m, batch, method, **options).numpy() for m in members]))
        with torch.no_grad():
            probs.append(np.stack([torch.softmax(m(batch.x, batch.mask).logits.double(), -1)
                                   .numpy() for m in members]))
    mask = torch.cat([b.mask for b in batches]).numpy()
    return np.concatenate(scores, axis=1), np.concatenate(probs, axis=1), mask


def explain_own_data(data: OwnBags | SetDataset, *, model: ModelSpec = DEFAULT_MODEL,
                     members: int = 5, training: TrainSpec | Mapping[str, Any] | None = None,
                     method: str = "attention", seed: int = 0,
                     fractions: Sequence[float] = DEFAULT_FRACTIONS,
                     splits: Sequence[str] = SPLITS, top_fraction: float = 0.1,
                     batch_size: int = 128) -> OwnDataResult:
    """Train `members` models (seeds seed..seed+members-1, one vectorised pass) on the train
    split, early-stopping on val, then explain every bag of `splits` with every member.

    data: OwnBags (split here with `split_bags(data, fractions, seed)`) or a SetDataset already
    split. All bags are explained by default; the `split` column says which ones the members
    were trained on: read held-out bags (val / test) for an honest picture. Each bag is
    explained for its own label. method: any explainer that applies to the model."""
    from attnsets.explain import EXPLAINERS
    from attnsets.metrics import bag_metrics, combine_probs

    if isinstance(members, bool) or not isinstance(members, int) or members < 2:
        raise SpecError("members", members, "an integer >= 2 (agreement needs two members)")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SpecError("seed", seed, "an integer >= 0")
    if not isinstance(model, ModelSpec):
        raise SpecError("model", type(model).__name__, "a ModelSpec")
    if method not in EXPLAINERS:
        raise SpecError("method", method, f"one of {EXPLAINERS.names()}")
    chosen = [splits] if isinstance(splits, str) else list(splits)
    if not chosen or any(s not in SPLITS for s in chosen):
        raise SpecError("splits", splits, f"a non-empty list of {list(SPLITS)}")
    if isinstance(data, OwnBags):
        dataset = split_bags(data, fractions, seed)
        own: OwnBags | None = data
    elif isinstance(data, SetDataset):
        dataset, own = data, None
    else:
        raise SpecError("data", type(data).__name__, "OwnBags (load_bags / bags_from_arrays) "
                                                     "or a SetDataset")
    spec = _train_spec(training, seed)
    ensemble = fit_ensemble(model, dataset, spec, seeds=list(range(seed, seed + members)))
    member_models = ensemble.ensemble.members()
    instance_frames, bag_frames = [], []
    metrics: dict[str, dict[str, float]] = {}
    arrays: dict[str, np.ndarray] = {}
    class_names = list(own.class_names) if own is not None else [
        str(c) for c in range(dataset.n_classes)]
    for split_name in chosen:
        split = dataset.splits[split_name]
        scores, probs, mask = _member_outputs(member_models, split, method, seed, batch_size)
        signals = agreement(scores, mask, top_fraction)
        ens_probs = combine_probs(probs)
        metrics[split_name] = {k: float(v) for k, v in bag_metrics(split.labels, ens_probs)
                               .items()}
        if own is not None:
            index = np.asarray(dataset.metadata["bag_index"][split_name], dtype=np.int64)
            bag_ids = own.bag_ids[index]
            rows = own.rows[rows_of(own.offsets, index)]
        else:
            index = np.arange(len(split))
            bag_ids = np.array([f"{split_name}:{i}" for i in index], dtype=object)
            rows = np.arange(split.offsets[-1]) - np.repeat(split.offsets[:-1], split.sizes)
        predicted = ens_probs.argmax(axis=1)
        bag_frames.append(pd.DataFrame({
            "bag_id": bag_ids, "split": split_name, "label": split.labels,
            "label_name": np.asarray(class_names, dtype=object)[split.labels],
            "predicted": predicted,
            "predicted_name": np.asarray(class_names, dtype=object)[predicted],
            "p_label": ens_probs[np.arange(len(split)), split.labels],
            "correct": predicted == split.labels, "n_instances": split.sizes,
            "k": signals.k, "rank_agreement": signals.rank_agreement,
            "top_k_overlap": signals.top_k_overlap}))
        positions = np.broadcast_to(np.arange(mask.shape[1]), mask.shape)[mask]
        bag_of = np.broadcast_to(np.arange(len(split))[:, None], mask.shape)[mask]
        consensus = signals.consensus
        instance_frames.append(pd.DataFrame({
            "bag_id": bag_ids[bag_of], "split": split_name, "instance": positions,
            "row": rows, "label": split.labels[bag_of],
            "consensus": consensus[mask], "consensus_rank": descending_rank(consensus, mask)[mask],
            "rank_mean": signals.rank_mean[mask],
            "rank_spread": signals.rank_spread[mask], "top_k_votes": signals.top_k_votes[mask],
            "bag_rank_agreement": signals.rank_agreement[bag_of]}))
        arrays[f"{split_name}/scores"] = scores.astype(np.float32)
        arrays[f"{split_name}/mask"] = mask
        arrays[f"{split_name}/consensus"] = consensus
    return OwnDataResult(pd.concat(instance_frames, ignore_index=True),
                         pd.concat(bag_frames, ignore_index=True), metrics, ensemble.ensemble,
                         dataset, method, arrays)


# --------------------------------------------------------------------------- is it worth it?


def correlation(x: Any, y: Any) -> dict[str, float]:
    """Spearman and Pearson correlation of x and y over the pairs where both are finite:
    {"spearman", "pearson", "n"}; NaN when n < 3 or either side is constant."""
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    out = {"spearman": math.nan, "pearson": math.nan, "n": float(len(xa))}
    if len(xa) < 3 or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return out
    out["pearson"] = float(np.corrcoef(xa, ya)[0, 1])
    ranks = average_ranks(np.stack([xa, ya]))
    out["spearman"] = float(np.corrcoef(ranks[0], ranks[1])[0, 1])
    return out


SIGNALS = ("rank_agreement", "top_k_overlap")


@dataclass
class AgreementStudy:
    """bags: one row per eligible bag (entry, replicate, split, bag, the agreement signals, the
    true importance AUROC of the consensus and its members' mean); runs: one row per trained
    ensemble (means of the same); correlations: one row per level x group x signal with the
    Spearman and Pearson correlation against the consensus AUROC and n."""

    bags: pd.DataFrame
    runs: pd.DataFrame
    correlations: pd.DataFrame


def agreement_vs_truth(battery: Sequence[Any] | None = None, *, model: ModelSpec = DEFAULT_MODEL,
                       members: int = 5, training: TrainSpec | Mapping[str, Any] | None = None,
                       method: str = "attention", seeds: Sequence[int] = (0,),
                       splits: Sequence[str] = ("test",),
                       top_fraction: float = 0.1) -> AgreementStudy:
    """How well does the label-free agreement signal predict the true explanation quality?

    For every battery entry (default: the audit battery, see `attnsets.audit`) and replicate
    seed, generate the dataset, run `explain_own_data` on it, and compare per bag the signals
    with the true per-bag importance AUROC of the consensus explanation (bags with witnesses and
    non-witnesses only). Correlations are given per bag pooled over everything ("bag", "all"),
    per bag within each entry ("bag", <entry>), and per trained ensemble ("run", "all")."""
    from attnsets.audit import resolve_battery

    entries = resolve_battery(battery)
    bag_frames = []
    for entry in entries:
        for replicate in seeds:
            try:
                dataset = make_dataset(dataclasses.replace(entry.dataset, seed=int(replicate)))
            except SpecErrors as err:
                raise SpecError(f"battery.{entry.name}", str(err), "a valid dataset spec"
                                ) from None
            result = explain_own_data(dataset, model=model, members=members, training=training,
                                      method=method, seed=int(replicate), splits=splits,
                                      top_fraction=top_fraction)
            for split_name in splits:
                frame = _truth_frame(result, split_name)
                frame.insert(0, "replicate", int(replicate))
                frame.insert(0, "entry", entry.name)
                bag_frames.append(frame)
    bags = pd.concat(bag_frames, ignore_index=True)
    eligible = bags[np.isfinite(bags["consensus_auroc"])]
    runs = eligible.groupby(["entry", "replicate"], sort=False).agg(
        rank_agreement=("rank_agreement", "mean"), top_k_overlap=("top_k_overlap", "mean"),
        consensus_auroc=("consensus_auroc", "mean"),
        member_auroc_mean=("member_auroc_mean", "mean"), n_bags=("bag", "size")).reset_index()
    rows = []
    groups: list[tuple[str, str, pd.DataFrame]] = [("bag", "all", eligible)]
    groups += [("bag", str(name), part) for name, part in eligible.groupby("entry", sort=False)]
    groups.append(("run", "all", runs))
    for level, group, part in groups:
        for signal in SIGNALS:
            rows.append({"level": level, "group": group, "signal": signal,
                         "truth": "consensus_auroc",
                         **correlation(part[signal], part["consensus_auroc"])})
    correlations = pd.DataFrame(rows)
    correlations["n"] = correlations["n"].astype(np.int64)
    return AgreementStudy(eligible.reset_index(drop=True), runs, correlations)


def _truth_frame(result: OwnDataResult, split_name: str) -> pd.DataFrame:
    """Per bag of one split: agreement signals and the true AUROC (NaN where undefined)."""
    from attnsets.assess import padded_batches

    split = result.dataset.splits[split_name]
    batches = padded_batches(split, 256)
    evidence = torch.cat([b.evidence for b in batches]).numpy()
    mask = result.arrays[f"{split_name}/mask"]
    scores = result.arrays[f"{split_name}/scores"]
    consensus_auroc = per_bag_auroc(result.arrays[f"{split_name}/consensus"], evidence,
                                    mask).values
    member_auroc = np.stack([per_bag_auroc(s, evidence, mask).values for s in scores])
    defined = np.isfinite(member_auroc)
    counts = defined.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        member_mean = np.where(counts > 0, np.where(defined, member_auroc, 0.0).sum(axis=0)
                               / counts, np.nan)
    bags = result.bags[result.bags["split"] == split_name].reset_index(drop=True)
    return pd.DataFrame({"split": split_name, "bag": np.arange(len(split)),
                         "label": split.labels, "correct": bags["correct"].to_numpy(),
                         "n_instances": split.sizes,
                         "rank_agreement": bags["rank_agreement"].to_numpy(),
                         "top_k_overlap": bags["top_k_overlap"].to_numpy(),
                         "consensus_auroc": consensus_auroc, "member_auroc_mean": member_mean})
