"""Study configs: one TOML/YAML file -> validated StudyConfig -> a list of Cells.

Validation collects every problem at once, each with its path in the file (``datasets[1].rule.key``),
the bad value and what is allowed, before anything is trained or written.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from attnsets.errors import SpecError, SpecErrors

STUDY_SECTIONS = ("study", "training", "thresholds", "datasets", "models", "grid")


class StudySection(BaseModel):
    """[study]: what to run for every dataset x model."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    seeds: list[int] = Field(default=[0], min_length=1)
    members: int = Field(default=5, ge=1, le=64)
    ensemble_sizes: list[int] | None = None
    explainers: list[str] = Field(default=["attention", "random"], min_length=1)
    combine: str = "mean_normalised"
    bootstrap: int = Field(default=200, ge=0)
    curve_subsets: int = Field(default=50, ge=1)


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


@dataclass(frozen=True)
class Cell:
    """One unit of work: a dataset (with its replicate seed) x a model, trained as `members` seeds."""

    study: str
    dataset_name: str
    model_name: str
    variant: str
    replicate: int
    dataset: dict[str, Any]
    model: dict[str, Any]
    training: dict[str, Any]
    seeds: tuple[int, ...]
    explainers: tuple[str, ...]
    ensemble_sizes: tuple[int, ...]
    combine: str
    bootstrap: int
    curve_subsets: int
    thresholds: dict[str, Any]
    config_hash: str
    cell_id: str = field(default="")

    def __post_init__(self) -> None:
        if not self.cell_id:
            payload = json.dumps(self.to_dict(with_id=False), sort_keys=True)
            object.__setattr__(self, "cell_id", hashlib.sha256(payload.encode()).hexdigest()[:16])

    def to_dict(self, with_id: bool = True) -> dict[str, Any]:
        data = {
            "study": self.study, "dataset_name": self.dataset_name, "model_name": self.model_name,
            "variant": self.variant, "replicate": self.replicate, "dataset": self.dataset,
            "model": self.model, "training": self.training, "seeds": list(self.seeds),
            "explainers": list(self.explainers), "ensemble_sizes": list(self.ensemble_sizes),
            "combine": self.combine, "bootstrap": self.bootstrap,
            "curve_subsets": self.curve_subsets, "thresholds": self.thresholds,
        }
        if with_id:  # the id depends on what the cell computes, not on the rest of the file
            data["cell_id"] = self.cell_id
            data["config_hash"] = self.config_hash
        return data

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Cell:
        data = dict(data)
        for key in ("seeds", "explainers", "ensemble_sizes"):
            data[key] = tuple(data[key])
        data.setdefault("config_hash", "")
        return Cell(**data)


@dataclass
class StudyConfig:
    raw: dict[str, Any]
    file: StudyFile
    config_hash: str

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
        for entry in data[head]:
            _set_nested(entry, rest, value)
    else:
        _set_nested(data, dotted, value)


