"""Study configs: one TOML/YAML file -> validated StudyConfig -> a list of Cells.

Validation collects every problem at once, each with its path in the file (``datasets[1].rule.key``),
the bad value and what is allowed, before anything is trained or written.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError

from attnsets.errors import SpecError, SpecErrors
from attnsets.study.cell import Cell

STUDY_SECTIONS = ("study", "training", "thresholds", "datasets", "models", "grid")


class StudySection(BaseModel):
    """[study]: what to run for every dataset x model."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    seeds: list[NonNegativeInt] = Field(default=[0], min_length=1)
    members: int = Field(default=5, ge=1, le=64)
    ensemble_sizes: list[int] | None = None
    explainers: list[str] = Field(default=["attention", "random"], min_length=1)
    explainer_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    combine: str = "mean_normalised"
    evaluated_classes: str = "label"
    #: Expensive explainers and deletion curves score at most this many test bags per cell.
    bag_budget: int | None = Field(default=None, ge=1)
    random_orders: int = Field(default=10, ge=1)
    bootstrap: int = Field(default=200, ge=0)
    curve_subsets: int = Field(default=50, ge=1)
    #: Heterogeneous ensembles scored by the results page from the stored member scores:
    #: {name: [model names]}, e.g. {"attention+gated" = ["attention", "gated_attention"]}.
    mixed_ensembles: dict[str, list[str]] = Field(default_factory=dict)
    #: Where every cell trains and is assessed (attnsets.device). Not part of a cell's identity:
    #: a study run on the CPU resumes on a GPU and the other way round.
    device: str = "auto"


class ThresholdSection(BaseModel):
    """[thresholds]: the silent-failure criteria."""

    model_config = ConfigDict(extra="forbid")
    min_bag_score: float = Field(default=0.9, ge=0, le=1)
    max_importance: float = Field(default=0.7, ge=0, le=1)
    bag_metric: str = "balanced_accuracy"
    importance_metric: str = "auroc"


class StudyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    study: StudySection
    training: dict[str, Any] = Field(default_factory=dict)
    thresholds: ThresholdSection = Field(default_factory=ThresholdSection)
    datasets: list[dict[str, Any]] = Field(min_length=1)
    models: list[dict[str, Any]] = Field(min_length=1)
    grid: dict[str, list[Any]] = Field(default_factory=dict)


@dataclass
class StudyConfig:
    """A validated study: the file as read, its sections, its hash and its typed cells."""

    raw: dict[str, Any]
    file: StudyFile
    config_hash: str
    cells: list[Cell] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.file.study.name


