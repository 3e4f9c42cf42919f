"""Explain your own data: bags with bag labels but no instance labels.

`explain_own_data` splits your bags (`attnsets.data.own`: seeded, stratified by label) into
train / val / test, trains an ensemble through `attnsets.run.execute` (early stopping on val),
explains every bag of the chosen splits with every member, and returns a per-instance table
(consensus score, rank spread, top-k votes) and a per-bag table with a label-free reliability
signal: how much the members agree (`attnsets.metrics.agreement`). `agreement_vs_truth`
measures, on synthetic data with known witnesses, how well that signal tracks the true
importance AUROC (docs/own_data.md has the formulas).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from attnsets.data import SetDataset, make_dataset
from attnsets.data.own import DEFAULT_FRACTIONS, OwnBags, rows_of, split_bags
from attnsets.data.spec import SPLITS
from attnsets.errors import SpecError, SpecErrors
from attnsets.files import staged_output
from attnsets.memory import check_fits, run_estimate
from attnsets.metrics import bag_metrics, combine_probs, per_bag_auroc
from attnsets.metrics.agreement import agreement, correlation, descending_rank
from attnsets.models import ModelSpec, SetModel
from attnsets.run import QUICK_TRAINING, OutputSpec, RunSpec, execute, training_spec
from attnsets.spec.constraints import Interval, is_int
from attnsets.tables import write_table
from attnsets.training import TrainSpec

#: Training used when `explain_own_data(training=None)` (run.QUICK_TRAINING, shared with audit).
OWN_DATA_TRAINING = QUICK_TRAINING
DEFAULT_MODEL = ModelSpec(pooling="attention", embed_dim=32)


@dataclass
class OwnDataResult:
    """instances: one row per explained instance; bags: one row per explained bag (columns in
    docs/own_data.md); metrics: ensemble bag metrics per split; ensemble: the trained members;
    dataset: the split data they were trained on; arrays: per split ``<split>/scores`` (K, B, N)
    member scores, ``<split>/mask`` (B, N) and ``<split>/consensus`` (B, N)."""

    instances: pd.DataFrame
    bags: pd.DataFrame
    metrics: dict[str, dict[str, float]]
    ensemble: list[SetModel]
    dataset: SetDataset
    method: str
    arrays: dict[str, np.ndarray]

    def write(self, directory: str | Path, fmt: str = "csv") -> tuple[Path, Path]:
        """Write instances.<fmt> and bags.<fmt> (fmt csv or parquet) into `directory`; both
        are staged and moved into place together (`attnsets.files.staged_output`)."""
        check_format(fmt)
        directory = Path(directory)
        with staged_output(directory, "directory") as staging:
            write_table(self.instances, staging / f"instances.{fmt}")
            write_table(self.bags, staging / f"bags.{fmt}")
        return directory / f"instances.{fmt}", directory / f"bags.{fmt}"


#: Formats of the written instance and bag tables.
OUTPUT_FORMATS = ("csv", "parquet")


def check_format(fmt: str) -> str:
    """`fmt` if it is one of OUTPUT_FORMATS; SpecError("fmt") otherwise."""
    if fmt not in OUTPUT_FORMATS:
        raise SpecError("fmt", fmt, " or ".join(map(repr, OUTPUT_FORMATS)))
    return fmt


def explain_own_data(data: OwnBags | SetDataset, *, model: ModelSpec = DEFAULT_MODEL,
                     members: int = 5, training: TrainSpec | Mapping[str, Any] | None = None,
                     method: str = "attention", seed: int = 0,
                     fractions: Sequence[float] = DEFAULT_FRACTIONS,
                     splits: Sequence[str] = SPLITS, top_fraction: float = 0.1,
                     batch_size: int = 128) -> OwnDataResult:
    """Train `members` models (seeds seed..seed+members-1, one vectorised pass) on the train
    split, early-stopping on val, then explain every bag of `splits` with every member.

    data: OwnBags (split here with `split_bags(data, fractions, seed)`) or a SetDataset already
    split. All bags are explained by default; the `split` column says which ones the members
    were trained on: read held-out bags (val / test) for an honest picture. Each bag is
    explained for its own label. method: any explainer that applies to the model.
    Raises TooLargeError (field ``data``) before training when the estimated memory of the
    padded splits and per-bag maps exceeds the limit (`attnsets.memory`)."""
    _check_arguments(model, members, seed)
    outputs = OutputSpec(method, tuple([splits] if isinstance(splits, str) else splits),
                         seed=seed, batch_size=batch_size)
    dataset, own = _split_data(data, fractions, seed)
    train = training_spec(training, OWN_DATA_TRAINING)
    shapes = {name: (len(split), int(split.sizes.max()))
              for name, split in dataset.splits.items() if len(split)}
    check_fits(run_estimate(shapes, dataset.instance_shape, dataset.kind, members,
                            train.batch_size, model.embed_dim, kept_maps=True), "data",
               f"explaining {sum(b for b, _ in shapes.values())} bags with {members} members")
    result = execute(RunSpec(None, model, train, tuple(range(seed, seed + members)),
                             assess=None, outputs=outputs), dataset)
    class_names = np.asarray(list(own.class_names) if own is not None else [
        str(c) for c in range(dataset.n_classes)], dtype=object)
    instance_frames, bag_frames = [], []
    metrics: dict[str, dict[str, float]] = {}
    arrays: dict[str, np.ndarray] = {}
    for split_name in outputs.splits:
        out = result.outputs[split_name]
        bag_ids, rows = _bag_identity(dataset, own, split_name)
        signals = agreement(out.scores, out.mask, top_fraction)
        ens_probs = combine_probs(out.probs)
        metrics[split_name] = {k: float(v) for k, v in bag_metrics(
            dataset.splits[split_name].labels, ens_probs).items()}
        split = dataset.splits[split_name]
        bag_frames.append(_bag_frame(split, split_name, bag_ids, class_names, ens_probs,
                                     signals))
        instance_frames.append(_instance_frame(split, split_name, bag_ids, rows, out.mask,
                                               signals))
        arrays[f"{split_name}/scores"] = out.scores.astype(np.float32)
        arrays[f"{split_name}/mask"] = out.mask
        arrays[f"{split_name}/consensus"] = signals.consensus
    return OwnDataResult(pd.concat(instance_frames, ignore_index=True),
                         pd.concat(bag_frames, ignore_index=True), metrics, result.members,
                         dataset, method, arrays)


def _check_arguments(model: Any, members: Any, seed: Any) -> None:
    if not is_int(members) or members < 2:
        raise SpecError("members", members, "an integer >= 2 (agreement needs two members)")
    Interval(int, 0).require(seed, "seed")
    if not isinstance(model, ModelSpec):
        raise SpecError("model", type(model).__name__, "a ModelSpec")


def _split_data(data: Any, fractions: Sequence[float], seed: int
                ) -> tuple[SetDataset, OwnBags | None]:
    if isinstance(data, OwnBags):
        return split_bags(data, fractions, seed), data
    if isinstance(data, SetDataset):
        return data, None
    raise SpecError("data", type(data).__name__, "OwnBags (load_bags / bags_from_arrays) "
                                                 "or a SetDataset")


def _bag_identity(dataset: SetDataset, own: OwnBags | None, split_name: str
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(B,) the user's bag ids of a split and (instances,) each instance's source row."""
    split = dataset.splits[split_name]
    if own is not None:
        index = np.asarray(dataset.metadata["bag_index"][split_name], dtype=np.int64)
        return own.bag_ids[index], own.rows[rows_of(own.offsets, index)]
    bag_ids = np.array([f"{split_name}:{i}" for i in range(len(split))], dtype=object)
    return bag_ids, np.arange(split.offsets[-1]) - np.repeat(split.offsets[:-1], split.sizes)


