"""Study cells as MLflow runs (`attnsets run CONFIG --mlflow [--mlflow-uri URI]`).

Needs the extra: ``pip install 'attnsets[mlflow]'`` (full MLflow: every tracking backend, and
``mlflow server`` / ``mlflow ui``).

The tracking URI is checked before anything is trained or written (`check_tracking_uri`): a
local directory (``file:///path`` or a plain path), a database (``sqlite:///runs.db``,
``postgresql://...``, ``mysql://...``, ``mssql://...``), a tracking server (``http(s)://host:port``),
``databricks``, or a scheme an installed MLflow plugin registers. An unknown scheme, a
directory or database file that cannot be written, or a server / database host that does not
answer within `CONNECT_TIMEOUT` seconds is a SpecError at ``mlflow_uri``, in seconds (MLflow's
own retries would wait minutes).

One parent run per `attnsets run` invocation (named after the study) and one child run per
cell finished in it, logged from the driver as each cell is stored (`run_study(on_record=...)`):

- params: the cell's spec flattened (``dataset.pool.name``, ``model.pooling``, ...; lists and
  other non-scalars as JSON);
- metrics: the headline numbers (``headline.bag_accuracy``, ``headline.attention.auroc``,
  ``headline.attention.silent_rate``, ...) and the cell's ``wall_seconds``;
- artifact ``record.json``: the whole record as the store keeps it (cell, assessment,
  training, stage seconds, versions);
- tags: ``attnsets.cell_id``, ``attnsets.kind`` = "cell", status; failed cells are FAILED
  runs with the error as ``error.txt``.

At the end the parent run gets the headline table (``headline.csv``) and, when the study
directory has one, the report directory; OUT/mlflow.json names the parent run, so that a later
``attnsets report OUT`` attaches the report to it too. The default store is a local file store
under OUT/mlruns.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from attnsets.errors import SpecError
from attnsets.spec.codec import to_dict
from attnsets.spec.constraints import is_real
from attnsets.study.cell import Cell
from attnsets.study.record import CellRecord
from attnsets.study.results import flatten
from attnsets.study.store import COLUMNS, JSON_COLUMNS, dumps, record_row

try:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("attnsets.integrations.mlflow needs MLflow: "
                      "pip install 'attnsets[mlflow]'") from err

#: MLflow's limits on one log_batch call and on a parameter value.
_BATCH = 100
_MAX_PARAM = 6000

#: Seconds a tracking server or database host has to answer before its URI is refused.
CONNECT_TIMEOUT = 5.0
#: MLflow's built-in tracking stores by URI scheme (a database scheme may carry a driver:
#: ``postgresql+psycopg2``); a scheme an MLflow plugin registers is accepted too.
LOCAL_SCHEMES = ("", "file")
DATABASE_PORTS = {"sqlite": 0, "postgresql": 5432, "mysql": 3306, "mssql": 1433}
SERVER_PORTS = {"http": 80, "https": 443}
HOSTED_SCHEMES = ("databricks", "databricks-uc", "uc")
SUPPORTED = ("a directory (file:///path/mlruns or a plain path), sqlite:///path/runs.db, "
             "postgresql:// / mysql:// / mssql:// database URIs, a tracking server "
             "http(s)://host:port, or databricks")
#: Name of the file in a study's results directory that names its MLflow parent run.
RUN_FILE = "mlflow.json"


def default_uri(out: str | Path) -> str:
    """The local file store under a study's results directory: file://OUT/mlruns."""
    return (Path(out).resolve() / "mlruns").as_uri()


def _refuse(uri: str, allowed: str) -> SpecError:
    return SpecError("mlflow_uri", uri, allowed)


def _within(timeout: float, attempt: Callable[[], None]) -> str | None:
    """None when `attempt` returns within `timeout` seconds, else why not (its exception or
    the wait). Runs in a daemon thread: name resolution and database drivers take no timeout
    of their own."""
    outcome: list[str | None] = []

    def target() -> None:
        try:
            attempt()
            outcome.append(None)
        except Exception as err:  # noqa: BLE001 - reported as the reason
            outcome.append(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout + 1.0)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


