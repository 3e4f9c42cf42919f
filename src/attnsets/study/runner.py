"""Run a study: expand cells, skip finished ones on --resume, execute, store, summarise."""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from attnsets.study.config import Cell, StudyConfig, study_cells
from attnsets.study.executor import CellFn, run_cells
from attnsets.study.store import CellRecord, ResultsStore

LOG_NAME = "study.log"
CONFIG_NAME = "config.json"


class StudyExistsError(RuntimeError):
    """The output directory already holds results of a run and --resume was not given."""


@dataclass
class StudySummary:
    total: int
    skipped: int = 0
    done: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (cell label, first error line)

    @property
    def ok(self) -> bool:
        return self.failed == 0


def versions() -> dict[str, str]:
    import numpy
    import sklearn
    import torch

    import attnsets

    return {"attnsets": attnsets.__version__, "torch": torch.__version__,
            "numpy": numpy.__version__, "sklearn": sklearn.__version__,
            "python": platform.python_version()}


def cell_label(cell: Cell) -> str:
    variant = f" [{cell.variant}]" if cell.variant else ""
    return f"{cell.dataset_name} x {cell.model_name} seed {cell.replicate}{variant}"


def _write_json_atomic(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def _logger(out: Path) -> logging.Logger:
    logger = logging.getLogger(f"attnsets.study.{out.resolve()}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.handlers.clear()
    handler = logging.FileHandler(out / LOG_NAME)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return logger


def run_study(config: StudyConfig, out: str | Path, *, workers: int = 1, executor: str = "local",
              address: str | None = None, resume: bool = False, run_cell: CellFn | None = None,
              show_progress: bool = True,
              on_record: Callable[[CellRecord], None] | None = None,
              only: Callable[[Cell], bool] | None = None) -> StudySummary:
    """Run every cell of `config` not yet done in `out` (those passing `only`, if given).
    Only this (driver) process writes."""
    from attnsets.study.cell import evaluate_cell

    run_cell = run_cell or evaluate_cell
    out = Path(out)
    cells = [c for c in study_cells(config) if only is None or only(c)]
    with ResultsStore.open_for_run(out) as store:
        existing = store.cell_ids()
        if existing and not resume:
            raise StudyExistsError(
                f"{out} already holds {len(existing)} result(s); pass --resume to finish the "
                "missing cells, or choose another --out")
        done = store.cell_ids("done")
        todo = [c for c in cells if c.cell_id not in done]
        summary = StudySummary(total=len(cells), skipped=len(cells) - len(todo))
        _write_json_atomic(out / CONFIG_NAME, config.raw)
        log = _logger(out)
        log.info("study %s: %d cells, %d already done, %d to run, workers=%d executor=%s",
                 config.name, len(cells), summary.skipped, len(todo), workers, executor)
        stamp = versions()
        start = time.time()
        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("done {task.fields[done]} · failed {task.fields[failed]} · "
                                       "remaining {task.fields[remaining]}"),
                            TimeRemainingColumn(), disable=not show_progress, transient=False)
        with progress:
            task = progress.add_task(config.name, total=len(todo), done=0, failed=0,
                                     remaining=len(todo))
            labels = {c.cell_id: cell_label(c) for c in todo}
            for record in run_cells(todo, run_cell, workers=workers, executor=executor,
                                    address=address, device=config.file.study.device):
                record.versions = {**stamp, **record.versions}
                record.config_hash = config.config_hash
                store.write(record)
                if record.status == "done":
                    summary.done += 1
                    log.info("done %s (%.1fs)", labels[record.cell_id], record.seconds)
                else:
                    summary.failed += 1
                    first = (record.error or "").splitlines()[0] if record.error else "unknown"
                    summary.failures.append((labels[record.cell_id], first))
                    log.error("FAILED %s: %s", labels[record.cell_id], record.error)
                if on_record:
                    on_record(record)
                progress.update(task, advance=1, done=summary.done, failed=summary.failed,
                                remaining=len(todo) - summary.done - summary.failed)
        summary.seconds = time.time() - start
        log.info("finished: %d done, %d failed, %d skipped in %.1fs", summary.done, summary.failed,
                 summary.skipped, summary.seconds)
    return summary
