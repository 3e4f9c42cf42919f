"""The constraint engine: each setting declared once, every problem reported at once with its
path; every shipped config still builds the specs its tables declare."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from attnsets.assess import AssessSpec
from attnsets.config.single import run_spec_from_config
from attnsets.data.spec import load_config
from attnsets.errors import SpecError, SpecErrors
from attnsets.metrics import SilentFailureCriteria
from attnsets.spec import (
    ErrorCollector,
    Interval,
    Options,
    SequenceOf,
    TableOf,
    Text,
    check_declared,
    constrained,
    is_int,
    or_none,
    validate,
)
from attnsets.study.config import STUDY_ASSESS_KEYS, StudyConfig, StudySettings

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class _Spec:
    name: str = constrained(Text(1))
    sizes: tuple[int, ...] = constrained(SequenceOf(Interval(int, 1), min_length=1), default=(1,))
    rate: float = constrained(Interval(float, 0, 1, closed="right"), default=0.5)
    mode: str = constrained(Options(("a", "b")), default="a")
    budget: int | None = constrained(or_none(Interval(int, 1)), default=None)

    def __post_init__(self) -> None:
        check_declared(self)
        if self.mode == "b" and self.budget is None:
            raise SpecError("budget", None, "a budget when mode is 'b'")


def test_an_integer_is_never_a_bool() -> None:
    assert is_int(3) and is_int(np.int64(3)) and not is_int(True) and not is_int(3.0)
    with pytest.raises(SpecError, match="an integer >= 1"):
        Interval(int, 1).require(True, "k")
    assert Interval(float, 0, 1, closed="right").describe() == "a number in (0, 1]"
    assert not Interval(float, 0, 1).accepts(float("nan"))


def test_validate_reports_every_problem_with_its_path() -> None:
    with pytest.raises(SpecErrors) as info:
        validate(_Spec, {"sizes": [1, 0, True], "rate": 0, "mode": "c", "colour": 1}, "section")
    named = {e.field: e.allowed for e in info.value.errors}
    assert set(named) == {"section.name", "section.sizes[1]", "section.sizes[2]",
                          "section.rate", "section.mode", "section.colour"}
    assert "required" in named["section.name"] and "(0, 1]" in named["section.rate"]
    assert "no such key" in named["section.colour"] and "budget" in named["section.colour"]


def test_cross_field_checks_run_after_the_declared_ones_and_values_are_canonical() -> None:
    with pytest.raises(SpecErrors) as info:
        validate(_Spec, {"name": "x", "mode": "b"}, "s")
    assert [e.field for e in info.value.errors] == ["s.budget"]
    spec = validate(_Spec, {"name": "x", "sizes": [2, 3], "rate": 1}, "s")
    assert spec.sizes == (2, 3) and isinstance(spec.rate, float)
    with pytest.raises(SpecError, match="sizes"):  # built directly: the first problem
        _Spec(name="x", sizes=())


def test_the_collector_keeps_every_error_once() -> None:
    log = ErrorCollector()
    assert log.attempt("a", lambda: validate(_Spec, {"name": ""}, "")) is None
    assert log.attempt("a", lambda: validate(_Spec, {"name": ""}, "")) is None
    assert log.attempt("b", lambda: 7) == 7
    with pytest.raises(SpecErrors) as info:
        log.raise_all()
    assert [e.field for e in info.value.errors] == ["a.name"]
    assert TableOf(Interval(int)).errors({"x": "y"}, "t")[0].field == "t.x"


def test_study_and_thresholds_are_the_spec_fields_themselves() -> None:
    own = {f.name for f in dataclasses.fields(StudySettings)}
    assess = {f.name for f in dataclasses.fields(AssessSpec)}
    assert set(STUDY_ASSESS_KEYS) <= assess and not own & assess - {"device"}
    # The [thresholds] bounds are SilentFailureCriteria's own.
    with pytest.raises(SpecErrors) as info:
        validate(SilentFailureCriteria, {"min_bag_score": 2, "bag_metric": "acc"}, "thresholds")
    assert {e.field for e in info.value.errors} == {"thresholds.min_bag_score",
                                                     "thresholds.bag_metric"}


def assert_cells_carry_their_tables(name: str, config: StudyConfig) -> None:
    """Each cell's typed run holds what the config's [study] / [thresholds] tables say (or the
    spec's default): the settings reach the specs unchanged. Called by test_study_config, which
    loads every shipped study config once."""
    raw = load_config(ROOT / "configs" / name)
    assert (ROOT / "src" / "attnsets" / "configs" / name).read_bytes() == \
        (ROOT / "configs" / name).read_bytes()  # the bundled copy is the same file
    study, thresholds = dict(raw["study"]), SilentFailureCriteria(**raw.get("thresholds", {}))
    assert config.file.study.members == study.get("members", 5) and config.cells
    for cell in config.cells:
        run = cell.run_spec
        assert run.assess is not None and run.assess.criteria == thresholds
        for key in STUDY_ASSESS_KEYS:
            declared = AssessSpec.__dataclass_fields__[key]
            default = declared.default if declared.default_factory is dataclasses.MISSING \
                else declared.default_factory()
            value = study.get(key, default)
            assert getattr(run.assess, key) == (tuple(value) if isinstance(value, list)
                                                else value), (name, key)
        assert run.seeds == tuple(cell.replicate * 1000 + m for m in range(len(run.seeds)))
        assert run.dataset is not None and run.dataset.seed == cell.replicate


@pytest.mark.parametrize("name", ["gaussian_presence.toml", "digits_presence.yaml"])
def test_shipped_dataset_configs_build_a_run(name: str) -> None:
    raw = load_config(ROOT / "configs" / "datasets" / name)
    spec = run_spec_from_config(raw, members=2, epochs=1)
    assert spec.training.epochs == 1 and spec.n_members == 2
    assert spec.dataset is not None and spec.dataset.to_dict()["rule"] == \
        {"name": raw["dataset"]["rule"]["name"], **{k: v for k, v in raw["dataset"]["rule"].items()
                                                    if k != "name"}}