def _reachable(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection to host:port opens within `timeout` seconds, else why not."""
    def connect() -> None:
        socket.create_connection((host, port), timeout=timeout).close()

    return _within(timeout, connect)


def _writable_directory(path: Path) -> str | None:
    """None when `path` is, or can be made, a directory we may write in; else why not. Tried
    with a temporary file (permission bits do not tell root, or a read-only mount, apart)."""
    if path.exists() and not path.is_dir():
        return f"{path} is a file, not a directory"
    existing = path
    while not existing.exists():
        existing = existing.parent
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        return f"{existing} is not writable ({type(err).__name__}: {err.strerror})"
    return None


def _probe_database(uri: str, timeout: float) -> None:
    """One connection through SQLAlchemy (MLflow's own store retries for ~100 s)."""
    try:
        import sqlalchemy
    except ImportError:
        raise _refuse(uri, "full MLflow (its database stores need SQLAlchemy): "
                           "pip install 'attnsets[mlflow]'") from None

    def connect() -> None:
        engine = sqlalchemy.create_engine(uri)
        try:
            engine.connect().close()
        finally:
            engine.dispose()

    problem = _within(timeout, connect)
    if problem is not None:
        raise _refuse(uri, f"a database MLflow can open ({problem})")


def _sqlite_path(uri: str) -> Path:
    """The database file of ``sqlite:///relative.db`` / ``sqlite:////absolute.db``: what follows
    ``sqlite:///``, as SQLAlchemy reads it (query string dropped)."""
    _, _, rest = uri.partition(":///")
    text = unquote(rest.split("?", 1)[0])
    if not text or text == ":memory:":
        raise _refuse(uri, "a database file, e.g. sqlite:///runs.db (an in-memory database "
                           "forgets the runs when the command ends)")
    return Path(text)


def _check_sqlite(uri: str, timeout: float) -> None:
    path = _sqlite_path(uri)
    problem = _writable_directory(path.parent)
    if problem is None and path.is_dir():
        problem = f"{path} is a directory"
    if problem is None and path.is_file() and path.stat().st_size:
        with path.open("rb") as handle:
            if handle.read(16) != b"SQLite format 3\x00":
                problem = f"{path} is not a SQLite database"
    if problem is not None:
        raise _refuse(uri, f"a SQLite database file we can write ({problem})")
    path.parent.mkdir(parents=True, exist_ok=True)  # as MLflow's store would
    _probe_database(uri, timeout)


def _check_host(uri: str, host: str | None, port: int, what: str, timeout: float) -> None:
    if not host:
        raise _refuse(uri, f"{what} URI with a host, e.g. http://127.0.0.1:5000")
    problem = _reachable(host, port, timeout)
    if problem is not None:
        raise _refuse(uri, f"a reachable {what} (nothing answered at {host}:{port} within "
                           f"{timeout:g} s: {problem})")


def _plugin_schemes() -> set[str]:
    """URI schemes registered by installed MLflow tracking-store plugins."""
    from importlib import metadata

    return {ep.name for ep in metadata.entry_points(group="mlflow.tracking_store")}


def check_tracking_uri(uri: Any, timeout: float = CONNECT_TIMEOUT) -> str:
    """`uri` when MLflow can track to it, checked in at most ~`timeout` seconds: a known scheme,
    a writable directory or SQLite file, a server or database host that answers. Raises
    SpecError at ``mlflow_uri`` otherwise. (The server's API is tried by MlflowTracker.)"""
    if not isinstance(uri, str) or not uri.strip():
        raise _refuse(uri, f"a tracking URI: {SUPPORTED}")
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    base = scheme.split("+", 1)[0]
    if len(scheme) == 1:  # a Windows drive letter (C:/runs): a path
        scheme = base = ""
    try:
        port = parsed.port
    except ValueError:
        raise _refuse(uri, "a port number from 1 to 65535") from None
    if base in LOCAL_SCHEMES:
        if parsed.netloc not in ("", "localhost") and scheme == "file":
            raise _refuse(uri, "a file URI on this machine (file:///path)")
        path = Path(unquote(parsed.path)) if scheme == "file" else Path(uri)
        problem = _writable_directory(path.expanduser())
        if problem is not None:
            raise _refuse(uri, f"a directory we can write the runs in ({problem})")
    elif base == "sqlite":
        _check_sqlite(uri, timeout)
    elif base in DATABASE_PORTS:
        _check_host(uri, parsed.hostname, port or DATABASE_PORTS[base], f"{base} database",
                    timeout)
        _probe_database(uri, timeout)
    elif base in SERVER_PORTS:
        _check_host(uri, parsed.hostname, port or SERVER_PORTS[base], "MLflow tracking server",
                    timeout)
    elif base not in HOSTED_SCHEMES and scheme not in _plugin_schemes():
        raise _refuse(uri, f"a tracking URI MLflow supports: {SUPPORTED} (scheme "
                           f"{parsed.scheme!r} is none of them)")
    return uri


@contextlib.contextmanager
def bounded_requests(timeout: float, retries: int) -> Iterator[None]:
    """MLflow's HTTP retries and per-request timeout for the calls inside (its defaults, 7
    retries with exponential backoff and 120 s a request, turn a dead server into minutes of
    waiting); values the user set in the environment are kept. Restored afterwards."""
    values = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
              "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(timeout)))}
    values = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(values)
    try:
        yield
    finally:
        for key in values:
            os.environ.pop(key, None)


def _params(cell: Cell) -> list[Param]:
    """The cell's names and canonical run flattened to dotted keys (``dataset.pool.name``,
    ``model.pooling``, ...); non-scalars as JSON, cut to MLflow's value limit."""
    names: dict[str, object] = {"study": cell.study, "dataset_name": cell.dataset_name,
                                "model_name": cell.model_name, "variant": cell.variant,
                                "replicate": cell.replicate}
    out = []
    for key, value in sorted(flatten({**names, **to_dict(cell.run)}).items()):
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True,
                                                               default=str)
        out.append(Param(key, text[:_MAX_PARAM]))
    return out


def headline_metrics(record: CellRecord) -> dict[str, float]:
    """The finite headline numbers (prefixed ``headline.``) and the cell's wall seconds."""
    metrics: dict[str, float] = {}
    if record.assessment is not None:
        metrics = {f"headline.{k}": v for k, v in record.assessment.headline().items()}
    metrics["wall_seconds"] = record.wall_seconds
    return {k: float(v) for k, v in metrics.items()
            if is_real(v) and math.isfinite(v)}


#: Bounds on MLflow's HTTP calls while cells are logged: a server that goes away mid-study
#: costs at most ~a minute once (the tracker then stops logging), not minutes per cell.
_CELL_TIMEOUT = 30.0
_CELL_RETRIES = 2


@dataclass(frozen=True)
class ParentRun:
    """Where a study's runs went: written to OUT/mlflow.json by `MlflowTracker.finish`."""

    uri: str
    experiment_id: str
    run_id: str

    @classmethod
    def read(cls, out: str | Path) -> ParentRun | None:
        path = Path(out) / RUN_FILE
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text())
            return cls(str(raw["uri"]), str(raw["experiment_id"]), str(raw["run_id"]))
        except (ValueError, KeyError, TypeError) as err:
            raise SpecError(RUN_FILE, str(path), f"the MLflow run file attnsets writes ({err})"
                            ) from None

    def write(self, out: str | Path) -> None:
        (Path(out) / RUN_FILE).write_text(json.dumps(self.__dict__, indent=2) + "\n")


