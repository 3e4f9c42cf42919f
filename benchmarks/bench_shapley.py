"""Shapley accuracy at a sampling budget: rank correlation of sampled with exact Shapley values on
trained models, for permutation and shared-coalition sampling; picks DEFAULT_SAMPLES.

Bags hold 11-14 instances: small enough to enumerate exactly (2^14 sub-bags), with sampling
forced, so that the budget is judged where the truth is known. Run: python
benchmarks/bench_shapley.py (writes its section of docs/benchmarks.md).
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
BUDGETS = (10, 25, 50, 100, 200, 400)
#: Exact values closer than this count as near ties: a 0.01% change of p_target, which no
#: affordable sample size resolves.
NEAR_TIE = 1e-4
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


def merged_ties(values: np.ndarray, gap: float) -> np.ndarray:
    """Tie groups of `values`: sorted values closer than `gap` to their neighbour share a group
    (single linkage); returns each value's group index, increasing with the values."""
    order = np.argsort(values, kind="stable")
    groups = np.concatenate([[0], np.cumsum(np.diff(values[order]) >= gap)])
    out = np.empty(len(values), dtype=np.int64)
    out[order] = groups
    return out


def correlations(sampled: torch.Tensor, exact: torch.Tensor, mask: torch.Tensor
                 ) -> tuple[float, float, float]:
    """Means over bags of (Spearman, Spearman with near ties merged, Pearson) of sampled against
    exact values over a bag's real instances. Merged: exact values closer than NEAR_TIE form tie
    groups, and both sampled and exact values are replaced by their group means. Bags whose
    exact values are all equal (or all one tie group) are skipped."""
    spearman, merged, pearson = [], [], []
    for b in range(len(mask)):
        s, e = sampled[b, mask[b]].numpy(), exact[b, mask[b]].numpy()
        if np.ptp(e) == 0:
            continue
        spearman.append(stats.spearmanr(s, e).statistic)
        pearson.append(stats.pearsonr(s, e).statistic)
        groups = merged_ties(e, NEAR_TIE)
        if groups.max() > 0:
            # both sides averaged within each exact tie group: the order inside a group of
            # indistinguishable values is not scored, the order of the groups is
            counts = np.bincount(groups)
            s_mean = np.bincount(groups, weights=s) / counts
            e_mean = np.bincount(groups, weights=e) / counts
            merged.append(stats.spearmanr(s_mean[groups], e_mean[groups]).statistic)
    return float(np.mean(spearman)), float(np.mean(merged)), float(np.mean(pearson))


def near_ties(exact: torch.Tensor, mask: torch.Tensor, gap: float = NEAR_TIE) -> float:
    """Share of within-bag instance pairs whose exact values differ by less than `gap`."""
    close, pairs = 0, 0
    for b in range(len(mask)):
        e = exact[b, mask[b]]
        differences = (e[:, None] - e[None, :]).abs()
        upper = torch.triu(torch.ones_like(differences, dtype=torch.bool), diagonal=1)
        close += int((differences[upper] < gap).sum())
        pairs += int(upper.sum())
    return close / max(pairs, 1)


#: (label, sampler, antithetic, budget); the coalition rows are the candidates for the default.
CONFIGS = [("permutation, plain, 25 (previous default)", "permutation", False, 25),
           ("permutation, antithetic, 100", "permutation", True, 100),
           *((f"coalition, antithetic, {b}", "coalition", True, b) for b in BUDGETS)]
Worst = dict[str, tuple[float, float, float]]


def measure() -> tuple[list[list[str]], Worst]:
    """Table rows (one per dataset x model) and the worst cell per configuration."""
    rows: list[list[str]] = []
    worst: Worst = {}
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
            cells = [data_name, model_name, f"{accuracy:.2f}",
                     f"{near_ties(exact, batch.mask):.0%}"]
            for label, sampler, antithetic, budget in CONFIGS:
                results = np.array([correlations(
                    explain(model, batch, "shapley", n_samples=budget, seed=seed,
                            antithetic=antithetic, sampler=sampler), exact, batch.mask)
                    for seed in SEEDS]).mean(axis=0)
                previous = worst.get(label, (1.0, 1.0, 1.0))
                worst[label] = tuple(min(a, b) for a, b in zip(previous, results, strict=True))
                cells.append(" / ".join(f"{value:.2f}" for value in results))
            rows.append(cells)
            print(f"{data_name} x {model_name}: {time.perf_counter() - started:.0f} s", cells,
                  flush=True)
    return rows, worst


def run() -> str:
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        rows, worst = measure()
    finally:
        torch.set_num_threads(threads)
    candidates = [(budget, worst[label]) for label, sampler, _, budget in CONFIGS
                  if sampler == "coalition"]
    plain = [budget for budget, (spearman, _, _) in candidates if spearman >= TARGET]
    merged = [budget for budget, (_, spearman, _) in candidates if spearman >= TARGET]
    if plain:
        choice = (f"{plain[0]} coalitions, the smallest budget whose worst cell reaches a "
                  f"Spearman >= {TARGET}")
    else:
        choice = (f"no budget reaches a plain Spearman >= {TARGET} in every cell; "
                  + (f"{merged[0]} coalitions is the smallest whose worst cell reaches "
                     f"Spearman >= {TARGET} once exact values closer than {NEAR_TIE:g} count "
                     "as ties" if merged else "nor with near ties merged"))
    header = ["dataset", "model", "test acc", f"near ties (< {NEAR_TIE:g})",
              *(label for label, *_ in CONFIGS)]
    worst_row = ["worst cell", "", "", "",
                 *(" / ".join(f"{v:.2f}" for v in worst[label]) for label, *_ in CONFIGS)]
    return "\n".join([
        "## Shapley sampling accuracy",
        "",
        f"Machine: {machine().replace(f'({threads} threads)', f'({THREADS} thread)')}. "
        f"Models trained with `fit` ({TRAINING.epochs} epochs, patience {TRAINING.patience}, "
        "embed_dim 32; mlp encoder on gaussian, cnn on digits) on 300 training bags; "
        f"{TEST_BAGS} test bags of 11-14 instances, where exact values (2^n sub-bags) are "
        "feasible, but sampling is forced (explicit `n_samples`). Every sample (a permutation "
        "or a coalition) costs n + 1 sub-bags. Each cell: Spearman / Spearman with near ties "
        "merged / Pearson correlation of sampled with exact Shapley values (probability "
        "output) over a bag's instances, mean over bags (bags whose exact values are all equal "
        f"are skipped) and over {len(SEEDS)} sampling seeds. Near ties: share of within-bag "
        f"instance pairs whose exact values differ by less than {NEAR_TIE:g}. 'Merged': exact "
        f"values closer than {NEAR_TIE:g} (single linkage) form tie groups, and sampled and "
        "exact values are both replaced by their group means, so the order inside a group of "
        "values no affordable sample size can separate is not scored; the order of the groups "
        "is.",
        "",
        table(header, [*rows, worst_row]),
        "",
        f"Default (`DEFAULT_SAMPLES`): {choice}.",
    ])


if __name__ == "__main__":
    section = run()
    write_section("shapley", section)
    print(section)
