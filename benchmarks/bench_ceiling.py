"""Training ceiling: how fast could any trainer of the same architecture be on this machine?

For each training-throughput case, count the floating-point operations of one forward + backward
pass over a bag (torch's FlopCounterMode), time the reference recipe's per-bag step, and time a
large single-thread matrix product (the practical peak of this CPU). A trainer that ran every
epoch at that peak would spend flops / peak per bag and epoch; dividing the reference's time by
that gives the largest speed-up any implementation of the same model and epoch count can reach."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch.nn import functional
from torch.utils.flop_counter import FlopCounterMode

from attnsets.data import DatasetSpec, make_dataset
from attnsets.models import InputInfo, build_model
from benchmarks.bench_training import CASES, ISSUE_TARGET, N_MEMBERS, REFERENCE_EPOCHS, THREADS
from benchmarks.common import machine, table

#: Bags timed per case (after a warm-up over the same number).
TIMED_STEPS = 150
PEAK_SIZE = 1024


def matmul_peak(size: int = PEAK_SIZE, repeats: int = 20) -> float:
    """Best single-call GFLOP/s of a (size x size) @ (size x size) float32 product."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def reference_steps(case) -> tuple[float, float, float]:  # type: ignore[no-untyped-def]
    """(median seconds per reference bag step, mean flops per step, mean bag size) over
    TIMED_STEPS training bags of the case."""
    dataset = make_dataset(DatasetSpec.from_dict({**case.data, "seed": 0}))
    model = build_model(case.model, InputInfo.from_dataset(dataset), seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-4)
    bags = [(torch.from_numpy(np.ascontiguousarray(bag.instances))[None],
             torch.ones((1, len(bag)), dtype=torch.bool), torch.tensor([bag.label]))
            for bag in list(dataset.train)[:TIMED_STEPS]]
    model.train()

    def step(x: torch.Tensor, mask: torch.Tensor, label: torch.Tensor) -> None:
        loss = functional.cross_entropy(model(x, mask).logits, label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for bag in bags:  # warm-up
        step(*bag)
    times = []
    for bag in bags:
        start = time.perf_counter()
        step(*bag)
        times.append(time.perf_counter() - start)
    flops = []
    for x, mask, label in bags[:20]:
        counter = FlopCounterMode(display=False)
        with counter:
            functional.cross_entropy(model(x, mask).logits, label).backward()
        flops.append(counter.get_total_flops())
    sizes = [x.shape[1] for x, _, _ in bags]
    return float(np.median(times)), float(np.mean(flops)), float(np.mean(sizes))


def run() -> str:
    torch.set_num_threads(THREADS)
    peak = matmul_peak()
    rows = []
    notes = []
    for case in CASES:
        step_seconds, flops, mean_size = reference_steps(case)
        achieved = flops / step_seconds / 1e9
        at_peak = flops / (peak * 1e9)  # seconds per bag and epoch at the matmul peak
        ours_epochs = case.ours.epochs
        ceiling = (step_seconds * REFERENCE_EPOCHS) / (at_peak * ours_epochs)
        epochs_for_target = (step_seconds * REFERENCE_EPOCHS) / (at_peak * ISSUE_TARGET)
        rows.append([case.name, f"{mean_size:,.0f}", f"{flops / 1e6:,.2f}",
                     f"{step_seconds * 1e3:.2f} ms", f"{achieved:.1f}",
                     f"{100 * achieved / peak:.0f}%", f"{at_peak * 1e3:.3f} ms",
                     f"**{ceiling:,.0f}x**", f"{step_seconds / at_peak:,.0f}x",
                     f"{epochs_for_target:.2f}"])
        verdict = "reachable" if ceiling >= ISSUE_TARGET else "**out of reach**"
        notes.append(f"- {case.name}: the reference runs at {100 * achieved / peak:.0f}% "
                     f"of the matmul peak; with our {ours_epochs} epochs no implementation of "
                     f"this architecture can be faster than {ceiling:,.0f}x the reference per "
                     f"model, so the {ISSUE_TARGET:.0f}x target is {verdict} at this epoch "
                     f"count (it would need at most {epochs_for_target:.2f} epochs at peak). "
                     f"Read as 'the reference runs our epoch count', the ceiling is "
                     f"{step_seconds / at_peak:,.0f}x.")
    return "\n".join([
        "## Training ceiling",
        "",
        f"Machine: {machine()}. Why the 50x target of the training-throughput benchmark is or "
        "is not reachable: floating-point operations of one forward + backward pass over a bag "
        "(torch `FlopCounterMode`, mean over 20 training bags), the reference recipe's median "
        f"step time over {TIMED_STEPS} bags (after a warm-up), and the best single-thread "
        f"float32 matrix product of size {PEAK_SIZE} measured in the same run: "
        f"**{peak:.1f} GFLOP/s**. Ceiling = reference time per model ({REFERENCE_EPOCHS} epochs) "
        "/ time per model of a trainer running our epoch count at that peak; the ensemble "
        f"({N_MEMBERS} members) cannot beat it either, since its members do the same work.",
        "",
        table(["case", "mean bag size", "MFLOP per bag step", "reference step",
               "reference GFLOP/s", "of peak", "bag-epoch at peak", "ceiling (our epochs)",
               "ceiling (equal epochs)", "epochs for 50x at peak"], rows),
        "",
        *notes,
    ])
