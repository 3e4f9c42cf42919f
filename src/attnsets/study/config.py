"""Study configs: one TOML/YAML file -> validated StudyConfig -> a list of Cells.

Each setting is declared once, on the spec it configures: [study] is a `StudySettings` (the
study's own keys) plus `AssessSpec` fields, [thresholds] a `SilentFailureCriteria`, [training] a
`TrainSpec`, each [[datasets]] entry a `DatasetSpec`, each [[models]] entry a `ModelSpec`. The
constraint engine (attnsets.spec.constraints) checks them and the preflight
(attnsets.config.preflight) builds every model for the data it meets; every problem is reported
at once, each with its path in the file (``datasets[1].rule.key``), the bad value and what is
allowed, before anything is trained or written.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from attnsets.assess import AssessSpec
from attnsets.config.preflight import (
    DataCheck,
    ModelCheck,
    build_assessment,
    build_model_spec,
    build_training,
    preflight,
)
from attnsets.data import DatasetSpec
from attnsets.data.spec import load_config
from attnsets.device import resolve_device
from attnsets.errors import SpecError, SpecErrors
from attnsets.metrics import SilentFailureCriteria
from attnsets.models import ModelSpec
from attnsets.run import RunSpec, member_seeds
from attnsets.spec.constraints import (
    Constraint,
    ErrorCollector,
    Interval,
    SequenceOf,
    TableOf,
    Text,
    check_declared,
    constrained,
    table_errors,
    validate,
)
from attnsets.study.cell import Cell
from attnsets.training import TrainSpec

STUDY_SECTIONS = ("study", "training", "thresholds", "datasets", "models", "grid")
#: A table of a config file as read (TOML / YAML crosses into typed specs here).
Table = dict[str, object]

#: The shape of each section; their contents are checked by the specs they become.
SECTIONS: dict[str, Constraint] = {
    "study": TableOf(), "training": TableOf(), "thresholds": TableOf(),
    "datasets": SequenceOf(TableOf(), min_length=1),
    "models": SequenceOf(TableOf(), min_length=1), "grid": TableOf()}
REQUIRED_SECTIONS = ("study", "datasets", "models")

#: The AssessSpec fields set in [study]. The others are set per cell (`seed` = the replicate,
#: `criteria` = [thresholds]), by the runner (`device`: where the members are) or keep their
#: defaults (`deletion_steps`, `batch_size`: not part of a cell's record).
STUDY_ASSESS_KEYS = tuple(f.name for f in dataclasses.fields(AssessSpec) if f.name not in (
    "criteria", "seed", "device", "deletion_steps", "batch_size"))


@dataclass(frozen=True)
class StudySettings:
    """The [study] keys that are the study's own; its other keys are `STUDY_ASSESS_KEYS`."""

    name: str = constrained(Text(1))
    #: Replicate seeds: each regenerates the datasets and trains `members` new models.
    seeds: tuple[int, ...] = constrained(SequenceOf(Interval(int, 0), min_length=1),
                                         default=(0,))
    members: int = constrained(Interval(int, 1, 64), default=5)
    #: Heterogeneous ensembles scored by the results page from the stored member scores:
    #: {name: [model names]}, e.g. {"attention+gated" = ["attention", "gated_attention"]}.
    mixed_ensembles: Mapping[str, tuple[str, ...]] = constrained(
        TableOf(SequenceOf(Text(1))), default_factory=dict)
    #: Where every cell trains and is assessed (attnsets.device). Not part of a cell's identity:
    #: a study run on the CPU resumes on a GPU and the other way round.
    device: str = constrained(Text(1), default="auto")

    def __post_init__(self) -> None:
        check_declared(self)


@dataclass(frozen=True)
class StudyFile:
    """The typed sections of a valid study file (the entries of [[datasets]] and [[models]] as
    read: each cell builds its own specs from them)."""

    study: StudySettings
    #: [study]'s assessment keys, with [thresholds] as its criteria.
    assess: AssessSpec
    training: Table
    datasets: tuple[Table, ...]
    models: tuple[Table, ...]

    @property
    def thresholds(self) -> SilentFailureCriteria:
        return self.assess.criteria


@dataclass
class StudyConfig:
    """A validated study: the file as read, its typed sections, its hash and its typed cells."""

    raw: Table
    file: StudyFile
    config_hash: str
    cells: list[Cell] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.file.study.name


