"""The results store: one SQLite file per study directory.

Why SQLite: it ships with Python (no extra dependency), every cell is written in one transaction, so a
study killed at any moment (kill -9 included) keeps every finished cell and never a half-written one
(the journal rolls an interrupted transaction back), and pandas reads it directly. Only the driver
process writes; workers hand their records back to it.

Tables:
  cells(cell_id PK, study, status 'done'|'failed', spec JSON, metrics JSON, error, seeds JSON,
        config_hash, versions JSON, started, finished, seconds)
  arrays(cell_id, name, data BLOB (.npy bytes))   per-instance scores etc., keyed by cell
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

STORE_NAME = "results.sqlite"
LOCK_NAME = "study.lock"
SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cells (
    cell_id TEXT PRIMARY KEY,
    study TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    spec TEXT NOT NULL,
    metrics TEXT NOT NULL,
    error TEXT,
    seeds TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    versions TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL NOT NULL,
    seconds REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS arrays (
    cell_id TEXT NOT NULL REFERENCES cells(cell_id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (cell_id, name)
);
"""


class StoreLockedError(RuntimeError):
    """Another run holds this store."""


@dataclass
class CellRecord:
    """What a worker hands back to the driver for one cell."""

    cell_id: str
    study: str
    status: str
    spec: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seeds: list[int] = field(default_factory=list)
    config_hash: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    started: float = 0.0
    finished: float = 0.0
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.finished - self.started


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays in metrics become plain JSON numbers and lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=_json_default)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _npy_load(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


class ResultsStore:
    """Read/write access to `DIR/results.sqlite`. Use `ResultsStore.open_for_run` to write."""

    def __init__(self, directory: str | Path, *, readonly: bool = True) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STORE_NAME
        self._lock_handle: Any = None
        if readonly:
            if not self.path.is_file():
                raise FileNotFoundError(f"{self.directory}: no results store ({STORE_NAME}) here")
            uri = f"file:{self.path}?mode=ro"
            self.db = sqlite3.connect(uri, uri=True)
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(SCHEMA)
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                            (str(SCHEMA_VERSION),))

    @classmethod
    @contextmanager
    def open_for_run(cls, directory: str | Path) -> Iterator[ResultsStore]:
        """Open for writing, holding an exclusive lock: a second run on the same store is refused."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        handle = open(directory / LOCK_NAME, "a+")  # noqa: SIM115 - held for the whole run
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
        store = cls(directory, readonly=False)
        try:
            yield store
        finally:
            store.close()
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    def close(self) -> None:
        self.db.close()

    # -- writing ---------------------------------------------------------------------------
    def write(self, record: CellRecord) -> None:
        """Insert one cell and its arrays atomically (replacing an earlier failed attempt)."""
        with self._transaction():
            self.db.execute("DELETE FROM cells WHERE cell_id = ?", (record.cell_id,))
            self.db.execute(
                "INSERT INTO cells VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (record.cell_id, record.study, record.status, dumps(record.spec),
                 dumps(record.metrics), record.error,
                 dumps(record.seeds), record.config_hash, dumps(record.versions),
                 record.started, record.finished, record.seconds))
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
        query = "SELECT cell_id FROM cells" + (" WHERE status = ?" if status else "")
        return {row[0] for row in self.db.execute(query, (status,) if status else ())}

    def records(self) -> list[dict[str, Any]]:
        """Every cell as a dict (spec, metrics, seeds and versions decoded from JSON)."""
        cursor = self.db.execute("SELECT * FROM cells ORDER BY cell_id")
        names = [d[0] for d in cursor.description]
        rows = []
        for row in cursor:
            rec = dict(zip(names, row, strict=True))
            for key in ("spec", "metrics", "seeds", "versions"):
                rec[key] = json.loads(rec[key])
            rows.append(rec)
        return rows

    def arrays(self, cell_id: str) -> dict[str, np.ndarray]:
        return {name: _npy_load(data) for name, data in
                self.db.execute("SELECT name, data FROM arrays WHERE cell_id = ?", (cell_id,))}

    def array_names(self, cell_id: str) -> list[str]:
        return [r[0] for r in self.db.execute(
            "SELECT name FROM arrays WHERE cell_id = ? ORDER BY name", (cell_id,))]
