"""Read a results store into the shapes the report needs: cells in config order and a long
per-member table (one row per cell x member x explainer)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from attnsets.assessment import Assessment
from attnsets.errors import SpecError
from attnsets.labels import cell_label
from attnsets.metrics import SilentFailureCriteria
from attnsets.run import TrainingSummary
from attnsets.study.cell import Cell
from attnsets.study.record import CellRecord
from attnsets.study.store import STORE_NAME, ResultsStore

#: The explainer the study is about; the report leads with it whenever the study has it.
PREFERRED_METHOD = "attention"
#: A baseline, never the headline explainer unless it is the only one.
BASELINE_METHODS = ("random",)

MEMBER_COLUMNS = [
    "cell_id", "dataset", "model", "replicate", "member", "seed", "explainer",
    "bag_score", "bag_accuracy", "bag_balanced_accuracy", "importance", "auroc", "auprc",
    "auprc_chance", "silent", "aopc_relative", "min_bag_score", "max_importance",
]


@dataclass
class CellView:
    """One finished cell. `dataset` is the display label (dataset name, plus the grid variant);
    `cell` the cell as it ran (names + typed RunSpec)."""

    cell_id: str
    dataset: str
    model: str
    replicate: int
    pool: str
    rule: str
    kind: str
    cell: Cell
    assessment: Assessment
    seeds: list[int]
    training: TrainingSummary | None = None

    @property
    def combine(self) -> str:
        """How the cell combined its members' explanations."""
        assess = self.cell.run.assess
        return assess.combine if assess is not None else "mean_normalised"

    @property
    def rule_options(self) -> dict[str, object]:
        """The rule's parameters as the cell ran them."""
        dataset = self.cell.run.dataset
        return dict(dataset.rule.params) if dataset is not None else {}

    @property
    def criteria(self) -> SilentFailureCriteria:
        return self.assessment.criteria

    @property
    def methods(self) -> list[str]:
        """Explainers with per-member results in this cell."""
        return self.assessment.methods

    @property
    def n_members(self) -> int:
        return self.assessment.n_members


@dataclass
class StudyView:
    """Everything read from the store, in a stable order (the config's, else by name)."""

    directory: Path
    name: str
    done: list[CellView]
    failed: list[CellRecord]
    datasets: list[str]
    models: list[str]
    explainers: list[str]
    method: str | None
    members: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)  # config.json as the run wrote it
    #: Every record of the store, done and failed, as read once.
    records: list[CellRecord] = field(default_factory=list)

    @property
    def n_cells(self) -> int:
        return len(self.done) + len(self.failed)

    def cells(self, dataset: str | None = None, model: str | None = None) -> list[CellView]:
        return [c for c in self.done if (dataset is None or c.dataset == dataset)
                and (model is None or c.model == model)]


def pool_kind(pool_name: str | None) -> str:
    """The modality ("image", "sequence", "vector") of a registered pool, "unknown" otherwise."""
    from attnsets.data.pools import POOLS

    if not pool_name or pool_name not in POOLS:
        return "unknown"
    return str(getattr(POOLS.get(pool_name), "kind", "unknown"))


def dataset_label(cell: Cell) -> str:
    return cell_label(cell.dataset_name, variant=cell.variant)


def _ordered(found: list[str], preferred: list[str]) -> list[str]:
    """`found` (unique) in the order of `preferred`, unknown names after them sorted."""
    unique = list(dict.fromkeys(found))
    rank = {name: i for i, name in enumerate(preferred)}
    return sorted(unique, key=lambda n: (rank.get(n, len(rank)), n))


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def choose_method(done: list[CellView], explainers: list[str]) -> str | None:
    """attention when any cell has it, else the first non-baseline explainer, else a baseline."""
    present = [m for m in explainers if any(m in c.methods for c in done)]
    if PREFERRED_METHOD in present:
        return PREFERRED_METHOD
    informative = [m for m in present if m not in BASELINE_METHODS]
    return (informative or present or [None])[0]


