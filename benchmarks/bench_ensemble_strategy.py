"""fit_ensemble per member against fit, per encoder: vectorised members (one stacked pass under
vmap) and sequential members (one fit per member), side by side in one run on one thread.

`python benchmarks/bench_ensemble_strategy.py [--quick]` prints the table; benchmarks/run.py
--only ensemble writes it into docs/benchmarks.md."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnsets.data import DatasetSpec, SetDataset, make_dataset  # noqa: E402
from attnsets.models import ModelSpec  # noqa: E402
from attnsets.training import TrainSpec, fit, fit_ensemble  # noqa: E402
from attnsets.training.ensemble import resolve_strategy, step_macs  # noqa: E402
from benchmarks.common import machine, table  # noqa: E402

THREADS = 1  # the 2 cores are shared; a study worker trains on one thread too
MEMBERS = 5  # members per study cell (configs/demo.toml, configs/paper.toml)
EPOCHS = 2
BATCH_SIZES = (8, 16, 32, 64)
ROUNDS = 1  # best of ROUNDS interleaved runs per trainer (1: the shared machine is slow)

#: The demo / paper datasets per modality (300 training bags, as in configs/*.toml).
DATA: dict[str, dict[str, Any]] = {
    "gaussian": {"pool": {"name": "gaussian", "num_concepts": 6, "dim": 16, "separation": 6.0},
                 "rule": {"name": "presence", "key": 2},
                 "bag_size": {"kind": "normal", "mean": 20, "sd": 4, "min": 5},
                 "bags": {"train": 300, "val": 100, "test": 10}},
    "gaussian, bags of ~200": {
        "pool": {"name": "gaussian", "num_concepts": 6, "dim": 16, "separation": 6.0},
        "rule": {"name": "presence", "key": 2}, "witnesses": {"rate": 0.01},
        "bag_size": {"kind": "normal", "mean": 200, "sd": 20, "min": 50},
        "bags": {"train": 300, "val": 100, "test": 10}},
    "digits": {"pool": {"name": "digits"}, "rule": {"name": "presence", "key": 9},
               "bag_size": {"kind": "normal", "mean": 10, "sd": 2, "min": 3},
               "bags": {"train": 300, "val": 100, "test": 10}},
    "sequences": {"pool": {"name": "sequences", "n_motifs": 2, "motif_length": 4,
                           "min_length": 10, "max_length": 20},
                  "rule": {"name": "presence", "key": 1},
                  "bag_size": {"kind": "normal", "mean": 20, "sd": 4, "min": 5},
                  "bags": {"train": 300, "val": 100, "test": 10}},
}


@dataclass(frozen=True)
class Case:
    data: str
    label: str  # encoder and its parameters, as the table shows them
    model: ModelSpec
    batch_sizes: tuple[int, ...] = BATCH_SIZES


def _model(pooling: str, encoder: str, **params: Any) -> ModelSpec:
    return ModelSpec(pooling=pooling, encoder=encoder, embed_dim=32, encoder_params=params)


CASES = (
    Case("gaussian", "mlp, attention", _model("attention", "mlp"), (8, 16, 64)),
    Case("gaussian", "mlp, transformer_cls", _model("transformer_cls", "mlp"), (16,)),
    Case("gaussian, bags of ~200", "mlp, attention", _model("attention", "mlp"), (8, 16)),
    Case("digits", "cnn [8, 16] k3 (demo/paper), attention",
         _model("attention", "cnn", channels=[8, 16], kernel_size=3), (8, 16, 32)),
    Case("digits", "cnn [8, 16] k3, transformer_cls",
         _model("transformer_cls", "cnn", channels=[8, 16], kernel_size=3), (16,)),
    Case("digits", "cnn [20, 50] k5 (default), attention", _model("attention", "cnn"), (16, 32)),
    Case("sequences", "seq_cnn 32 channels (demo/paper), attention",
         _model("attention", "seq_cnn", channels=32), (8, 16)),
    Case("sequences", "seq_cnn 32 channels, transformer_cls",
         _model("transformer_cls", "seq_cnn", channels=32), (16,)),
    Case("sequences", "seq_cnn 64 channels (default), attention", _model("attention", "seq_cnn"),
         (16,)),
)


def _dataset(name: str) -> SetDataset:
    return make_dataset(DatasetSpec.from_dict(DATA[name]))


def _seconds_per_member(strategy: str, case: Case, dataset: SetDataset, batch_size: int) -> float:
    spec = TrainSpec(epochs=EPOCHS, batch_size=batch_size, lr=2e-3, patience=None, device="cpu")
    seeds = list(range(MEMBERS))
    if strategy == "fit":  # the members one after another, each a plain fit
        started = time.perf_counter()
        for seed in seeds:
            fit(case.model, dataset, replace(spec, seed=seed))
        return (time.perf_counter() - started) / MEMBERS
    started = time.perf_counter()
    fit_ensemble(case.model, dataset, spec, seeds=seeds,
                 strategy="auto" if strategy == "default" else strategy)
    return (time.perf_counter() - started) / MEMBERS


def measure(quick: bool = False) -> list[dict[str, Any]]:
    """One row per (case, batch size): seconds per member per epoch of each trainer."""
    torch.set_num_threads(THREADS)
    rows = []
    datasets: dict[str, SetDataset] = {}
    for case in CASES:
        if case.data not in datasets:
            datasets[case.data] = _dataset(case.data)
        dataset = datasets[case.data]
        for batch_size in case.batch_sizes[:2] if quick else case.batch_sizes:
            spec = TrainSpec(batch_size=batch_size)
            picks = resolve_strategy(case.model, dataset, spec)
            macs = step_macs(case.model, dataset, batch_size)
            # --quick copies the default's time from the trainer it picks instead of timing it
            trainers = ("fit", "vectorised") if quick else ("fit", "vectorised", "default")
            if batch_size == case.batch_sizes[0]:  # warm-up, once per case
                _seconds_per_member("vectorised", case, dataset, batch_size)
            best = {name: float("inf") for name in trainers}
            for _ in range(1 if quick else ROUNDS):
                for name in trainers:  # interleaved, so drift hits all three alike
                    best[name] = min(best[name],
                                     _seconds_per_member(name, case, dataset, batch_size))
            if quick:
                best["default"] = best["fit" if picks == "sequential" else "vectorised"]
            per_epoch = {name: seconds / EPOCHS for name, seconds in best.items()}
            rows.append({"data": case.data, "model": case.label, "batch": batch_size,
                         "macs": macs, "picks": picks, **per_epoch})
            print(rows[-1], flush=True)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    body = [[row["data"], row["model"], str(row["batch"]), f"{row['macs'] / 1e6:.1f} M",
             f"{row['fit'] * 1e3:.1f} ms",
             f"{row['vectorised'] * 1e3:.1f} ms", f"{row['fit'] / row['vectorised']:.2f}",
             row["picks"], f"**{row['fit'] / row['default']:.2f}**"] for row in rows]
    header = ["data", "encoder, pooling", "batch", "encoder MACs per member step",
              "`fit` per member-epoch",
              "vectorised per member-epoch", "ratio, vectorised (before)", "default picks",
              "ratio, default (after)"]
    return "\n".join([
        "## Ensemble strategy: `fit_ensemble` per member vs `fit`",
        "",
        f"Machine: {machine()}. {MEMBERS} members (seeds 0-{MEMBERS - 1}), {EPOCHS} epochs, no "
        "early stop, validation every epoch, embed_dim 32, the demo/paper datasets (300 training "
        "and 100 validation bags). Seconds per member per epoch: `fit` = the members trained one "
        "after another (`fit` per seed), vectorised = `fit_ensemble(strategy=\"vectorised\")` "
        "(the only path before), default = `fit_ensemble` with its default, \"auto\" (the "
        "vectorised when one member's encoder step is at most "
        "`attnsets.training.ensemble.VECTORISE_MAX_MACS` multiply-accumulates, else "
        "sequential). Ratio = `fit` time / "
        "ensemble time per member (>= 1: a member is no slower in the ensemble than alone; "
        f"sequential members are `fit` itself, so their ratio is 1 up to noise). Best of "
        f"{ROUNDS} interleaved run(s) per trainer after a warm-up per case, on a machine "
        "shared with other jobs: differences within ~10% are noise.",
        "",
        table(header, body),
    ])


def run() -> str:
    return markdown(measure())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 batch sizes, 1 round")
    print(markdown(measure(parser.parse_args().quick)))