@dataclass
class _Sections:
    """The sections of one grid variant, typed where they are right (None where not)."""

    study: StudySettings | None
    assess: AssessSpec | None
    training: Table | None
    datasets: list[Table]
    models: list[Table]

    def complete(self) -> StudyFile | None:
        if self.study is None or self.assess is None or self.training is None:
            return None
        return StudyFile(self.study, self.assess, self.training, tuple(self.datasets),
                         tuple(self.models))


def _table(value: object) -> Table:
    """A config table with string keys ({} for anything else: reported by the shape check)."""
    return {str(k): v for k, v in value.items()} if isinstance(value, Mapping) else {}


def _entries(raw: Mapping[str, object], section: str) -> list[Table]:
    value = raw.get(section)
    return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []


def _name_errors(raw: Mapping[str, object]) -> list[SpecError]:
    """Each [[datasets]] and [[models]] entry has a name of its own."""
    errors = []
    for section in ("datasets", "models"):
        names = [e.get("name") for e in _entries(raw, section)]
        for i, name in enumerate(names):
            if not isinstance(name, str) or not name:
                errors.append(SpecError(f"{section}[{i}].name", name, "a non-empty name"))
            elif names.index(name) != i:
                errors.append(SpecError(f"{section}[{i}].name", name, "a name not used before"))
    return errors


def _split_study(log: ErrorCollector, table: Table) -> tuple[Table, Table]:
    """[study] -> (the StudySettings keys, the AssessSpec keys); other keys are reported."""
    own = [f.name for f in dataclasses.fields(StudySettings)]
    allowed = sorted([*own, *STUDY_ASSESS_KEYS])
    log.extend(SpecError(f"study.{key}", value, f"no such key here; the keys are {allowed}")
               for key, value in table.items() if key not in allowed)
    return ({k: v for k, v in table.items() if k in own},
            {k: v for k, v in table.items() if k in STUDY_ASSESS_KEYS})


def read_sections(raw: Mapping[str, object]) -> tuple[_Sections, list[SpecError]]:
    """The sections of a study file (or of one grid point) typed, with every problem found."""
    log = ErrorCollector()
    log.extend(table_errors(raw, SECTIONS, "", REQUIRED_SECTIONS,
                            f"a table with sections {list(STUDY_SECTIONS)}"))
    log.extend(_name_errors(raw))
    settings: StudySettings | None = None
    own, assess_table = _split_study(log, _table(raw.get("study")))
    if isinstance(raw.get("study"), Mapping):
        settings = log.attempt("study", lambda: validate(StudySettings, own, ""))
    assess = build_assessment(log, _table(raw.get("thresholds")), "thresholds", assess_table,
                              "study", None if settings is None else settings.members)
    if settings is not None:
        log.attempt("study", lambda: resolve_device(settings.device, "device"))
    training = raw.get("training", {})
    if isinstance(training, Mapping) and "device" in training:
        log.extend([SpecError("training.device", training["device"],
                              "no device here: set [study] device, which is not part of a "
                              "cell's identity (so runs on the CPU and a GPU resume each other)")])
    return _Sections(settings, assess, _table(training) if isinstance(training, Mapping) else None,
                     _entries(raw, "datasets"), _entries(raw, "models")), log.errors


@dataclass(frozen=True)
class _DatasetPlan:
    """One [[datasets]] entry built: its spec, its own [training] settings and the TrainSpec
    its cells use (None where wrong: reported)."""

    index: int
    entry: Table
    spec: DatasetSpec | None
    overrides: Table
    training: TrainSpec | None

    def check(self) -> DataCheck | None:
        if self.spec is None:
            return None
        where = f"datasets[{self.index}]"
        return DataCheck(where, self.spec, self.training,
                         lambda f: f"{where}.training.{f}" if f in self.overrides
                         else f"training.{f}", f" (with {where} {self.entry.get('name')!r})")


def _dataset_plan(log: ErrorCollector, index: int, entry: Table, shared: TrainSpec | None,
                  training: Table, device: str) -> _DatasetPlan:
    spec = log.attempt(f"datasets[{index}]", lambda: DatasetSpec.from_dict(_dataset_table(entry)))
    extra = _training_overrides(log, entry, index)
    own = shared if shared is None or not extra else build_training(
        log, {**training, **extra, "device": device}, f"datasets[{index}].training", False)
    return _DatasetPlan(index, entry, spec, extra, own)


