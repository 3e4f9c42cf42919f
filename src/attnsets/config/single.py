"""A single-run config file (`attnsets evaluate`) -> a RunSpec, every problem raised at once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from attnsets.config.preflight import (
    DataCheck,
    ModelCheck,
    build_assessment,
    build_model_spec,
    build_training,
    preflight,
)
from attnsets.data import DatasetSpec
from attnsets.errors import SpecError, SpecErrors
from attnsets.run import RunSpec
from attnsets.spec.constraints import ErrorCollector, TableOf, table_errors

#: Tables of a single-run config file; the dataset is the [dataset] table or, without one, the
#: file's pool / rule / bags / bag_size / witnesses / seed keys.
RUN_TABLES = ("dataset", "model", "training", "assess", "thresholds")
DATASET_KEYS = ("pool", "rule", "bags", "bag_size", "witnesses", "seed")
Table = dict[str, object]


@dataclass(frozen=True)
class SingleRunTables:
    """The tables of a single-run file with the command-line overrides applied."""

    dataset: Table
    dataset_path: str  # "dataset" for a [dataset] table, "" for top-level keys
    model: Table
    training: Table
    assess: Table
    thresholds: Table


def _tables(raw: Mapping[str, object], log: ErrorCollector, seed: int,
            default_explainers: Sequence[str], pooling: str | None, epochs: int | None,
            device: str | None, explainers: Sequence[str] | None) -> SingleRunTables:
    shapes = {name: TableOf() for name in RUN_TABLES}
    log.extend(table_errors({k: v for k, v in raw.items() if k in shapes}, shapes))
    tables = {name: {str(k): v for k, v in value.items()} if isinstance(value, Mapping) else {}
              for name in RUN_TABLES for value in [raw.get(name, {})]}
    dataset = tables["dataset"] or {k: v for k, v in raw.items() if k in DATASET_KEYS}
    model = {"pooling": "attention", **tables["model"]}
    if pooling:
        model["pooling"] = pooling
    training = dict(tables["training"])
    training.update({k: v for k, v in (("epochs", epochs), ("device", device)) if v is not None})
    assess = {"explainers": tuple(default_explainers), **tables["assess"], "seed": seed}
    if explainers:
        assess["explainers"] = tuple(explainers)
    return SingleRunTables(dataset, "dataset" if tables["dataset"] else "", model, training,
                           assess, tables["thresholds"])


def run_spec_from_config(raw: Mapping[str, object], *, members: int = 5, seed: int = 0,
                         default_explainers: Sequence[str] = ("attention", "random"),
                         pooling: str | None = None, epochs: int | None = None,
                         device: str | None = None, explainers: Sequence[str] | None = None
                         ) -> RunSpec:
    """A RunSpec from a single-run config (every problem raised at once as SpecErrors, each
    with its path in the file). Members use seeds seed .. seed + members - 1 and the assessment
    seed `seed`. Overrides: `pooling`, `epochs`, `device` (training; the assessment runs where
    the members are), `explainers` (None = keep the file's)."""
    if not isinstance(raw, Mapping):
        raise SpecErrors([SpecError("config", raw, f"a table with {list(RUN_TABLES)}")])
    log = ErrorCollector()
    tables = _tables(raw, log, seed, default_explainers, pooling, epochs, device, explainers)
    dataset = log.attempt(tables.dataset_path, lambda: DatasetSpec.from_dict(tables.dataset))
    model = build_model_spec(log, tables.model, "model")
    training = build_training(log, tables.training, "training")
    assessment = build_assessment(log, tables.thresholds, "thresholds", tables.assess, "assess",
                                  members)
    if dataset is not None:
        preflight(log, [DataCheck(tables.dataset_path or "dataset", dataset, training,
                                  lambda f: f"training.{f}")],
                  [] if model is None else [ModelCheck(model, lambda f: f)], assessment)
    log.raise_all()
    assert dataset is not None and model is not None and training is not None
    try:
        return RunSpec(dataset, model, training, tuple(range(seed, seed + members)), assessment)
    except SpecError as err:
        raise SpecErrors([err]) from None
