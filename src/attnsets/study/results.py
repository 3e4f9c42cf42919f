"""The results table: one row per cell, metrics flattened to columns, for pandas users."""

from __future__ import annotations

import math
from collections.abc import Mapping
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


def stage_seconds(metrics: Mapping[str, Any], cell_seconds: float) -> dict[str, float]:
    """Worker seconds of one cell per stage family: ``generate``, ``training``, ``predict``,
    ``explain: <method>`` (for the bag's label and, with evaluated_classes "all", every class),
    ``deletion curves`` (ranked and random orders), ``metrics`` (importance reports, bootstraps,
    ensemble-size curves), ``unit test``, and ``other`` (the rest of `cell_seconds`). A record
    written before the assessment's stages were timed has one ``assessment`` entry instead."""
    out: dict[str, float] = {}

    def add(name: str, value: float) -> None:
        out[name] = out.get(name, 0.0) + float(value)

    add("generate", metrics.get("generate_seconds", 0.0))
    add("training", metrics.get("training", {}).get("seconds", 0.0))
    timed = metrics.get("seconds", {})
    for stage, value in timed.items():
        kind, _, method = stage.partition("/")
        if kind in ("explain", "explain_all_classes"):
            add(f"explain: {method}", value)
        else:
            add({"deletion": "deletion curves", "unit_test": "unit test"}.get(kind, kind), value)
    rest = cell_seconds - sum(out.values())
    add("other" if timed else "assessment", max(rest, 0.0))
    return {k: v for k, v in out.items() if v > 0}


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals: the wall time during which at least one
    cell ran (a resumed study's pauses between runs do not count)."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def time_by_stage(directory: str | Path) -> tuple[pd.DataFrame, dict[str, float]]:
    """`stage_times` of the finished cells of the store in `directory`."""
    store = ResultsStore(directory)
    try:
        records = [r for r in store.records() if r["status"] == "done"]
    finally:
        store.close()
    return stage_times(records)


def stage_times(records: list[dict[str, Any]]) -> tuple[pd.DataFrame, dict[str, float]]:
    """Where a study's worker time went, from its finished records: one row per stage family
    (seconds, share, cells that have it), largest first; and the totals ``cells``,
    ``worker_seconds``, ``busy_seconds``."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for rec in records:
        for stage, value in stage_seconds(rec["metrics"], rec["seconds"]).items():
            sums[stage] = sums.get(stage, 0.0) + value
            counts[stage] = counts.get(stage, 0) + 1
    worker = float(sum(r["seconds"] for r in records))
    frame = pd.DataFrame([{"stage": k, "seconds": v, "share": v / worker if worker else math.nan,
                           "cells": counts[k]} for k, v in sums.items()],
                         columns=["stage", "seconds", "share", "cells"])
    frame = frame.sort_values("seconds", ascending=False, ignore_index=True)
    totals = {"cells": float(len(records)), "worker_seconds": worker,
              "busy_seconds": busy_seconds([(r["started"], r["finished"]) for r in records
                                            if r["started"] and r["finished"]])}
    return frame, totals


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def cost_summary(totals: Mapping[str, float]) -> str:
    """time_by_stage's totals in one line: cells, worker time, wall time while a cell ran."""
    return (f"{totals['cells']:.0f} cells, {_duration(totals['worker_seconds'])} of worker time, "
            f"{_duration(totals['busy_seconds'])} of wall time while at least one cell ran")


def stage_table(stages: pd.DataFrame) -> pd.DataFrame:
    """time_by_stage's rows as text for printing: stage, minutes, share (%), cells."""
    return pd.DataFrame({"stage": stages["stage"],
                         "minutes": (stages["seconds"] / 60).map(lambda v: f"{v:.1f}"),
                         "share": (100 * stages["share"]).map(lambda v: f"{v:.1f}%"),
                         "cells": stages["cells"].astype(str)})