def _bag_frame(split: Any, split_name: str, bag_ids: np.ndarray, class_names: np.ndarray,
               ens_probs: np.ndarray, signals: Any) -> pd.DataFrame:
    """One row per bag of a split (columns in docs/own_data.md)."""
    predicted = ens_probs.argmax(axis=1)
    return pd.DataFrame({
        "bag_id": bag_ids, "split": split_name, "label": split.labels,
        "label_name": class_names[split.labels], "predicted": predicted,
        "predicted_name": class_names[predicted],
        "p_label": ens_probs[np.arange(len(split)), split.labels],
        "correct": predicted == split.labels, "n_instances": split.sizes,
        "k": signals.k, "rank_agreement": signals.rank_agreement,
        "top_k_overlap": signals.top_k_overlap})


def _instance_frame(split: Any, split_name: str, bag_ids: np.ndarray, rows: np.ndarray,
                    mask: np.ndarray, signals: Any) -> pd.DataFrame:
    """One row per real instance of a split; mask: (B, N) bool."""
    positions = np.broadcast_to(np.arange(mask.shape[1]), mask.shape)[mask]
    bag_of = np.broadcast_to(np.arange(len(split))[:, None], mask.shape)[mask]
    consensus = signals.consensus
    return pd.DataFrame({
        "bag_id": bag_ids[bag_of], "split": split_name, "instance": positions,
        "row": rows, "label": split.labels[bag_of],
        "consensus": consensus[mask], "consensus_rank": descending_rank(consensus, mask)[mask],
        "rank_mean": signals.rank_mean[mask],
        "rank_spread": signals.rank_spread[mask], "top_k_votes": signals.top_k_votes[mask],
        "bag_rank_agreement": signals.rank_agreement[bag_of]})


