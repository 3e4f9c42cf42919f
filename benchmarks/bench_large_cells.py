"""What one cell of configs/paper-large.toml costs: per (dataset, pooling), the seconds of one
training epoch of the 5-member ensemble and of the whole assessment (with the config's budgets),
on 1 torch thread. A cell's cost is then about epochs_run x epoch + assessment; the study's
wall time with W workers about the sum over its cells / W.

    python benchmarks/bench_large_cells.py [--cells gaussian-presence-1000:transformer_cls ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from attnsets.data import make_dataset
from attnsets.run import execute, train_members
from attnsets.study.config import load_study

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CELLS = ("gaussian-presence-200:transformer_cls", "gaussian-presence-1000:attention",
                 "gaussian-presence-1000:transformer_cls", "gaussian-presence-1000:set_transformer",
                 "sequences-presence-1000:attention")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cells", nargs="*", default=list(DEFAULT_CELLS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cells = {(c.dataset_name, c.model_name): c for c in load_study(
        ROOT / "configs" / "paper-large.toml").cells if c.replicate == 0}
    rows = []
    for key in args.cells:
        dataset_name, model = key.split(":")
        run = cells[dataset_name, model].run_spec
        started = time.perf_counter()
        data = make_dataset(run.dataset)
        generate = time.perf_counter() - started
        one_epoch = dataclasses.replace(run.training, epochs=1, patience=None)
        started = time.perf_counter()
        _, summary = train_members(run.model, data, one_epoch, run.seeds)
        epoch = time.perf_counter() - started
        started = time.perf_counter()
        execute(dataclasses.replace(run, training=dataclasses.replace(one_epoch)), data)
        assessment = time.perf_counter() - started - epoch  # execute trains one epoch again
        rows.append((dataset_name, model, generate, epoch, assessment))
        print(f"| {dataset_name} | {model} | {generate:.1f} | {epoch:.1f} | {assessment:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
