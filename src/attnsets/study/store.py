"""The results store: one SQLite file per study directory, holding typed `CellRecord`s.

Why SQLite: it ships with Python (no extra dependency), every cell is written in one transaction, so a
study killed at any moment (kill -9 included) keeps every finished cell and never a half-written one
(the journal rolls an interrupted transaction back), and pandas reads it directly. Only the driver
process writes; workers hand their records back to it.

Tables (schema version 2):
  meta(key, value)   schema_version; study (the study name the store belongs to)
  cells(cell_id PK, study, status 'done'|'failed', cell JSON (Cell.to_dict: names + canonical
        RunSpec), assessment JSON (Assessment.to_dict, NULL when failed), training JSON,
        stage_seconds JSON, error, config_hash, versions JSON, started, finished)
  arrays(cell_id, name, data BLOB (.npy bytes))   per-instance scores etc., keyed by cell

The JSON columns are read and written here only: every reader gets `CellRecord`s. The schema
version is checked on every open: a newer one is refused (StoreError), an older one is migrated
(attnsets.study.migrations) in place when the store is opened for a run, in memory otherwise.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from attnsets.errors import SpecError
from attnsets.study.record import CellRecord, Status

STORE_NAME = "results.sqlite"
LOCK_NAME = "study.lock"
SCHEMA_VERSION = 2

CELLS_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    cell_id TEXT PRIMARY KEY,
    study TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    cell TEXT NOT NULL,
    assessment TEXT,
    training TEXT,
    stage_seconds TEXT NOT NULL,
    error TEXT,
    config_hash TEXT NOT NULL,
    versions TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL NOT NULL
);
"""
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
""" + CELLS_TABLE.format(name="cells") + """
CREATE TABLE IF NOT EXISTS arrays (
    cell_id TEXT NOT NULL REFERENCES cells(cell_id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (cell_id, name)
);
"""
#: The columns holding JSON text.
JSON_COLUMNS = frozenset({"cell", "assessment", "training", "stage_seconds", "versions"})
COLUMNS = ("cell_id", "study", "status", "cell", "assessment", "training", "stage_seconds",
           "error", "config_hash", "versions", "started", "finished")


class StoreLockedError(RuntimeError):
    """Another run holds this store."""


class StoreError(SpecError):
    """A results store that cannot be used as asked: written by a newer attnsets, damaged,
    belonging to another study, or in a directory this user cannot write. Raised before
    anything is written; names the file."""

    def __init__(self, path: Path, problem: str, allowed: str) -> None:
        super().__init__(str(path), problem, allowed)


def _json_default(value: object) -> object:
    """numpy scalars and arrays in metrics become plain JSON numbers and lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(value: object) -> str:
    return json.dumps(value, sort_keys=True, default=_json_default)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _npy_load(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


# -- the record <-> row codec (the only place that touches the stored JSON) ----------------------

def record_row(record: CellRecord) -> tuple[object, ...]:
    """The `cells` row of a record (COLUMNS order)."""
    assessment = None
    if record.assessment is not None:
        stored = record.assessment.to_dict()
        stored.pop("stage_seconds", None)  # kept once, in its own column
        assessment = dumps(stored)
    training = None if record.training is None else dumps(record.training.to_dict())
    return (record.cell_id, record.study, record.status, dumps(record.cell.to_dict()), assessment,
            training, dumps(record.stage_seconds), record.error, record.config_hash,
            dumps(record.versions), record.started, record.finished)


def row_record(row: dict[str, Any]) -> CellRecord:  # a sqlite row: its JSON crosses here
    """A record from its `cells` row (schema version 2)."""
    from attnsets.assessment import Assessment, Stage
    from attnsets.run import TrainingSummary
    from attnsets.study.cell import Cell

    stages = {str(k): float(v) for k, v in json.loads(row["stage_seconds"]).items()}
    assessment = None
    if row["assessment"] is not None:
        assessment = Assessment.from_dict(json.loads(row["assessment"]))
        assessment.stage_seconds = {k: v for k, v in stages.items() if k != Stage.GENERATE}
    training = None if row["training"] is None else \
        TrainingSummary.from_dict(json.loads(row["training"]))
    return CellRecord(cell=Cell.from_dict(json.loads(row["cell"])), status=str(row["status"]),
                      assessment=assessment, training=training, stage_seconds=stages,
                      versions=dict(json.loads(row["versions"])), started=float(row["started"]),
                      finished=float(row["finished"]), error=row["error"],
                      config_hash=str(row["config_hash"]))


class ResultsStore:
    """Read/write access to `DIR/results.sqlite`. Use `ResultsStore.open_for_run` to write."""

    def __init__(self, directory: str | Path, *, readonly: bool = True) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STORE_NAME
        if readonly:
            if not self.path.is_file():
                raise FileNotFoundError(f"{self.directory}: no results store ({STORE_NAME}) here")
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            self.version = self._checked_version()
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.is_file() or self.path.stat().st_size == 0
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.version = SCHEMA_VERSION if fresh else self._checked_version()
        if self.version < SCHEMA_VERSION:
            from attnsets.study.migrations import migrate

            migrate(self.db, self.version, self.path)
            self.version = SCHEMA_VERSION
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA)
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                        (str(SCHEMA_VERSION),))

    def _checked_version(self) -> int:
        """The schema version of an existing store; StoreError when damaged or newer."""
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            self.db.execute("SELECT count(*) FROM cells").fetchone()
        except sqlite3.DatabaseError as err:
            self.db.close()
            raise StoreError(self.path, f"a damaged or foreign file ({err})",
                             "a results store written by `attnsets run`; move it away or "
                             "choose another --out") from None
        version = int(row[0]) if row else 1
        if version > SCHEMA_VERSION:
            self.db.close()
            raise StoreError(self.path, f"schema version {version}",
                             f"schema versions up to {SCHEMA_VERSION}, the newest this attnsets "
                             f"reads (the store was written by a newer attnsets: upgrade it)")
        return version

    @classmethod
    @contextmanager
    def open_for_run(cls, directory: str | Path, study: str | None = None
                     ) -> Iterator[ResultsStore]:
        """Open for writing, holding an exclusive lock: a second run on the same store is
        refused; so is a store of another `study`, or a directory this user cannot write."""
        directory = Path(directory)
        if (directory / STORE_NAME).is_file():  # refuse a newer or damaged store before locking
            cls(directory).close()
        handle = _lock(directory)
        try:
            store = cls(directory, readonly=False)
        except BaseException:
            _unlock(handle)
            raise
        try:
            if study is not None:
                store.claim(study)
            yield store
        finally:
            store.close()
            _unlock(handle)

    def claim(self, study: str) -> None:
        """Record that this store belongs to `study`; a store of another study is refused."""
        owner = self.db.execute("SELECT value FROM meta WHERE key = 'study'").fetchone()
        owners = {owner[0]} if owner else {r[0] for r in self.db.execute(
            "SELECT DISTINCT study FROM cells")}
        if owners and owners != {study}:
            raise StoreError(self.path, f"the results of study {sorted(owners)[0]!r}",
                             f"a store of study {study!r} (the config's [study] name): run it "
                             "with another --out, or resume the study this store holds")
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('study', ?)", (study,))

    def close(self) -> None:
        self.db.close()

    # -- writing ---------------------------------------------------------------------------
    def write(self, record: CellRecord) -> None:
        """Insert one cell and its arrays atomically (replacing an earlier failed attempt)."""
        row = record_row(record)
        with self._transaction():
            self.db.execute("DELETE FROM cells WHERE cell_id = ?", (record.cell_id,))
            self.db.execute(f"INSERT INTO cells ({','.join(COLUMNS)}) VALUES "
                            f"({','.join('?' * len(COLUMNS))})", row)
            self.db.executemany("INSERT INTO arrays VALUES (?,?,?)",
                                [(record.cell_id, name, _npy_bytes(a))
                                 for name, a in record.arrays.items()])

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- reading ---------------------------------------------------------------------------
    def cell_ids(self, status: str | None = None) -> set[str]:
        if self.version < SCHEMA_VERSION:  # old ids: re-keyed by the migration
            return {r.cell_id for r in self.records() if status is None or r.status == status}
        query = "SELECT cell_id FROM cells" + (" WHERE status = ?" if status else "")
        return {row[0] for row in self.db.execute(query, (status,) if status else ())}

    def records(self, status: str | None = None) -> list[CellRecord]:
        """Every cell (or those of `status`) as a typed record, in cell_id order."""
        if self.version < SCHEMA_VERSION:
            from attnsets.study.migrations import read_old_records

            old = read_old_records(self.db, self.version)
            return [r for r in old if status is None or r.status == status]
        query = f"SELECT {','.join(COLUMNS)} FROM cells" + (" WHERE status = ?" if status else "")
        cursor = self.db.execute(query + " ORDER BY cell_id", (status,) if status else ())
        return [row_record(dict(zip(COLUMNS, row, strict=True))) for row in cursor]

    def done(self) -> list[CellRecord]:
        return self.records(Status.DONE)

    def _stored_id(self, cell_id: str) -> str:
        """The id the arrays are kept under (an old, not yet migrated store keeps old ids)."""
        if self.version < SCHEMA_VERSION:
            from attnsets.study.migrations import old_ids

            return old_ids(self.db, self.version).get(cell_id, cell_id)
        return cell_id

    def arrays(self, cell_id: str) -> dict[str, np.ndarray]:
        return {name: _npy_load(data) for name, data in self.db.execute(
            "SELECT name, data FROM arrays WHERE cell_id = ?", (self._stored_id(cell_id),))}

    def array_names(self, cell_id: str) -> list[str]:
        return [r[0] for r in self.db.execute(
            "SELECT name FROM arrays WHERE cell_id = ? ORDER BY name",
            (self._stored_id(cell_id),))]


def _lock(directory: Path) -> IO[str]:
    """The exclusive run lock of `directory` (created if missing); StoreError when the
    directory cannot be written, StoreLockedError when another run holds it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not os.access(directory, os.W_OK):
            raise PermissionError(directory)
        handle = open(directory / LOCK_NAME, "a+")  # noqa: SIM115 - held for the whole run
    except OSError as err:  # read-only, not a directory, a file on the way
        raise StoreError(directory / STORE_NAME, f"a directory this user cannot write ({err})",
                         "a writable --out directory") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StoreLockedError(
            f"{directory}: another attnsets run is writing to this results store "
            f"(lock {directory / LOCK_NAME}); wait for it or use another --out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} since {time.ctime()}\n")
    handle.flush()
    return handle


def _unlock(handle: IO[str]) -> None:
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()

