"""MLflow as its users run it: a study logged to a SQLite store and to a real `mlflow server`,
read back with MLflow's client (one parent run, one child per cell, params and metrics), and
tracking URIs MLflow cannot use refused in seconds, before anything is trained or written.
(The local file store: tests/test_integrations.py.)"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnsets.cli import app
from study_toml import write_study_toml

mlflow = pytest.importorskip("mlflow", reason="MLflow not installed (pip install "
                                              "'attnsets[mlflow]')")
from mlflow.tracking import MlflowClient  # noqa: E402

#: Two cells (two models), one member, one epoch on small gaussian bags: seconds to train.
STUDY = {"study": {"name": "tracked", "seeds": [0], "members": 1,
                   "explainers": ["attention", "random"], "bootstrap": 0, "curve_subsets": 2},
         "training": {"epochs": 1, "batch_size": 16},
         "datasets": [{"name": "g", "pool": {"name": "gaussian", "num_concepts": 4, "dim": 6},
                       "rule": {"name": "presence", "key": 2},
                       "bags": {"train": 32, "val": 8, "test": 16},
                       "bag_size": {"kind": "uniform", "low": 4, "high": 6}}],
         "models": [{"name": "attention", "pooling": "attention", "embed_dim": 8},
                    {"name": "mean", "pooling": "mean", "embed_dim": 8}]}
#: Seconds the server may take to answer /health: ~20 s on an idle 2-core machine, up to ~80 s
#: when other processes hold both cores (its CLI, then uvicorn, import all of MLflow).
SERVER_START = 240.0


def _run_study(tmp_path: Path, uri: str) -> Path:
    config = write_study_toml(STUDY, tmp_path / "study.toml")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(out), "--mlflow-uri", uri])
    assert result.exit_code == 0, result.output
    assert "MLflow: 2 cell run(s) logged" in result.output
    return out


def _check_runs(uri: str) -> str:
    """The study's runs as MLflow's client reads them back; returns the parent run id."""
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("attnsets-tracked")
    [parent] = client.search_runs([experiment.experiment_id], "tags.`attnsets.kind` = 'study'")
    cells = client.search_runs([experiment.experiment_id], "tags.`attnsets.kind` = 'cell'")
    assert parent.info.status == "FINISHED" and parent.info.run_name == "tracked"
    assert parent.data.metrics["cells_logged"] == 2.0
    assert sorted(r.data.params["model_name"] for r in cells) == ["attention", "mean"]
    for run in cells:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED"
        assert run.data.params["dataset.pool.name"] == "gaussian"
        assert run.data.params["training.epochs"] == "1"
        assert 0.0 <= run.data.metrics["headline.bag_accuracy"] <= 1.0
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["record.json"]
    attention = next(r for r in cells if r.data.params["model_name"] == "attention")
    assert 0.0 <= attention.data.metrics["headline.attention.auroc"] <= 1.0
    assert "headline.csv" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    return parent.info.run_id


def test_a_study_in_a_sqlite_store(tmp_path: Path) -> None:
    from attnsets.integrations.mlflow import ParentRun, attach_report

    database = tmp_path / "db dir" / "runs.db"  # a space, and a directory not made yet
    uri = f"sqlite:///{database}"
    out = _run_study(tmp_path, uri)
    parent_id = _check_runs(uri)
    # The artifacts sit next to the database, not in the directory the command ran from.
    assert (database.parent / "mlartifacts").is_dir() and not Path("mlruns").exists()
    assert ParentRun.read(out) == ParentRun(uri, ParentRun.read(out).experiment_id, parent_id)
    # A report written later joins the study's run (what `attnsets report OUT` does).
    report = out / "report"
    report.mkdir()
    (report / "report.html").write_text("<html></html>")
    assert attach_report(out, report).run_id == parent_id
    paths = [a.path for a in MlflowClient(uri).list_artifacts(parent_id, "report")]
    assert paths == ["report/report.html"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture()
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real `mlflow server` (SQLite backend, artifacts in tmp) on a free local port; stopped
    (its whole process group) afterwards, with bounded waits."""
    port = _free_port()
    root = tmp_path / "server"
    root.mkdir()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
               str(port), "--workers", "1", "--backend-store-uri",
               f"sqlite:///{root / 'server.db'}", "--artifacts-destination", str(root / "art")]
    log = (root / "server.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                              start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (root / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not start in time"
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()


def test_a_study_on_a_tracking_server(mlflow_server: str, tmp_path: Path) -> None:
    _run_study(tmp_path, mlflow_server)
    _check_runs(mlflow_server)


@pytest.mark.parametrize(("uri", "says"), [
    ("http://127.0.0.1:9/", "nothing answered at 127.0.0.1:9"),
    ("ftp://example.org/runs", "scheme 'ftp' is none of them"),
    ("sqlite://", "an in-memory database forgets the runs"),
    ("http://127.0.0.1:99999", "a port number"),
])
def test_a_tracking_uri_mlflow_cannot_use_is_refused_in_seconds(tmp_path: Path, uri: str,
                                                                 says: str) -> None:
    config = write_study_toml(STUDY, tmp_path / "study.toml")
    started = time.monotonic()
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "out"),
                                      "--mlflow-uri", uri])
    assert time.monotonic() - started < 10.0
    assert result.exit_code == 2, result.output
    assert "mlflow_uri" in result.output and says in " ".join(result.output.split())
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_a_store_path_that_cannot_be_written_is_refused(tmp_path: Path) -> None:
    from attnsets.errors import SpecError
    from attnsets.integrations.mlflow import check_tracking_uri

    blocker = tmp_path / "a file"
    blocker.write_text("not a directory")
    for uri in (f"{blocker}/mlruns", (blocker / "mlruns").as_uri(), f"sqlite:///{blocker}/r.db"):
        with pytest.raises(SpecError, match="mlflow_uri"):
            check_tracking_uri(uri)
    with pytest.raises(SpecError, match="not a SQLite database"):
        check_tracking_uri(f"sqlite:///{blocker}")
