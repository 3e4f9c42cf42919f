"""Rows of any labelled table: scikit-learn's bundled wine / breast_cancer / iris, or a CSV or
Parquet file. Concept = class index: label values sorted, mapped to 0..K-1; concept_names are
the label values as strings (for bundled tables, scikit-learn's target names).

Features are z-scored with the mean and standard deviation of the rows in the pool's *train*
partition (``standardize="train"``, the default, so val/test rows do not leak into the
scaling), of all rows (``"all"``), or left as they are (``"none"``). Constant columns are only
centred.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from attnsets.data.pools.base import POOLS, FinitePool
from attnsets.errors import SpecError

BUNDLED = ("wine", "breast_cancer", "iris")
FILE_SUFFIXES = (".csv", ".parquet")
STANDARDIZE = ("train", "all", "none")


@POOLS.register("table")
@dataclass
class TablePool(FinitePool):
    """Instances: (n_features,) float32 rows. Finite: rows are split once per split, stratified
    by class and disjoint (FinitePool)."""

    source: str = "wine"
    label_column: str | None = None
    standardize: str = "train"

    kind = "vector"

    def __post_init__(self) -> None:
        super().__post_init__()
        allowed_sources = f"one of {list(BUNDLED)} or the path of an existing " \
                          f"{' / '.join(FILE_SUFFIXES)} file"
        if not isinstance(self.source, str) or not self.source:
            raise SpecError("source", self.source, allowed_sources)
        if self.standardize not in STANDARDIZE:
            raise SpecError("standardize", self.standardize, f"one of {list(STANDARDIZE)}")
        if self.source in BUNDLED:
            if self.label_column is not None:
                raise SpecError("label_column", self.label_column,
                                f"unset for the bundled table {self.source!r} (it is only for "
                                "CSV / Parquet files)")
            return
        path = Path(self.source).expanduser()
        if path.suffix.lower() not in FILE_SUFFIXES or not path.is_file():
            raise SpecError("source", self.source, allowed_sources)
        if not isinstance(self.label_column, str):
            raise SpecError("label_column", self.label_column,
                            f"the name of the label column of {path.name}")

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """Raw (unstandardised) features (M, d) float64 and class ids (M,) int64."""
        return self._table[0], self._table[1]

    @cached_property
    def _table(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(features (M, d) float64, class ids (M,) int64, class names)."""
        if self.source in BUNDLED:
            return _bundled(self.source)
        return _from_file(Path(self.source).expanduser(), str(self.label_column))

    @cached_property
    def scaling(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean (d,), std (d,)) used to z-score features: zeros and ones for "none"."""
        raw = self._data[0]
        if self.standardize == "none":
            return np.zeros(raw.shape[1]), np.ones(raw.shape[1])
        rows = raw
        if self.standardize == "train":
            train = [self.partition[("train", c)] for c in range(self.n_concepts)]
            rows = raw[np.concatenate(train)]
        mean, std = rows.mean(axis=0), rows.std(axis=0)
        return mean, np.where(std > 0, std, 1.0)

    @cached_property
    def standardized_features(self) -> np.ndarray:
        """(M, d) float32 features after scaling."""
        mean, std = self.scaling
        return ((self._data[0] - mean) / std).astype(np.float32)

    @property
    def features(self) -> np.ndarray:
        return self.standardized_features

    @property
    def n_concepts(self) -> int:
        return len(self._table[2])

    @property
    def concept_names(self) -> list[str]:
        return list(self._table[2])

    def metadata(self) -> dict[str, object]:
        mean, std = self.scaling
        return {"standardize": self.standardize, "feature_mean": mean.tolist(),
                "feature_std": std.tolist()}


def _bundled(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn import datasets

    loader = {"wine": datasets.load_wine, "breast_cancer": datasets.load_breast_cancer,
              "iris": datasets.load_iris}[name]
    bunch = loader()
    return (np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64),
            [str(n) for n in bunch.target_names])


def _from_file(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    import pandas as pd

    try:
        frame = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except Exception as err:  # any reader failure means the file cannot be used
        raise SpecError("source", str(path), f"a readable {path.suffix} file ({err})") from None
    columns = [str(c) for c in frame.columns]
    if label_column not in columns:
        raise SpecError("label_column", label_column, f"one of the columns {columns}")
    frame.columns = columns
    labels = frame[label_column]
    if labels.isna().any():
        raise SpecError("label_column", label_column,
                        f"a column without missing values ({int(labels.isna().sum())} missing)")
    feature_frame = frame.drop(columns=[label_column])
    if feature_frame.shape[1] == 0:
        raise SpecError("source", str(path), "a table with at least one feature column besides "
                                             f"{label_column!r}")
    for name, dtype in feature_frame.dtypes.items():
        if not pd.api.types.is_numeric_dtype(dtype):
            raise SpecError("source", str(path),
                            f"numeric feature columns; column {name!r} has dtype {dtype} (drop "
                            "or encode it, or name it as label_column)")
    features = feature_frame.to_numpy(dtype=np.float64)
    if not np.isfinite(features).all():
        bad = feature_frame.columns[~np.isfinite(features).all(axis=0)][0]
        raise SpecError("source", str(path),
                        f"finite feature values; column {bad!r} has missing or infinite values")
    try:
        classes, class_ids = np.unique(labels.to_numpy(), return_inverse=True)
    except TypeError:
        raise SpecError("label_column", label_column,
                        "a column whose labels are all of one type (so they can be sorted)"
                        ) from None
    if len(classes) < 2:
        raise SpecError("label_column", label_column,
                        f"a column with at least two distinct labels (found {len(classes)})")
    return features, class_ids.astype(np.int64), [str(c) for c in classes]