def _set_nested(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        data = data.setdefault(key, {})
    data[keys[-1]] = value


GRID_ROOTS = ("datasets", "models", "training", "thresholds", "study")

def _check_dataset(entry: dict[str, Any]) -> list[SpecError]:
    from attnsets.data import DatasetSpec

    try:
        DatasetSpec.from_dict({k: v for k, v in entry.items() if k != "name"})
    except SpecErrors as err:
        return err.errors
    return []


def _check_model(entry: dict[str, Any]) -> list[SpecError]:
    """Names and parameter names of a model entry (building needs the data, so values of
    encoder/pooling parameters are checked when the cell runs)."""
    import inspect

    from attnsets.models import ENCODERS, POOLINGS, ModelSpec
    from attnsets.registry import build_dataclass

    raw = {k: v for k, v in entry.items() if k != "name"}
    try:
        spec = build_dataclass(ModelSpec, raw, "")
    except SpecError as err:
        return [SpecError(err.field.lstrip("."), err.value, err.allowed)]
    errors: list[SpecError] = []
    checks = [("encoder", ENCODERS, spec.encoder, spec.encoder_params),
              ("pooling", POOLINGS, spec.pooling, spec.pooling_params)]
    checks += [(f"per_encoder.{name}", ENCODERS, name, params)
               for name, params in spec.per_encoder.items()]
    for field_name, registry, name, params in checks:
        if name is None:
            continue
        if name not in registry:
            errors.append(SpecError(field_name, name, f"one of {registry.names()}"))
            continue
        signature = inspect.signature(registry.get(name))
        allowed = [p for p in signature.parameters if p not in ("info", "out_dim", "in_dim", "n_classes")]
        for param in params:
            if param not in allowed:
                where = f"{field_name}.{param}" if "." in field_name else f"{field_name}_params.{param}"
                errors.append(SpecError(where, params[param], f"parameters {allowed}"))
    return errors


def _check_training(entry: dict[str, Any]) -> list[SpecError]:
    from attnsets.registry import build_dataclass
    from attnsets.training import TrainSpec

    try:
        build_dataclass(TrainSpec, entry, "")
    except SpecError as err:
        return [SpecError(err.field.lstrip("."), err.value, err.allowed)]
    return []


def _check_explainers(names: list[str]) -> list[SpecError]:
    from attnsets.explain import EXPLAINERS

    return [SpecError(f"study.explainers[{i}]", n, f"one of {EXPLAINERS.names()}")
            for i, n in enumerate(names) if n not in EXPLAINERS]


def _entries(raw: dict[str, Any], section: str) -> list[dict[str, Any]]:
    value = raw.get(section)
    return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []


def validate_config(raw: dict[str, Any]) -> StudyConfig:
    """Validate a whole study config; raise SpecErrors with every problem found."""
    errors: list[SpecError] = []
    file: StudyFile | None = None
    if not isinstance(raw, dict):
        raise SpecErrors([SpecError("config", raw, f"a table with sections {list(STUDY_SECTIONS)}")])
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
    grid = raw.get("grid", {}) if isinstance(raw.get("grid", {}), dict) else {}
    grid_ok = True
    for key, values in grid.items():
        if key.split(".")[0] not in GRID_ROOTS or "." not in key:
            errors.append(SpecError(f"grid.{key}", values,
                                    f"a dotted path starting with one of {list(GRID_ROOTS)}"))
            grid_ok = False
        elif not isinstance(values, list) or not values:
            errors.append(SpecError(f"grid.{key}", values, "a non-empty list of values"))
            grid_ok = False
    study = raw.get("study") if isinstance(raw.get("study"), dict) else {}
    explainers = study.get("explainers", [])
    if isinstance(explainers, list) and all(isinstance(e, str) for e in explainers):
        errors += _check_explainers(explainers)
    if file is not None:
        for i, k in enumerate(file.study.ensemble_sizes or []):
            if not 1 <= k <= file.study.members:
                errors.append(SpecError(f"study.ensemble_sizes[{i}]", k,
                                        f"sizes in 1..study.members ({file.study.members})"))
    for variant_raw, _ in expand_grid(raw, grid if grid_ok else {}):
        for i, entry in enumerate(_entries(variant_raw, "datasets")):
            errors += [e.with_prefix(f"datasets[{i}]") for e in _check_dataset(entry)]
        for i, entry in enumerate(_entries(variant_raw, "models")):
            errors += [e.with_prefix(f"models[{i}]") for e in _check_model(entry)]
        if isinstance(variant_raw.get("training", {}), dict):
            errors += [e.with_prefix("training") for e in _check_training(variant_raw.get("training", {}))]
    unique: dict[str, SpecError] = {str(e): e for e in errors}
    if unique:
        raise SpecErrors(unique.values())
    assert file is not None
    digest = hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return StudyConfig(raw, file, digest)


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


def member_seeds(replicate: int, members: int) -> tuple[int, ...]:
    """Model seeds of a replicate: disjoint across replicates."""
    return tuple(replicate * 1000 + m for m in range(members))


def study_cells(config: StudyConfig) -> list[Cell]:
    """Expand a validated config into cells: grid variants x datasets x models x replicate seeds."""
    cells = []
    for variant_raw, variant in expand_grid(config.raw, config.file.grid):
        file = StudyFile.model_validate(variant_raw)
        study = file.study
        sizes = tuple(study.ensemble_sizes or range(1, study.members + 1))
        for dataset, model, replicate in itertools.product(file.datasets, file.models, study.seeds):
            dataset_spec = {k: v for k, v in dataset.items() if k != "name"}
            dataset_spec["seed"] = replicate
            cells.append(Cell(
                study=study.name, dataset_name=dataset["name"], model_name=model["name"],
                variant=variant, replicate=replicate, dataset=dataset_spec,
                model={k: v for k, v in model.items() if k != "name"}, training=dict(file.training),
                seeds=member_seeds(replicate, study.members), explainers=tuple(study.explainers),
                ensemble_sizes=sizes, combine=study.combine, bootstrap=study.bootstrap,
                curve_subsets=study.curve_subsets, thresholds=file.thresholds.model_dump(),
                config_hash=config.config_hash))
    return cells


def load_study(path: str | Path) -> StudyConfig:
    from attnsets.data.spec import load_config

    return validate_config(load_config(path))
