"""Audit your own set model: does it learn, does its attention find the witnesses, does it fail
silently, does it pass the algorithmic unit tests, does it respect padding?

``audit(model_builder)`` trains a small ensemble of your model on each dataset of a battery
(modalities x labelling rules, with ground-truth witnesses), assesses it with
`attnsets.assess.assess` and returns a pass/fail table with the numbers behind every verdict.

`model_builder` is a registered pooling name ("attention", "gated_attention", ...), a ModelSpec,
or a callable ``(info: InputInfo, seed: int) -> nn.Module`` whose ``forward(x, mask)`` returns a
SetOutput, a tuple ``(logits, attention)`` or logits alone (see examples/my_model.py). Before
any training the model is probed on a few real bags: wrong output shapes raise SpecError;
non-zero attention at padded positions and logits that change with the padding are reported.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from attnsets.assess import AssessSpec, assess
from attnsets.data import DatasetSpec, SetDataset, collate, make_dataset
from attnsets.errors import SpecError, SpecErrors, TrainingDivergedError
from attnsets.metrics import SilentFailureCriteria
from attnsets.models import POOLINGS, InputInfo, ModelSpec, SetModel, SetOutput
from attnsets.registry import build_dataclass
from attnsets.training import TrainSpec, fit, fit_ensemble

#: A user builder: (InputInfo, member seed) -> a module following the SetModel contract.
ModelBuilder = Callable[[InputInfo, int], nn.Module]
Progress = Callable[[str], None]

#: Attention at a padded position above this counts as "attention leaks onto padding".
PADDING_ATTENTION_TOLERANCE = 1e-6
#: A change of any class probability above this when only the padding changes is reported.
PADDING_PROBABILITY_TOLERANCE = 1e-4

#: The model used for a registered pooling name: small encoders, as in configs/demo.toml.
AUDIT_EMBED_DIM = 32
AUDIT_PER_ENCODER: dict[str, dict[str, Any]] = {
    "cnn": {"channels": [8, 16], "kernel_size": 3}, "seq_cnn": {"channels": 32}}

#: Training used when `audit(training=None)`: enough for every default entry to be learnable.
AUDIT_TRAINING: dict[str, Any] = {"epochs": 30, "batch_size": 16, "lr": 0.002,
                                  "weight_decay": 0.0001, "patience": 6}

_SMALL = {"train": 160, "val": 60, "test": 60}
#: Gaussian instances are cheap; more training bags let a plain attention model learn them.
_GAUSSIAN_BAGS = {"train": 300, "val": 60, "test": 60}
_GAUSSIAN = {"name": "gaussian", "num_concepts": 6, "dim": 8, "separation": 5.0}

#: The default battery: (name, dataset spec, what it checks). Sizes keep a whole audit of a
#: small model at a couple of minutes on 2 CPU cores.
DEFAULT_BATTERY: tuple[dict[str, Any], ...] = (
    {"name": "gaussian-presence", "about": "classical MIL: positive iff a key instance is present",
     "pool": _GAUSSIAN, "rule": {"name": "presence", "key": 2}, "bags": _GAUSSIAN_BAGS,
     "bag_size": {"kind": "uniform", "low": 6, "high": 14}},
    {"name": "gaussian-threshold", "about": "counting: positive iff >= 2 key instances",
     "pool": _GAUSSIAN, "rule": {"name": "threshold", "key": 2, "k": 2},
     "bags": _GAUSSIAN_BAGS, "bag_size": {"kind": "uniform", "low": 8, "high": 16},
     "witnesses": {"count": [2, 4]}},
    {"name": "digits-presence", "about": "images: positive iff an 8x8 digit 9 is present",
     "pool": {"name": "digits"}, "rule": {"name": "presence", "key": 9}, "bags": _SMALL,
     "bag_size": {"kind": "normal", "mean": 8, "sd": 2, "min": 3}},
    {"name": "sequences-presence", "about": "sequences: positive iff a motif-1 sequence is present",
     "pool": {"name": "sequences", "n_motifs": 2, "motif_length": 4, "min_length": 10,
              "max_length": 16},
     "rule": {"name": "presence", "key": 1}, "bags": _SMALL,
     "bag_size": {"kind": "uniform", "low": 6, "high": 12}},
    {"name": "gaussian-poison", "about": "unit test: a poison instance swaps sides at test time",
     "pool": _GAUSSIAN, "rule": {"name": "poison", "key": 2, "poison": 0},
     "bags": _GAUSSIAN_BAGS,
     "bag_size": {"kind": "uniform", "low": 6, "high": 14}},
    {"name": "gaussian-false_frequency",
     "about": "unit test: test negatives hold 35-44 copies of a shortcut concept",
     "pool": _GAUSSIAN, "rule": {"name": "false_frequency", "key": 2, "frequent": 3},
     "bags": _GAUSSIAN_BAGS, "bag_size": {"kind": "uniform", "low": 6, "high": 14}},
)


# --------------------------------------------------------------------------- the battery


@dataclass(frozen=True)
class BatteryEntry:
    """One dataset of the battery. The replicate seed of the audit replaces `dataset.seed`."""

    name: str
    dataset: DatasetSpec
    about: str = ""

    @property
    def shifted_test(self) -> bool:
        """Is the test split deliberately shifted (an algorithmic unit test)?"""
        return self.dataset.shifted_test


def battery_entry(table: Mapping[str, Any], path: str = "battery") -> BatteryEntry:
    """A BatteryEntry from ``{"name": ..., "about": ..., **dataset spec}`` (a study config's
    [[datasets]] table works)."""
    if not isinstance(table, Mapping):
        raise SpecError(path, table, "a table with `name` and a dataset spec (pool, rule, ...)")
    name = table.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError(f"{path}.name", name, "a non-empty name for the battery entry")
    about = table.get("about", "")
    spec_table = {k: v for k, v in table.items() if k not in ("name", "about")}
    return BatteryEntry(name, DatasetSpec.from_dict(spec_table, path), str(about))


def default_battery() -> list[BatteryEntry]:
    """The default battery: gaussian presence / threshold / poison / false_frequency, digits
    presence and sequences presence, each with 160 / 60 / 60 bags."""
    return [battery_entry(table, f"battery[{i}]") for i, table in enumerate(DEFAULT_BATTERY)]


def resolve_battery(battery: Sequence[BatteryEntry | Mapping[str, Any]] | None
                    ) -> list[BatteryEntry]:
    """None -> the default battery; otherwise each item as a BatteryEntry (names unique)."""
    if battery is None:
        return default_battery()
    if isinstance(battery, str | bytes | Mapping) or not isinstance(battery, Sequence) \
            or len(battery) == 0:
        raise SpecError("battery", battery, "None (the default battery) or a non-empty list of "
                                            "BatteryEntry / {name, pool, rule, ...} tables")
    entries = [item if isinstance(item, BatteryEntry) else battery_entry(item, f"battery[{i}]")
               for i, item in enumerate(battery)]
    names = [e.name for e in entries]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SpecError("battery.name", repeated[0], "a distinct name for every entry")
    return entries


def load_battery(path: str | Path) -> list[BatteryEntry]:
    """Read a battery from a TOML / YAML file of [[datasets]] tables (name + dataset spec)."""
    from attnsets.data.spec import load_config

    raw = load_config(path)
    tables = raw.get("datasets") if isinstance(raw, dict) else None
    if not isinstance(tables, list) or not tables:
        raise SpecError("datasets", tables, f"a list of [[datasets]] tables in {path}")
    return resolve_battery(tables)


# --------------------------------------------------------------------------- user models


class UserModel(SetModel):
    """A user module behind the SetModel interface, so that fit, assess and the explainers can
    use it. encode is the identity (the user's module sees the raw x: (B, N, *shape)); head runs
    the user's forward and turns its output into a SetOutput."""

    def __init__(self, module: nn.Module, info: InputInfo) -> None:
        super().__init__(nn.Identity(), _OutputAdapter(module), None, info)

    @property
    def module(self) -> nn.Module:
        return self.pooling.module  # type: ignore[no-any-return]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _OutputAdapter(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> SetOutput:
        return as_set_output(self.module(x, mask))


def as_set_output(output: Any, where: str = "model output") -> SetOutput:
    """A SetOutput from what a user forward returned: a SetOutput, (logits,), (logits,
    attention) or a logits tensor. Types are checked here, shapes by `probe_model`."""
    if isinstance(output, SetOutput):
        return output
    if isinstance(output, torch.Tensor):
        return SetOutput(output)
    if isinstance(output, tuple | list) and len(output) in (1, 2):
        logits = output[0]
        attention = output[1] if len(output) == 2 else None
        if not isinstance(logits, torch.Tensor) or not (
                attention is None or isinstance(attention, torch.Tensor)):
            raise SpecError(where, _describe(output),
                            "(logits tensor (B, C), attention tensor (B, N) or None)")
        return SetOutput(logits, attention)
    raise SpecError(where, _describe(output),
                    "a SetOutput, a tuple (logits (B, C), attention (B, N) or None), or logits")


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)}"
    if isinstance(value, tuple | list):
        return f"{type(value).__name__} of ({', '.join(_describe(v) for v in value)})"
    return type(value).__name__


