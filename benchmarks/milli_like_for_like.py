"""MILLI like for like: FOUR-MNIST-BAGS as MILLI builds it, MI-Attn, MILLI's metrics.

Reads the dataset, model and training tables of a study config (configs/milli.toml, or
configs/milli-linear-head.toml until ModelSpec.head is merged), and per repeat r (replicate seed
r: data and model): trains one MI-Attn, measures its test accuracy, explains every test bag of
more than 2 instances for all 4 classes with attention, single, leave_one_out, shapley and milli,
and scores them as MILLI does:

* NDCG@n: gains +1 / 0 / -1 from the class-specific signed evidence, n = the number of +1
  instances of that class (`ndcg_at_k(..., gains="signed", bags="milli")`), mean over all
  (bag, class) pairs;
* AOPC-R: AOPC of p_class when removing instances in attribution order (every removal count
  up to n - 1), minus the same for 10 random orders, mean over (bag, class) pairs.

    python benchmarks/milli_like_for_like.py --config configs/milli.toml --repeats 10 \\
        --out results/milli.json --page docs/results-milli.md

--epochs, --repeats and --explain-bags cut the run down (the page says so). Each repeat's
results are appended to --out as they finish, so a long run can be read while it goes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from attnsets.data import DatasetSpec, collate, make_dataset
from attnsets.data.spec import load_config
from attnsets.explain import deletion_curves, explain
from attnsets.metrics import aopc_per_bag, ndcg_at_k
from attnsets.models import ModelSpec, SetModel
from attnsets.registry import build_dataclass
from attnsets.training.fit import TrainSpec, fit

EXPLAINERS = ("attention", "single", "leave_one_out", "shapley", "milli")
#: MILLI's published MI-Attn numbers on FOUR-MNIST-BAGS (results/mnist of their repository).
PUBLISHED: dict[str, Any] = {
    "accuracy": 0.9671, "accuracy_sem": 0.0027,
    "ndcg": {"attention": 0.7501, "single": 0.7780, "leave_one_out": 0.8091, "milli": 0.9175},
    "aopc": {"attention": 0.0017, "single": 0.1640, "leave_one_out": 0.1435, "milli": 0.1809},
}
N_CLASSES = 4
RANDOM_ORDERS = 10
EXPLAIN_BATCH = 16


@dataclasses.dataclass
class Setup:
    """What one repeat runs, read from the study config."""

    dataset: dict[str, Any]
    model: ModelSpec
    training: TrainSpec
    options: dict[str, dict[str, Any]]
    config: str


def load_setup(path: str, epochs: int | None, batch_size: int | None,
               bags: list[int] | None = None) -> Setup:
    raw = load_config(path)
    dataset = {k: v for k, v in raw["datasets"][0].items() if k != "name"}
    if bags is not None:  # a smaller run (smoke tests, cost probes)
        dataset["bags"] = dict(zip(("train", "val", "test"), bags, strict=True))
    model = build_dataclass(ModelSpec, {k: v for k, v in raw["models"][0].items()
                                        if k != "name"}, "models[0]")
    training = dict(raw.get("training", {}))
    if epochs is not None:
        training["epochs"] = epochs
    if batch_size is not None:
        training["batch_size"] = batch_size
    options = dict(raw["study"].get("explainer_options", {}))
    return Setup(dataset, model, TrainSpec.from_dict({**training, "device": "cpu"}), options,
                 path)


def test_accuracy(model: SetModel, bags: list[Any]) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(bags), 64):
            batch = collate(bags[start:start + 64])
            logits = model(batch.x, batch.mask).logits
            correct += int((logits.argmax(-1) == batch.target).sum())
    return correct / len(bags)


def score_batch(model: SetModel, chunk: list[Any], setup: Setup, seed: int,
                seconds: dict[str, float]) -> dict[str, dict[str, list[float]]]:
    """Per method: NDCG@n and AOPC-R of every (bag, class) pair of `chunk`."""
    out: dict[str, dict[str, list[float]]] = {m: {"ndcg": [], "aopc": []} for m in EXPLAINERS}
    for target in range(N_CLASSES):
        batch = collate(chunk, target=target)
        for method in EXPLAINERS:
            started = time.process_time()
            options = setup.options.get(method, {})
            seeded = {"seed": seed} if method in ("shapley", "milli") else {}
            scores = explain(model, batch, method, target, **options, **seeded)
            ndcg = ndcg_at_k(scores.numpy(), batch.evidence.numpy(), batch.mask.numpy(),
                             gains="signed", bags="milli")
            curves = deletion_curves(model, batch, scores, target, n_orders=RANDOM_ORDERS,
                                     seed=seed)
            relative = aopc_per_bag(curves.ranked.numpy()) - aopc_per_bag(curves.random.numpy())
            big = batch.mask.sum(dim=1).numpy() > 2
            out[method]["ndcg"] += ndcg.values[~np.isnan(ndcg.values)].tolist()
            out[method]["aopc"] += relative[big & ~np.isnan(relative)].tolist()
            seconds[method] = seconds.get(method, 0.0) + time.process_time() - started
    return out


def run_repeat(seed: int, setup: Setup, explain_bags: int | None) -> dict[str, Any]:
    torch.manual_seed(seed)
    started = time.time()
    data = make_dataset(DatasetSpec.from_dict({**setup.dataset, "seed": seed}))
    data_seconds = time.time() - started

    def progress(stats: Any) -> None:
        print(f"  repeat {seed} epoch {stats.epoch}: {stats}", file=sys.stderr, flush=True)

    cpu = time.process_time()
    result = fit(setup.model, data, dataclasses.replace(setup.training, seed=seed),
                 progress=progress)
    train_cpu = time.process_time() - cpu
    model = result.model.eval()
    test = [bag for bag in data.test]
    accuracy = test_accuracy(model, test)
    scored = [bag for bag in test if len(bag) > 2][:explain_bags]
    totals: dict[str, dict[str, list[float]]] = {m: {"ndcg": [], "aopc": []} for m in EXPLAINERS}
    seconds: dict[str, float] = {}
    for start in range(0, len(scored), EXPLAIN_BATCH):
        part = score_batch(model, scored[start:start + EXPLAIN_BATCH], setup, seed, seconds)
        for method, values in part.items():
            for key in values:
                totals[method][key] += values[key]
    history = result.history
    return {"seed": seed, "accuracy": accuracy, "data_seconds": data_seconds,
            "train_cpu_seconds": train_cpu, "train_wall_seconds": history.wall_time,
            "epochs_run": history.stopped_epoch + 1, "best_epoch": history.best_epoch,
            "epoch_seconds": history.epoch_seconds, "explained_bags": len(scored),
            "explain_cpu_seconds": seconds,
            "ndcg": {m: float(np.mean(v["ndcg"])) for m, v in totals.items()},
            "aopc": {m: float(np.mean(v["aopc"])) for m, v in totals.items()},
            "pairs": {m: len(v["ndcg"]) for m, v in totals.items()}}


def interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): a t interval over repeats (95%); NaN bounds for a single repeat."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1)
                 / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def cell(values: list[float]) -> str:
    mean, low, high = interval(values)
    return f"{mean:.4f}" if math.isnan(low) else f"{mean:.4f} [{low:.4f}, {high:.4f}]"


def table(repeats: list[dict[str, Any]]) -> list[str]:
    lines = ["| quantity | ours | MILLI (published) |", "| --- | --- | --- |",
             f"| MI-Attn test accuracy | {cell([r['accuracy'] for r in repeats])} | "
             f"{PUBLISHED['accuracy']:.4f} ± {PUBLISHED['accuracy_sem']:.4f} (SEM) |"]
    for metric, label in (("ndcg", "NDCG@n"), ("aopc", "AOPC-R")):
        for method in EXPLAINERS:
            published = PUBLISHED[metric].get(method)
            theirs = f"{published:.4f}" if published is not None else "not reported"
            lines.append(f"| {label}, {method} | {cell([r[metric][method] for r in repeats])}"
                         f" | {theirs} |")
    return lines


def page(run: dict[str, Any]) -> str:
    repeats = run["repeats"]
    setup = run["setup"]
    bags = run["bags"]
    full = (len(repeats) >= 10 and setup["epochs"] >= 100 and run["explain_bags"] is None
            and bags == {"train": 2500, "val": 1000, "test": 1000})
    label = "the full like-for-like run" if full else (
        f"a CUT-DOWN run ({len(repeats)} repeat(s), {bags['train']} / {bags['val']} / "
        f"{bags['test']} bags, at most {setup['epochs']} epochs, "
        f"batch size {setup['batch_size']}, "
        f"{repeats[0]['explained_bags']} explained test bags per repeat), NOT the full run")
    cost = [f"| {r['seed']} | {r['epochs_run']} | {r['best_epoch']} | "
            f"{r['train_wall_seconds'] / 60:.1f} | {r['train_cpu_seconds'] / 60:.1f} | "
            f"{sum(r['explain_cpu_seconds'].values()) / 60:.1f} | {r['accuracy']:.4f} |"
            for r in repeats]
    return "\n".join([
        "# MILLI like for like: FOUR-MNIST-BAGS, MI-Attn, MILLI's metrics", "",
        f"Generated by `benchmarks/milli_like_for_like.py --config {setup['config']}` from "
        f"{label}. Machine: {run['machine']}. Total wall time {run['wall_seconds'] / 60:.1f} "
        f"min. Intervals: 95% t intervals over repeats (none with one repeat).", "",
        *table(repeats), "",
        "Per repeat (minutes; CPU = this process's CPU time):", "",
        "| repeat | epochs run | best epoch | train wall | train CPU | explain CPU | accuracy |",
        "| --- | --- | --- | --- | --- | --- | --- |", *cost, "",
        "Settings: " + json.dumps(setup, sort_keys=True), ""])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/milli.toml")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=None, help="cap (default: the config's)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--explain-bags", type=int, default=None,
                        help="explain only the first N test bags (default: all)")
    parser.add_argument("--bags", type=int, nargs=3, default=None, metavar=("TRAIN", "VAL", "TEST"),
                        help="bags per split (default: the config's 2,500 / 1,000 / 1,000)")
    parser.add_argument("--out", default="results/milli.json")
    parser.add_argument("--page", default=None, help="write the markdown page here")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    setup = load_setup(args.config, args.epochs, args.batch_size, args.bags)
    started = time.time()
    run: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s), torch "
                   f"{torch.__version__}, {torch.get_num_threads()} thread(s)",
        "explain_bags": args.explain_bags, "bags": setup.dataset["bags"], "repeats": [],
        "setup": {"config": args.config, "epochs": setup.training.epochs,
                  "batch_size": setup.training.batch_size, "options": setup.options}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for seed in range(args.repeats):
        run["repeats"].append(run_repeat(seed, setup, args.explain_bags))
        run["wall_seconds"] = time.time() - started
        Path(args.out).write_text(json.dumps(run, indent=1))
        print(json.dumps(run["repeats"][-1]), flush=True)
    if args.page:
        Path(args.page).write_text(page(run))


if __name__ == "__main__":
    main()