def _typed_variant(raw: Mapping[str, object], variant: str, config_hash: str
                   ) -> tuple[list[Cell], list[SpecError]]:
    """Every spec of one grid variant built (and so validated) once, then checked against the
    data each model meets (the preflight); the cells when nothing is wrong."""
    sections, errors = read_sections(raw)
    log = ErrorCollector()
    log.extend(errors)
    device = "auto" if sections.study is None else sections.study.device
    shared = None if sections.training is None else build_training(
        log, {**sections.training, "device": device}, "training", False)
    plans = [_dataset_plan(log, i, entry, shared, sections.training or {}, device)
             for i, entry in enumerate(sections.datasets)]
    models = [build_model_spec(log, _model_table(entry), f"models[{i}]")
              for i, entry in enumerate(sections.models)]
    preflight(log, [c for c in (p.check() for p in plans) if c is not None],
              [ModelCheck(m, functools.partial(_model_field, i))
               for i, m in enumerate(models) if m is not None], sections.assess)
    file = sections.complete()
    if log or file is None:
        return [], log.errors
    return _variant_cells(file, plans, models, variant, config_hash), []


def _variant_cells(file: StudyFile, plans: Sequence[_DatasetPlan],
                   models: Sequence[ModelSpec | None], variant: str, config_hash: str
                   ) -> list[Cell]:
    """dataset x model x replicate: one Cell each, with the typed run it executes."""
    study, assess_spec = file.study, file.assess
    cells = []
    for plan in plans:
        entry, spec, dataset_training = plan.entry, plan.spec, plan.training
        assert spec is not None and dataset_training is not None
        for model_entry, model in zip(file.models, models, strict=True):
            assert model is not None
            for replicate in study.seeds:
                seeds = member_seeds(replicate, study.members)
                run = RunSpec(dataclasses.replace(spec, seed=replicate), model, dataset_training,
                              seeds, dataclasses.replace(assess_spec, seed=replicate))
                cells.append(Cell(study=study.name, dataset_name=entry["name"],
                                  model_name=model_entry["name"], variant=variant,
                                  replicate=replicate, run=run))
    return cells


def _dataset_table(entry: Table) -> Table:
    """A [[datasets]] entry without the keys that are not the dataset's own."""
    return {k: v for k, v in entry.items() if k not in ("name", "training")}


def _model_table(entry: Table) -> Table:
    """A [[models]] entry without its name: the ModelSpec fields."""
    return {k: v for k, v in entry.items() if k != "name"}


def _training_overrides(log: ErrorCollector, entry: Table, index: int) -> Table:
    """datasets[i].training: the [training] settings this dataset's cells replace (a budget per
    rule or bag size); {} when absent or wrong (wrong is reported in `log`)."""
    extra = entry.get("training", {})
    where = f"datasets[{index}].training"
    if not isinstance(extra, Mapping):
        log.extend([SpecError(where, extra, "a table of [training] settings for this dataset")])
        return {}
    if "device" in extra:
        log.extend([SpecError(f"{where}.device", extra["device"],
                              "no device here: set [study] device (see training.device)")])
        return {}
    return _table(extra)


def _model_field(index: int, field: str) -> str:
    """models[i].<field> for a model error (build_model names its fields ``model.*``)."""
    if field.startswith("assess."):
        return "study." + field.removeprefix("assess.")
    return f"models[{index}]" + (field.removeprefix("model") if field.startswith("model") else
                                 f".{field}")


def _at_grid_point(errors: list[SpecError], variant: str) -> list[SpecError]:
    return [SpecError(f"{e.field} [grid point {variant}]", e.value, e.allowed) if variant else e
            for e in errors]


GRID_ROOTS = ("datasets", "models", "training", "thresholds", "study")


