"""One study cell: execute its typed run and package the record for the store."""

from __future__ import annotations

import time

from attnsets.study.config import Cell
from attnsets.study.store import CellRecord


def evaluate_cell(cell: Cell) -> CellRecord:
    """The default cell function of `run_study` (runs in a worker process)."""
    from attnsets.device import device_of
    from attnsets.run import execute

    started = time.time()
    result = execute(cell.run_spec)
    assert result.assessment is not None  # a study cell always assesses
    metrics = {**result.assessment.to_dict(), "training": result.training.to_dict(),
               "generate_seconds": result.generate_seconds}
    return CellRecord(cell_id=cell.cell_id, study=cell.study, status="done", spec=cell.to_dict(),
                      metrics=metrics, seeds=list(cell.seeds), config_hash=cell.config_hash,
                      started=started, finished=time.time(), arrays=result.assessment.arrays,
                      versions={"device": str(device_of(result.members[0]))})
