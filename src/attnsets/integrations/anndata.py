"""AnnData (`.h5ad`, scanpy's format) in and out of `explain_own_data`.

Needs the extra: ``pip install 'attnsets[anndata]'``.

Cells are instances and a column of ``obs`` (e.g. the patient) names each cell's bag:

    adata = anndata.read_h5ad("cells.h5ad")
    data = load_anndata(adata, bag_column="patient", label_column="response", obsm="X_pca")
    result = explain_own_data(data, members=5)
    annotated = annotate_anndata(adata, result)   # a copy with attnsets_* obs columns
    scanpy.pl.umap(annotated, color="attnsets_consensus")

Features come from ``X`` (dense or scipy sparse) or, with `obsm`, from ``obsm[obsm]`` (a
low-dimensional embedding such as X_pca is usually the better input: fewer features, less
noise). `attnsets explain-data cells.h5ad --bag-column patient --label-column response
--obsm X_pca` does the same from the command line.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attnsets.data.own import OwnBags, load_bags
from attnsets.errors import SpecError
from attnsets.files import check_input_file

try:
    import anndata
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("attnsets.integrations.anndata needs anndata: "
                      "pip install 'attnsets[anndata]'") from err

#: Prefix of the obs columns written by `annotate_anndata`.
PREFIX = "attnsets_"
#: Per-instance columns of `OwnDataResult.instances` copied into obs (docs/own_data.md).
INSTANCE_COLUMNS = ("consensus", "consensus_rank", "rank_spread", "top_k_votes",
                    "bag_rank_agreement")
#: Internal names of the feature columns: cannot clash with an obs column name.
_FEATURE = "__attnsets_feature_{}"


def read_h5ad(path: str | Path) -> anndata.AnnData:
    """anndata.read_h5ad, with a missing or unreadable file reported as SpecError("source")."""
    path = check_input_file(path, "source", (".h5ad",))
    try:
        with warnings.catch_warnings():
            # Repeated obs / var names: load_anndata refuses repeated feature names itself,
            # with the field and the fix, instead of a warning line before it.
            warnings.filterwarnings("ignore", message=".* names are not unique")
            return anndata.read_h5ad(path)
    except Exception as err:  # noqa: BLE001 - every reader failure means the same to the user
        raise SpecError("source", str(path), f"a readable .h5ad file ({err})") from None


def _dense(values: Any, field: str) -> np.ndarray:
    """A (cells, d) float64 array from a dense array, a scipy sparse matrix or a DataFrame;
    SpecError(field) when it is not numeric or not 2-d."""
    if isinstance(values, pd.DataFrame):
        bad = [str(c) for c in values.columns if not pd.api.types.is_numeric_dtype(values[c])]
        if bad:
            raise SpecError(field, f"non-numeric columns {bad[:5]}", "numeric features")
        values = values.to_numpy()
    if hasattr(values, "toarray"):  # scipy.sparse (and anndata's backed sparse datasets)
        values = values.toarray()
    array = np.asarray(values)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise SpecError(field, f"values of dtype {array.dtype}",
                        "numeric features (encode or drop text before explaining)")
    if array.ndim != 2:
        raise SpecError(field, f"an array of shape {array.shape}", "a (cells, features) matrix")
    return array.astype(np.float64)


def load_anndata(source: str | Path | anndata.AnnData, bag_column: str, label_column: str,
                 obsm: str | None = None) -> OwnBags:
    """Bags of cells from an AnnData object or `.h5ad` path.

    bag_column / label_column: obs columns with each cell's bag id and its bag's label (one
    label per bag). obsm: features from ``adata.obsm[obsm]`` (e.g. "X_pca"); None = ``adata.X``
    (dense or sparse). The returned OwnBags' `rows` are obs positions, so `annotate_anndata`
    can write the results back. Every problem is a SpecError naming the argument."""
    adata = read_h5ad(source) if isinstance(source, str | Path) else source
    if not isinstance(adata, anndata.AnnData):
        raise SpecError("source", type(adata).__name__, "an AnnData object or a .h5ad path")
    columns = [str(c) for c in adata.obs.columns]
    for name, value in (("bag_column", bag_column), ("label_column", label_column)):
        if value not in columns:
            raise SpecError(name, value, f"one of the obs columns {columns}")
    if obsm is None:
        if adata.X is None:
            raise SpecError("X", None, "a data matrix X, or --obsm KEY")
        values, field = _dense(adata.X, "X"), "X"
        names = [str(v) for v in adata.var_names]
        repeated = sorted(set(pd.Index(names)[pd.Index(names).duplicated()]))
        if repeated:
            raise SpecError("X", f"var_names {repeated[:5]} more than once",
                            "distinct var_names (adata.var_names_make_unique() renames them)")
    else:
        keys = list(adata.obsm.keys())
        if obsm not in keys:
            raise SpecError("obsm", obsm, f"one of the obsm keys {keys}")
        raw = adata.obsm[obsm]
        values, field = _dense(raw, "obsm"), "obsm"
        names = [str(c) for c in raw.columns] if isinstance(raw, pd.DataFrame) else [
            f"{obsm}_{j}" for j in range(values.shape[1])]
    internal = [_FEATURE.format(j) for j in range(values.shape[1])]
    frame = pd.DataFrame(values, columns=internal)
    for column in dict.fromkeys((bag_column, label_column)):
        frame[column] = adata.obs[column].to_numpy()
    try:
        own = load_bags(frame, bag_column, label_column, internal)
    except SpecError as err:
        if err.field != "feature_columns":
            raise
        # Name the user's feature (gene, PC) instead of our internal column.
        lookup = dict(zip(internal, names, strict=True))
        allowed = err.allowed
        for key, real in lookup.items():
            allowed = allowed.replace(repr(key), repr(real))
        raise SpecError(field, lookup.get(str(err.value), err.value), allowed) from None
    return dataclasses.replace(own, feature_names=names)


def annotate_anndata(adata: anndata.AnnData, result: Any, prefix: str = PREFIX
                     ) -> anndata.AnnData:
    """A copy of `adata` with the results of `explain_own_data(load_anndata(adata, ...))` as
    obs columns: ``<prefix>consensus`` (ensemble score in [0, 1]), ``consensus_rank`` (1 = the
    most important cell of its bag), ``rank_spread``, ``top_k_votes``,
    ``bag_rank_agreement`` (how much the members agree on the cell's bag; low = do not trust
    its scores) and ``split`` (train / val / test: which bags the members were trained on).
    Cells that were not explained get NaN. ``uns["attnsets"]`` holds the method and the
    ensemble's bag metrics per split. `adata` itself is not changed."""
    instances = result.instances
    rows = instances["row"].to_numpy(dtype=np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= adata.n_obs):
        raise SpecError("result", f"rows up to {int(rows.max())}",
                        f"a result of load_anndata on this AnnData ({adata.n_obs} cells)")
    annotated = adata.copy()
    for column in INSTANCE_COLUMNS:
        values = np.full(adata.n_obs, np.nan)
        values[rows] = instances[column].to_numpy(dtype=np.float64)
        annotated.obs[prefix + column] = values
    split = np.full(adata.n_obs, None, dtype=object)
    split[rows] = instances["split"].to_numpy(dtype=object)
    annotated.obs[prefix + "split"] = pd.Categorical(split, categories=["train", "val", "test"])
    annotated.uns["attnsets"] = {"method": str(result.method), "metrics": {
        split_name: {k: float(v) for k, v in metrics.items()}
        for split_name, metrics in result.metrics.items()}}
    return annotated


def write_h5ad(adata: anndata.AnnData, result: Any, path: str | Path,
               prefix: str = PREFIX) -> Path:
    """Write `annotate_anndata(adata, result, prefix)` to `path` (.h5ad); returns the path."""
    path = Path(path)
    if path.suffix.lower() != ".h5ad":
        raise SpecError("path", str(path), "a path ending in .h5ad")
    annotated = annotate_anndata(adata, result, prefix)
    path.parent.mkdir(parents=True, exist_ok=True)
    annotated.write_h5ad(path)
    return path
