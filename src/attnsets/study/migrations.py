"""Upgrades of results stores written by older schema versions.

Schema version 1 (attnsets up to 1f16891) kept per cell the raw config dicts of the cell
(`spec`: dataset / model / training tables as spelled in the file, seeds, explainers, ...), a
`metrics` JSON holding the assessment, the training summary and the stage seconds, and ids
hashed from those raw dicts. Version 2 keeps the cell in its canonical form (names + the
canonical RunSpec), the assessment, training and stage seconds in their own columns, and ids
from the canonical run (attnsets.study.cell).

`migrate` rewrites a version-1 store in place in one transaction (cells re-keyed to their
version-2 ids, arrays moved with them, nothing retrained); `read_old_records` decodes one
without writing (a read-only `results` / `report` on an old store).

Rule for future schema changes: bump SCHEMA_VERSION, add a `_rows_vN` reader here that turns
version N rows into CellRecords (a new field gets its default *here*, never by a reader
treating "absent" as the default), and a test against a golden store written by version N.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attnsets.errors import SpecError
from attnsets.study.record import CellRecord, Status

V1_COLUMNS = ("cell_id", "study", "status", "spec", "metrics", "error", "seeds", "config_hash",
              "versions", "started", "finished", "seconds")


def cell_from_v1(spec: Mapping[str, Any]) -> Any:  # a version-1 `spec` JSON object
    """The Cell a version-1 cell dict describes (its run built from the raw tables)."""
    from attnsets.assess import AssessSpec
    from attnsets.data.spec import dataset_spec_from_dict
    from attnsets.metrics import SilentFailureCriteria
    from attnsets.models import ModelSpec
    from attnsets.registry import build_dataclass
    from attnsets.run import RunSpec
    from attnsets.study.cell import Cell
    from attnsets.training import TrainSpec

    replicate = int(spec.get("replicate", 0))
    assess = AssessSpec(
        explainers=tuple(spec["explainers"]),
        explainer_options=dict(spec.get("explainer_options", {})),
        criteria=SilentFailureCriteria(**spec.get("thresholds", {})),
        combine=str(spec.get("combine", "mean_normalised")),
        ensemble_sizes=tuple(spec["ensemble_sizes"]) if spec.get("ensemble_sizes") else None,
        curve_subsets=int(spec.get("curve_subsets", 50)), bootstrap=int(spec.get("bootstrap", 200)),
        seed=replicate, evaluated_classes=str(spec.get("evaluated_classes", "label")),
        bag_budget=spec.get("bag_budget"), random_orders=int(spec.get("random_orders", 10)))
    run = RunSpec(
        dataset=dataset_spec_from_dict({**spec["dataset"], "seed": replicate}, "dataset",
                                       check_data=False),
        model=build_dataclass(ModelSpec, dict(spec["model"]), "model"),
        training=TrainSpec.from_dict(dict(spec.get("training", {})), "training"),
        seeds=tuple(spec["seeds"]), assess=assess)
    return Cell(study=str(spec["study"]), dataset_name=str(spec["dataset_name"]),
                model_name=str(spec["model_name"]), variant=str(spec.get("variant", "")),
                replicate=replicate, run=run)


def _record_v1(row: Mapping[str, Any]) -> CellRecord:  # a version-1 sqlite row
    from attnsets.assessment import Assessment, Stage
    from attnsets.run import TrainingSummary

    spec, metrics = json.loads(row["spec"]), json.loads(row["metrics"])
    try:
        cell = cell_from_v1(spec)
    except (SpecError, KeyError, TypeError, ValueError) as err:
        raise SpecError(f"cells[{row['cell_id']}].spec", spec.get("dataset_name"),
                        f"a cell schema version 1 wrote ({err})") from None
    done = row["status"] == Status.DONE
    stages = {Stage.GENERATE: float(metrics.get("generate_seconds", 0.0)),
              **{str(k): float(v) for k, v in metrics.get("seconds", {}).items()}}
    assessment = Assessment.from_dict(metrics) if done else None
    training = TrainingSummary.from_dict(metrics["training"]) \
        if done and "training" in metrics else None
    return CellRecord(cell=cell, status=str(row["status"]), assessment=assessment,
                      training=training, stage_seconds=stages,
                      versions=dict(json.loads(row["versions"])), started=float(row["started"]),
                      finished=float(row["finished"]), error=row["error"],
                      config_hash=str(row["config_hash"]))


def _rows_v1(db: sqlite3.Connection) -> list[tuple[str, CellRecord]]:
    """(old id, record) per version-1 row; of two rows that are one cell under the canonical
    id (the same cell spelled two ways), the finished one, then the later one, is kept."""
    cursor = db.execute(f"SELECT {','.join(V1_COLUMNS)} FROM cells ORDER BY cell_id")
    pairs = [(str(row[0]), _record_v1(dict(zip(V1_COLUMNS, row, strict=True))))
             for row in cursor]
    best: dict[str, tuple[str, CellRecord]] = {}
    for old, record in pairs:
        kept = best.get(record.cell_id)
        if kept is None or (record.done, record.finished) > (kept[1].done, kept[1].finished):
            best[record.cell_id] = (old, record)
    return sorted(best.values(), key=lambda pair: pair[1].cell_id)


READERS = {1: _rows_v1}


def _rows(db: sqlite3.Connection, version: int) -> list[tuple[str, CellRecord]]:
    if version not in READERS:
        raise SpecError("schema_version", version, f"one of {sorted(READERS)} to migrate")
    return READERS[version](db)


def read_old_records(db: sqlite3.Connection, version: int) -> list[CellRecord]:
    """The records of an old store, upgraded in memory (nothing written)."""
    return [record for _, record in _rows(db, version)]


def old_ids(db: sqlite3.Connection, version: int) -> dict[str, str]:
    """{new id: stored id} of an old store (its arrays are kept under the stored ids)."""
    return {record.cell_id: old for old, record in _rows(db, version)}


def migrate(db: sqlite3.Connection, version: int, path: Path) -> None:
    """Rewrite an old store as the current schema in one transaction: every cell re-keyed to
    its current id with its arrays; nothing is retrained, a failure leaves the store as it was."""
    from attnsets.study.store import CELLS_TABLE, COLUMNS, SCHEMA_VERSION, record_row

    pairs = _rows(db, version)
    db.execute("PRAGMA foreign_keys=OFF")  # the arrays move to the new ids inside the transaction
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(CELLS_TABLE.format(name="cells_new"))
        db.executemany(f"INSERT INTO cells_new ({','.join(COLUMNS)}) VALUES "
                       f"({','.join('?' * len(COLUMNS))})", [record_row(r) for _, r in pairs])
        db.execute("DROP TABLE cells")
        db.execute("ALTER TABLE cells_new RENAME TO cells")
        kept = {old for old, _ in pairs}
        stale = [(old,) for (old,) in db.execute("SELECT DISTINCT cell_id FROM arrays")
                 if old not in kept]
        db.executemany("DELETE FROM arrays WHERE cell_id = ?", stale)
        # Two passes, so that a new id equal to another cell's old id cannot mix their arrays.
        db.executemany("UPDATE arrays SET cell_id = ? WHERE cell_id = ?",
                       [(f"migrating:{r.cell_id}", old) for old, r in pairs])
        db.execute("UPDATE arrays SET cell_id = substr(cell_id, 11) "
                   "WHERE cell_id LIKE 'migrating:%'")
        db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                   (str(SCHEMA_VERSION),))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    db.execute("PRAGMA foreign_keys=ON")