def _pydantic_errors(err: ValidationError) -> list[SpecError]:
    out = []
    for e in err.errors():
        path = ""
        for part in e["loc"]:
            path = f"{path}[{part}]" if isinstance(part, int) else (f"{path}.{part}" if path else str(part))
        allowed = e["msg"] if e["type"] != "extra_forbidden" else "no such key here"
        if e["type"] == "missing":
            allowed = "a value (this field is required)"
        out.append(SpecError(path, e.get("input") if e["type"] != "missing" else None, allowed))
    return out


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `value` at a dotted path; `datasets.x` / `models.x` apply to every entry of the list."""
    head, _, rest = dotted.partition(".")
    if head in ("datasets", "models") and rest:
        for entry in _entries(data, head):
            _set_nested(entry, rest, value, dotted)
    else:
        _set_nested(data, dotted, value, dotted)


def _set_nested(data: dict[str, Any], path: str, value: Any, dotted: str) -> None:
    keys = path.split(".")
    for depth, key in enumerate(keys[:-1]):
        data = data.setdefault(key, {})
        if not isinstance(data, dict):
            raise SpecError(f"grid.{dotted}", value, f"a path through tables; "
                                                     f"{'.'.join(keys[:depth + 1])} is {data!r}")
    data[keys[-1]] = value


GRID_ROOTS = ("datasets", "models", "training", "thresholds", "study")


def _entries(raw: dict[str, Any], section: str) -> list[dict[str, Any]]:
    value = raw.get(section)
    return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []


def _file_errors(raw: dict[str, Any]) -> tuple[StudyFile | None, list[SpecError]]:
    """The section shapes (pydantic) and the names of datasets and models."""
    errors: list[SpecError] = []
    file: StudyFile | None = None
    try:
        file = StudyFile.model_validate(raw)
    except ValidationError as err:
        errors += _pydantic_errors(err)
    for section in ("datasets", "models"):
        names = [e.get("name") for e in _entries(raw, section)]
        for i, name in enumerate(names):
            if not isinstance(name, str) or not name:
                errors.append(SpecError(f"{section}[{i}].name", name, "a non-empty name"))
            elif names.index(name) != i:
                errors.append(SpecError(f"{section}[{i}].name", name, "a name not used before"))
    return file, errors


def _grid_errors(raw: dict[str, Any]) -> tuple[dict[str, list[Any]], list[SpecError]]:
    grid = raw.get("grid", {})
    if not isinstance(grid, dict):
        return {}, []  # reported by the section check
    errors: list[SpecError] = []
    for key, values in grid.items():
        if key.split(".")[0] not in GRID_ROOTS or "." not in key:
            errors.append(SpecError(f"grid.{key}", values,
                                    f"a dotted path starting with one of {list(GRID_ROOTS)}"))
        elif not isinstance(values, list) or not values:
            errors.append(SpecError(f"grid.{key}", values, "a non-empty list of values"))
    return ({} if errors else grid), errors


def _collect(errors: list[SpecError], path: str, build: Any) -> Any:
    """build() or None, with its SpecError(s) added to `errors` under `path`."""
    try:
        return build()
    except SpecErrors as err:
        errors.extend(e.with_prefix(path) for e in err.errors)
    except SpecError as err:
        errors.append(err.with_prefix(path))
    return None


@dataclass
class _Sections:
    """The sections of one grid variant that have the right shape (None where not)."""

    study: StudySection | None
    thresholds: ThresholdSection | None
    training: dict[str, Any] | None
    datasets: list[dict[str, Any]]
    models: list[dict[str, Any]]

    @staticmethod
    def read(raw: dict[str, Any]) -> _Sections:
        def part(model: type[BaseModel], value: Any) -> Any:
            try:
                return model.model_validate(value)
            except ValidationError:
                return None

        training = raw.get("training", {})
        return _Sections(part(StudySection, raw.get("study")),
                         part(ThresholdSection, raw.get("thresholds", {})),
                         training if isinstance(training, dict) else None,
                         _entries(raw, "datasets"), _entries(raw, "models"))


def _typed_variant(file: _Sections, variant: str, config_hash: str
                   ) -> tuple[list[Cell], list[SpecError]]:
    """Every spec of one grid variant built (and so validated) once, then checked against the
    data each model meets; the cells when nothing is wrong."""
    from attnsets.assess import AssessSpec
    from attnsets.data import DatasetSpec
    from attnsets.device import resolve_device
    from attnsets.metrics import SilentFailureCriteria
    from attnsets.models import ModelSpec
    from attnsets.registry import build_dataclass
    from attnsets.run import RunSpec, check_model, check_training, dataset_info, member_seeds
    from attnsets.training import TrainSpec

    errors: list[SpecError] = []
    study = file.study
    criteria = None if file.thresholds is None else _collect(
        errors, "thresholds", lambda: SilentFailureCriteria(**file.thresholds.model_dump()))
    assess_spec = None
    if study is not None:
        assess_table = {"explainers": study.explainers,
                        "explainer_options": study.explainer_options, "combine": study.combine,
                        "evaluated_classes": study.evaluated_classes,
                        "bag_budget": study.bag_budget, "random_orders": study.random_orders,
                        "ensemble_sizes": study.ensemble_sizes,
                        "curve_subsets": study.curve_subsets, "bootstrap": study.bootstrap}
        assess_spec = _collect(errors, "study", lambda: AssessSpec.from_dict(
            assess_table, "", criteria or SilentFailureCriteria()))
    if assess_spec is not None and study is not None:
        errors += [e.with_prefix("study") for e in assess_spec.check_members(study.members)]
    if study is not None:
        _collect(errors, "study", lambda: resolve_device(study.device, "device"))
    if file.training is not None and "device" in file.training:
        errors.append(SpecError("training.device", file.training["device"],
                                "no device here: set [study] device, which is not part of a "
                                "cell's identity (so runs on the CPU and a GPU resume each other)"))
    device = study.device if study is not None else "auto"
    training = None if file.training is None else _collect(
        errors, "training", lambda: TrainSpec.from_dict({**file.training, "device": device}, ""))
    datasets = [_collect(errors, f"datasets[{i}]", lambda e=entry: DatasetSpec.from_dict(
        _dataset_table(e))) for i, entry in enumerate(file.datasets)]
    overrides = [_training_overrides(errors, entry, i) for i, entry in enumerate(file.datasets)]
    trainings = [training if training is None or not extra else _collect(
        errors, f"datasets[{i}].training", lambda x=extra: TrainSpec.from_dict(
            {**file.training, **x, "device": device}, ""))
        for i, extra in enumerate(overrides)]
    models = [_collect(errors, f"models[{i}]", lambda e=entry: build_dataclass(
        ModelSpec, {k: v for k, v in e.items() if k != "name"}, ""))
        for i, entry in enumerate(file.models)]
    for i, model in enumerate(models):
        problems = [] if model is None else model.check()
        errors += [e.with_prefix(f"models[{i}]") for e in problems]
        if problems:
            models[i] = None  # reported; building it for every dataset would only repeat it
    for j, (entry, spec) in enumerate(zip(file.datasets, datasets, strict=True)):
        if spec is None:
            continue
        info = _collect(errors, f"datasets[{j}]", lambda s=spec: dataset_info(s))
        if info is None:
            continue
        where = f" (with datasets[{j}] {entry.get('name')!r})"
        if trainings[j] is not None:
            errors += [SpecError(f"datasets[{j}].training.{e.field}" if e.field in overrides[j]
                                 else f"training.{e.field}", e.value, e.allowed + where)
                       for e in check_training(trainings[j], info)]
        for i, model in enumerate(models):
            if model is not None:
                errors += [SpecError(_model_field(i, e.field), e.value, e.allowed + where)
                           for e in check_model(model, info, assess_spec)]
    if errors or assess_spec is None or training is None or study is None \
            or file.thresholds is None:
        return [], errors
    cells = []
    for entry, spec, dataset_training in zip(file.datasets, datasets, trainings, strict=True):
        for model_entry, model in zip(file.models, models, strict=True):
            for replicate in study.seeds:
                seeds = member_seeds(replicate, study.members)
                run = RunSpec(dataclasses.replace(spec, seed=replicate), model, dataset_training,
                              seeds, dataclasses.replace(assess_spec, seed=replicate))
                cells.append(Cell(study=study.name, dataset_name=entry["name"],
                                  model_name=model_entry["name"], variant=variant,
                                  replicate=replicate, run=run))
    return cells, errors


def _dataset_table(entry: dict[str, Any]) -> dict[str, Any]:
    """A [[datasets]] entry without the keys that are not the dataset's own."""
    return {k: v for k, v in entry.items() if k not in ("name", "training")}


