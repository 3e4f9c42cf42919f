"""One study cell: generate the dataset, train the ensemble (vectorised), assess, package a record."""

from __future__ import annotations

import time
from typing import Any

from attnsets.study.config import Cell
from attnsets.study.store import CellRecord


def train_and_assess(dataset_spec: dict[str, Any], model: dict[str, Any], training: dict[str, Any],
                     seeds: list[int], assess_spec: Any) -> tuple[Any, dict[str, Any]]:
    """(Assessment, training summary) for one dataset x model x member seeds."""
    from attnsets.assess import assess
    from attnsets.data import DatasetSpec, make_dataset
    from attnsets.models import ModelSpec
    from attnsets.registry import build_dataclass
    from attnsets.training import TrainSpec, fit_ensemble

    dataset = make_dataset(DatasetSpec.from_dict(dataset_spec))
    model_spec = build_dataclass(ModelSpec, model, "model")
    train_spec = TrainSpec.from_dict({**training, "seed": seeds[0]}, "training")
    started = time.time()
    result = fit_ensemble(model_spec, dataset, train_spec, seeds=list(seeds))
    train_seconds = time.time() - started
    assessment = assess(result.ensemble.members(), dataset, assess_spec)
    histories = [h.to_dict() for h in result.histories]
    training_summary = {
        "seconds": train_seconds,
        "epochs_run": [len(h.get("train_loss", [])) for h in histories],
        "best_epoch": [h.get("best_epoch") for h in histories],
        "best_val_loss": [min(h.get("val_loss", [float("nan")])) for h in histories],
    }
    return assessment, training_summary


def evaluate_cell(cell: Cell) -> CellRecord:
    """The default cell function of `run_study` (runs in a worker process)."""
    from attnsets.assess import AssessSpec
    from attnsets.metrics import SilentFailureCriteria

    started = time.time()
    spec = AssessSpec(explainers=cell.explainers,
                      criteria=SilentFailureCriteria(**cell.thresholds), combine=cell.combine,
                      ensemble_sizes=cell.ensemble_sizes, curve_subsets=cell.curve_subsets,
                      bootstrap=cell.bootstrap, seed=cell.replicate)
    assessment, training = train_and_assess(cell.dataset, cell.model, cell.training,
                                            list(cell.seeds), spec)
    metrics = {**assessment.metrics, "training": training}
    return CellRecord(cell_id=cell.cell_id, study=cell.study, status="done", spec=cell.to_dict(),
                      metrics=metrics, seeds=list(cell.seeds), config_hash=cell.config_hash,
                      started=started, finished=time.time(), arrays=assessment.arrays)
