"""The results store: typed records, atomic cell writes, locking, schema checks, migrations."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from attnsets.assessment import Assessment, BagMetrics
from attnsets.cli import app
from attnsets.data import DatasetSpec
from attnsets.metrics import SilentFailureCriteria
from attnsets.models import ModelSpec
from attnsets.run import RunSpec, TrainingSummary
from attnsets.study.cell import Cell
from attnsets.study.record import CellRecord
from attnsets.study.store import SCHEMA_VERSION, ResultsStore, StoreError, StoreLockedError

GOLDEN = Path(__file__).resolve().parent / "golden"


def tiny_cell(replicate: int = 0, study: str = "s") -> Cell:
    run = RunSpec(DatasetSpec.from_dict({"pool": "gaussian", "rule": "presence",
                                         "seed": replicate}),
                  ModelSpec(embed_dim=8), seeds=(replicate * 1000, replicate * 1000 + 1))
    return Cell(study=study, dataset_name="g", model_name="att", variant="",
                replicate=replicate, run=run)


def tiny_record(cell: Cell, status: str = "done", value: float = 0.5) -> CellRecord:
    bag = BagMetrics.from_dict({"accuracy": value, "balanced_accuracy": float("nan")})
    assessment = Assessment(n_members=2, criteria=SilentFailureCriteria(), member_bag=[bag, bag],
                            ensemble_bag=bag, explainers={},
                            arrays={"scores": np.arange(6, dtype=np.float32).reshape(2, 3)},
                            stage_seconds={"predict": 0.25})
    done = status == "done"
    return CellRecord(cell=cell, status=status, assessment=assessment if done else None,
                      training=TrainingSummary(1.5, [3, 3], [1, 2], [0.4, 0.3]) if done else None,
                      stage_seconds={"generate": 0.5, "predict": 0.25} if done else {},
                      versions={"torch": "x"}, started=1.0, finished=3.5,
                      error=None if done else "boom", config_hash="h")


def test_round_trip_gives_typed_records(tmp_path: Path) -> None:
    one, two = tiny_cell(0), tiny_cell(1)
    with ResultsStore.open_for_run(tmp_path, study="s") as store:
        store.write(tiny_record(one))
        store.write(tiny_record(two, status="failed"))
    store = ResultsStore(tmp_path)
    assert store.cell_ids() == {one.cell_id, two.cell_id}
    assert store.cell_ids("done") == {one.cell_id}
    (done,) = store.done()
    assert done.cell == one and done.cell.run.dataset == one.run.dataset
    assert done.assessment is not None and done.assessment.member_bag[0].accuracy == 0.5
    assert np.isnan(done.assessment.member_bag[0].balanced_accuracy)
    assert done.training == TrainingSummary(1.5, [3, 3], [1, 2], [0.4, 0.3])
    assert done.stage_seconds == {"generate": 0.5, "predict": 0.25}
    assert done.assessment.stage_seconds == {"predict": 0.25}
    assert done.wall_seconds == pytest.approx(2.5) and done.config_hash == "h"
    (failed,) = store.records("failed")
    assert failed.assessment is None and failed.error == "boom"
    np.testing.assert_array_equal(store.arrays(one.cell_id)["scores"],
                                  np.arange(6, dtype=np.float32).reshape(2, 3))


def test_rewrite_replaces_cell_and_its_arrays(tmp_path: Path) -> None:
    cell = tiny_cell()
    with ResultsStore.open_for_run(tmp_path) as store:
        store.write(tiny_record(cell, status="failed"))
        store.write(tiny_record(cell, value=0.9))
        assert store.cell_ids() == {cell.cell_id}
        (record,) = store.records()
        assert record.assessment is not None and record.assessment.member_bag[0].accuracy == 0.9
        assert store.array_names(cell.cell_id) == ["scores"]


def test_second_run_on_same_store_is_refused(tmp_path: Path) -> None:
    with ResultsStore.open_for_run(tmp_path), pytest.raises(StoreLockedError, match="another attnsets run"):
        ResultsStore.open_for_run(tmp_path).__enter__()
    with ResultsStore.open_for_run(tmp_path):  # released afterwards
        pass


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    bad = tiny_record(tiny_cell())
    assert bad.assessment is not None
    bad.assessment.arrays["broken"] = np.array([object()], dtype=object)  # needs pickle
    with ResultsStore.open_for_run(tmp_path) as store:
        with pytest.raises(ValueError):
            store.write(bad)
        assert store.cell_ids() == set()
        assert store.db.execute("SELECT COUNT(*) FROM arrays").fetchone()[0] == 0


def test_readonly_store_refuses_missing_and_writes(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no results store"):
        ResultsStore(tmp_path / "nothing")
    with ResultsStore.open_for_run(tmp_path) as store:
        store.write(tiny_record(tiny_cell()))
    with pytest.raises(sqlite3.OperationalError):
        ResultsStore(tmp_path).db.execute("DELETE FROM cells")


# -- refusals: each names the file, writes nothing --------------------------------------------

def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file's bytes; SQLite's own -shm / -wal side files (any reader of a WAL database
    makes them) left out."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())
            if p.is_file() and not p.name.endswith(("-shm", "-wal"))}


def store_of_version(directory: Path, version: int) -> Path:
    with ResultsStore.open_for_run(directory, study="s") as store:
        store.write(tiny_record(tiny_cell()))
        store.db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
    for side in directory.glob("results.sqlite-*"):
        side.unlink()
    return directory


def test_a_newer_store_is_refused_naming_both_versions(tmp_path: Path) -> None:
    directory = store_of_version(tmp_path / "new", 999)
    before = snapshot(directory)
    for open_it in (lambda: ResultsStore(directory),
                    lambda: ResultsStore.open_for_run(directory).__enter__()):
        with pytest.raises(StoreError, match=rf"schema version 999.*up to {SCHEMA_VERSION}"):
            open_it()
    assert snapshot(directory) == before


@pytest.mark.parametrize("command", ["results", "report", "results-page", "run"])
def test_every_command_refuses_a_newer_store_without_a_traceback(tmp_path: Path,
                                                                 command: str) -> None:
    from study_toml import write_study_toml
    from test_study_run import tiny

    directory = store_of_version(tmp_path / "new", 999)
    before = snapshot(directory)
    args = {"results": [str(directory)], "report": [str(directory)],
            "results-page": [str(directory), "--out", str(tmp_path / "page.md")],
            "run": [str(write_study_toml(tiny(1, name="s"), tmp_path / "s.toml")), "--out",
                    str(directory), "--resume"]}[command]
    result = CliRunner().invoke(app, [command, *args])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "schema version 999" in text and f"up to {SCHEMA_VERSION}" in text
    assert "results.sqlite" in text and "Traceback" not in result.output
    assert snapshot(directory) == before and not (tmp_path / "page.md").exists()


def test_a_damaged_store_is_refused_naming_the_file(tmp_path: Path) -> None:
    directory = store_of_version(tmp_path / "damaged", SCHEMA_VERSION)
    data = (directory / "results.sqlite").read_bytes()
    (directory / "results.sqlite").write_bytes(b"not sqlite at all" + data[100:300])
    before = snapshot(directory)
    for open_it in (lambda: ResultsStore(directory),
                    lambda: ResultsStore.open_for_run(directory).__enter__()):
        with pytest.raises(StoreError, match=r"results\.sqlite.*damaged"):
            open_it()
    assert snapshot(directory) == before
    result = CliRunner().invoke(app, ["results", str(directory)])
    assert result.exit_code == 2 and "damaged" in result.output


def test_a_store_of_another_study_is_refused(tmp_path: Path) -> None:
    with ResultsStore.open_for_run(tmp_path, study="s") as store:
        store.write(tiny_record(tiny_cell()))
    before = snapshot(tmp_path)
    with pytest.raises(StoreError, match=r"study 's'.*study 'other'"), \
            ResultsStore.open_for_run(tmp_path, study="other"):
        pass
    assert {k: v for k, v in snapshot(tmp_path).items() if k != "study.lock"} == \
        {k: v for k, v in before.items() if k != "study.lock"}


def test_an_output_that_cannot_be_written_is_refused(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match=r"a_file/sub/results\.sqlite.*cannot write"):
        ResultsStore.open_for_run(blocker / "sub").__enter__()
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    monkeypatch.setattr("attnsets.study.store.os.access", lambda path, mode: False)
    with pytest.raises(StoreError, match="cannot write"):
        ResultsStore.open_for_run(readonly).__enter__()
    assert list(readonly.iterdir()) == []


# -- migrations -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["store_v0", "store_v1"])
def test_a_version_1_store_reads_typed_and_migrates_in_place(tmp_path: Path, name: str) -> None:
    copy = tmp_path / name
    shutil.copytree(GOLDEN / name, copy)
    read = ResultsStore(copy)
    assert read.version == 1
    before = {r.cell_id: r for r in read.records()}
    names = {r.cell_id: read.array_names(r.cell_id) for r in before.values()}
    read.close()
    assert len(before) == 4 and all(r.done and r.assessment is not None for r in before.values())
    with ResultsStore.open_for_run(copy) as store:
        assert store.version == SCHEMA_VERSION
        after = {r.cell_id: r for r in store.records()}
        assert sorted(after) == sorted(before)  # re-keyed to the canonical ids on read too
        for cell_id, record in after.items():
            assert record.cell == before[cell_id].cell
            assert record.assessment == before[cell_id].assessment
            assert store.array_names(cell_id) == names[cell_id]
            assert "scores/attention" in names[cell_id] or record.cell.model_name != "att"
    raw = sqlite3.connect(copy / "results.sqlite")
    assert raw.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == \
        (str(SCHEMA_VERSION),)


def test_readers_of_budgeted_scores_honour_explained_bags(tmp_path: Path) -> None:
    """store_v1 scored leave_one_out on a bag budget of 6 of the 12 test bags: the other bags
    hold zeros, which are no scores. The agreement of the members is read on the 6 bags only."""
    from attnsets.assessment import explained_bags
    from attnsets.report.collect import open_results
    from attnsets.report.findings import agreement_frame

    copy = tmp_path / "v1"
    shutil.copytree(GOLDEN / "store_v1", copy)
    study = open_results(copy)
    store = ResultsStore(copy)
    arrays = store.arrays(study.done[0].cell_id)
    store.close()
    rows = explained_bags(arrays, "leave_one_out")
    assert rows.sum() == 6 and explained_bags(arrays, "random").all()
    frame = agreement_frame(study, "leave_one_out")
    assert frame.groupby("cell_id").size().eq(6).all() and len(frame) == 6 * len(study.done)
    assert set(frame["bag"]) <= set(np.flatnonzero(rows))
    assert len(agreement_frame(study, "random")) == 12 * len(study.done)
