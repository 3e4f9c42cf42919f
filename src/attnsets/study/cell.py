"""One study cell: its identity, and executing its typed run into a record for the store.

A cell is (study, dataset name, model name, grid variant, replicate) plus the typed `RunSpec` it
executes; everything else (seeds, explainers, budgets, thresholds) is read off the run. Its id
is the stable hash of those names and the run's identity form (attnsets.spec.identity_dict), so
how a config spells a setting never changes it and any change of what is computed does.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from attnsets.labels import cell_label
from attnsets.spec.codec import JSONDict, JSONValue, from_dict, identity_dict, stable_hash, to_dict

if TYPE_CHECKING:
    from attnsets.run import RunSpec
    from attnsets.study.record import CellRecord


def run_identity(run: RunSpec) -> JSONDict:
    """The identity form of a study run; the default ensemble sizes (1..M) spelled out, so
    leaving them out and listing them are one run."""
    assess = run.assess
    if assess is not None and assess.ensemble_sizes is None:
        sizes = tuple(range(1, run.n_members + 1))
        run = dataclasses.replace(run, assess=dataclasses.replace(assess, ensemble_sizes=sizes))
    return identity_dict(run)


@dataclass(frozen=True)
class Cell:
    """One unit of work: a dataset (with its replicate seed) x a model, trained as one member
    per seed of `run`."""

    study: str
    dataset_name: str
    model_name: str
    variant: str
    replicate: int
    run: RunSpec = field(repr=False)
    cell_id: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cell_id", stable_hash({
            "study": self.study, "dataset": self.dataset_name, "model": self.model_name,
            "variant": self.variant, "replicate": self.replicate,
            "run": run_identity(self.run)}))

    @property
    def run_spec(self) -> RunSpec:
        return self.run

    @property
    def seeds(self) -> tuple[int, ...]:
        return self.run.seeds

    @property
    def explainers(self) -> tuple[str, ...]:
        return self.run.assess.explainers if self.run.assess is not None else ()

    @property
    def pool(self) -> str:
        return self.run.dataset.pool.name if self.run.dataset is not None else ""

    @property
    def rule(self) -> str:
        return self.run.dataset.rule.name if self.run.dataset is not None else ""

    @property
    def pooling(self) -> str:
        return self.run.model_name

    @property
    def label(self) -> str:
        """"dataset x model seed r [variant]": how logs, MLflow and reports name a cell."""
        return cell_label(self.dataset_name, self.model_name, self.replicate, self.variant)

    def to_dict(self) -> JSONDict:
        """The canonical form the store keeps (the run in attnsets.spec's canonical form)."""
        return {"study": self.study, "dataset_name": self.dataset_name,
                "model_name": self.model_name, "variant": self.variant,
                "replicate": self.replicate, "run": to_dict(self.run)}

    @staticmethod
    def from_dict(data: Mapping[str, JSONValue]) -> Cell:
        from attnsets.run import RunSpec

        run = data["run"]
        assert isinstance(run, Mapping)
        return Cell(study=str(data["study"]), dataset_name=str(data["dataset_name"]),
                    model_name=str(data["model_name"]), variant=str(data.get("variant", "")),
                    replicate=int(data["replicate"]),  # type: ignore[arg-type]
                    run=from_dict(RunSpec, run, "run"))


def evaluate_cell(cell: Cell) -> CellRecord:
    """The default cell function of `run_study` (runs in a worker process)."""
    from attnsets.device import device_of
    from attnsets.run import execute
    from attnsets.study.record import CellRecord, Stage

    started = time.time()
    result = execute(cell.run)
    assert result.assessment is not None  # a study cell always assesses
    stages = {Stage.GENERATE: result.generate_seconds, **result.assessment.stage_seconds}
    return CellRecord(cell=cell, status="done", assessment=result.assessment,
                      training=result.training, stage_seconds=stages, started=started,
                      finished=time.time(),
                      versions={"device": str(device_of(result.members[0]))})
