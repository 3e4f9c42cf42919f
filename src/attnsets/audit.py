"""Audit your own set model: does it learn, does its attention find the witnesses, does it fail
silently, does it pass the algorithmic unit tests, does it respect padding?

``audit(model_builder)`` runs a small ensemble of your model on each dataset of a battery
(`attnsets.data.battery`: modalities x labelling rules, with ground-truth witnesses) through
`attnsets.run.execute` and returns a pass/fail table with the numbers behind every verdict.

`model_builder` is a registered pooling name ("attention", "gated_attention", ...), a ModelSpec,
or a callable ``(info: InputInfo, seed: int) -> nn.Module`` whose ``forward(x, mask)`` returns a
SetOutput, a tuple ``(logits, attention)`` or logits alone (see examples/my_model.py). Before
any training the model is probed on a few real bags (`attnsets.models.user.probe_model`):
wrong output shapes raise SpecError; attention at padded positions and logits that change with
the padding are reported.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attnsets.assess import AssessSpec
from attnsets.assessment import Assessment
from attnsets.data import SetDataset, make_dataset
from attnsets.data.battery import BatteryEntry, resolve_battery
from attnsets.errors import SpecError, SpecErrors, TrainingDivergedError
from attnsets.memory import check_run_fits
from attnsets.metrics import SilentFailureCriteria
from attnsets.metrics.cluster import nanmean
from attnsets.models import POOLINGS, InputInfo, ModelSpec, SetModel, build_model
from attnsets.models.user import ModelBuilder, ProbeReport, build_member, load_builder, probe_model
from attnsets.registry import build_dataclass
from attnsets.run import QUICK_TRAINING, RunSpec, execute, member_seeds, training_spec
from attnsets.spec.constraints import Interval, is_int
from attnsets.training import TrainSpec

Progress = Callable[[str], None]

#: The model used for a registered pooling name: small encoders, as in configs/demo.toml.
AUDIT_EMBED_DIM = 32
AUDIT_PER_ENCODER: dict[str, dict[str, Any]] = {
    "cnn": {"channels": [8, 16], "kernel_size": 3}, "seq_cnn": {"channels": 32}}

#: Training used when `audit(training=None)` (run.QUICK_TRAINING, shared with explain-data).
AUDIT_TRAINING = QUICK_TRAINING

# --------------------------------------------------------------------------- the audit


@dataclass
class EntryRun:
    """One battery entry: its probe and, per replicate seed, the assessment metrics (or the
    error that stopped training)."""

    entry: BatteryEntry
    probe: ProbeReport
    metrics: list[Assessment] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class AuditResult:
    """table: one row per battery entry (see docs/audit.md for every column); passed: every
    entry passed; runs: the probes and full assessment metrics behind the table."""

    model: str
    table: pd.DataFrame
    runs: list[EntryRun]
    criteria: SilentFailureCriteria
    seconds: float

    @property
    def passed(self) -> bool:
        return bool(self.table["passed"].all())

    @property
    def verdict(self) -> str:
        """"pass" when every entry passes, else "fail: <entries>"."""
        failed = self.table.loc[~self.table["passed"], "entry"].tolist()
        return "pass" if not failed else f"fail: {', '.join(failed)}"

    def write(self, path: str | Path) -> Path:
        """Write the table as .csv or .parquet (chosen by the file ending)."""
        from attnsets.tables import write_table

        return write_table(self.table, path)


@dataclass(frozen=True)
class _Candidate:
    """What to train: a ModelSpec (vectorised ensemble) or a user builder (member by member)."""

    name: str
    model: ModelSpec | ModelBuilder

    def build(self, info: InputInfo, seed: int) -> SetModel:
        if isinstance(self.model, ModelSpec):
            return build_model(self.model, info, seed=seed)
        return build_member(self.model, info, seed)


def _candidate(model_builder: Any) -> _Candidate:
    if isinstance(model_builder, str):
        resolved = load_builder(model_builder)
        if isinstance(resolved, str):
            return _Candidate(resolved, ModelSpec(pooling=resolved, embed_dim=AUDIT_EMBED_DIM,
                                                  per_encoder=AUDIT_PER_ENCODER))
        return _Candidate(model_builder, resolved)  # a builder, or a checkpoint's ModelSpec
    if isinstance(model_builder, ModelSpec):
        POOLINGS.get(model_builder.pooling, "model_builder.pooling")
        return _Candidate(model_builder.pooling, model_builder)
    if callable(model_builder):
        name = getattr(model_builder, "__qualname__", type(model_builder).__name__)
        module = getattr(model_builder, "__module__", "")
        return _Candidate(f"{module}:{name}" if module else name, model_builder)
    raise SpecError("model_builder", type(model_builder).__name__,
                    "a pooling name, a ModelSpec, module:object, or a callable "
                    "(info, seed) -> nn.Module")


def _criteria(thresholds: SilentFailureCriteria | Mapping[str, Any] | None
              ) -> SilentFailureCriteria:
    if thresholds is None:
        return SilentFailureCriteria()
    if isinstance(thresholds, SilentFailureCriteria):
        return thresholds
    if isinstance(thresholds, Mapping):
        return build_dataclass(SilentFailureCriteria, dict(thresholds), "thresholds")  # type: ignore[no-any-return]
    raise SpecError("thresholds", type(thresholds).__name__,
                    "None, a SilentFailureCriteria or a table of its fields")


def _check_seeds(seeds: Sequence[int], members: int) -> list[int]:
    seed_list = list(seeds) if isinstance(seeds, Sequence) and not isinstance(seeds, str) else []
    if not seed_list or not all(is_int(s) and s >= 0 for s in seed_list) \
            or len(set(seed_list)) != len(seed_list):
        raise SpecError("seeds", seeds, "a non-empty list of distinct integers >= 0")
    Interval(int, 1).require(members, "members")
    return [int(s) for s in seed_list]


def audit(model_builder: ModelBuilder | str | ModelSpec, *,
          battery: Sequence[BatteryEntry | Mapping[str, Any]] | None = None,
          seeds: Sequence[int] = (0, 1), members: int = 3,
          training: TrainSpec | Mapping[str, Any] | None = None,
          thresholds: SilentFailureCriteria | Mapping[str, Any] | None = None,
          progress: Progress | None = None) -> AuditResult:
    """Train and assess `model_builder` on every battery entry; one table row per entry.

    seeds: replicate seeds; replicate r uses the dataset generated with seed r and members with
    seeds r * 1000 + 0..members-1. training: a TrainSpec or overrides of AUDIT_TRAINING.
    thresholds: the silent-failure criteria (bag balanced accuracy >= 0.9, attention AUROC
    <= 0.7 by default), also used for the "learns" and "finds the witnesses" verdicts.
    Raises SpecError before any training when the model's outputs have the wrong type or shape
    on any battery dataset.
    """
    started = time.perf_counter()
    candidate = _candidate(model_builder)
    entries = resolve_battery(battery)
    replicates = _check_seeds(seeds, members)
    spec = training_spec(training, AUDIT_TRAINING)
    criteria = _criteria(thresholds)
    assess_spec = AssessSpec(explainers=("attention",), criteria=criteria, bootstrap=0,
                             curve_subsets=10, deletion_steps=5)
    run_specs = {entry.name: RunSpec(entry.dataset, candidate.model, spec,
                                     member_seeds(replicates[0], members), assess_spec)
                 for entry in entries}
    for entry in entries:  # sizes first: nothing generated for a battery that cannot fit
        check_run_fits(run_specs[entry.name], f"battery.{entry.name}",
                       f"auditing {entry.name!r} with {members} members")
    datasets, runs = _prepare(candidate, entries, replicates, progress)
    for run in runs:
        entry_started = time.perf_counter()
        for replicate in replicates:
            run_spec = dataclasses.replace(run_specs[run.entry.name], dataset=None,
                                           seeds=member_seeds(replicate, members))
            _train_entry(run, candidate, run_spec, datasets[run.entry.name, replicate],
                         f"{run.entry.name} (seed {replicate})", replicate, progress)
        run.seconds = time.perf_counter() - entry_started
    table = pd.DataFrame([_row(run, criteria, members * len(replicates)) for run in runs])
    return AuditResult(candidate.name, _typed(table), runs, criteria,
                       time.perf_counter() - started)


def _prepare(candidate: _Candidate, entries: Sequence[BatteryEntry], replicates: list[int],
             progress: Progress | None
             ) -> tuple[dict[tuple[str, int], SetDataset], list[EntryRun]]:
    """Every dataset generated and every probe run before the first training, so that a
    broken model fails in seconds, not after minutes of training."""
    datasets: dict[tuple[str, int], SetDataset] = {}
    runs = []
    for entry in entries:
        for replicate in replicates:
            if progress:
                progress(f"{entry.name}: generating the data (seed {replicate})")
            try:
                datasets[entry.name, replicate] = make_dataset(
                    dataclasses.replace(entry.dataset, seed=replicate))
            except SpecErrors as err:
                raise SpecError(f"battery.{entry.name}", str(err), "a valid dataset spec") from None
        first = datasets[entry.name, replicates[0]]
        probe = probe_model(candidate.build(InputInfo.from_dataset(first), 0), first)
        runs.append(EntryRun(entry, probe))
    return datasets, runs


def _train_entry(run: EntryRun, candidate: _Candidate, run_spec: RunSpec, dataset: SetDataset,
                 label: str, replicate: int, progress: Progress | None) -> None:
    """Train and assess one replicate of an entry; a diverged or failing user model is
    recorded as an error of the entry (the audit goes on)."""
    try:
        result = execute(run_spec, dataset, progress=(lambda s: progress(f"{label}: {s}"))
                         if progress else None)
    except TrainingDivergedError as err:
        run.errors.append(f"seed {replicate}: {err}")
        return
    except Exception as err:
        if isinstance(candidate.model, ModelSpec):
            raise
        # User code that passed the probe but fails in training (e.g. on another bag
        # size) is an audit finding for this entry, not a reason to stop the audit.
        run.errors.append(f"seed {replicate}: training failed: {type(err).__name__}: {err}")
        return
    assert result.assessment is not None
    run.metrics.append(result.assessment)


# --------------------------------------------------------------------------- verdicts


def _row(run: EntryRun, criteria: SilentFailureCriteria, planned: int) -> dict[str, Any]:
    """One table row: the entry's identity, the numbers behind the verdicts, the verdicts."""
    entry, probe, metrics = run.entry, run.probe, run.metrics
    row: dict[str, Any] = {
        "entry": entry.name, "modality": entry.dataset.pool.name, "rule": entry.dataset.rule.name,
        "shifted_test": entry.shifted_test, "members_trained": sum(m.n_members for m in metrics),
        "members_planned": planned,
    }
    silent = _numbers(row, run, criteria)
    notes: list[str] = [*probe.problems(), *run.errors]
    row.update(_verdicts(row, run, criteria, silent, notes))
    verdicts = [row["learns_task"], row["attention_finds_witnesses"], row["no_silent_failures"],
                row["passes_unit_test"], probe.respects_padding, not run.errors]
    row["passed"] = all(v is not False for v in verdicts)
    row["notes"] = "; ".join(notes)
    return row


