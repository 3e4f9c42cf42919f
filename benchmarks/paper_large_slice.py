"""The slice of configs/paper-large.toml that fits a 2-core session: replicates 0 and 1, the ~200-instance
dataset with every pooling and the ~1,000-instance gaussian dataset with the poolings that have no
self-attention (a self-attention cell at N = 1,000 is about an hour, docs/benchmarks.md), then
its results page.

    python benchmarks/paper_large_slice.py [--out results/paper-large] [--workers 2]

Resumable like `attnsets run --resume`; the cells are the config's own (same ids), so a later
full run of configs/paper-large.toml into the same folder skips them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from attnsets.report.results_page import write_results_page
from attnsets.study.config import Cell, load_study
from attnsets.study.runner import run_study

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "paper-large.toml"
SELF_ATTENTION = {"multihead_attention", "set_transformer", "transformer_cls"}
REPLICATES = (0, 1)


def in_slice(cell: Cell) -> bool:
    if cell.replicate not in REPLICATES:
        return False
    return cell.dataset_name == "gaussian-presence-200" or (
        cell.dataset_name == "gaussian-presence-1000" and cell.model_name not in SELF_ATTENTION)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/paper-large")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--page", default="docs/results-large.md")
    args = parser.parse_args()
    summary = run_study(load_study(CONFIG), args.out, workers=args.workers, resume=True,
                        only=in_slice)
    print(summary)
    write_results_page(args.out, args.page, command="python benchmarks/paper_large_slice.py",
                       progress=lambda step: print(f"results page: {step}", flush=True))


if __name__ == "__main__":  # spawned workers import this file: run only in the parent
    main()
