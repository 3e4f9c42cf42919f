"""Real cells from an AnnData `.h5ad` file: one instance per cell, concept = its cell type.

``source`` is the path of any .h5ad file or ``"pbmc68k_reduced"``: 700 human PBMCs (10x
Genomics, Zheng et al. 2017) that ship inside scanpy's wheel. The bundled file is located with
importlib (scanpy is never imported, so its heavy dependencies are not needed: install it with
``pip install --no-deps scanpy``); the file is read with anndata (the ``anndata`` extra).

Features come from ``matrix``: ``"obsm/<key>"`` (default ``"obsm/X_pca"``), ``"X"`` or
``"layers/<name>"``, optionally only the first ``n_components`` columns, used as stored (no
rescaling). Concepts are the values of the obs column ``obs`` (default ``"bulk_labels"``):
categories in their categorical order (else sorted), so rules can name cell types
(``key = "CD56+ NK"``) as well as index them.

Splits are FinitePool's: each cell type's cells are split once, stratified and disjoint, into
train / val / test (default 60/20/20, rounded), and bags draw each split's cells *with
replacement*. A rare type therefore repeats its few test cells: pbmc68k's 13 CD34+ cells leave
3 for test, so every CD34+ witness in a test bag is one of those 3 cells (and one bag may hold
the same cell twice). Every drawn instance keeps its cell's obs row (`BagSplit.source_index`,
``<split>.source_index`` in the .npz); `source_names` maps rows to obs names.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from attnsets.data.pools.base import POOLS, FinitePool
from attnsets.errors import SpecError

BUNDLED = {"pbmc68k_reduced": ("scanpy", "datasets/10x_pbmc68k_reduced.h5ad")}
#: obsm keys used, in this order, for the report's 2-D map of the cells.
MAP_KEYS = (("X_umap", "UMAP"), ("X_tsne", "t-SNE"), ("X_pca", "PC"))


def bundled_path(name: str) -> Path:
    """The path of a bundled .h5ad inside its installed package, found without importing it."""
    package, relative = BUNDLED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SpecError("source", name, f"an installed {package} package, whose wheel holds "
                        f"{relative} (pip install --no-deps {package}; `make test` does it)")
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        raise SpecError("source", name, f"a {package} installation that holds {relative} "
                                        f"(not found under {path.parent})")
    return path


@dataclass
class Cells:
    """What the pool keeps of a file. features: (M, d) float32; concepts: (M,) int64."""

    features: np.ndarray
    concepts: np.ndarray
    concept_names: list[str]
    obs_names: list[str]
    map_2d: tuple[np.ndarray, tuple[str, str]] | None


@POOLS.register("anndata")
@dataclass
class AnnDataPool(FinitePool):
    """Real cells of a .h5ad file or scanpy's bundled pbmc68k_reduced; concept = cell type.

    Instances: (d,) float32 rows of ``matrix`` (one cell each); concept = the cell's ``obs``
    value. Finite: cells are split once, stratified by type and disjoint (FinitePool)."""

    source: str = "pbmc68k_reduced"
    obs: str = "bulk_labels"
    matrix: str = "obsm/X_pca"
    n_components: int | None = None

    kind = "vector"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.source, str) or not self.source:
            raise SpecError("source", self.source, f"one of {list(BUNDLED)} or a .h5ad path")
        if self.source not in BUNDLED:
            path = Path(self.source).expanduser()
            if path.suffix.lower() != ".h5ad" or not path.is_file():
                raise SpecError("source", self.source,
                                f"one of {list(BUNDLED)} or the path of an existing .h5ad file")
        if not isinstance(self.obs, str) or not self.obs:
            raise SpecError("obs", self.obs, "the name of an obs column (the cell type)")
        if not isinstance(self.matrix, str) or not (
                self.matrix == "X" or self.matrix.partition("/")[0] in ("obsm", "layers")
                and self.matrix.partition("/")[2]):
            raise SpecError("matrix", self.matrix, '"X", "obsm/<key>" or "layers/<name>"')
        n = self.n_components
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise SpecError("n_components", n, "an integer >= 1 (or unset for all columns)")

    @property
    def path(self) -> Path:
        if self.source in BUNDLED:
            return bundled_path(self.source)
        return Path(self.source).expanduser()

    @cached_property
    def cells(self) -> Cells:
        return _read_cells(self)

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        return self.cells.features, self.cells.concepts

    @property
    def n_concepts(self) -> int:
        return len(self.cells.concept_names)

    @property
    def concept_names(self) -> list[str]:
        return list(self.cells.concept_names)

    def source_names(self, rows: np.ndarray) -> list[str]:
        """The obs names of these cells. rows: (n,) obs positions (BagSplit.source_index)."""
        names = self.cells.obs_names
        return [names[int(r)] for r in np.asarray(rows).tolist()]

    def embedding_2d(self, rows: np.ndarray) -> tuple[np.ndarray, tuple[str, str]] | None:
        """The file's own 2-D map (obsm X_umap, else X_tsne, else the first two of X_pca)."""
        if self.cells.map_2d is None:
            return None
        coordinates, axes = self.cells.map_2d
        return coordinates[np.asarray(rows, dtype=np.int64)], axes

    def metadata(self) -> dict[str, object]:
        return {"source": self.source, "file": self.path.name, "obs": self.obs,
                "matrix": self.matrix, "n_cells": len(self.cells.concepts),
                "cells_per_type": np.bincount(self.cells.concepts).tolist(),
                "source_index": "obs row of each instance (<split>.source_index)"}


