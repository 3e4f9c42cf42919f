"""Preflight: the checks that need the data's shape, run before anything is trained.

Building a spec checks it alone; whether a model builds for a dataset, whether each chosen
explainer runs on it and whether the class weights match the classes only shows when model and
data meet. Both config front doors (a study file, a single-run file) build their specs with the
helpers here and then call `preflight`, so every problem is reported at once with its path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from attnsets.assess import AssessSpec
from attnsets.data import DatasetSpec
from attnsets.data.bags import Batch
from attnsets.data.generate import build_pool, build_rule
from attnsets.device import resolve_device
from attnsets.errors import SpecError
from attnsets.explain import explain
from attnsets.explain.base import available_methods, dummy_input, resolve_method
from attnsets.metrics import SilentFailureCriteria
from attnsets.models import InputInfo, ModelSpec, build_model
from attnsets.models.user import ModelBuilder, build_member
from attnsets.spec.constraints import ErrorCollector, validate
from attnsets.training import TrainSpec

FieldPath = Callable[[str], str]


def dataset_info(spec: DatasetSpec) -> InputInfo:
    """What a model needs to know about the data of `spec`, without generating any bags."""
    pool = build_pool(spec)
    return InputInfo(pool.kind, tuple(pool.instance_shape), build_rule(spec, pool).n_classes,
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
    try:
        built = build_model(model, info, seed=0) if isinstance(model, ModelSpec) \
            else build_member(model, info, 0)
        x, mask = dummy_input(info)
        batch = Batch(x, mask, *_dummy_targets(mask))
        methods = available_methods(built, batch)
    except SpecError as err:
        return [err if err.field.startswith("model") else err.with_prefix("model")]
    except Exception as err:  # noqa: BLE001 - any failure to build or run is a bad spec
        return [SpecError("model", model.to_dict() if isinstance(model, ModelSpec) else repr(model),
                          f"a model that builds and runs on {info.kind} data of shape "
                          f"{info.instance_shape} ({type(err).__name__}: {err})")]
    if assess_spec is None:
        return []
    errors: list[SpecError] = []
    for method in (m for m in assess_spec.explainers if m in methods):
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


def _dummy_targets(mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """labels, evidence, concepts, target of a dummy batch (one bag, class 0); mask: (B, N)."""
    bags, width = mask.shape
    labels = torch.zeros(bags, dtype=torch.int64, device=mask.device)
    return (labels, torch.zeros((bags, width), device=mask.device),
            torch.zeros((bags, width), dtype=torch.int64, device=mask.device), labels)


# ------------------------------------------------------------------ the shared build sequence


def build_assessment(log: ErrorCollector, thresholds: object, thresholds_path: str,
                     table: Mapping[str, object], path: str, members: int | None
                     ) -> AssessSpec | None:
    """[thresholds] -> SilentFailureCriteria, then the assessment table -> AssessSpec with
    those criteria (the defaults when [thresholds] is wrong, so its own keys are still checked),
    then its ensemble sizes against the number of members."""
    criteria = log.attempt(thresholds_path,
                           lambda: validate(SilentFailureCriteria, thresholds, ""))
    spec = log.attempt(path, lambda: AssessSpec.from_dict(
        table, "", criteria or SilentFailureCriteria()))
    if spec is not None and members is not None:
        log.extend(spec.check_members(members), path)
    return spec


def build_training(log: ErrorCollector, table: Mapping[str, object], path: str,
                   check_device: bool = True) -> TrainSpec | None:
    """A TrainSpec from a [training] table, its device checked against this machine unless
    `check_device` is False (a study checks its [study] device once, where it is set)."""
    spec = log.attempt(path, lambda: validate(TrainSpec, table, ""))
    if spec is not None and check_device:
        log.attempt(path, lambda: resolve_device(spec.device, "device"))
    return spec


def build_model_spec(log: ErrorCollector, table: Mapping[str, object], path: str
                     ) -> ModelSpec | None:
    """A ModelSpec from a [model] table with its names checked (None when anything is wrong:
    building it for every dataset would only repeat the problem)."""
    spec = log.attempt(path, lambda: validate(ModelSpec, table, ""))
    problems = [] if spec is None else spec.check()
    log.extend(problems, path)
    return None if problems else spec


@dataclass(frozen=True)
class DataCheck:
    """One dataset of a config and the training its cells use; `path`: where the dataset's
    problems go; `training_field`: a training problem's field -> its path in the file;
    `label`: appended to cross-check problems (which dataset the model met)."""

    path: str
    spec: DatasetSpec
    training: TrainSpec | None
    training_field: FieldPath
    label: str = ""


@dataclass(frozen=True)
class ModelCheck:
    """One model of a config; `field`: a `check_model` problem's field -> its path in the file."""

    spec: ModelSpec
    field: FieldPath


def preflight(log: ErrorCollector, datasets: Sequence[DataCheck], models: Sequence[ModelCheck],
              assess: AssessSpec | None) -> None:
    """Every model built and run for every dataset it meets, every training checked against the
    data; problems go to `log` with their paths."""
    for data in datasets:
        info = log.attempt(data.path, functools.partial(dataset_info, data.spec))
        if info is None:
            continue
        if data.training is not None:
            log.extend(SpecError(data.training_field(e.field), e.value, e.allowed + data.label)
                       for e in check_training(data.training, info))
        for model in models:
            log.extend(SpecError(model.field(e.field), e.value, e.allowed + data.label)
                       for e in check_model(model.spec, info, assess))
