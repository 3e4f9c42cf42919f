"""Study cells as MLflow runs (`attnsets run CONFIG --mlflow [--mlflow-uri URI]`).

Needs the extra: ``pip install 'attnsets[mlflow]'`` (mlflow-skinny: the tracking client only;
``mlflow ui`` needs the full ``mlflow`` package).

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
directory has one (`attnsets report`), the report directory. The default store is a local
file store under OUT/mlruns; any tracking URI MLflow accepts works.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

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


def default_uri(out: str | Path) -> str:
    """The local file store under a study's results directory: file://OUT/mlruns."""
    return (Path(out).resolve() / "mlruns").as_uri()


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


class MlflowTracker:
    """Logs cells to MLflow: call it with each CellRecord (it is a `run_study` on_record
    callback), then `finish(out)` once.

    >>> tracker = MlflowTracker(default_uri("results"), study="paper")
    >>> run_study(config, "results", on_record=tracker)
    >>> tracker.finish("results")
    """

    def __init__(self, uri: str, study: str, experiment: str | None = None) -> None:
        if not isinstance(uri, str) or not uri:
            raise SpecError("mlflow", uri, "a tracking URI (e.g. file:///path/mlruns)")
        self.uri = uri
        if uri.startswith("file:"):
            # MLflow 3 keeps the file store in "maintenance mode" and refuses it unless asked;
            # it is what a laptop without a tracking server has (the sqlite store needs the
            # full mlflow package), so a file:// URI asks for it explicitly.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        name = experiment or f"attnsets-{study}"
        try:
            found = self.client.get_experiment_by_name(name)
            self.experiment_id = found.experiment_id if found is not None else \
                self.client.create_experiment(name)
            self.parent_id = self.client.create_run(
                self.experiment_id, run_name=study,
                tags={"attnsets.kind": "study", "attnsets.study": study}).info.run_id
        except Exception as err:  # noqa: BLE001 - an unreachable or unusable store
            raise SpecError("mlflow", uri, f"a usable MLflow tracking URI ({err})") from None
        self.cell_runs: dict[str, str] = {}

    def __call__(self, record: CellRecord) -> None:
        """Log one finished (or failed) cell as a child run of the study run."""
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
        """Close the study run; attach OUT's headline table and report (when there is one)."""
        if out is not None:
            out = Path(out)
            if (out / "results.sqlite").is_file():
                from attnsets.report.collect import open_results
                from attnsets.report.tables import headline_table

                table = headline_table(open_results(out))
                self.client.log_text(self.parent_id, table.to_csv(index=False), "headline.csv")
            report = out / "report"
            if (report / "report.html").is_file():
                self.client.log_artifacts(self.parent_id, str(report), "report")
        self.client.log_metric(self.parent_id, "cells_logged", float(len(self.cell_runs)))
        self.client.set_terminated(self.parent_id, "FAILED" if failed else "FINISHED")


def _record_dict(record: CellRecord) -> dict[str, object]:
    """The record as the store keeps it (per-instance arrays left out)."""
    return dict(zip(COLUMNS, record_row(record), strict=True))
