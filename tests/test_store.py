"""The results store: atomic cell writes, locking, round trips."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from attnsets.study.store import CellRecord, ResultsStore, StoreLockedError


def _record(cell_id: str, status: str = "done", value: float = 0.5) -> CellRecord:
    return CellRecord(cell_id=cell_id, study="s", status=status, spec={"a": 1},
                      metrics={"auroc": value, "nan": float("nan")}, seeds=[1, 2],
                      config_hash="h", versions={"torch": "x"}, started=1.0, finished=3.5,
                      arrays={"scores": np.arange(6, dtype=np.float32).reshape(2, 3)})


def test_round_trip(tmp_path: Path) -> None:
    with ResultsStore.open_for_run(tmp_path) as store:
        store.write(_record("c1"))
        store.write(_record("c2", status="failed"))
    store = ResultsStore(tmp_path)
    assert store.cell_ids() == {"c1", "c2"}
    assert store.cell_ids("done") == {"c1"}
    rec = store.records()[0]
    assert rec["metrics"]["auroc"] == 0.5 and np.isnan(rec["metrics"]["nan"])
    assert rec["seconds"] == pytest.approx(2.5)
    np.testing.assert_array_equal(store.arrays("c1")["scores"],
                                  np.arange(6, dtype=np.float32).reshape(2, 3))


def test_rewrite_replaces_cell_and_its_arrays(tmp_path: Path) -> None:
    with ResultsStore.open_for_run(tmp_path) as store:
        store.write(_record("c1", status="failed"))
        store.write(_record("c1", value=0.9))
        assert store.cell_ids() == {"c1"}
        assert store.records()[0]["metrics"]["auroc"] == 0.9
        assert store.array_names("c1") == ["scores"]


def test_second_run_on_same_store_is_refused(tmp_path: Path) -> None:
    with ResultsStore.open_for_run(tmp_path), pytest.raises(StoreLockedError, match="another attnsets run"):
        ResultsStore.open_for_run(tmp_path).__enter__()
    with ResultsStore.open_for_run(tmp_path):  # released afterwards
        pass


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    bad = _record("c1")
    bad.arrays["broken"] = np.array([object()], dtype=object)  # cannot be stored without pickle
    with ResultsStore.open_for_run(tmp_path) as store:
        with pytest.raises(ValueError):
            store.write(bad)
        assert store.cell_ids() == set()
        assert store.db.execute("SELECT COUNT(*) FROM arrays").fetchone()[0] == 0


def test_readonly_store_refuses_missing_and_writes(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no results store"):
        ResultsStore(tmp_path / "nothing")
    with ResultsStore.open_for_run(tmp_path) as store:
        store.write(_record("c1"))
    with pytest.raises(sqlite3.OperationalError):
        ResultsStore(tmp_path).db.execute("DELETE FROM cells")
