"""The results table: one row per cell, metrics flattened to columns, for pandas users."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from attnsets.study.store import ResultsStore
from attnsets.tables import check_table_path, write_table


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists of scalars are kept as they are."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def results_frame(directory: str | Path, *, include_members: bool = False) -> pd.DataFrame:
    """One row per cell of the store in `directory`: identity columns, status, timings and every
    metric under `metrics` flattened (`ensemble.attention.auroc_per_bag`, ...). Per-member metrics
    (lists) are left out unless `include_members`."""
    store = ResultsStore(directory)
    try:
        rows = []
        for rec in store.records():
            spec = rec["spec"]
            row: dict[str, Any] = {
                "cell_id": rec["cell_id"], "study": rec["study"],
                "dataset": spec.get("dataset_name"), "model": spec.get("model_name"),
                "variant": spec.get("variant", ""), "replicate": spec.get("replicate"),
                "pool": spec.get("dataset", {}).get("pool", {}).get("name"),
                "rule": spec.get("dataset", {}).get("rule", {}).get("name"),
                "pooling": spec.get("model", {}).get("pooling"),
                "members": len(rec["seeds"]), "status": rec["status"],
                "seconds": rec["seconds"], "error": (rec["error"] or "").splitlines()[0]
                if rec["error"] else "",
                "torch": rec["versions"].get("torch"), "attnsets": rec["versions"].get("attnsets"),
                "config_hash": rec["config_hash"],
            }
            for key, value in flatten(rec["metrics"]).items():
                if isinstance(value, list) and not include_members:
                    continue
                row[key] = value
            rows.append(row)
    finally:
        store.close()
    frame = pd.DataFrame(rows)
    return frame.replace({None: math.nan}) if len(frame) else frame


def export_results(directory: str | Path, path: str | Path) -> Path:
    """Write the results table as CSV or Parquet (chosen by the file ending)."""
    check_table_path(path, "export")  # before reading the store
    return write_table(results_frame(directory), path, "export")
