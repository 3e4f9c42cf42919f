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
from typing import Any

import numpy as np
from torch import nn

from attnsets.assess import AssessSpec, assess, explain_members, padded_batches, predict
from attnsets.assessment import Assessment
from attnsets.data import DatasetSpec, SetDataset, make_dataset
from attnsets.data.spec import SPLITS
from attnsets.errors import SpecError
from attnsets.models import InputInfo, ModelSpec, SetModel
from attnsets.models.user import ModelBuilder, build_member
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
    options: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    batch_size: int = 128

    def __post_init__(self) -> None:
        from attnsets.explain import EXPLAINERS
        from attnsets.explain.base import check_options

        if self.method not in EXPLAINERS:
            raise EXPLAINERS.unknown(self.method, "method")
        splits = (self.splits,) if isinstance(self.splits, str) else tuple(self.splits)
        if not splits or any(s not in SPLITS for s in splits):
            raise SpecError("splits", self.splits, f"a non-empty list of {list(SPLITS)}")
        object.__setattr__(self, "splits", splits)
        for name in ("seed", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (name != "seed"):
                raise SpecError(name, value, f"an integer >= {int(name != 'seed')}")
        check_options(self.method, EXPLAINERS.get(self.method), self.options, "options")


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
        seeds = self.seeds
        if isinstance(seeds, str) or not isinstance(seeds, Sequence) or not seeds or not all(
                isinstance(s, int | np.integer) and not isinstance(s, bool) and s >= 0
                for s in seeds) or len(set(seeds)) != len(seeds):
            raise SpecError("seeds", seeds, "a non-empty list of distinct integers >= 0")
        object.__setattr__(self, "seeds", tuple(int(s) for s in seeds))
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

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "epochs_run": list(self.epochs_run),
                "best_epoch": list(self.best_epoch), "best_val_loss": list(self.best_val_loss)}


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


def training_spec(training: TrainSpec | Mapping[str, Any] | None,
                  defaults: Mapping[str, Any]) -> TrainSpec:
    """A TrainSpec from None (the defaults), a table of overrides of the defaults, or a
    TrainSpec as it is; its device must exist on this machine (SpecError ``training.device``)."""
    from attnsets.device import resolve_device

    if training is None or isinstance(training, Mapping):
        spec = TrainSpec.from_dict({**defaults, **dict(training or {})}, "training")
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
    from attnsets.device import device_of

    batches = padded_batches(dataset.splits[split_name], outputs.batch_size,
                             device_of(members[0]))
    mask = np.concatenate([b.mask.cpu().numpy() for b in batches])
    return SplitOutputs(predict(members, batches), explain_members(
        members, batches, outputs.method, outputs.options, outputs.seed), mask)


def dataset_info(spec: DatasetSpec) -> InputInfo:
    """What a model needs to know about the data of `spec`, without generating any bags."""
    from attnsets.data.generate import build_pool, build_rule

    pool = build_pool(spec)
    return InputInfo(pool.kind, tuple(pool.instance_shape), build_rule(spec).n_classes,
                     pool.vocab_size)


def check_training(training: TrainSpec, info: InputInfo) -> list[SpecError]:
    """Problems of `training` for data described by `info` (fields relative to training)."""
    weights = training.class_weights
    if isinstance(weights, tuple) and len(weights) != info.n_classes:
        return [SpecError("class_weights", list(weights),
                          f"{info.n_classes} weights (one per class), \"balanced\" or None")]
    return []


def check_model(model: ModelSpec | ModelBuilder, info: InputInfo,
                assess_spec: AssessSpec | None = None) -> list[SpecError]:
    """Build the model for data described by `info` and run it (and every chosen explainer that
    applies, with its options) on a dummy two-instance bag: the parameter values that only a
    real build reveals (heads that do not divide the width, an image encoder on vectors, an
    explainer option of the wrong type) are reported before anything is trained.

    Fields: ``model...`` for the model, ``assess.explainer_options.<method>...`` for options."""
    from attnsets.data.bags import Batch
    from attnsets.explain import explain
    from attnsets.explain.base import available_methods, dummy_input, resolve_method
    from attnsets.models import build_model

    try:
        built = build_model(model, info, seed=0) if isinstance(model, ModelSpec) \
            else build_member(model, info, 0)
        x, mask = dummy_input(info)
        methods = available_methods(built, Batch(x, mask, *_dummy_targets(mask)))
    except SpecError as err:
        return [err if err.field.startswith("model") else err.with_prefix("model")]
    except Exception as err:  # noqa: BLE001 - any failure to build or run is a bad spec
        return [SpecError("model", _describe_model(model),
                          f"a model that builds and runs on {info.kind} data of shape "
                          f"{info.instance_shape} ({type(err).__name__}: {err})")]
    errors: list[SpecError] = []
    if assess_spec is None:
        return errors
    batch = Batch(x, mask, *_dummy_targets(mask))
    for method in assess_spec.explainers:
        if method not in methods:
            continue
        options = assess_spec.options_for(method)
        seeded = {"seed": 0} if resolve_method(method)[1].takes_seed else {}
        try:
            explain(built, batch, method, **options, **seeded)
        except SpecError as err:
            errors.append(SpecError(f"assess.explainer_options.{method}.{err.field}",
                                    err.value, err.allowed))
        except Exception as err:  # noqa: BLE001 - e.g. an option of the wrong type
            errors.append(SpecError(f"assess.explainer_options.{method}", options,
                                    f"options {method!r} accepts ({type(err).__name__}: {err})"))
    return errors