def _read(path: Path) -> Any:
    try:
        import anndata
    except ImportError:
        raise SpecError("source", str(path), "an installed anndata package (pip install "
                                             "'attnsets[anndata]')") from None
    try:
        with warnings.catch_warnings():  # old files (pbmc68k): format and .uns -> .obsp notes
            warnings.simplefilter("ignore")
            return anndata.read_h5ad(path)
    except Exception as err:  # noqa: BLE001 - every reader failure means the same to the user
        raise SpecError("source", str(path), f"a readable .h5ad file ({err})") from None


def _read_cells(pool: AnnDataPool) -> Cells:
    adata = _read(pool.path)
    if adata.n_obs == 0:
        raise SpecError("source", pool.source, "a .h5ad file with at least one cell (it has 0)")
    concepts, names = _concepts(adata, pool.obs)
    features = _features(adata, pool.matrix, pool.n_components)
    return Cells(features, concepts, names, [str(n) for n in adata.obs_names], _map_2d(adata))


def _concepts(adata: Any, column: str) -> tuple[np.ndarray, list[str]]:
    """(M,) concept ids and the type names of obs[column]."""
    import pandas as pd

    columns = [str(c) for c in adata.obs.columns]
    if column not in columns:
        raise SpecError("obs", column, f"one of the file's obs columns {columns}")
    values = adata.obs[column]
    if values.isna().any():
        raise SpecError("obs", column, f"a column without missing values "
                                       f"({int(values.isna().sum())} cells have none)")
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.cat.remove_unused_categories()
        names, ids = [str(c) for c in values.cat.categories], values.cat.codes.to_numpy()
    else:
        try:
            classes, ids = np.unique(values.to_numpy(), return_inverse=True)
        except TypeError:
            raise SpecError("obs", column, "a column whose values are all of one type") from None
        names = [str(c) for c in classes]
    if len(names) < 2:
        raise SpecError("obs", column, f"a column with at least two cell types (it has only "
                                       f"{names})")
    return np.asarray(ids, dtype=np.int64), names


def _features(adata: Any, matrix: str, n_components: int | None) -> np.ndarray:
    """(M, d) float32 features of `matrix`; SpecError naming what the file has instead."""
    group, _, key = matrix.partition("/")
    if group == "obsm":
        keys = [str(k) for k in adata.obsm]
        if key not in keys:
            raise SpecError("matrix", matrix, f"X, or one of the file's obsm keys "
                                              f"{['obsm/' + k for k in keys]}")
        raw = adata.obsm[key]
    elif group == "layers":
        keys = [str(k) for k in adata.layers]
        if key not in keys:
            raise SpecError("matrix", matrix, f"X, or one of the file's layers "
                                              f"{['layers/' + k for k in keys]} or obsm keys "
                                              f"{['obsm/' + str(k) for k in adata.obsm]}")
        raw = adata.layers[key]
    else:
        raw = adata.X
        if raw is None:
            raise SpecError("matrix", matrix, "a file with X, or an obsm key "
                                              f"{['obsm/' + str(k) for k in adata.obsm]}")
    if hasattr(raw, "to_numpy"):  # an obsm DataFrame
        raw = raw.to_numpy()
    if hasattr(raw, "toarray"):  # scipy sparse
        raw = raw.toarray()
    values = np.asarray(raw)
    if values.ndim != 2 or not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
        raise SpecError("matrix", matrix, f"a numeric (cells, features) matrix (found dtype "
                                          f"{values.dtype}, shape {values.shape})")
    if n_components is not None:
        if n_components > values.shape[1]:
            raise SpecError("n_components", n_components,
                            f"at most the {values.shape[1]} columns of {matrix}")
        values = values[:, :n_components]
    values = values.astype(np.float32)
    finite = np.isfinite(values)
    if not finite.all():
        row, col = (int(i) for i in np.argwhere(~finite)[0])
        raise SpecError("matrix", matrix, f"finite values (cell {str(adata.obs_names[row])!r}, "
                                          f"column {col}, is {values[row, col]}; "
                                          f"{int((~finite).any(axis=1).sum())} cells affected)")
    return values


def _map_2d(adata: Any) -> tuple[np.ndarray, tuple[str, str]] | None:
    for key, label in MAP_KEYS:
        if key in adata.obsm:
            coordinates = np.asarray(adata.obsm[key], dtype=np.float64)
            if coordinates.ndim == 2 and coordinates.shape[1] >= 2 \
                    and np.isfinite(coordinates[:, :2]).all():
                return coordinates[:, :2], (f"{label} 1", f"{label} 2")
    return None
