"""The typed record of one study cell, as the store writes and returns it (optuna's
FrozenTrial pattern: readers get typed fields, never the stored JSON).

`cell` is the cell itself (names + the typed RunSpec it ran); `assessment` and `training` the
typed results (None for a failed cell); `stage_seconds` the worker seconds per stage
(`attnsets.assessment.Stage` names: ``generate``, ``predict``, ``explain/<method>``, ...;
training is `training.seconds`); `wall_seconds` the whole cell from start to finish.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from attnsets.assessment import Stage

if TYPE_CHECKING:
    from attnsets.assessment import Assessment
    from attnsets.run import TrainingSummary
    from attnsets.study.cell import Cell

__all__ = ["CellRecord", "Stage", "Status"]


class Status:
    DONE = "done"
    FAILED = "failed"
    ALL = (DONE, FAILED)


@dataclass
class CellRecord:
    """One cell's outcome: what ran (`cell`), how it went, and what it found."""

    cell: Cell
    status: str
    assessment: Assessment | None = None
    training: TrainingSummary | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    started: float = 0.0
    finished: float = 0.0
    error: str | None = None
    #: Hash of the config file the cell was run from (which edit of the file wrote it).
    config_hash: str = ""

    @property
    def cell_id(self) -> str:
        return self.cell.cell_id

    @property
    def study(self) -> str:
        return self.cell.study

    @property
    def done(self) -> bool:
        return self.status == Status.DONE

    @property
    def wall_seconds(self) -> float:
        """The cell's wall time from start to finish (stage_seconds are its parts)."""
        return self.finished - self.started

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """The per-instance arrays to store with the record (empty on records read back: the
        store loads them on demand, `ResultsStore.arrays`)."""
        return self.assessment.arrays if self.assessment is not None else {}

    @property
    def generate_seconds(self) -> float:
        return float(self.stage_seconds.get(Stage.GENERATE, 0.0))
