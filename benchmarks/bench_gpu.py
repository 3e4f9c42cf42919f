"""GPU against CPU on a slice of the paper study: every pooling, a small-bag and a large-bag
gaussian dataset, a 5-member `fit_ensemble` trained once on CUDA and once on the CPU (same
seeds), then

* speed: models per minute (members / training seconds) and explainer cost per bag;
* agreement: max |p_cuda - p_cpu| over test bags, classes and members of the predicted class
  probabilities, and the same for attention weights, against the documented tolerance
  (attnsets.device.CPU_CUDA_PROB_ATOL / CPU_CUDA_SCORE_ATOL); plus the same weights evaluated
  on both devices (kernel differences alone) and one CUDA training repeated (determinism).

Run (under 5 minutes on one H200):  python benchmarks/bench_gpu.py [--out docs/benchmarks_gpu.md]
Smoke test without a GPU:           python benchmarks/bench_gpu.py --device cpu --quick
Exit status: 0 = done and within tolerance; 1 = done, some agreement check failed (the table
says which); 2 = CUDA was asked for and this machine has none.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnsets.data import DatasetSpec, SetDataset, collate, make_dataset  # noqa: E402
from attnsets.data.bags import Batch  # noqa: E402
from attnsets.device import (  # noqa: E402
    CPU_CUDA_PROB_ATOL,
    CPU_CUDA_SCORE_ATOL,
    check_device_string,
    device_of,
    resolve_device,
)
from attnsets.errors import SpecError  # noqa: E402
from attnsets.explain import available_methods, explain  # noqa: E402
from attnsets.models import POOLINGS, ModelSpec, SetModel  # noqa: E402
from attnsets.training import TrainSpec, fit_ensemble  # noqa: E402
from benchmarks.common import machine, table  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks_gpu.md"
MEMBERS = 5

POOL = {"name": "gaussian", "num_concepts": 6, "dim": 16, "separation": 6.0}


@dataclass(frozen=True)
class Case:
    """One dataset of the slice and how much of it the benchmark trains and explains.

    The CPU side sets the size: one epoch of 32 bags of ~1000 instances takes a 5-member
    `transformer_cls` ensemble 313 s on one CPU thread (set_transformer 104 s, attention 2.5 s;
    measured), and leave_one_out there costs ~1000 forward passes of a 1000-instance bag per
    bag, so the large-bag case is small and skips leave_one_out."""

    name: str
    data: dict[str, Any]  # a DatasetSpec.from_dict table
    epochs: int
    batch_size: int
    explain_bags: int
    methods: tuple[str, ...]  # timed where they apply to the pooling


#: The paper's gaussian pool (configs/paper.toml); small bags as in its cells, large bags of
#: ~1000 instances with 1% witnesses (left out of the paper study for CPU cost).
CASES = (
    Case("small bags (~20)",
         {"pool": POOL, "rule": {"name": "presence", "key": 2},
          "bags": {"train": 300, "val": 100, "test": 100},
          "bag_size": {"kind": "normal", "mean": 20, "sd": 4, "min": 5}},
         epochs=5, batch_size=16, explain_bags=8,
         methods=("attention", "gradient", "integrated_gradients", "leave_one_out")),
    Case("large bags (~1000, 1% witnesses)",
         {"pool": POOL, "rule": {"name": "presence", "key": 2},
          "bags": {"train": 16, "val": 8, "test": 8},
          "bag_size": {"kind": "normal", "mean": 1000, "sd": 100, "min": 500},
          "witnesses": {"rate": 0.01}},
         epochs=2, batch_size=8, explain_bags=2,
         methods=("attention", "gradient", "integrated_gradients")),
)
#: --quick: the same cases at tiny sizes, for a smoke test on a CPU.
QUICK = {
    "small bags (~20)": {"bags": {"train": 24, "val": 12, "test": 8}},
    "large bags (~1000, 1% witnesses)": {
        "bags": {"train": 8, "val": 4, "test": 4},
        "bag_size": {"kind": "normal", "mean": 200, "sd": 20, "min": 100}},
}
QUICK_EPOCHS = 2
#: Fixed epochs (no early stopping), so both devices do the same work.
LR = 1e-3
EVAL_BATCH = 16


@dataclass
class Run:
    """One ensemble trained on one device."""

    seconds: float
    members: list[SetModel]
    probs: np.ndarray  # (K, B, C) test-set class probabilities
    attention: np.ndarray | None  # (K, B, N) attention explanations, None if not applicable
    explain_seconds: dict[str, float] = field(default_factory=dict)  # method -> seconds per bag


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall times include it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def split_batches(dataset: SetDataset, device: torch.device) -> list[Batch]:
    """The test split in order, padded to its largest bag, on `device`."""
    split = dataset.test
    width = int(split.sizes.max())
    return [collate([split[i] for i in range(start, min(start + EVAL_BATCH, len(split)))],
                    pad_to=width).to(device)
            for start in range(0, len(split), EVAL_BATCH)]


@torch.no_grad()
def probabilities(model: SetModel, batches: list[Batch]) -> np.ndarray:
    """(B, C) float64 class probabilities of `model` over the batches."""
    return np.concatenate([torch.softmax(model(b.x, b.mask).logits.double(), -1).cpu().numpy()
                           for b in batches])


def attention_of(model: SetModel, batches: list[Batch]) -> np.ndarray | None:
    if "attention" not in available_methods(model, batches[0]):
        return None
    return np.concatenate([explain(model, b, "attention").cpu().numpy() for b in batches])


def explainer_seconds(model: SetModel, batch: Batch, methods: tuple[str, ...]
                      ) -> dict[str, float]:
    """Seconds per bag of each of `methods` that applies, after a one-bag warm-up call
    (first-call costs: kernel loading, cuBLAS handles, Captum set-up)."""
    device = device_of(model)
    applicable = available_methods(model, batch)
    methods = tuple(m for m in methods if m in applicable)
    warm = Batch(*(t[:1] for t in batch.tensors()))
    out = {}
    for method in methods:
        explain(model, warm, method)
        synchronize(device)
        started = time.perf_counter()
        explain(model, batch, method)
        synchronize(device)
        out[method] = (time.perf_counter() - started) / len(batch)
    return out


def train(model_spec: ModelSpec, dataset: SetDataset, spec: TrainSpec, explain_bags: int,
          methods: tuple[str, ...]) -> Run:
    """Train on spec.device (a resolved "cpu" / "cuda:N"), then predict, explain and time."""
    device = torch.device(spec.device)
    synchronize(device)
    started = time.perf_counter()
    members = fit_ensemble(model_spec, dataset, spec, n_members=MEMBERS).ensemble.members()
    synchronize(device)
    seconds = time.perf_counter() - started
    batches = split_batches(dataset, device)
    probs = np.stack([probabilities(m, batches) for m in members])
    attention = [attention_of(m, batches) for m in members]
    explain_batch = collate([dataset.test[i] for i in range(min(explain_bags, len(dataset.test)))]
                            ).to(device)
    return Run(seconds, members, probs,
               None if attention[0] is None else np.stack(attention),  # type: ignore[arg-type]
               explainer_seconds(members[0], explain_batch, methods))


def max_diff(a: np.ndarray | None, b: np.ndarray | None) -> float:
    return float(np.abs(a - b).max()) if a is not None and b is not None else float("nan")


def same_weights_diff(run: Run, dataset: SetDataset, device: torch.device) -> float:
    """Max |p| difference of the CPU-trained members evaluated on `device` vs on the CPU:
    kernel differences alone, without training drift."""
    batches = split_batches(dataset, device)
    moved = [copy.deepcopy(m).to(device) for m in run.members]
    return max_diff(np.stack([probabilities(m, batches) for m in moved]), run.probs)


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


def sci(value: float) -> str:
    return "n/a" if value != value else f"{value:.1e}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda",
                        help='"cuda" / "cuda:N" (compare with the CPU; default) or "cpu" (CPU '
                             "only, no comparison: a smoke test)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 2 epochs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown file to write")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--poolings", nargs="*", default=None, choices=POOLINGS.names(),
                        help="a subset of the poolings (default: all)")
    return parser.parse_args(argv)


def cases(quick: bool) -> list[Case]:
    if not quick:
        return list(CASES)
    return [Case(c.name, {**c.data, **QUICK[c.name]}, epochs=QUICK_EPOCHS,
                 batch_size=c.batch_size, explain_bags=min(c.explain_bags, 2), methods=c.methods)
            for c in CASES]


def train_spec(case: Case, device: torch.device | str) -> TrainSpec:
    return TrainSpec(epochs=case.epochs, batch_size=case.batch_size, lr=LR, patience=None,
                     seed=0, device=str(device))


def warm_up(dataset: SetDataset, pooling: str, device: torch.device) -> None:
    """One short training: the CUDA context, kernels and cuBLAS handles (on the CPU: thread
    pools, lazy imports) are not part of any timing."""
    fit_ensemble(ModelSpec(pooling=pooling), dataset,
                 TrainSpec(epochs=1, patience=None, device=str(device)), n_members=2)


def resolve_gpu(value: str) -> torch.device | None:
    """The CUDA device to compare with the CPU; None for "cpu". SystemExit(2) if CUDA is asked
    for and this machine has none, or for a malformed value."""
    try:
        check_device_string(value, "--device")
    except SpecError as err:
        print(err, file=sys.stderr)
        raise SystemExit(2) from None
    if value == "cpu":
        return None
    if not torch.cuda.is_available():
        print(f"--device {value}: no CUDA device is visible on this machine (torch "
              f"{torch.__version__}); run with --device cpu for a CPU-only smoke test, or "
              "install a CUDA build of torch (docs/gpu.md).", file=sys.stderr)
        raise SystemExit(2)
    return resolve_device(value, "--device")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    gpu = resolve_gpu(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    poolings = args.poolings or POOLINGS.names()
    started = time.perf_counter()
    selected = cases(args.quick)
    datasets = {case.name: make_dataset(DatasetSpec.from_dict({**case.data, "seed": 0}))
                for case in selected}
    first = datasets[selected[0].name]
    for device in (cpu, gpu) if gpu is not None else (cpu,):
        warm_up(first, poolings[0], device)

    train_rows, explain_rows, failures = [], [], []
    determinism = "not run (no GPU)"
    for case in selected:
        dataset = datasets[case.name]
        for pooling in poolings:
            model_spec = ModelSpec(pooling=pooling)
            on_cpu = train(model_spec, dataset, train_spec(case, cpu), case.explain_bags,
                           case.methods)
            cpu_rate = 60 * MEMBERS / on_cpu.seconds
            row = [case.name, f"`{pooling}`", fmt(cpu_rate)]
            on_gpu = None
            if gpu is not None:
                on_gpu = train(model_spec, dataset, train_spec(case, gpu), case.explain_bags,
                               case.methods)
                prob_diff = max_diff(on_gpu.probs, on_cpu.probs)
                attention_diff = max_diff(on_gpu.attention, on_cpu.attention)
                kernel_diff = same_weights_diff(on_cpu, dataset, gpu)
                # NaN attention difference = the pooling has no attention: nothing to compare.
                ok = prob_diff <= CPU_CUDA_PROB_ATOL and not attention_diff > CPU_CUDA_SCORE_ATOL
                if not ok:
                    failures.append(f"{case.name} / {pooling}")
                gpu_rate = 60 * MEMBERS / on_gpu.seconds
                row += [fmt(gpu_rate), fmt(gpu_rate / cpu_rate), sci(kernel_diff),
                        sci(prob_diff), sci(attention_diff), "yes" if ok else "**no**"]
                if case is selected[0] and pooling == poolings[0]:
                    again = train(model_spec, dataset, train_spec(case, gpu), 1, ())
                    repeat = max_diff(again.probs, on_gpu.probs)
                    determinism = (f"the first row's CUDA training, repeated, gives max |Δp| "
                                   f"{repeat:.1e} ("
                                   f"{'bitwise identical' if repeat == 0 else 'not identical'})")
            train_rows.append(row)
            for method, cpu_seconds in on_cpu.explain_seconds.items():
                explain_row = [case.name, f"`{pooling}`", method, fmt(1e3 * cpu_seconds, 2)]
                if on_gpu is not None:
                    gpu_seconds = on_gpu.explain_seconds[method]
                    explain_row += [fmt(1e3 * gpu_seconds, 2), fmt(cpu_seconds / gpu_seconds)]
                explain_rows.append(explain_row)
            print(f"{time.perf_counter() - started:7.1f}s  {' | '.join(row)}", flush=True)

    markdown = report(args, gpu, selected, train_rows, explain_rows, failures, determinism,
                      time.perf_counter() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown)
    print(markdown)
    print(f"written to {args.out}")
    return 1 if failures else 0


def report(args: argparse.Namespace, gpu: torch.device | None, selected: list[Case],
           train_rows: list[list[str]], explain_rows: list[list[str]], failures: list[str],
           determinism: str, seconds: float) -> str:
    gpu_name = torch.cuda.get_device_name(gpu) if gpu is not None else "none"
    train_header = ["dataset", "pooling", "models/min CPU"]
    explain_header = ["dataset", "pooling", "method", "ms/bag CPU"]
    if gpu is not None:
        train_header += ["models/min GPU", "speed-up", "same weights max |Δp|",
                         "trained max |Δp|", "trained max |Δattention|", "within tolerance"]
        explain_header += ["ms/bag GPU", "speed-up"]
    if gpu is None:
        verdict = "CPU only (--device cpu): no comparison"
    elif failures:
        verdict = f"OUTSIDE the tolerance: {', '.join(failures)}"
    else:
        verdict = "every row within the tolerance"
    settings = "\n".join(
        f"- {c.name}: {c.data['bags']['train']} training bags, {c.epochs} epochs, batch size "
        f"{c.batch_size}; {c.explain_bags} test bags explained" for c in selected)
    quick = "\n**Smoke-test sizes (--quick): these numbers say nothing about speed.**\n" \
        if args.quick else ""
    return f"""## GPU vs CPU

`python benchmarks/bench_gpu.py{' --quick' if args.quick else ''} --device {args.device}` on
{machine()}; GPU: {gpu_name}; {seconds:.0f} s in all.
{quick}
Each row trains a {MEMBERS}-member `fit_ensemble` (default `mlp` encoder, lr {LR:g}, no early
stopping, seeds 0..{MEMBERS - 1}) once per device from the same CPU-initialised weights:

{settings}

Models/min = {MEMBERS} members / training seconds x 60. Agreement, max over test
bags, classes and members: "same weights" evaluates the CPU-trained members on the GPU (kernel
differences alone); "trained" compares the members trained on each device (training drift
included). Tolerance (docs/gpu.md): |Δp| <= {CPU_CUDA_PROB_ATOL:g}, |Δattention| <=
{CPU_CUDA_SCORE_ATOL:g}. Determinism: {determinism}. Verdict: {verdict}.

{table(train_header, train_rows)}

Explainer cost per bag: member 0 explaining the first test bags in one batch (after a one-bag
warm-up call), for the methods of each case that apply to the pooling.

{table(explain_header, explain_rows)}
"""


if __name__ == "__main__":
    sys.exit(main())