def _training_overrides(errors: list[SpecError], entry: dict[str, Any], index: int
                        ) -> dict[str, Any]:
    """datasets[i].training: the [training] settings this dataset's cells replace (a budget per
    rule or bag size); {} when absent or wrong (wrong is reported in `errors`)."""
    extra = entry.get("training", {})
    where = f"datasets[{index}].training"
    if not isinstance(extra, dict):
        errors.append(SpecError(where, extra, "a table of [training] settings for this dataset"))
        return {}
    if "device" in extra:
        errors.append(SpecError(f"{where}.device", extra["device"],
                                "no device here: set [study] device (see training.device)"))
        return {}
    return extra


def _model_field(index: int, field: str) -> str:
    """models[i].<field> for a model error (build_model names its fields ``model.*``)."""
    if field.startswith("assess."):
        return "study." + field.removeprefix("assess.")
    return f"models[{index}]" + (field.removeprefix("model") if field.startswith("model") else
                                 f".{field}")


def _at_grid_point(errors: list[SpecError], variant: str) -> list[SpecError]:
    return [SpecError(f"{e.field} [grid point {variant}]", e.value, e.allowed) if variant else e
            for e in errors]


def validate_config(raw: dict[str, Any]) -> StudyConfig:
    """Validate a whole study config once (every section, every model against every dataset it
    meets, every grid point) and expand it into typed cells; raise SpecErrors with every
    problem found, each naming its path in the file."""
    if not isinstance(raw, dict):
        raise SpecErrors([SpecError("config", raw, f"a table with sections {list(STUDY_SECTIONS)}")])
    file, errors = _file_errors(raw)
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
        variant_errors = _file_errors(variant_raw)[1] if variant else []
        variant_cells, more = _typed_variant(_Sections.read(variant_raw), variant, digest)
        cells += variant_cells
        # A problem the file has without the grid is reported once, without a grid point.
        new = [e for e in variant_errors + more if str(e) not in seen]
        errors += _at_grid_point(new, variant)
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
            errors.append(SpecError(where, members, "at least two different model names"))
        errors += [SpecError(where, name, f"model names of [[models]] {names}")
                   for name in members if name not in names]
    return errors


def expand_grid(raw: dict[str, Any], grid: dict[str, list[Any]]) -> list[tuple[dict[str, Any], str]]:
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
    from attnsets.data.spec import load_config

    raw = load_config(path)
    if device is not None and isinstance(raw, dict) and isinstance(raw.get("study"), dict):
        raw = {**raw, "study": {**raw["study"], "device": device}}
    return validate_config(raw)