def _numbers(row: dict[str, Any], run: EntryRun, criteria: SilentFailureCriteria
             ) -> list[bool]:
    """Fill the measured columns of `row`; returns the per-member silent-failure flags."""
    entry, probe, metrics = run.entry, run.probe, run.metrics
    bag_key, key = criteria.bag_metric, criteria.importance_metric
    flags = [f for m in metrics if m.unit_test is not None for f in m.unit_test.members]
    row["test_" + bag_key] = nanmean([b.value(bag_key) for m in metrics for b in m.member_bag])
    row["val_" + bag_key] = nanmean([f.train_metric for f in flags]) if entry.shifted_test \
        else math.nan
    row["learn_split"] = "val" if entry.shifted_test else "test"
    row["learn_score"] = row["val_" + bag_key] if entry.shifted_test else row["test_" + bag_key]
    has_attention = probe.has_attention and all("attention" in m.explainers for m in metrics)
    attention = [m.explainers["attention"] for m in metrics if "attention" in m.explainers]
    member_importance = [r[key] for a in attention for r in a.members]
    silent = [s for a in attention for s in a.silent]
    row["attention_" + key] = nanmean(member_importance)
    row["attention_" + key + "_worst"] = float(np.nanmin(member_importance)) \
        if any(not math.isnan(v) for v in member_importance) else math.nan
    row["ensemble_attention_" + key] = nanmean([a.ensemble_value(key) for a in attention])
    row["silent_members"] = sum(silent) if has_attention else pd.NA
    row["unit_test_flagged_members"] = sum(f.flagged for f in flags) \
        if entry.shifted_test else pd.NA
    row["padding_attention_max"] = probe.padding_attention_max
    row["padding_probability_change"] = probe.padding_probability_change
    row["train_seconds"] = run.seconds
    return silent