def _dummy_targets(mask: Any) -> tuple[Any, ...]:
    """labels, evidence, concepts, target of a dummy batch (one bag, class 0)."""
    import torch

    bags, width = mask.shape
    labels = torch.zeros(bags, dtype=torch.int64, device=mask.device)
    return (labels, torch.zeros((bags, width), device=mask.device),
            torch.zeros((bags, width), dtype=torch.int64, device=mask.device), labels)


def _describe_model(model: ModelSpec | ModelBuilder | nn.Module) -> Any:
    return model.to_dict() if isinstance(model, ModelSpec) else repr(model)


#: Tables of a single-run config file (`attnsets evaluate`); the dataset is the [dataset] table
#: or, without one, the file's pool / rule / bags / bag_size / witnesses / seed keys.
RUN_TABLES = ("dataset", "model", "training", "assess", "thresholds")
DATASET_KEYS = ("pool", "rule", "bags", "bag_size", "witnesses", "seed")


def run_spec_from_config(raw: Mapping[str, Any], *, members: int = 5, seed: int = 0,
                         default_explainers: Sequence[str] = ("attention", "random"),
                         **overrides: Any) -> RunSpec:
    """A RunSpec from a single-run config (every problem raised at once as SpecErrors, each
    with its path in the file). Members use seeds seed .. seed + members - 1 and the assessment
    seed `seed`. overrides: ``pooling``, ``epochs``, ``device`` (training; the assessment runs
    where the members are) or ``explainers`` (None = keep the file's)."""
    from attnsets.errors import SpecErrors
    from attnsets.metrics import SilentFailureCriteria
    from attnsets.registry import build_dataclass

    errors: list[SpecError] = []
    if not isinstance(raw, Mapping):
        raise SpecErrors([SpecError("config", raw, f"a table with {list(RUN_TABLES)}")])
    tables: dict[str, dict[str, Any]] = {}
    for name in RUN_TABLES:
        value = raw.get(name, {})
        if not isinstance(value, Mapping):
            errors.append(SpecError(name, value, "a table"))
            value = {}
        tables[name] = dict(value)
    dataset_table = tables["dataset"] or {k: v for k, v in raw.items() if k in DATASET_KEYS}
    model_table = {"pooling": "attention", **tables["model"]}
    if overrides.get("pooling"):
        model_table["pooling"] = overrides["pooling"]
    for key in ("epochs", "device"):
        if overrides.get(key) is not None:
            tables["training"][key] = overrides[key]
    assess_table = dict(tables["assess"])
    if overrides.get("explainers"):
        assess_table["explainers"] = tuple(overrides["explainers"])
    assess_table.setdefault("explainers", tuple(default_explainers))
    assess_table["seed"] = seed

    def collect(path: str, build: Callable[[], Any]) -> Any:
        try:
            return build()
        except SpecErrors as err:
            errors.extend(e.with_prefix(path) if path else e for e in err.errors)
        except SpecError as err:
            errors.append(err.with_prefix(path) if path else err)
        return None

    dataset = collect("dataset" if tables["dataset"] else "",
                      lambda: DatasetSpec.from_dict(dataset_table))
    model = collect("model", lambda: build_dataclass(ModelSpec, model_table, ""))
    if model is not None:
        errors.extend(e.with_prefix("model") for e in model.check())
    training = collect("training", lambda: TrainSpec.from_dict(tables["training"], ""))
    if training is not None:
        from attnsets.device import resolve_device

        collect("training", lambda: resolve_device(training.device, "device"))
    criteria = collect("thresholds", lambda: build_dataclass(
        SilentFailureCriteria, tables["thresholds"], ""))
    assessment = collect("assess", lambda: AssessSpec.from_dict(
        assess_table, "", criteria or SilentFailureCriteria()))
    seeds = tuple(range(seed, seed + members))
    if dataset is not None:
        info = collect("dataset", lambda: dataset_info(dataset))
        if info is not None and model is not None:
            errors.extend(check_model(model, info, assessment))
        if info is not None and training is not None:
            errors.extend(e.with_prefix("training") for e in check_training(training, info))
    if errors:
        raise SpecErrors({str(e): e for e in errors}.values())
    try:
        return RunSpec(dataset, model, training, seeds, assessment)
    except SpecError as err:
        raise SpecErrors([err]) from None
