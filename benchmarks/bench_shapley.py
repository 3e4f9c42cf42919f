"""Shapley accuracy at a sampling budget: rank correlation of sampled with exact Shapley values on
trained models, plain vs antithetic (paired) permutations; picks DEFAULT_PERMUTATIONS.

Bags hold 11-14 instances: larger than AUTO_EXACT_INSTANCES, so the default would sample them,
yet small enough to enumerate exactly (2^14 sub-bags). Run: python benchmarks/bench_shapley.py
(writes its section of docs/benchmarks.md).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnsets.data import DatasetSpec, collate, make_dataset  # noqa: E402
from attnsets.explain import explain  # noqa: E402
from attnsets.models import ModelSpec  # noqa: E402
from attnsets.training import TrainSpec, fit  # noqa: E402
from benchmarks.common import machine, table, write_section  # noqa: E402

THREADS = 1
TARGET = 0.95
BUDGETS = (25, 50, 100, 200, 400)
SEEDS = (0, 1)
TEST_BAGS = 40
SIZE = {"kind": "uniform", "low": 11, "high": 14}
DATASETS: dict[str, dict[str, Any]] = {
    "gaussian-threshold": {
        "pool": {"name": "gaussian", "num_concepts": 6, "dim": 16, "separation": 6.0},
        "rule": {"name": "threshold", "key": 2, "k": 3}, "witnesses": {"count": [2, 5]}},
    "digits-presence": {"pool": {"name": "digits"}, "rule": {"name": "presence", "key": 9}},
}
MODELS = {
    "attention": ModelSpec(pooling="attention", embed_dim=32,
                           per_encoder={"cnn": {"channels": [8, 16], "kernel_size": 3}}),
    "gated_attention": ModelSpec(pooling="gated_attention", embed_dim=32,
                                 per_encoder={"cnn": {"channels": [8, 16], "kernel_size": 3}}),
    "transformer_cls": ModelSpec(pooling="transformer_cls", embed_dim=32,
                                 per_encoder={"cnn": {"channels": [8, 16], "kernel_size": 3}}),
}
TRAINING = TrainSpec(epochs=20, batch_size=16, lr=0.002, patience=6)


def dataset(name: str) -> Any:
    spec = DatasetSpec.from_dict({**DATASETS[name], "bag_size": SIZE,
                                  "bags": {"train": 300, "val": 100, "test": TEST_BAGS}})
    return make_dataset(spec)


def mean_correlations(sampled: torch.Tensor, exact: torch.Tensor, mask: torch.Tensor
                      ) -> tuple[float, float]:
    """(mean per-bag Spearman, mean per-bag Pearson) over the real instances of each bag;
    bags whose exact values are all equal are skipped (no ranking to recover)."""
    spearman, pearson = [], []
    for b in range(len(mask)):
        s, e = sampled[b, mask[b]].numpy(), exact[b, mask[b]].numpy()
        if np.ptp(e) == 0:
            continue
        spearman.append(stats.spearmanr(s, e).statistic)
        pearson.append(stats.pearsonr(s, e).statistic)
    return float(np.mean(spearman)), float(np.mean(pearson))


Worst = dict[tuple[int, bool], tuple[float, float]]


def measure() -> tuple[list[list[str]], Worst, list[str]]:
    """Table rows, the worst (Spearman, Pearson) over cells per (budget, antithetic), timings."""
    rows: list[list[str]] = []
    worst: Worst = {}
    notes: list[str] = []
    for data_name in DATASETS:
        data = dataset(data_name)
        batch = collate(list(data.test))
        for model_name, model_spec in MODELS.items():
            started = time.perf_counter()
            model = fit(model_spec, data, TRAINING).model.eval()
            with torch.no_grad():
                accuracy = float((model(batch.x, batch.mask).logits.argmax(-1)
                                  == batch.target).float().mean())
            exact = explain(model, batch, "shapley", exact=True)
            cells = [data_name, model_name, f"{accuracy:.2f}"]
            for antithetic in (False, True):
                for budget in BUDGETS:
                    results = [mean_correlations(explain(model, batch, "shapley",
                                                         n_samples=budget, seed=seed,
                                                         antithetic=antithetic),
                                                 exact, batch.mask) for seed in SEEDS]
                    spearman = float(np.mean([r[0] for r in results]))
                    pearson = float(np.mean([r[1] for r in results]))
                    key = (budget, antithetic)
                    previous = worst.get(key, (1.0, 1.0))
                    worst[key] = (min(previous[0], spearman), min(previous[1], pearson))
                    if antithetic or budget == 25:
                        cells.append(f"{spearman:.2f} / {pearson:.2f}")
            rows.append(cells)
            notes.append(f"{data_name} x {model_name}: {time.perf_counter() - started:.0f} s")
            print(notes[-1], cells, flush=True)
    return rows, worst, notes


def run() -> str:
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        rows, worst, _ = measure()
    finally:
        torch.set_num_threads(threads)
    passing = [budget for budget in BUDGETS if worst[(budget, True)][0] >= TARGET]
    chosen = passing[0] if passing else None

    def pair(key: tuple[int, bool]) -> str:
        return f"{worst[key][0]:.2f} / {worst[key][1]:.2f}"

    header = ["dataset", "model", "test acc", "plain, 25",
              *(f"antithetic, {b}" for b in BUDGETS)]
    worst_row = ["worst cell", "", "", pair((25, False)), *(pair((b, True)) for b in BUDGETS)]
    plain_row = ["worst cell, plain permutations", "", "", "",
                 *(pair((b, False)) for b in BUDGETS)]
    return "\n".join([
        "## Shapley sampling accuracy",
        "",
        f"Machine: {machine().replace(f'({threads} threads)', f'({THREADS} thread)')}. "
        f"Models trained with `fit` ({TRAINING.epochs} epochs, patience {TRAINING.patience}, "
        "embed_dim 32; mlp encoder on gaussian, cnn on digits) on 300 training bags; "
        f"{TEST_BAGS} test bags of 11-14 instances, where exact values (2^n sub-bags) are "
        "feasible, but sampling is forced (`exact=False` via an explicit `n_samples`). Each cell: "
        "Spearman / Pearson correlation of sampled with exact Shapley values over a bag's "
        "instances, by budget (permutations; each costs n + 1 sub-bags) "
        f"(probability output), mean over bags and over {len(SEEDS)} sampling seeds. Bags whose "
        "exact values are all equal are skipped.",
        "",
        table(header, [*rows, worst_row, plain_row]),
        "",
        f"Chosen default (`DEFAULT_PERMUTATIONS`): {chosen} antithetic permutations, the "
        f"smallest budget whose worst cell reaches Spearman >= {TARGET}"
        + ("" if chosen is not None else " (none did)") + ".",
    ])


if __name__ == "__main__":
    section = run()
    write_section("shapley", section)
    print(section)
