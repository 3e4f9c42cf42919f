"""The results table: one row per cell, metrics flattened to columns, for pandas users."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from attnsets.assessment import Stage
from attnsets.study.record import CellRecord
from attnsets.study.store import ResultsStore
from attnsets.tables import check_table_path, write_table


def flatten(data: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists of scalars are kept as they are."""
    out: dict[str, object] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def record_row(record: CellRecord, include_members: bool = False) -> dict[str, object]:
    """One row of the results table: the cell's identity, status and timings, then every
    number of its assessment flattened (`ensemble.attention.auroc`, `headline.<method>.<metric>`),
    its stage timings (`stage_seconds.explain/attention`, ...) and its training
    (`training.seconds`, ...). `wall_seconds` is the cell's wall time."""
    cell = record.cell
    error = record.error or ""
    row: dict[str, object] = {
        "cell_id": record.cell_id, "study": record.study, "dataset": cell.dataset_name,
        "model": cell.model_name, "variant": cell.variant, "replicate": cell.replicate,
        "pool": cell.pool, "rule": cell.rule, "pooling": cell.pooling,
        "members": len(cell.seeds), "status": record.status,
        "wall_seconds": record.wall_seconds, "error": error.splitlines()[0] if error else "",
        "torch": record.versions.get("torch"), "attnsets": record.versions.get("attnsets"),
        "config_hash": record.config_hash, "generate_seconds": record.generate_seconds,
    }
    numbers: dict[str, object] = {}
    if record.assessment is not None:
        numbers.update(record.assessment.to_dict())
        numbers["stage_seconds"] = dict(record.assessment.stage_seconds)
    if record.training is not None:
        numbers["training"] = record.training.to_dict()
    for key, value in flatten(numbers).items():
        if isinstance(value, list) and not include_members:
            continue
        row[key] = value
    return row


def results_frame(directory: str | Path, *, include_members: bool = False,
                  records: list[CellRecord] | None = None) -> pd.DataFrame:
    """One row per cell of the store in `directory` (or of `records`, already read): see
    `record_row`. Per-member metrics (lists) are left out unless `include_members`."""
    if records is None:
        store = ResultsStore(directory)
        try:
            records = store.records()
        finally:
            store.close()
    frame = pd.DataFrame([record_row(r, include_members) for r in records])
    return frame.replace({None: math.nan}) if len(frame) else frame


def export_results(directory: str | Path, path: str | Path) -> Path:
    """Write the results table as CSV or Parquet (chosen by the file ending)."""
    check_table_path(path, "export")  # before reading the store
    return write_table(results_frame(directory), path, "export")


def stage_seconds(record: CellRecord) -> dict[str, float]:
    """Worker seconds of one cell per stage family: ``generate``, ``training``, ``predict``,
    ``explain: <method>`` (for the bag's label and, with evaluated_classes "all", every class),
    ``deletion curves`` (ranked and random orders), ``metrics`` (importance reports, bootstraps,
    ensemble-size curves), ``unit test``, and ``other`` (the rest of the cell's wall time). A
    record written before the assessment's stages were timed has one ``assessment`` entry
    instead."""
    out: dict[str, float] = {}

    def add(name: str, value: float) -> None:
        out[name] = out.get(name, 0.0) + float(value)

    add(FAMILY_NAMES[Stage.GENERATE], record.generate_seconds)
    add("training", record.training.seconds if record.training is not None else 0.0)
    timed = {k: v for k, v in record.stage_seconds.items() if k != Stage.GENERATE}
    for stage, value in timed.items():
        kind, method = Stage.split(stage)
        if kind in (Stage.EXPLAIN, Stage.EXPLAIN_ALL_CLASSES):
            add(f"explain: {method}", value)
        else:
            add(FAMILY_NAMES.get(kind, kind), value)
    rest = record.wall_seconds - sum(out.values())
    add("other" if timed else "assessment", max(rest, 0.0))
    return {k: v for k, v in out.items() if v > 0}


#: Display names of the stage families (attnsets.assessment.Stage kinds).
FAMILY_NAMES = {Stage.GENERATE: "generate", Stage.DELETION: "deletion curves",
                Stage.UNIT_TEST: "unit test", Stage.METRICS: "metrics",
                Stage.PREDICT: "predict"}


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
        return stage_times(store.done())
    finally:
        store.close()


def stage_times(records: list[CellRecord]) -> tuple[pd.DataFrame, dict[str, float]]:
    """Where a study's worker time went, from its records (finished ones count): one row per
    stage family (seconds, share, cells that have it), largest first; and the totals ``cells``,
    ``worker_seconds``, ``busy_seconds``."""
    records = [r for r in records if r.done]
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for rec in records:
        for stage, value in stage_seconds(rec).items():
            sums[stage] = sums.get(stage, 0.0) + value
            counts[stage] = counts.get(stage, 0) + 1
    worker = float(sum(r.wall_seconds for r in records))
    frame = pd.DataFrame([{"stage": k, "seconds": v, "share": v / worker if worker else math.nan,
                           "cells": counts[k]} for k, v in sums.items()],
                         columns=["stage", "seconds", "share", "cells"])
    frame = frame.sort_values("seconds", ascending=False, ignore_index=True)
    totals = {"cells": float(len(records)), "worker_seconds": worker,
              "busy_seconds": busy_seconds([(r.started, r.finished) for r in records
                                            if r.started and r.finished])}
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