def _verdicts(row: dict[str, Any], run: EntryRun, criteria: SilentFailureCriteria,
              silent: list[bool], notes: list[str]) -> dict[str, bool | None]:
    """The verdict columns (None = not judged); why a verdict failed is appended to notes."""
    bag_key, key = criteria.bag_metric, criteria.importance_metric
    trained = bool(run.metrics)
    learns = trained and row["learn_score"] >= criteria.min_bag_score
    if not trained:
        notes.append("no member could be trained")
    elif not learns:
        notes.append(f"does not learn the task ({bag_key} {row['learn_score']:.3f} on the "
                     f"{row['learn_split']} split < {criteria.min_bag_score})")
    finds: bool | None = None
    no_silent: bool | None = None
    if not run.probe.has_attention:
        notes.append("the model returns no attention: attention verdicts not judged")
    elif trained:
        no_silent = not any(silent)
        if not no_silent:
            notes.append(f"{sum(silent)} of {len(silent)} members fail silently")
        if learns and not math.isnan(row["attention_" + key]):
            finds = row["attention_" + key] > criteria.max_importance
            if not finds:
                notes.append(f"attention misses the witnesses ({key} "
                             f"{row['attention_' + key]:.3f} <= {criteria.max_importance})")
    passes_unit: bool | None = None
    if run.entry.shifted_test and learns:
        passes_unit = row["unit_test_flagged_members"] == 0
        if not passes_unit:
            notes.append(f"{row['unit_test_flagged_members']} member(s) fail the shifted test "
                         "split (learned a shortcut)")
    return {"learns_task": learns, "attention_finds_witnesses": finds,
            "no_silent_failures": no_silent, "passes_unit_test": passes_unit,
            "respects_padding": run.probe.respects_padding}


#: The verdict columns, first in the table.
VERDICTS = ("learns_task", "attention_finds_witnesses", "no_silent_failures", "passes_unit_test",
            "respects_padding", "passed")


def _typed(table: pd.DataFrame) -> pd.DataFrame:
    """Verdicts as pandas nullable booleans (NA = not judged), counts as nullable ints, and
    verdict columns right after the entry's identity."""
    for column in VERDICTS:
        table[column] = table[column].astype("boolean")
    for column in ("silent_members", "unit_test_flagged_members"):
        table[column] = table[column].astype("Int64")
    table["passed"] = table["passed"].astype(bool)
    identity = ["entry", "modality", "rule", "shifted_test"]
    rest = [c for c in table.columns if c not in identity and c not in VERDICTS]
    return table[[*identity, *VERDICTS, *rest]]
