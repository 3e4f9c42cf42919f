"""Study cells as MLflow runs (`attnsets run CONFIG --mlflow [--mlflow-uri URI]`).

Needs the extra: ``pip install 'attnsets[mlflow]'`` (mlflow-skinny: the tracking client only;
``mlflow ui`` needs the full ``mlflow`` package).

One parent run per `attnsets run` invocation (named after the study) and one child run per
cell finished in it, logged from the driver as each cell is stored (`run_study(on_record=...)`):

- params: the cell's spec flattened (``dataset.pool.name``, ``model.pooling``, ...; lists and
  other non-scalars as JSON);
- metrics: the headline numbers (``headline.bag_accuracy``, ``headline.attention.auroc``,
  ``headline.attention.silent_rate``, ...) and the cell's seconds;
- artifact ``record.json``: the whole record as stored (spec, metrics, seeds, versions);
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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attnsets.assessment import Assessment
from attnsets.errors import SpecError
from attnsets.labels import cell_label
from attnsets.study.results import flatten
from attnsets.study.store import CellRecord, dumps

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


def _params(spec: Mapping[str, Any]) -> list[Param]:
    """The spec flattened to dotted keys; non-scalars as JSON, cut to MLflow's value limit."""
    out = []
    for key, value in sorted(flatten(dict(spec)).items()):
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True,
                                                               default=str)
        out.append(Param(key, text[:_MAX_PARAM]))
    return out


def headline_metrics(record: CellRecord) -> dict[str, float]:
    """The cell's headline (`Assessment.headline`, i.e. attnsets.headline per explainer, for
    the cell's importance metric) prefixed ``headline.``, and its seconds; finite values only.
    A failed cell has no assessment: seconds only."""
    values = Assessment.from_dict(record.metrics).headline() if record.status == "done" else {}
    metrics: dict[str, object] = {f"headline.{k}": v for k, v in values.items()}
    metrics["seconds"] = record.seconds
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


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
        spec = record.spec
        label = cell_label(str(spec.get("dataset_name")), str(spec.get("model_name")),
                           spec.get("replicate"), spec.get("variant") or "")
        run = self.client.create_run(self.experiment_id, run_name=label, tags={
            "mlflow.parentRunId": self.parent_id, "attnsets.kind": "cell",
            "attnsets.cell_id": record.cell_id, "attnsets.status": record.status})
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        params = _params(spec)
        metrics = [Metric(k, v, now, 0) for k, v in headline_metrics(record).items()]
        for start in range(0, max(len(params), len(metrics)), _BATCH):
            self.client.log_batch(run_id, metrics=metrics[start:start + _BATCH],
                                  params=params[start:start + _BATCH],
                                  tags=[RunTag("attnsets.study", record.study)] if start == 0
                                  else [])
        self.client.log_text(run_id, json.dumps(json.loads(dumps(_record_dict(record))),
                                                indent=2, sort_keys=True), "record.json")
        if record.error:
            self.client.log_text(run_id, record.error, "error.txt")
        self.client.set_terminated(run_id, "FINISHED" if record.status == "done" else "FAILED")
        self.cell_runs[record.cell_id] = run_id

    def finish(self, out: str | Path | None = None, failed: bool = False) -> None:
        """Close the study run; attach OUT's headline table and report (when there is one)."""
        if out is not None:
            out = Path(out)
            if (out / "results.sqlite").is_file():
                from attnsets.report.collect import load_study
                from attnsets.report.tables import headline_table

                table = headline_table(load_study(out))
                self.client.log_text(self.parent_id, table.to_csv(index=False), "headline.csv")
            report = out / "report"
            if (report / "report.html").is_file():
                self.client.log_artifacts(self.parent_id, str(report), "report")
        self.client.log_metric(self.parent_id, "cells_logged", float(len(self.cell_runs)))
        self.client.set_terminated(self.parent_id, "FAILED" if failed else "FINISHED")


def _record_dict(record: CellRecord) -> dict[str, Any]:
    """The record as stored in the results store (per-instance arrays left out)."""
    return {"cell_id": record.cell_id, "study": record.study, "status": record.status,
            "spec": record.spec, "metrics": record.metrics, "error": record.error,
            "seeds": record.seeds, "config_hash": record.config_hash,
            "versions": record.versions, "started": record.started,
            "finished": record.finished, "seconds": record.seconds}
