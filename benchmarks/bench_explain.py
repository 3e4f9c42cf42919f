"""Explainer cost: time per bag of every registered explainer, relative to one plain forward
pass over the same padded batch."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from attnsets.data.bags import Batch
from attnsets.explain import EXPLAINERS, available_methods, deletion_curves, explain
from attnsets.models import InputInfo, ModelSpec, SetModel, build_model
from benchmarks.common import gaussian_batch, machine, table

#: One thread, as in the training benchmark: the 2 cores are shared with other jobs.
THREADS = 1
BAGS = 64
BAG_SIZES = (20, 100)
MODELS = {
    "attention": ModelSpec(pooling="attention", encoder="mlp"),
    "transformer_cls": ModelSpec(pooling="transformer_cls", encoder="mlp"),
}
DIM = 16
DELETION = "deletion_curves"
DELETION_STEPS = 10
DELETION_ORDERS = 10
#: Repeat a measurement while it is this fast (seconds), keeping the best time.
REPEAT_BELOW = 0.25
MAX_REPEATS = 5
#: Bags of the warm-up call; slow methods are timed on SLOW_BAGS bags (see method_time).
WARM_BAGS = 2
SLOW_SECONDS = 10.0
SLOW_BAGS = 4


def make_batch(size: int) -> Batch:
    """BAGS gaussian presence bags of exactly `size` instances (d = DIM), 5% witnesses."""
    return gaussian_batch(size, BAGS, DIM)  # type: ignore[no-any-return]


def best_time(fn: Callable[[], Any]) -> float:
    """Best wall time of fn() in seconds; fast calls are repeated, slow ones run once (after a
    warm-up call on the caller's side)."""
    best = float("inf")
    for _ in range(MAX_REPEATS):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
        if best > REPEAT_BELOW:
            break
    return best


def forward_time(model: SetModel, batch: Batch) -> float:
    def forward() -> None:
        with torch.no_grad():
            model(batch.x, batch.mask)

    forward()
    return best_time(forward)


def sub_batch(batch: Batch, n_bags: int) -> Batch:
    return Batch(*(t[:n_bags] for t in (batch.x, batch.mask, batch.labels, batch.evidence,
                                         batch.concepts, batch.target)))


def method_time(model: SetModel, batch: Batch, method: str) -> tuple[float, int]:
    """(seconds per bag, bags timed). Warmed up on WARM_BAGS bags first (lazy
    initialisations); a method whose warm-up projects to more than SLOW_SECONDS for the whole
    batch is timed on SLOW_BAGS bags only (its cost is linear in the number of bags)."""

    def runner(part: Batch) -> Callable[[], Any]:
        if method == DELETION:
            def run_deletion() -> None:
                scores = explain(model, part, "attention")
                deletion_curves(model, part, scores, steps=DELETION_STEPS,
                                n_orders=DELETION_ORDERS)
            return run_deletion
        return lambda: explain(model, part, method)

    started = time.perf_counter()
    runner(sub_batch(batch, WARM_BAGS))()
    projected = (time.perf_counter() - started) * len(batch) / WARM_BAGS
    part = batch if projected <= SLOW_SECONDS else sub_batch(batch, SLOW_BAGS)
    return best_time(runner(part)) / len(part), len(part)


def run() -> str:
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    methods = EXPLAINERS.names()
    cells: dict[str, list[str]] = {name: [] for name in [*methods, DELETION]}
    forward_cells: list[str] = []
    columns: list[str] = []
    try:
        batches = {size: make_batch(size) for size in BAG_SIZES}
        for model_name, model_spec in MODELS.items():
            info = InputInfo("vector", (DIM,), 2)
            model = build_model(model_spec, info, seed=0).eval()
            for size, batch in batches.items():
                columns.append(f"{model_name}, N = {size}")
                forward = forward_time(model, batch)
                forward_cells.append(f"{1e3 * forward / BAGS:.3f} ms (1x)")
                usable = set(available_methods(model, batch)) | {DELETION}
                for name in cells:
                    if name not in usable:
                        cells[name].append("n/a")
                        continue
                    seconds, timed = method_time(model, batch, name)
                    mark = "" if timed == len(batch) else " †"
                    cells[name].append(f"{1e3 * seconds:.3f} ms "
                                       f"({seconds * BAGS / forward:,.0f}x){mark}")
    finally:
        torch.set_num_threads(threads)
    rows = [["plain forward pass (no grad)", *forward_cells]]
    rows += [[f"`{name}`", *values] for name, values in cells.items()]
    rows[-1][0] = (f"`deletion_curves` on attention (AOPC: ranked + {DELETION_ORDERS} random "
                   f"orders, {DELETION_STEPS} steps)")
    return "\n".join([
        "## Explainer cost",
        "",
        f"Machine: {machine().replace(f'({threads} threads)', f'({THREADS} thread)')}; one "
        "thread because the 2 cores are shared with other jobs while this runs. Randomly "
        "initialised models (seed 0; the cost does not depend on the weights) with the `mlp` "
        f"encoder and embed_dim 64 (transformer_cls: 4 heads, 2 layers) on gaussian bags "
        f"(d = {DIM}), one padded batch of B = {BAGS} bags of exactly N instances each.",
        "",
        "Each cell: wall time per bag of `explain(model, batch, method)` with default options, "
        "and in brackets its ratio to the per-bag time of one plain no-grad forward pass over "
        "the same batch; ratios are measured side by side in one run. Every call is warmed up "
        f"on {WARM_BAGS} bags first; calls under {REPEAT_BELOW} s are repeated (best of up to "
        f"{MAX_REPEATS}). †: the whole batch would take over {SLOW_SECONDS:.0f} s, so the "
        f"method was timed on the first {SLOW_BAGS} bags (its cost is linear in the number of "
        "bags). Defaults that set the cost: `integrated_gradients` 50 steps; `shapley` 25 "
        "permutations, i.e. 25 x (N + 1) sub-bags per bag; `leave_one_out` and `single` one "
        "sub-bag per instance. Perturbation methods encode once and re-run only the pooling "
        "head on masks of the full padded width, so their ratios can be read against the "
        "number of head evaluations per bag: N + 1 (`leave_one_out`), N (`single`), "
        "25 (N + 1) (`shapley`), 11 x 11 (`deletion_curves`: 11 removal steps for the ranked "
        "order and each of 10 random orders). n/a: the method does not apply to that pooling.",
        "",
        table(["method", *columns], rows),
    ])