def _grid_errors(raw: Mapping[str, object]) -> tuple[dict[str, list[object]], list[SpecError]]:
    grid = raw.get("grid", {})
    if not isinstance(grid, Mapping):
        return {}, []  # reported by the section check
    errors: list[SpecError] = []
    for key, values in grid.items():
        if key.split(".")[0] not in GRID_ROOTS or "." not in key:
            errors.append(SpecError(f"grid.{key}", values,
                                    f"a dotted path starting with one of {list(GRID_ROOTS)}"))
        elif not isinstance(values, list) or not values:
            errors.append(SpecError(f"grid.{key}", values, "a non-empty list of values"))
    return ({} if errors else dict(grid)), errors


def validate_config(raw: object) -> StudyConfig:
    """Validate a whole study config once (every section, every model against every dataset it
    meets, every grid point) and expand it into typed cells; raise SpecErrors with every
    problem found, each naming its path in the file."""
    if not isinstance(raw, dict):
        raise SpecErrors([SpecError("config", raw, f"a table with sections {list(STUDY_SECTIONS)}")])
    sections, errors = read_sections(raw)
    grid, grid_errors = _grid_errors(raw)
    errors += grid_errors
    digest = hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:16]
    cells: list[Cell] = []
    seen = {str(e) for e in errors}
    try:
        variants = expand_grid(raw, grid)
    except SpecError as err:
        errors.append(err)
        variants = [(raw, "")]
    for variant_raw, variant in variants:
        variant_cells, more = _typed_variant(variant_raw, variant, digest)
        cells += variant_cells
        # A problem the file has without the grid is reported once, without a grid point.
        errors += _at_grid_point([e for e in more if str(e) not in seen], variant)
    file = sections.complete()
    if file is not None:
        errors += _mixed_ensemble_errors(file)
    unique: dict[str, SpecError] = {str(e): e for e in errors}
    if unique:
        raise SpecErrors(unique.values())
    assert file is not None
    return StudyConfig(raw, file, digest, cells)


def _mixed_ensemble_errors(file: StudyFile) -> list[SpecError]:
    names = [str(m.get("name")) for m in file.models]
    errors = []
    for group, members in file.study.mixed_ensembles.items():
        where = f"study.mixed_ensembles.{group}"
        if len(set(members)) < 2:
            errors.append(SpecError(where, list(members), "at least two different model names"))
        errors += [SpecError(where, name, f"model names of [[models]] {names}")
                   for name in members if name not in names]
    return errors


def _set_path(data: Table, dotted: str, value: object) -> None:
    """Set `value` at a dotted path; `datasets.x` / `models.x` apply to every entry of the list."""
    head, _, rest = dotted.partition(".")
    if head in ("datasets", "models") and rest:
        for entry in _entries(data, head):
            _set_nested(entry, rest, value, dotted)
    else:
        _set_nested(data, dotted, value, dotted)


def _set_nested(data: Table, path: str, value: object, dotted: str) -> None:
    keys = path.split(".")
    target = data
    for depth, key in enumerate(keys[:-1]):
        inner = target.setdefault(key, {})
        if not isinstance(inner, dict):
            raise SpecError(f"grid.{dotted}", value, f"a path through tables; "
                                                     f"{'.'.join(keys[:depth + 1])} is {inner!r}")
        target = inner
    target[keys[-1]] = value


def expand_grid(raw: Table, grid: Mapping[str, Sequence[object]]) -> list[tuple[Table, str]]:
    """Every combination of grid values applied to the config, with a readable variant name."""
    if not grid or any(not _entries(raw, k.split(".")[0]) for k in grid
                       if k.split(".")[0] in ("datasets", "models")):
        return [(raw, "")]
    keys = sorted(grid)
    variants = []
    for values in itertools.product(*(grid[k] for k in keys)):
        data = copy.deepcopy(raw)
        for key, value in zip(keys, values, strict=True):
            _set_path(data, key, value)
        variants.append((data, ",".join(f"{k}={v}" for k, v in zip(keys, values, strict=True))))
    return variants


def study_cells(config: StudyConfig) -> list[Cell]:
    """The cells of a validated config: grid variants x datasets x models x replicate seeds."""
    return list(config.cells)


def load_study(path: str | Path, device: str | None = None) -> StudyConfig:
    """Read and validate a study file; `device` (e.g. from ``--device``) replaces [study] device."""
    raw = load_config(path)
    study = raw.get("study")
    if device is not None and isinstance(study, dict):
        raw = {**raw, "study": {**study, "device": device}}
    return validate_config(raw)
