"""Study wall time: configs/demo in full and a stratified slice of configs/paper, workers 1 vs 2."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from attnsets.study.config import load_study, study_cells
from attnsets.study.runner import run_study
from benchmarks.common import machine, table

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "attnsets" / "configs"


def paper_slice() -> tuple[set[str], int]:
    """Seed 0 only; pooling j with dataset j * D // M: every pooling once, datasets spread over
    the gaussian, digits, sequence and table modalities."""
    cells = study_cells(load_study(CONFIGS / "paper.toml"))
    datasets = list(dict.fromkeys(c.dataset_name for c in cells))
    models = list(dict.fromkeys(c.model_name for c in cells))
    pairs = {(datasets[j * len(datasets) // len(models)], m) for j, m in enumerate(models)}
    chosen = {c.cell_id for c in cells if c.replicate == 0 and (c.dataset_name, c.model_name) in pairs}
    return chosen, len(cells)


def timed_study(name: str, workers: int, only: set[str] | None) -> tuple[float, int, int]:
    config = load_study(CONFIGS / name)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        summary = run_study(config, out, workers=workers, show_progress=False,
                            only=None if only is None else (lambda c: c.cell_id in only))
        return time.perf_counter() - start, summary.done, summary.failed


def run() -> str:
    rows = []
    demo = {w: timed_study("demo.toml", w, None) for w in (1, 2)}
    rows.append(["configs/demo (all cells)", str(demo[1][1] + demo[1][2]), f"{demo[1][0] / 60:.1f} min",
                 f"{demo[2][0] / 60:.1f} min", f"{demo[1][0] / demo[2][0]:.2f}x", "measured"])
    ids, total = paper_slice()
    paper = {w: timed_study("paper.toml", w, ids) for w in (1, 2)}
    scale = total / len(ids)
    rows.append([f"configs/paper, slice of {len(ids)} cells", str(len(ids)),
                 f"{paper[1][0] / 60:.1f} min", f"{paper[2][0] / 60:.1f} min",
                 f"{paper[1][0] / paper[2][0]:.2f}x", "measured"])
    rows.append([f"configs/paper, all {total} cells", str(total),
                 f"~{paper[1][0] * scale / 3600:.1f} h", f"~{paper[2][0] * scale / 3600:.1f} h",
                 "", f"extrapolated x{scale:.0f} from the slice"])
    failed = sum(r[2] for r in (*demo.values(), *paper.values()))
    return "\n".join([
        "## Study wall time",
        "",
        f"Machine: {machine()}. `attnsets run` wall time with 1 and 2 worker processes (each worker "
        "gets cores / workers torch threads). The paper slice is seed 0 with each of the 9 poolings "
        "paired with one dataset, spread over the modalities; the full paper time is that slice "
        "scaled by the cell count, a rough estimate since cells differ in cost."
        + (f" {failed} cell(s) failed during the benchmark." if failed else ""),
        "",
        table(["study", "cells", "workers=1", "workers=2", "speed-up", "how"], rows),
    ])
