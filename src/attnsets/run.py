"""One run: a typed spec in, a trained ensemble and its typed assessment out.

Every front door (a study cell, `attnsets evaluate`, `audit`, `explain-data`) builds a `RunSpec`
and calls `execute`; none of them trains, predicts or scores on its own.

>>> spec = RunSpec(dataset=DatasetSpec.from_dict({"pool": "gaussian", "rule": "presence"}),
...                model=ModelSpec(pooling="attention"), seeds=(0, 1, 2))
>>> result = execute(spec)
>>> result.assessment.explainers["attention"].mean("auroc")
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from attnsets.assess import AssessSpec, assess, explain_members, padded_batches, predict
from attnsets.assessment import Assessment
from attnsets.data import DatasetSpec, SetDataset, make_dataset
from attnsets.data.spec import SPLITS
from attnsets.device import device_of, resolve_device
from attnsets.errors import SpecError
from attnsets.explain import EXPLAINERS
from attnsets.explain.base import check_options
from attnsets.models import InputInfo, ModelSpec, SetModel
from attnsets.models.user import ModelBuilder, build_member
from attnsets.spec.constraints import Interval, SequenceOf
from attnsets.training import TrainSpec, fit, fit_ensemble

Progress = Callable[[str], None]


def member_seeds(replicate: int, members: int) -> tuple[int, ...]:
    """Model seeds of a replicate: disjoint across replicates (replicate * 1000 + m)."""
    return tuple(replicate * 1000 + m for m in range(members))


@dataclass(frozen=True)
class OutputSpec:
    """Per-member outputs to return for whole splits (no scoring against ground truth): class
    probabilities and `method`'s scores for every bag of each split in `splits`, in batches of
    `batch_size` bags; a seeded method gives member i the seed ``seed + i``."""

    method: str = "attention"
    splits: tuple[str, ...] = ("test",)
    options: Mapping[str, object] = field(default_factory=dict)
    seed: int = 0
    batch_size: int = 128

    def __post_init__(self) -> None:
        if self.method not in EXPLAINERS:
            raise EXPLAINERS.unknown(self.method, "method")
        splits = (self.splits,) if isinstance(self.splits, str) else tuple(self.splits)
        if not splits or any(s not in SPLITS for s in splits):
            raise SpecError("splits", self.splits, f"a non-empty list of {list(SPLITS)}")
        object.__setattr__(self, "splits", splits)
        Interval(int, 0).require(self.seed, "seed")
        Interval(int, 1).require(self.batch_size, "batch_size")
        check_options(self.method, EXPLAINERS.get(self.method), self.options, "options")


#: The seeds of an ensemble's members, one member per seed.
MEMBER_SEEDS = SequenceOf(Interval(int, 0), min_length=1, distinct=True)


@dataclass(frozen=True)
class RunSpec:
    """What one run does: generate `dataset` (or use the one given to `execute`), train one
    member per seed of `model` (a ModelSpec: all members in one vectorised pass; a builder
    ``(info, seed) -> nn.Module``: member by member) with `training` (its seed becomes
    ``seeds[0]``), then assess the members (`assess`, None = no assessment) and return the
    per-split outputs asked for (`outputs`)."""

    dataset: DatasetSpec | None
    model: ModelSpec | ModelBuilder
    training: TrainSpec = field(default_factory=TrainSpec)
    seeds: tuple[int, ...] = (0,)
    assess: AssessSpec | None = field(default_factory=AssessSpec)
    outputs: OutputSpec | None = None

    def __post_init__(self) -> None:
        if self.dataset is not None and not isinstance(self.dataset, DatasetSpec):
            raise SpecError("dataset", type(self.dataset).__name__, "a DatasetSpec or None")
        if not isinstance(self.model, ModelSpec) and not callable(self.model):
            raise SpecError("model", type(self.model).__name__,
                            "a ModelSpec or a builder (info, seed) -> nn.Module")
        if not isinstance(self.training, TrainSpec):
            raise SpecError("training", type(self.training).__name__, "a TrainSpec")
        if MEMBER_SEEDS.errors(self.seeds, "seeds"):
            raise SpecError("seeds", self.seeds, MEMBER_SEEDS.describe())
        object.__setattr__(self, "seeds", MEMBER_SEEDS.normalise(self.seeds))
        if self.assess is not None:
            problems = self.assess.check_members(len(self.seeds))
            if problems:
                raise problems[0].with_prefix("assess")

    @property
    def n_members(self) -> int:
        return len(self.seeds)

    @property
    def model_name(self) -> str:
        if isinstance(self.model, ModelSpec):
            return self.model.pooling
        name = getattr(self.model, "__qualname__", type(self.model).__name__)
        module = getattr(self.model, "__module__", "")
        return f"{module}:{name}" if module else name


@dataclass(frozen=True)
class TrainingSummary:
    """How training went, per member: epochs run, best epoch, best validation loss."""

    seconds: float
    epochs_run: list[int]
    best_epoch: list[int | None]
    best_val_loss: list[float]

    def to_dict(self) -> dict[str, float | list[int] | list[int | None] | list[float]]:
        return {"seconds": self.seconds, "epochs_run": list(self.epochs_run),
                "best_epoch": list(self.best_epoch), "best_val_loss": list(self.best_val_loss)}

    @staticmethod
    def from_dict(data: Mapping[str, object]) -> TrainingSummary:
        def ints(key: str) -> list[int | None]:
            return [None if v is None else int(v) for v in data.get(key) or []]  # type: ignore[attr-defined]

        return TrainingSummary(
            seconds=float(data.get("seconds", 0.0)),  # type: ignore[arg-type]
            epochs_run=[int(v) for v in ints("epochs_run") if v is not None],
            best_epoch=ints("best_epoch"),
            best_val_loss=[float(v) for v in data.get("best_val_loss") or []])  # type: ignore[attr-defined]


@dataclass(frozen=True)
class SplitOutputs:
    """One split's per-member outputs: probs (K, B, C), scores (K, B, N), mask (B, N)."""

    probs: np.ndarray
    scores: np.ndarray
    mask: np.ndarray