def build_member(builder: ModelBuilder, info: InputInfo, seed: int) -> SetModel:
    """Call the user's builder with torch seeded by `seed`; check it made a trainable module."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            module = builder(info, seed)
        except SpecError:
            raise
        except Exception as err:
            raise SpecError("model_builder", f"{type(err).__name__}: {err}",
                            f"a builder callable as builder(info, seed) with info={info}"
                            ) from err
    if not isinstance(module, nn.Module):
        raise SpecError("model_builder", type(module).__name__,
                        "a builder returning a torch.nn.Module (it returned something else)")
    if not any(p.requires_grad for p in module.parameters()):
        raise SpecError("model_builder", type(module).__name__,
                        "a module with trainable parameters")
    if isinstance(module, SetModel):
        return module
    return UserModel(module, info)


@dataclass(frozen=True)
class ProbeReport:
    """What a forward pass on a few real bags showed (before any training).

    output_kind: "SetOutput" | "tuple" | "logits"; has_attention: the model returns attention;
    padding_attention_max: largest |attention| at a padded position (should be 0);
    padding_probability_change: largest change of a class probability when the padding is
    widened and filled with junk values (should be 0)."""

    output_kind: str
    has_attention: bool
    padding_attention_max: float
    padding_probability_change: float

    @property
    def attention_at_padding(self) -> bool:
        return self.padding_attention_max > PADDING_ATTENTION_TOLERANCE

    @property
    def padding_changes_output(self) -> bool:
        return not self.padding_probability_change <= PADDING_PROBABILITY_TOLERANCE

    @property
    def respects_padding(self) -> bool:
        return not (self.attention_at_padding or self.padding_changes_output)

    def problems(self) -> list[str]:
        out = []
        if self.attention_at_padding:
            out.append(f"attention at padded positions (max {self.padding_attention_max:.3g}, "
                       "should be 0)")
        if self.padding_changes_output:
            out.append(f"the padding changes the prediction (class probability moves by up to "
                       f"{self.padding_probability_change:.3g})")
        return out


def _output_kind(raw: Any) -> str:
    if isinstance(raw, SetOutput):
        return "SetOutput"
    return "logits" if isinstance(raw, torch.Tensor) else "tuple"


def _probe_bags(dataset: SetDataset, n_bags: int) -> list[Any]:
    """A few train bags of different sizes (the smallest and largest first)."""
    split = dataset.train
    order = np.argsort(split.sizes, kind="stable")
    picks = [int(order[0]), int(order[-1]), *[int(i) for i in order[1:-1]][: max(0, n_bags - 2)]]
    return [split[i] for i in dict.fromkeys(picks)]


def _junk_padding(x: torch.Tensor, mask: torch.Tensor, vocab_size: int,
                  generator: torch.Generator) -> torch.Tensor:
    """x with every padded instance replaced by junk: large normals, or random tokens."""
    pad = ~mask
    if x.dtype.is_floating_point:
        junk = torch.randn(x.shape, generator=generator, dtype=x.dtype) * 5.0
    else:
        junk = torch.randint(1, max(vocab_size, 2), x.shape, generator=generator, dtype=x.dtype)
    where = pad.reshape(*pad.shape, *([1] * (x.dim() - 2)))
    return torch.where(where, junk, x)


def probe_model(model: SetModel, dataset: SetDataset, n_bags: int = 4) -> ProbeReport:
    """Check a model's output on real bags: logits (B, C) finite, attention (B, N) or None,
    attention 0 at padding, and logits unchanged by the padding. Shape and type problems raise
    SpecError (field ``model_builder``); padding problems are reported."""
    bags = _probe_bags(dataset, n_bags)
    widest = max(len(b) for b in bags)
    narrow = collate(bags, pad_to=widest + 2)
    wide = collate(bags, pad_to=widest + 7)
    n_classes = dataset.n_classes
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            module = model.module if isinstance(model, UserModel) else model
            raw = _checked_forward(module, narrow.x, narrow.mask)
            output = as_set_output(raw, "model_builder.forward")
            generator = torch.Generator().manual_seed(0)
            junk_x = _junk_padding(wide.x, wide.mask, dataset.vocab_size, generator)
            widened = as_set_output(_checked_forward(module, junk_x, wide.mask),
                                    "model_builder.forward")
    finally:
        model.train(was_training)
    batch = len(bags)
    _check_logits(output.logits, batch, n_classes)
    _check_logits(widened.logits, batch, n_classes)
    if (output.attention is None) != (widened.attention is None):
        raise SpecError("model_builder.forward", "attention on some batches only",
                        "attention (B, N) on every batch, or None on every batch")
    attention_max = 0.0
    if output.attention is not None:
        for out, padded in ((output, narrow), (widened, wide)):
            attention = out.attention
            assert attention is not None  # checked just above; narrows the type
            shape = tuple(padded.mask.shape)
            if tuple(attention.shape) != shape:
                raise SpecError("model_builder.forward", f"attention of shape "
                                f"{tuple(attention.shape)}", f"attention of shape (B, N) = "
                                f"{shape} (one weight per instance) or None")
            if not bool(torch.isfinite(attention[padded.mask]).all()):
                raise SpecError("model_builder.forward", "non-finite attention",
                                "finite attention at real instances")
            leaked = attention[~padded.mask].abs()
            attention_max = max(attention_max, float(leaked.max()) if leaked.numel() else 0.0)
    change = (torch.softmax(output.logits.double(), -1)
              - torch.softmax(widened.logits.double(), -1)).abs().max()
    return ProbeReport(_output_kind(raw), output.attention is not None, attention_max,
                       float(change) if torch.isfinite(change) else math.inf)


def _checked_forward(module: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> Any:
    try:
        return module(x, mask)
    except SpecError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of user code on a valid batch
        raise SpecError("model_builder.forward", f"{type(err).__name__}: {err}",
                        f"a forward(x, mask) that accepts x: {tuple(x.shape)} {x.dtype} and "
                        f"mask: {tuple(mask.shape)} bool") from err


def _check_logits(logits: torch.Tensor, batch: int, n_classes: int) -> None:
    if tuple(logits.shape) != (batch, n_classes):
        raise SpecError("model_builder.forward", f"logits of shape {tuple(logits.shape)}",
                        f"logits of shape (B, C) = ({batch}, {n_classes}) for {batch} bags and "
                        f"{n_classes} classes")
    if not logits.dtype.is_floating_point or not bool(torch.isfinite(logits).all()):
        raise SpecError("model_builder.forward", f"logits of dtype {logits.dtype} with "
                        f"{int((~torch.isfinite(logits.double())).sum())} non-finite values",
                        "finite floating-point logits")


# --------------------------------------------------------------------------- model references


@contextmanager
def _cwd_on_path() -> Iterator[None]:
    """Let `module:object` references name modules of the working directory (as `python -m`
    does), without leaving the directory on sys.path."""
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def load_builder(reference: str) -> ModelBuilder | str:
    """Resolve a model reference from the command line.

    "attention" (a registered pooling name) -> the name; "package.module:build" or
    "path/to/file.py:build" -> the object `build` (dotted attributes allowed, e.g.
    "mod:Factory.build")."""
    if not isinstance(reference, str) or not reference:
        raise SpecError("model", reference, "a pooling name or module:object")
    if ":" not in reference:
        if reference in POOLINGS:
            return reference
        raise SpecError("model", reference, f"a registered pooling ({POOLINGS.names()}) or "
                                            "module:object / path/to/file.py:object")
    module_part, _, attribute = reference.rpartition(":")
    if not module_part or not attribute:
        raise SpecError("model", reference, "module:object with both parts")
    path = Path(module_part).expanduser()
    if module_part.endswith(".py") or path.is_file():
        if not path.is_file():
            raise SpecError("model", reference, f"an existing Python file ({path} not found)")
        name = f"attnsets_user_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise SpecError("model", reference, "a loadable Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look modules up by name
        spec.loader.exec_module(module)
    else:
        try:
            with _cwd_on_path():
                module = importlib.import_module(module_part)
        except ModuleNotFoundError as err:
            raise SpecError("model", reference, f"an importable module ({err})") from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise SpecError("model", reference, f"an object of {module_part} (no {part!r} there; "
                                                f"it has {_public_names(target)})")
        target = getattr(target, part)
    if not callable(target):
        raise SpecError("model", reference, "a callable (info, seed) -> nn.Module")
    return target  # type: ignore[no-any-return]


def _public_names(obj: Any) -> list[str]:
    return sorted(n for n in vars(obj) if not n.startswith("_"))[:20] if hasattr(
        obj, "__dict__") else []


# --------------------------------------------------------------------------- the audit


@dataclass
class EntryRun:
    """One battery entry: its probe and, per replicate seed, the assessment metrics (or the
    error that stopped training)."""

    entry: BatteryEntry
    probe: ProbeReport
    metrics: list[dict[str, Any]] = field(default_factory=list)
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
    spec: ModelSpec | None = None
    builder: ModelBuilder | None = None

    def build(self, info: InputInfo, seed: int) -> SetModel:
        if self.spec is not None:
            from attnsets.models import build_model

            return build_model(self.spec, info, seed=seed)
        assert self.builder is not None
        return build_member(self.builder, info, seed)


def _candidate(model_builder: Any) -> _Candidate:
    if isinstance(model_builder, str):
        resolved = load_builder(model_builder)
        if isinstance(resolved, str):
            return _Candidate(resolved, spec=ModelSpec(pooling=resolved, embed_dim=AUDIT_EMBED_DIM,
                                                       per_encoder=AUDIT_PER_ENCODER))
        return _Candidate(model_builder, builder=resolved)
    if isinstance(model_builder, ModelSpec):
        POOLINGS.get(model_builder.pooling, "model_builder.pooling")
        return _Candidate(model_builder.pooling, spec=model_builder)
    if callable(model_builder):
        name = getattr(model_builder, "__qualname__", type(model_builder).__name__)
        module = getattr(model_builder, "__module__", "")
        return _Candidate(f"{module}:{name}" if module else name, builder=model_builder)
    raise SpecError("model_builder", type(model_builder).__name__,
                    "a pooling name, a ModelSpec, module:object, or a callable "
                    "(info, seed) -> nn.Module")


def _train_spec(training: TrainSpec | Mapping[str, Any] | None) -> TrainSpec:
    if training is None:
        return TrainSpec.from_dict(dict(AUDIT_TRAINING), "training")
    if isinstance(training, TrainSpec):
        return training
    if isinstance(training, Mapping):
        return TrainSpec.from_dict({**AUDIT_TRAINING, **training}, "training")
    raise SpecError("training", type(training).__name__, "None, a TrainSpec or a table of "
                                                         "TrainSpec fields")


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
    if not seed_list or not all(isinstance(s, int | np.integer) and not isinstance(s, bool)
                                and s >= 0 for s in seed_list) \
            or len(set(seed_list)) != len(seed_list):
        raise SpecError("seeds", seeds, "a non-empty list of distinct integers >= 0")
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise SpecError("members", members, "an integer >= 1")
    return [int(s) for s in seed_list]


def member_seeds(replicate: int, members: int) -> list[int]:
    """Model seeds of one replicate, disjoint across replicates (as in studies)."""
    return [replicate * 1000 + m for m in range(members)]


def _train(candidate: _Candidate, dataset: SetDataset, spec: TrainSpec,
           seeds: list[int], progress: Progress | None, label: str) -> list[SetModel]:
    if candidate.spec is not None:
        if progress:
            progress(f"{label}: training {len(seeds)} member(s) in one vectorised pass")
        result = fit_ensemble(candidate.spec, dataset, dataclasses.replace(spec, seed=seeds[0]),
                              seeds=seeds)
        return result.ensemble.members()
    trained = []
    info = InputInfo.from_dataset(dataset)
    for k, seed in enumerate(seeds):
        if progress:
            progress(f"{label}: training member {k + 1}/{len(seeds)}")
        model = candidate.build(info, seed)
        trained.append(fit(model, dataset, dataclasses.replace(spec, seed=seed)).model)
    return trained


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
    spec = _train_spec(training)
    criteria = _criteria(thresholds)
    assess_spec = AssessSpec(explainers=("attention",), criteria=criteria, bootstrap=0,
                             curve_subsets=10, deletion_steps=5)
    datasets: dict[tuple[str, int], SetDataset] = {}
    runs = []
    # Every dataset is generated and every probe run before the first training, so that a
    # broken model fails in seconds, not after minutes of training.
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
    for run in runs:
        entry_started = time.perf_counter()
        for replicate in replicates:
            dataset = datasets[run.entry.name, replicate]
            label = f"{run.entry.name} (seed {replicate})"
            try:
                models = _train(candidate, dataset, spec, member_seeds(replicate, members),
                                progress, label)
            except TrainingDivergedError as err:
                run.errors.append(f"seed {replicate}: {err}")
                continue
            except Exception as err:
                if candidate.spec is not None:
                    raise
                # User code that passed the probe but fails in training (e.g. on another bag
                # size) is an audit finding for this entry, not a reason to stop the audit.
                run.errors.append(f"seed {replicate}: training failed: "
                                  f"{type(err).__name__}: {err}")
                continue
            if progress:
                progress(f"{label}: assessing")
            run.metrics.append(assess(models, dataset, assess_spec).metrics)
        run.seconds = time.perf_counter() - entry_started
    table = pd.DataFrame([_row(run, criteria, members * len(replicates)) for run in runs])
    return AuditResult(candidate.name, _typed(table), runs, criteria,
                       time.perf_counter() - started)


# --------------------------------------------------------------------------- verdicts


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _row(run: EntryRun, criteria: SilentFailureCriteria, planned: int) -> dict[str, Any]:
    entry, probe, metrics = run.entry, run.probe, run.metrics
    bag_key = criteria.bag_metric
    row: dict[str, Any] = {
        "entry": entry.name, "modality": entry.dataset.pool.name, "rule": entry.dataset.rule.name,
        "shifted_test": entry.shifted_test, "members_trained": sum(m["n_members"] for m in metrics),
        "members_planned": planned,
    }
    test_scores = [b[bag_key] for m in metrics for b in m["members"]["bag"]]
    val_scores = [f["train_metric"] for m in metrics for f in m.get("unit_test", {}).get(
        "members", [])]
    row["test_" + bag_key] = _nanmean(test_scores)
    row["val_" + bag_key] = _nanmean(val_scores) if entry.shifted_test else math.nan
    row["learn_split"] = "val" if entry.shifted_test else "test"
    row["learn_score"] = row["val_" + bag_key] if entry.shifted_test else row["test_" + bag_key]
    has_attention = probe.has_attention and all("attention" in m["members"]["importance"]
                                                for m in metrics)
    key = criteria.importance_metric
    member_importance = [r[key] for m in metrics
                         for r in m["members"]["importance"].get("attention", [])]
    silent = [bool(s) for m in metrics for s in m["members"]["silent"].get("attention", [])]
    row["attention_" + key] = _nanmean(member_importance)
    row["attention_" + key + "_worst"] = float(np.nanmin(member_importance)) \
        if any(not math.isnan(v) for v in member_importance) else math.nan
    row["ensemble_attention_" + key] = _nanmean(
        [m["ensemble"]["attention"][key] for m in metrics if "attention" in m["ensemble"]])
    row["silent_members"] = sum(silent) if has_attention else pd.NA
    flags = [f for m in metrics for f in m.get("unit_test", {}).get("members", [])]
    row["unit_test_flagged_members"] = sum(bool(f["flagged"]) for f in flags) \
        if entry.shifted_test else pd.NA
    row["padding_attention_max"] = probe.padding_attention_max
    row["padding_probability_change"] = probe.padding_probability_change
    row["train_seconds"] = run.seconds
    notes: list[str] = [*probe.problems(), *run.errors]

    trained = bool(metrics)
    learns = trained and row["learn_score"] >= criteria.min_bag_score
    if not trained:
        notes.append("no member could be trained")
    elif not learns:
        notes.append(f"does not learn the task ({bag_key} {row['learn_score']:.3f} on the "
                     f"{row['learn_split']} split < {criteria.min_bag_score})")
    finds: bool | None = None
    no_silent: bool | None = None
    if not probe.has_attention:
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
    if entry.shifted_test and learns:
        passes_unit = row["unit_test_flagged_members"] == 0
        if not passes_unit:
            notes.append(f"{row['unit_test_flagged_members']} member(s) fail the shifted test "
                         "split (learned a shortcut)")
    row.update({"learns_task": learns, "attention_finds_witnesses": finds,
                "no_silent_failures": no_silent, "passes_unit_test": passes_unit,
                "respects_padding": probe.respects_padding})
    verdicts = [learns, finds, no_silent, passes_unit, probe.respects_padding, not run.errors]
    row["passed"] = all(v is not False for v in verdicts)
    row["notes"] = "; ".join(notes)
    return row


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
