"""On-disk format: one `.npz` file (a zip of `.npy` arrays), readable with numpy alone, no pickle.

Members:
  format          str   "attnsets-dataset"
  format_version  int   FORMAT_VERSION
  spec            str   the DatasetSpec as JSON
  meta            str   JSON: n_classes, kind, instance_shape, concept_names, vocab_size, metadata
  {split}.instances (total, *shape)  float32 features or int64 tokens
  {split}.offsets   (B+1,) int64     bag i = rows offsets[i]:offsets[i+1]
  {split}.labels    (B,)   int64
  {split}.concepts  (total,) int64
  {split}.evidence  (total, n_classes) int8 in {-1, 0, 1}
  {split}.source_index (total,) int64  optional: the row of each instance in its pool's
                                      collection (finite pools only: table row, .h5ad cell)
for split in train, val, test. Read it with ``np.load(path, allow_pickle=False)``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from attnsets.data.bags import BagSplit
from attnsets.data.generate import SetDataset
from attnsets.data.spec import SPLITS, DatasetSpec
from attnsets.errors import DataFormatError, SpecErrors

FORMAT_NAME = "attnsets-dataset"
FORMAT_VERSION = 1
FIELDS = ("instances", "offsets", "labels", "concepts", "evidence")
#: Optional member per split (absent for generated instances and in older files).
SOURCE_INDEX = "source_index"


def save_dataset(dataset: SetDataset, path: str | Path) -> Path:
    """Write atomically (temp file + rename): a crash never leaves a half-written dataset."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "n_classes": dataset.n_classes,
        "kind": dataset.kind,
        "instance_shape": list(dataset.instance_shape),
        "concept_names": dataset.concept_names,
        "vocab_size": dataset.vocab_size,
        "metadata": dataset.metadata,
    }
    arrays: dict[str, np.ndarray] = {
        "format": np.array(FORMAT_NAME),
        "format_version": np.array(FORMAT_VERSION),
        "spec": np.array(dataset.spec.to_json()),
        "meta": np.array(json.dumps(meta, sort_keys=True)),
    }
    for split, data in dataset.splits.items():
        for name in FIELDS:
            arrays[f"{split}.{name}"] = getattr(data, name)
        if data.source_index is not None:
            arrays[f"{split}.{SOURCE_INDEX}"] = data.source_index
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez_compressed(handle, **arrays)  # type: ignore[arg-type]
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_dataset(path: str | Path) -> SetDataset:
    """Read and validate a dataset file; a damaged or foreign file raises DataFormatError."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except Exception as err:  # noqa: BLE001 - zlib, zipfile and npy parsers each raise their own types
        raise DataFormatError(f"{path}: not a readable attnsets dataset ({err})") from None
    if str(arrays.get("format", "")) != FORMAT_NAME:
        raise DataFormatError(f"{path}: not an attnsets dataset (no '{FORMAT_NAME}' marker)")
    version = int(arrays.get("format_version", -1))
    if version != FORMAT_VERSION:
        raise DataFormatError(
            f"{path}: format version {version}; this attnsets reads version {FORMAT_VERSION}")
    missing = [f"{s}.{f}" for s in SPLITS for f in FIELDS if f"{s}.{f}" not in arrays]
    if missing:
        raise DataFormatError(f"{path}: damaged, missing arrays {missing}")
    try:
        spec = DatasetSpec.from_dict(json.loads(str(arrays["spec"])))
        meta = json.loads(str(arrays["meta"]))
        splits = {s: BagSplit(*(arrays[f"{s}.{f}"] for f in FIELDS),
                              source_index=arrays.get(f"{s}.{SOURCE_INDEX}")) for s in SPLITS}
    except (json.JSONDecodeError, SpecErrors, ValueError, KeyError) as err:
        raise DataFormatError(f"{path}: damaged ({err})") from None
    n_classes = int(meta["n_classes"])
    for s, split in splits.items():
        if split.evidence.ndim != 2 or split.evidence.shape[1] != n_classes:
            raise DataFormatError(f"{path}: {s}.evidence must have {n_classes} columns")
        if len(split.labels) and (split.labels.min() < 0 or split.labels.max() >= n_classes):
            raise DataFormatError(f"{path}: {s}.labels outside 0..{n_classes - 1}")
        if np.any(np.diff(split.offsets) < 1):
            raise DataFormatError(f"{path}: {s}.offsets must increase (no empty bags)")
    return SetDataset(spec, splits, n_classes, meta["kind"], tuple(meta["instance_shape"]),
                      list(meta["concept_names"]), int(meta["vocab_size"]), dict(meta["metadata"]))