def member_rows(cell: CellView) -> list[dict[str, Any]]:
    """One row per member x explainer of `cell` (see MEMBER_COLUMNS)."""
    criteria = cell.criteria
    bag = cell.assessment.member_bag
    rows = []
    for method, result in cell.assessment.explainers.items():
        silent, aopcs = result.silent, result.aopc
        for k, report in enumerate(result.members):
            bag_k = bag[k] if k < len(bag) else None
            rows.append({
                "cell_id": cell.cell_id, "dataset": cell.dataset, "model": cell.model,
                "replicate": cell.replicate, "member": k,
                "seed": cell.seeds[k] if k < len(cell.seeds) else -1, "explainer": method,
                "bag_score": bag_k.value(criteria.bag_metric) if bag_k else math.nan,
                "bag_accuracy": bag_k.accuracy if bag_k else math.nan,
                "bag_balanced_accuracy": bag_k.balanced_accuracy if bag_k else math.nan,
                "importance": _as_float(report.get(criteria.importance_metric)),
                "auroc": _as_float(report.get("auroc")), "auprc": _as_float(report.get("auprc")),
                "auprc_chance": _as_float(report.get("auprc_chance")),
                "silent": bool(silent[k]) if k < len(silent) else False,
                "aopc_relative": aopcs[k].aopc_relative if k < len(aopcs) else math.nan,
                "min_bag_score": float(criteria.min_bag_score),
                "max_importance": float(criteria.max_importance),
            })
    return rows


def open_results(results_dir: str | Path) -> StudyView:
    """Read `results_dir/results.sqlite` once. A missing directory or store, a damaged one or
    one written by a newer attnsets raises SpecError."""
    directory = Path(results_dir)
    if not directory.is_dir() or not (directory / STORE_NAME).is_file():
        what = "no such directory" if not directory.is_dir() else f"no {STORE_NAME} inside"
        raise SpecError("results_dir", str(directory),
                        f"a study directory holding {STORE_NAME} (written by `attnsets study`); "
                        f"{what}")
    store = ResultsStore(directory)
    try:
        records = store.records()
    finally:
        store.close()
    config = _read_config(directory)
    done = [_view(r) for r in records if r.done and r.assessment is not None]
    failed = [r for r in records if not r.done]
    config_datasets = [str(d.get("name")) for d in config.get("datasets", [])]
    config_models = [str(m.get("name")) for m in config.get("models", [])]
    config_explainers = list(config.get("study", {}).get("explainers", []))
    every = [r.cell for r in records]
    labels = [dataset_label(c) for c in every]
    base_rank = {name: i for i, name in enumerate(config_datasets)}
    datasets = sorted(dict.fromkeys(labels), key=lambda lab: (
        base_rank.get(lab.split(" [")[0], len(base_rank)), lab))
    models = _ordered([c.model_name for c in every], config_models)
    spec_explainers = [m for c in every for m in c.explainers]
    explainers = _ordered([*spec_explainers, *(m for c in done for m in c.methods)],
                          config_explainers or spec_explainers)
    rows = [row for cell in done for row in member_rows(cell)]
    members = pd.DataFrame(rows, columns=MEMBER_COLUMNS)
    name = str(config.get("study", {}).get("name") or (records[0].study if records else
                                                       directory.name))
    return StudyView(directory=directory, name=name, done=done, failed=failed, datasets=datasets,
                     models=models, explainers=explainers, method=choose_method(done, explainers),
                     members=members, config=config, records=records)


def _view(record: CellRecord) -> CellView:
    cell = record.cell
    assert record.assessment is not None
    return CellView(cell_id=record.cell_id, dataset=dataset_label(cell), model=cell.model_name,
                    replicate=cell.replicate, pool=cell.pool, rule=cell.rule,
                    kind=pool_kind(cell.pool), cell=cell, assessment=record.assessment,
                    seeds=list(cell.seeds), training=record.training)


#: The name before open_results; kept for one release.
load_study = open_results

