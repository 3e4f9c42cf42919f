"""How many epochs run after the best one, and what a smaller patience would cost in learned
members. Every member of a study's cells (replicate 0) is trained once for all its epochs
(patience None) with validation every epoch; a run with patience p would have stopped at the
first epoch p epochs past its best so far and kept that best state, so every p is read from the
same trajectory. A member has learned when its kept state reaches >= 0.9 balanced accuracy on
the test split (the study's min_bag_score).

python benchmarks/bench_patience.py CONFIG [--datasets NAME ...] [--models NAME ...]
[--members K]"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnsets.data import make_dataset  # noqa: E402
from attnsets.models import build_model  # noqa: E402
from attnsets.study.config import load_study, study_cells  # noqa: E402
from attnsets.training import fit  # noqa: E402
from attnsets.training.fit import EpochStats, eval_chunks, input_info  # noqa: E402

LEARNED = 0.9
PATIENCES = (3, 4, 5, 6, 8, 10, 12)


def balanced_accuracy(model: torch.nn.Module, chunks: list[Any]) -> float:
    predictions, labels = [], []
    with torch.no_grad():
        for x, mask, y in chunks:
            predictions.append(model(x, mask).logits.argmax(-1).numpy())
            labels.append(y.numpy())
    predicted, truth = np.concatenate(predictions), np.concatenate(labels)
    return float(np.mean([np.mean(predicted[truth == c] == c) for c in np.unique(truth)]))


def trajectory(cell: Any, seed: int) -> dict[str, Any]:
    """Validation loss and test balanced accuracy after every epoch of one member."""
    run = cell.run_spec
    dataset = make_dataset(run.dataset)
    model = build_model(run.model, input_info(dataset), seed=seed)
    test = eval_chunks(dataset.test, 256)
    accuracy: list[float] = []

    def after_epoch(stats: EpochStats) -> None:
        model.eval()  # fit trains `model` in place: these are the weights after this epoch
        accuracy.append(balanced_accuracy(model, test))
        model.train()

    spec = dataclasses.replace(run.training, patience=None, seed=seed, device="cpu")
    history = fit(model, dataset, spec, progress=after_epoch).history
    return {"dataset": cell.dataset_name, "model": cell.model_name, "seed": seed,
            "val_loss": history.val_loss, "test_balanced_accuracy": accuracy,
            "epoch_seconds": history.epoch_seconds}


def with_patience(val_loss: list[float], patience: int | None) -> tuple[int, int]:
    """(best epoch kept, epochs run) of a run with this patience on this trajectory."""
    best, best_epoch = float("inf"), -1
    for epoch, loss in enumerate(val_loss):
        if loss < best:
            best, best_epoch = loss, epoch
        elif patience is not None and epoch - best_epoch >= patience:
            return best_epoch, epoch + 1
    return best_epoch, len(val_loss)


def summary(runs: list[dict[str, Any]], configured: int | None) -> list[dict[str, Any]]:
    rows = []
    for patience in sorted({*PATIENCES, configured} - {None}) + [None]:
        run_epochs, after_best, learned = 0, 0, 0
        for run in runs:
            best, ran = with_patience(run["val_loss"], patience)
            run_epochs += ran
            after_best += ran - 1 - best
            learned += run["test_balanced_accuracy"][best] >= LEARNED
        rows.append({"patience": patience, "configured": patience == configured,
                     "epochs": run_epochs, "after_best_share": after_best / run_epochs,
                     "learned": learned, "members": len(runs)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config")
    parser.add_argument("--datasets", nargs="*")
    parser.add_argument("--models", nargs="*")
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--out", help="write the trajectories here (JSON)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_study(args.config, device="cpu")
    cells = [c for c in study_cells(config) if c.replicate == config.file.study.seeds[0]
             and (not args.datasets or c.dataset_name in args.datasets)
             and (not args.models or c.model_name in args.models)]
    runs = []
    for cell in cells:
        for seed in cell.seeds[:args.members]:
            runs.append(trajectory(cell, seed))
            best, ran = with_patience(runs[-1]["val_loss"], cell.run_spec.training.patience)
            print(cell.dataset_name, cell.model_name, seed, "best", best, "ran", ran,
                  "acc", round(runs[-1]["test_balanced_accuracy"][best], 3), flush=True)
            if args.out:  # after every member, so a long run can be read while it goes on
                Path(args.out).write_text(json.dumps(runs))
    configured = cells[0].run_spec.training.patience if cells else None
    for row in summary(runs, configured):
        print(row)


if __name__ == "__main__":
    main()