# --------------------------------------------------------------------------- is it worth it?


SIGNALS = ("rank_agreement", "top_k_overlap")


@dataclass
class AgreementStudy:
    """bags: one row per eligible bag (entry, replicate, split, bag, the agreement signals, the
    true importance AUROC of the consensus and its members' mean); runs: one row per trained
    ensemble (means of the same); correlations: one row per level x group x signal with the
    Spearman and Pearson correlation against the consensus AUROC and n."""

    bags: pd.DataFrame
    runs: pd.DataFrame
    correlations: pd.DataFrame


def agreement_vs_truth(battery: Sequence[Any] | None = None, *, model: ModelSpec = DEFAULT_MODEL,
                       members: int = 5, training: TrainSpec | Mapping[str, Any] | None = None,
                       method: str = "attention", seeds: Sequence[int] = (0,),
                       splits: Sequence[str] = ("test",),
                       top_fraction: float = 0.1) -> AgreementStudy:
    """How well does the label-free agreement signal predict the true explanation quality?

    For every battery entry (default: the audit battery, see `attnsets.audit`) and replicate
    seed, generate the dataset, run `explain_own_data` on it, and compare per bag the signals
    with the true per-bag importance AUROC of the consensus explanation (bags with witnesses and
    non-witnesses only). Correlations are given per bag pooled over everything ("bag", "all"),
    per bag within each entry ("bag", <entry>), and per trained ensemble ("run", "all")."""
    from attnsets.data.battery import resolve_battery

    entries = resolve_battery(battery)
    bag_frames = []
    for entry in entries:
        for replicate in seeds:
            try:
                dataset = make_dataset(dataclasses.replace(entry.dataset, seed=int(replicate)))
            except SpecErrors as err:
                raise SpecError(f"battery.{entry.name}", str(err), "a valid dataset spec"
                                ) from None
            result = explain_own_data(dataset, model=model, members=members, training=training,
                                      method=method, seed=int(replicate), splits=splits,
                                      top_fraction=top_fraction)
            for split_name in splits:
                frame = _truth_frame(result, split_name)
                frame.insert(0, "replicate", int(replicate))
                frame.insert(0, "entry", entry.name)
                bag_frames.append(frame)
    bags = pd.concat(bag_frames, ignore_index=True)
    eligible = bags[np.isfinite(bags["consensus_auroc"])]
    runs = eligible.groupby(["entry", "replicate"], sort=False).agg(
        rank_agreement=("rank_agreement", "mean"), top_k_overlap=("top_k_overlap", "mean"),
        consensus_auroc=("consensus_auroc", "mean"),
        member_auroc_mean=("member_auroc_mean", "mean"), n_bags=("bag", "size")).reset_index()
    rows = []
    groups: list[tuple[str, str, pd.DataFrame]] = [("bag", "all", eligible)]
    groups += [("bag", str(name), part) for name, part in eligible.groupby("entry", sort=False)]
    groups.append(("run", "all", runs))
    for level, group, part in groups:
        for signal in SIGNALS:
            rows.append({"level": level, "group": group, "signal": signal,
                         "truth": "consensus_auroc",
                         **correlation(part[signal], part["consensus_auroc"])})
    correlations = pd.DataFrame(rows)
    correlations["n"] = correlations["n"].astype(np.int64)
    return AgreementStudy(eligible.reset_index(drop=True), runs, correlations)


def _truth_frame(result: OwnDataResult, split_name: str) -> pd.DataFrame:
    """Per bag of one split: agreement signals and the true AUROC (NaN where undefined)."""
    from attnsets.assess import padded_batches

    split = result.dataset.splits[split_name]
    evidence = torch.cat([b.evidence for b in padded_batches(split, 256)]).numpy()
    mask = result.arrays[f"{split_name}/mask"]
    scores = result.arrays[f"{split_name}/scores"]
    consensus_auroc = per_bag_auroc(result.arrays[f"{split_name}/consensus"], evidence,
                                    mask).values
    member_auroc = np.stack([per_bag_auroc(s, evidence, mask).values for s in scores])
    defined = np.isfinite(member_auroc)
    counts = defined.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        member_mean = np.where(counts > 0, np.where(defined, member_auroc, 0.0).sum(axis=0)
                               / counts, np.nan)
    bags = result.bags[result.bags["split"] == split_name].reset_index(drop=True)
    return pd.DataFrame({"split": split_name, "bag": np.arange(len(split)),
                         "label": split.labels, "correct": bags["correct"].to_numpy(),
                         "n_instances": split.sizes,
                         "rank_agreement": bags["rank_agreement"].to_numpy(),
                         "top_k_overlap": bags["top_k_overlap"].to_numpy(),
                         "consensus_auroc": consensus_auroc, "member_auroc_mean": member_mean})