def _client(uri: str) -> MlflowClient:
    if uri.startswith("file:") or "://" not in uri:
        # MLflow 3 keeps the file store in "maintenance mode" and refuses it unless asked; it
        # is what a laptop without a server or database has, so a local URI asks for it.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=uri)


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a new experiment in a SQLite store: next to the database (MLflow's default,
    ./mlruns, would land in whatever directory the command ran from)."""
    if urlparse(uri).scheme.split("+", 1)[0].lower() != "sqlite":
        return None
    return (_sqlite_path(uri).resolve().parent / "mlartifacts").as_uri()


class MlflowTracker:
    """Logs cells to MLflow: call it with each CellRecord (it is a `run_study` on_record
    callback), then `finish(out)` once. The URI is checked (`check_tracking_uri`) and the
    study's parent run created when it is built, before any cell runs.

    >>> tracker = MlflowTracker(default_uri("results"), study="paper")
    >>> run_study(config, "results", on_record=tracker)
    >>> tracker.finish("results")
    """

    def __init__(self, uri: str, study: str, experiment: str | None = None,
                 timeout: float = CONNECT_TIMEOUT) -> None:
        self.uri = check_tracking_uri(uri, timeout)
        name = experiment or f"attnsets-{study}"
        try:
            with bounded_requests(timeout, retries=0):
                self.client = _client(self.uri)
                found = self.client.get_experiment_by_name(name)
                self.experiment_id = found.experiment_id if found is not None else \
                    self.client.create_experiment(name, _artifact_location(self.uri))
                self.parent_id = self.client.create_run(
                    self.experiment_id, run_name=study,
                    tags={"attnsets.kind": "study", "attnsets.study": study}).info.run_id
        except Exception as err:  # noqa: BLE001 - a store that is there but unusable
            raise _refuse(uri, f"a usable MLflow tracking URI ({type(err).__name__}: "
                               f"{str(err)[:300]})") from None
        self.cell_runs: dict[str, str] = {}
        #: Why logging stopped (the store went away mid-study); the results store has all.
        self.stopped: str | None = None

    def __call__(self, record: CellRecord) -> None:
        """Log one finished (or failed) cell as a child run of the study run. An MLflow error
        stops the logging (reported by `stopped`); the study goes on."""
        if self.stopped is not None:
            return
        try:
            with bounded_requests(_CELL_TIMEOUT, _CELL_RETRIES):
                self._log_cell(record)
        except Exception as err:  # noqa: BLE001 - tracking must not end a study
            self.stopped = f"at cell {record.cell_id}: {type(err).__name__}: {str(err)[:300]}"

    def _log_cell(self, record: CellRecord) -> None:
        label = record.cell.label
        run = self.client.create_run(self.experiment_id, run_name=label, tags={
            "mlflow.parentRunId": self.parent_id, "attnsets.kind": "cell",
            "attnsets.cell_id": record.cell_id, "attnsets.status": record.status})
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        params = _params(record.cell)
        metrics = [Metric(k, v, now, 0) for k, v in headline_metrics(record).items()]
        for start in range(0, max(len(params), len(metrics)), _BATCH):
            self.client.log_batch(run_id, metrics=metrics[start:start + _BATCH],
                                  params=params[start:start + _BATCH],
                                  tags=[RunTag("attnsets.study", record.study)] if start == 0
                                  else [])
        stored = {k: json.loads(v) if k in JSON_COLUMNS and isinstance(v, str) else v
                  for k, v in _record_dict(record).items()}
        self.client.log_text(run_id, dumps(stored), "record.json")
        if record.error:
            self.client.log_text(run_id, record.error, "error.txt")
        self.client.set_terminated(run_id, "FINISHED" if record.status == "done" else "FAILED")
        self.cell_runs[record.cell_id] = run_id

    def finish(self, out: str | Path | None = None, failed: bool = False) -> None:
        """Close the study run; attach OUT's headline table and report (when there is one)
        and name the run in OUT/mlflow.json."""
        if self.stopped is not None:
            return
        try:
            with bounded_requests(_CELL_TIMEOUT, _CELL_RETRIES):
                self._finish(out, failed)
        except Exception as err:  # noqa: BLE001 - the study's results are stored already
            self.stopped = f"at the end: {type(err).__name__}: {str(err)[:300]}"

    def _finish(self, out: str | Path | None, failed: bool) -> None:
        if out is not None and (Path(out) / "results.sqlite").is_file():
            from attnsets.report.collect import open_results
            from attnsets.report.tables import headline_table

            out = Path(out)
            table = headline_table(open_results(out))
            self.client.log_text(self.parent_id, table.to_csv(index=False), "headline.csv")
            if (out / "report" / "report.html").is_file():
                self.client.log_artifacts(self.parent_id, str(out / "report"), "report")
            ParentRun(self.uri, self.experiment_id, self.parent_id).write(out)
        self.client.log_metric(self.parent_id, "cells_logged", float(len(self.cell_runs)))
        self.client.set_terminated(self.parent_id, "FAILED" if failed else "FINISHED")


def attach_report(out: str | Path, report: str | Path,
                  timeout: float = CONNECT_TIMEOUT) -> ParentRun | None:
    """Log a written report directory as the ``report`` artifact of the study run named in
    OUT/mlflow.json (None when OUT has no such file). Raises SpecError when the store cannot
    be reached."""
    parent = ParentRun.read(out)
    if parent is None:
        return None
    check_tracking_uri(parent.uri, timeout)
    try:
        with bounded_requests(_CELL_TIMEOUT, _CELL_RETRIES):
            _client(parent.uri).log_artifacts(parent.run_id, str(report), "report")
    except Exception as err:  # noqa: BLE001 - the report itself is written
        raise _refuse(parent.uri, f"a reachable MLflow store holding run {parent.run_id} "
                                  f"({type(err).__name__}: {str(err)[:300]})") from None
    return parent


def _record_dict(record: CellRecord) -> dict[str, object]:
    """The record as the store keeps it (per-instance arrays left out)."""
    return dict(zip(COLUMNS, record_row(record), strict=True))