@dataclass
class RunResult:
    """The trained members (best validation state), the data they saw, how training went,
    the assessment (None when the spec asked for none) and the requested split outputs."""

    spec: RunSpec
    dataset: SetDataset
    members: list[SetModel]
    training: TrainingSummary
    assessment: Assessment | None = None
    outputs: dict[str, SplitOutputs] = field(default_factory=dict)
    #: Seconds spent generating the data (0 when the dataset was given).
    generate_seconds: float = 0.0


#: The training of the front doors that train on the user's behalf (`audit`, `explain_own_data`)
#: when given none: enough for every default battery entry to be learnable.
QUICK_TRAINING = TrainSpec(epochs=30, batch_size=16, lr=0.002, weight_decay=1e-4, patience=6)


def training_spec(training: TrainSpec | Mapping[str, object] | None,
                  defaults: TrainSpec) -> TrainSpec:
    """A TrainSpec from None (the defaults), a table of overrides of the defaults, or a
    TrainSpec as it is; its device must exist on this machine (SpecError ``training.device``)."""
    if training is None or isinstance(training, Mapping):
        spec = TrainSpec.from_dict({**defaults.to_dict(), **dict(training or {})}, "training")
    elif isinstance(training, TrainSpec):
        spec = training
    else:
        raise SpecError("training", type(training).__name__,
                        "None, a TrainSpec or a table of TrainSpec fields")
    resolve_device(spec.device, "training.device")
    return spec


def train_members(model: ModelSpec | ModelBuilder, dataset: SetDataset, training: TrainSpec,
                  seeds: Sequence[int], progress: Progress | None = None
                  ) -> tuple[list[SetModel], TrainingSummary]:
    """One trained member per seed, and how training went."""
    started = time.time()
    if isinstance(model, ModelSpec):
        if progress:
            progress(f"training {len(seeds)} member(s) in one vectorised pass")
        result = fit_ensemble(model, dataset, dataclasses.replace(training, seed=seeds[0]),
                              seeds=list(seeds))
        members, histories = result.ensemble.members(), result.histories
    else:
        members, histories = [], []
        info = InputInfo.from_dataset(dataset)
        for k, seed in enumerate(seeds):
            if progress:
                progress(f"training member {k + 1}/{len(seeds)}")
            fitted = fit(build_member(model, info, seed), dataset,
                         dataclasses.replace(training, seed=seed))
            members.append(fitted.model)
            histories.append(fitted.history)
    records = [h.to_dict() for h in histories]
    summary = TrainingSummary(
        seconds=time.time() - started,
        epochs_run=[len(h.get("train_loss", [])) for h in records],
        best_epoch=[h.get("best_epoch") for h in records],
        best_val_loss=[min(h.get("val_loss", [float("nan")])) for h in records])
    return members, summary


def execute(spec: RunSpec, dataset: SetDataset | None = None,
            progress: Progress | None = None) -> RunResult:
    """Run `spec`: data (generated from spec.dataset unless `dataset` is given), training,
    assessment on the test split, and the requested per-split outputs."""
    generate_seconds = 0.0
    if dataset is None:
        if spec.dataset is None:
            raise SpecError("dataset", None, "a DatasetSpec in the RunSpec, or a SetDataset")
        if progress:
            progress("generating the data")
        started = time.perf_counter()
        dataset = make_dataset(spec.dataset)
        generate_seconds = time.perf_counter() - started
    members, training = train_members(spec.model, dataset, spec.training, spec.seeds, progress)
    result = RunResult(spec, dataset, members, training, generate_seconds=generate_seconds)
    if spec.assess is not None:
        if progress:
            progress("assessing")
        result.assessment = assess(members, dataset, spec.assess)
    if spec.outputs is not None:
        result.outputs = {name: split_outputs(members, dataset, name, spec.outputs)
                          for name in spec.outputs.splits}
    return result


def split_outputs(members: Sequence[SetModel], dataset: SetDataset, split_name: str,
                  outputs: OutputSpec) -> SplitOutputs:
    """Probabilities and scores of every member for a whole split, padded to its largest bag;
    each bag explained for its own label."""
    batches = padded_batches(dataset.splits[split_name], outputs.batch_size,
                             device_of(members[0]))
    mask = np.concatenate([b.mask.cpu().numpy() for b in batches])
    return SplitOutputs(predict(members, batches), explain_members(
        members, batches, outputs.method, outputs.options, outputs.seed), mask)
