"""Run a study: expand cells, skip finished ones on --resume, order them most expensive first,
execute, store, summarise.

Expensive first: with several workers a study that runs its heaviest cells last ends with one
worker busy and the others idle, so cells start in decreasing estimated cost (estimated_cost;
rescaled per pooling by the timings of cells already finished in the store when resuming).
Records are per cell, so the order changes only when each finishes, never what it computes.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from attnsets import labels
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


#: Poolings whose every pass attends instance to instance: a pass over a bag of N costs
#: ~N^2 on top of the encoder's ~N, and the perturbation explainers (N sub-bags) ~N^3.
SELF_ATTENTION = frozenset({"transformer_cls", "set_transformer"})
#: Self-attention term: a pass costs N * (1 + N / SELF_ATTENTION_WIDTH) encoder units (the
#: pairwise term overtakes the per-instance encoder at about the embedding width).
SELF_ATTENTION_WIDTH = 32.0
#: Head (pooling) evaluations per test bag and member, as a function of its size N, for the
#: perturbation explainers (which re-run only the head on sub-bags) ...
HEAD_PASSES: dict[str, Callable[[float], float]] = {
    "leave_one_out": lambda n: n + 1, "single": lambda n: n,
    "shapley": lambda n: 25 * (n + 1)}
#: ... and full passes (forward + backward counts 3) for the gradient explainers; every other
#: explainer (attention maps, random) costs about one forward pass.
FULL_PASSES = {"gradient": 3.0, "grad_x_input": 3.0, "integrated_gradients": 100.0}
#: A head pass costs this share of a full pass when the pooling is not self-attention (the
#: encoder, which perturbation passes skip, dominates there).
CHEAP_HEAD = 0.25
#: Encoder cost per instance relative to the vector MLP, by data kind: the mean-pooling cells of
#: the demo (where the encoder is all the work) took 3.5 s on gaussian bags of ~20, 20 s on
#: digits bags of ~10 (small CNN) and 38 s on sequence bags of ~20 (seq_cnn), 2026-12-03.
ENCODER_COST = {"vector": 1.0, "image": 11.0, "sequence": 11.0}


def _mean_bag_size(bag_size: Mapping[str, Any]) -> float:
    from attnsets.data.spec import SizeSpec

    size = SizeSpec(**dict(bag_size))
    if size.kind == "uniform":
        return (size.low + size.high) / 2
    return max(float(size.mean), float(size.min))


def estimated_cost(spec: Mapping[str, Any]) -> float:
    """Relative cost of a cell from its stored spec (Cell.to_dict()): training (members x epochs
    x bags x passes over a bag) plus assessment (members x test bags x each explainer's passes,
    deletion curves included: 11 head passes per explainer and 10 random orders per member).
    Units are arbitrary; only the order matters, and measured timings rescale it (schedule)."""
    from attnsets.data.pools import POOLS
    from attnsets.training import TrainSpec

    dataset = spec["dataset"]
    bags = {"train": 200, "val": 100, "test": 100, **dict(dataset.get("bags") or {})}
    n = _mean_bag_size(dataset.get("bag_size") or {})  # {}: SizeSpec's defaults, as DatasetSpec
    self_attention = spec["model"].get("pooling") in SELF_ATTENTION
    pool = str((dataset.get("pool") or {}).get("name", ""))
    encoder = ENCODER_COST.get(str(getattr(POOLS.get(pool), "kind", "vector"))
                               if pool in POOLS else "vector", 1.0)
    # A full pass encodes every instance, then pools them (pairwise on self-attention).
    full = n * (encoder + n / SELF_ATTENTION_WIDTH) if self_attention else n * encoder
    head = n * (1 + n / SELF_ATTENTION_WIDTH) if self_attention else CHEAP_HEAD * n
    members = len(spec["seeds"])
    epochs = int((spec.get("training") or {}).get("epochs", TrainSpec().epochs))
    train = members * epochs * (bags["train"] + bags["val"]) * 3 * full
    steps = 11  # deletion_steps + 1 head passes per curve
    per_bag = 10 * steps * head  # the random-order deletion curves, once per member
    for name in spec["explainers"]:
        per_bag += steps * head
        if name in HEAD_PASSES:
            per_bag += HEAD_PASSES[name](n) * head
        else:
            per_bag += FULL_PASSES.get(name, 1.0) * full
    return float(train + members * bags["test"] * per_bag)


def schedule(cells: Sequence[Cell], finished: Iterable[Mapping[str, Any]] = ()) -> list[Cell]:
    """`cells` in decreasing estimated cost (ties keep their order). finished: store records
    of done cells (spec, seconds); their seconds / estimate, per pooling (else over all of
    them), rescales the estimates, so a resumed study orders by what cells really took."""
    ratios: dict[str, list[float]] = {}
    for record in finished:
        cost = estimated_cost(record["spec"])
        if record.get("seconds") and cost > 0:
            pooling = str(record["spec"]["model"].get("pooling"))
            ratios.setdefault(pooling, []).append(float(record["seconds"]) / cost)
    overall = statistics.median([r for rs in ratios.values() for r in rs]) if ratios else 1.0
    scale = {pooling: statistics.median(rs) for pooling, rs in ratios.items()}

    def cost(cell: Cell) -> float:
        spec = cell.to_dict(with_id=False)
        return estimated_cost(spec) * scale.get(str(spec["model"].get("pooling")), overall)

    return sorted(cells, key=cost, reverse=True)


def cell_label(cell: Cell) -> str:
    """"dataset x model seed r [variant]" (attnsets.labels)."""
    return labels.cell_label(cell.dataset_name, cell.model_name, cell.replicate, cell.variant)


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
        finished = [r for r in store.records() if r["status"] == "done"] if done else []
        todo = schedule([c for c in cells if c.cell_id not in done], finished)
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
