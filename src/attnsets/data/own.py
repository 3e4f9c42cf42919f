"""Your own bags (bag labels, no instance labels) as a dataset: read a table with one row per
instance (`load_bags`) or a list of arrays (`bags_from_arrays`) into `OwnBags`, then split them
(seeded, stratified by label) into train / val / test with `split_bags`."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attnsets.data.bags import BagSplit
from attnsets.data.generate import SetDataset
from attnsets.data.spec import SPLITS, ComponentSpec, DatasetSpec
from attnsets.errors import SpecError
from attnsets.files import check_input_file
from attnsets.tables import TABLE_FORMATS

#: Train / val / test shares of the bags.
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)


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
    """The table of `source` with string column names; SpecError("source") for a file that is
    missing, empty, mislabelled or unreadable, SpecError("columns") for repeated column names
    (a CSV reader would silently rename the second "x" to "x.1")."""
    if isinstance(source, pd.DataFrame):
        names = [str(c) for c in source.columns]
        _check_distinct(names, "the DataFrame")
        return source.set_axis(names, axis=1)
    if not isinstance(source, str | Path):
        raise SpecError("source", type(source).__name__,
                        "a .csv or .parquet path, or a pandas DataFrame")
    path = check_input_file(source, "source", TABLE_FORMATS)
    csv_file = path.suffix.lower() == ".csv"
    try:
        if csv_file:
            with path.open(newline="", encoding="utf-8") as stream:
                _check_distinct(next(csv.reader(stream), []), str(path))
            frame = pd.read_csv(path)
        else:
            frame = pd.read_parquet(path)
    except SpecError:
        raise
    except Exception as err:  # noqa: BLE001 - every reader failure means the same to the user
        raise SpecError("source", str(path), f"a readable {path.suffix} file ({err})") from None
    names = [str(c) for c in frame.columns]
    _check_distinct(names, str(path))
    if len(frame) == 0:
        raise SpecError("source", str(path), "a table with at least one row (this one has only "
                                             f"the header: {names})")
    return frame.set_axis(names, axis=1)


def _check_distinct(names: Sequence[str], where: str) -> None:
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise SpecError("columns", repeated, f"distinct column names ({where} has "
                                             f"{', '.join(map(repr, repeated))} more than once)")


def load_bags(source: str | Path | pd.DataFrame, bag_column: str, label_column: str,
              feature_columns: Sequence[str] | None = None) -> OwnBags:
    """Read a table with one row per instance into bags.

    bag_column: the bag id of each row (rows of a bag need not be contiguous; bags keep the
    order of their first row, instances their row order). label_column: the bag label, equal on
    every row of a bag. feature_columns: the instance features; None = every other numeric
    column (non-numeric ones are skipped and listed in `ignored_columns`).
    """
    frame = _read_table(source)
    present = list(frame.columns)
    for name, value in (("bag_column", bag_column), ("label_column", label_column)):
        if value not in present:
            raise SpecError(name, value, f"one of the columns {present}")
    if bag_column == label_column:
        raise SpecError("label_column", label_column, "a column other than bag_column")
    features, ignored = _feature_columns(frame, bag_column, label_column, feature_columns)
    for name, column in (("bag_column", bag_column), ("label_column", label_column)):
        n_missing = int(frame[column].isna().sum())
        if n_missing:
            raise SpecError(name, column, f"a column without missing values ({n_missing} "
                                          "missing)")
    values = frame[features].to_numpy(dtype=np.float64)
    _check_finite(values, features)
    bag_codes, bag_ids = pd.factorize(frame[bag_column], sort=False)
    if len(bag_ids) == len(frame) and len(frame) > 1:
        raise SpecError("bag_column", bag_column, "a column that groups rows into bags; every "
                                                  f"row of {bag_column!r} is a bag of its own "
                                                  "(is it a row id?)")
    _check_one_label_per_bag(frame, bag_codes, bag_ids, label_column)
    first_row = np.unique(bag_codes, return_index=True)[1]
    return _own_bags(values, bag_codes, np.asarray(bag_ids),
                     frame[label_column].to_numpy()[first_row], features, ignored)


def _feature_columns(frame: pd.DataFrame, bag_column: str, label_column: str,
                     feature_columns: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """The feature columns to use and the columns skipped (when chosen automatically)."""
    present = list(frame.columns)
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
        return features, ignored
    if isinstance(feature_columns, str) or not isinstance(feature_columns, Sequence) \
            or len(feature_columns) == 0:
        raise SpecError("feature_columns", feature_columns, "None or a non-empty list of "
                                                            "column names")
    features = [str(c) for c in feature_columns]
    missing = [c for c in features if c not in present]
    if missing:
        raise SpecError("feature_columns", missing, f"columns of the table {present}")
    _check_distinct(features, "feature_columns")
    clash = [c for c in features if c in (bag_column, label_column)]
    if clash:
        raise SpecError("feature_columns", clash, "feature columns other than the bag and "
                                                  "label columns")
    for c in features:
        if not _numeric(frame[c]):
            raise SpecError("feature_columns", c, f"numeric columns; {c!r} has dtype "
                                                  f"{frame[c].dtype} (drop or encode it)")
    return features, []


def _check_one_label_per_bag(frame: pd.DataFrame, bag_codes: np.ndarray, bag_ids: Any,
                             label_column: str) -> None:
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


def _numeric(column: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(column.dtype))


def _check_finite(values: np.ndarray, names: Sequence[str]) -> None:
    finite = np.isfinite(values)
    if not finite.all():
        column = int(np.flatnonzero(~finite.all(axis=0))[0])
        bad = values[:, column]
        n_nan, n_inf = int(np.isnan(bad).sum()), int(np.isinf(bad).sum())
        first = int(np.flatnonzero(~finite[:, column])[0])
        raise SpecError("feature_columns", names[column],
                        f"finite feature values; column {names[column]!r} has "
                        f"{n_nan + n_inf} missing or infinite value(s) ({n_nan} NaN, "
                        f"{n_inf} infinite; the first at row {first})")


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
