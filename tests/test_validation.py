"""Validation at the door: every section of a study config, the single-run config of
`attnsets evaluate` and the typed specs reject bad values before anything is trained or written,
naming the field (with its path in the file), the value and what is allowed."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from attnsets.assess import AssessSpec
from attnsets.cli import app
from attnsets.errors import SpecError, SpecErrors
from attnsets.explain import EXPLAINERS
from attnsets.study.config import validate_config
from study_toml import write_study_toml

Edit = Callable[[dict[str, Any]], None]


def minimal() -> dict[str, Any]:
    return {
        "study": {"name": "t", "seeds": [0], "members": 2, "explainers": ["attention"]},
        "training": {"epochs": 1},
        "datasets": [{"name": "g", "pool": {"name": "gaussian", "dim": 4},
                      "rule": {"name": "presence", "key": 1},
                      "bags": {"train": 8, "val": 4, "test": 4}}],
        "models": [{"name": "att", "pooling": "attention", "embed_dim": 8}],
    }


def _set(section: str, **values: Any) -> Edit:
    return lambda raw: raw[section].update(values)


def _model(**values: Any) -> Edit:
    return lambda raw: raw["models"][0].update(values)


def _options(method: str, /, **options: Any) -> Edit:
    return lambda raw: raw["study"].update(explainers=[method],
                                           explainer_options={method: options})


#: (case id, edit, field named, text in the allowed values). One or more per section, each kind
#: of check once: names, ranges, types, cross-section checks (model x data, training x data,
#: sizes x members) and grid points.
BAD: list[tuple[str, Edit, str, str]] = [
    ("study.combine", _set("study", combine="meen"), "study.combine", "mean_normalised"),
    ("study.explainers", _set("study", explainers=["atention"]), "study.explainers[0]",
     "attention"),
    ("study.explainers repeated", _set("study", explainers=["attention", "attention"]),
     "study.explainers", "once"),
    ("study.seeds negative", _set("study", seeds=[-1]), "study.seeds[0]", "an integer >= 0"),
    ("study.members", _set("study", members=0), "study.members", "an integer in [1, 64]"),
    ("study.ensemble_sizes", _set("study", ensemble_sizes=[3]), "study.ensemble_sizes[0]",
     "1..2"),
    ("study.bootstrap", _set("study", bootstrap=-1), "study.bootstrap", "0"),
    ("study.curve_subsets", _set("study", curve_subsets=0), "study.curve_subsets", "1"),
    ("study.name", _set("study", name=""), "study.name", "1 character"),
    ("study.unknown key", _set("study", member=3), "study.member", "no such key"),
    ("explainer option name", _options("integrated_gradients", n_step=3),
     "study.explainer_options.integrated_gradients.n_step", "n_steps"),
    ("explainer option value", _options("integrated_gradients", n_steps=0),
     "study.explainer_options.integrated_gradients.n_steps", ">= 1"),
    ("explainer option rule", _options("integrated_gradients", method="simpson"),
     "study.explainer_options.integrated_gradients.method", "gausslegendre"),
    ("explainer option seed", _options("random", seed=3),
     "study.explainer_options.random.seed", "seed + i"),
    ("options of an explainer not chosen",
     lambda raw: raw["study"].update(explainer_options={"shapley": {"n_samples": 3}}),
     "study.explainer_options.shapley", "chosen explainer"),
    ("study.bag_budget", _set("study", bag_budget=0), "study.bag_budget",
     "an integer >= 1"),
    ("study.evaluated_classes", _set("study", evaluated_classes="every"),
     "study.evaluated_classes", "'all'"),
    ("study.mixed_ensembles", _set("study", mixed_ensembles={"both": ["att", "gated"]}),
     "study.mixed_ensembles.both", "model names"),
    ("thresholds.bag_metric", _set("thresholds", bag_metric="acc"), "thresholds.bag_metric",
     "balanced_accuracy"),
    ("thresholds.importance_metric", _set("thresholds", importance_metric="aucroc"),
     "thresholds.importance_metric", "auprc2"),
    ("thresholds.min_bag_score", _set("thresholds", min_bag_score=1.5),
     "thresholds.min_bag_score", "1"),
    ("training.lr", _set("training", lr=-1.0), "training.lr", "> 0"),
    ("training.unknown key", _set("training", epoch=3), "training.epoch", "epochs"),
    ("training.class_weights count", _set("training", class_weights=[1.0, 2.0, 3.0]),
     "training.class_weights", "2 weights"),
    ("datasets.rule.key", lambda raw: raw["datasets"][0]["rule"].update(key=99),
     "datasets[0].rule.key", "concept ids"),
    ("datasets.bags", lambda raw: raw["datasets"][0]["bags"].update(test=0),
     "datasets[0].bags.test", ">= 1"),
    ("models.pooling", _model(pooling="averaging"), "models[0].pooling", "attention"),
    ("models.embed_dim", _model(embed_dim=0), "models[0].embed_dim", ">= 1"),
    ("models.heads = 0", _model(pooling="multihead_attention", pooling_params={"heads": 0}),
     "models[0].pooling_params.heads", ">= 1"),
    ("models image encoder on vectors", _model(encoder="cnn"), "models[0].encoder",
     "instance_shape (4,)"),
    ("models.per_encoder typo", _model(per_encoder={"cnn": {"chanels": [4]}}),
     "models[0].per_encoder.cnn.chanels", "channels"),
    ("grid point value", lambda raw: raw.update(grid={"training.lr": [0.1, -1]}),
     "training.lr [grid point training.lr=-1]", "> 0"),
    ("grid point type", lambda raw: raw.update(grid={"study.members": ["a"]}),
     "study.members [grid point study.members=a]", "integer"),
    ("grid point model parameter",
     lambda raw: raw.update(grid={"models.pooling_params.heads": [0]}),
     "models[0].pooling_params.heads [grid point models.pooling_params.heads=0]", "parameters"),
    ("grid path through a value", lambda raw: raw.update(grid={"study.name.x": [1]}),
     "grid.study.name.x", "a path through tables"),
    ("grid root", lambda raw: raw.update(grid={"nothing.x": [1]}), "grid.nothing.x",
     "dotted path"),
]


@pytest.mark.parametrize(("edit", "field", "allowed"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_bad_value_is_named_with_its_path(edit: Edit, field: str, allowed: str) -> None:
    raw = minimal()
    raw.setdefault("thresholds", {})
    edit(raw)
    with pytest.raises(SpecErrors) as info:
        validate_config(raw)
    named = {e.field: e for e in info.value.errors}
    assert field in named, sorted(named)
    assert allowed in named[field].allowed, named[field].allowed


@pytest.mark.parametrize("case", ["study.combine", "thresholds.bag_metric",
                                  "training.class_weights count", "models.heads = 0",
                                  "explainer option value", "grid point value"])
def test_the_cli_refuses_before_writing_anything(tmp_path: Path, case: str) -> None:
    edit, field = next((b[1], b[2]) for b in BAD if b[0] == case)
    raw = minimal()
    raw.setdefault("thresholds", {})
    edit(raw)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(write_study_toml(raw, tmp_path / "s.toml")),
                                      "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert field.split(" [")[0] in result.output
    assert not out.exists()


def test_budgets_reach_the_cells_and_their_stored_spec() -> None:
    plain = validate_config(minimal()).cells[0]
    raw = minimal()
    raw["study"].update(bag_budget=3, random_orders=2)
    cell = validate_config(raw).cells[0]
    assert cell.run_spec.assess is not None and cell.run_spec.assess.bag_budget == 3
    stored = cell.to_dict()["run"]["assess"]
    assert stored["bag_budget"] == 3 and stored["random_orders"] == 2
    assert plain.to_dict()["run"]["assess"]["bag_budget"] is None
    assert cell.cell_id != plain.cell_id


def test_a_good_config_still_validates_and_cells_carry_typed_runs() -> None:
    config = validate_config(minimal())
    (cell,) = config.cells
    run = cell.run_spec
    assert run.seeds == (0, 1) and run.assess is not None and run.assess.seed == 0
    assert run.dataset is not None and run.dataset.seed == 0


def test_every_error_is_reported_at_once() -> None:
    raw = minimal()
    raw["study"]["combine"] = "meen"
    raw["training"]["lr"] = -1.0
    raw["models"][0]["pooling"] = "averaging"
    raw["datasets"][0]["rule"]["key"] = 99
    with pytest.raises(SpecErrors) as info:
        validate_config(raw)
    assert {"study.combine", "training.lr", "models[0].pooling", "datasets[0].rule.key"} <= \
        {e.field for e in info.value.errors}


def test_evaluate_config_errors_come_all_at_once(tmp_path: Path) -> None:
    config = tmp_path / "d.toml"
    config.write_text(
        "[dataset]\nbags = {train = 8, val = 4, test = 4}\n"
        "[dataset.pool]\nname = 'gaussian'\ndim = 4\n"
        "[dataset.rule]\nname = 'presence'\nkey = 1\n"
        "[model]\npooling = 'multihead_attention'\npooling_params = {heads = 0}\n"
        "[training]\nlr = -1\n"
        "[assess]\ncombine = 'meen'\n"
        "[thresholds]\nimportance_metric = 'aucroc'\n")
    result = CliRunner().invoke(app, ["evaluate", str(config), "--explainers", "attention"])
    assert result.exit_code == 2
    for field in ("model.pooling_params.heads", "training.lr", "assess.combine",
                  "thresholds.importance_metric"):
        assert field in result.output, result.output


def test_assess_spec_validates_itself() -> None:
    with pytest.raises(SpecError, match="explainers"):
        AssessSpec(explainers=("telepathy",))
    with pytest.raises(SpecError, match="combine"):
        AssessSpec(combine="max")
    with pytest.raises(SpecError, match="explainer_options.attention_head.heads"):
        AssessSpec(explainers=("attention_head",),
                   explainer_options={"attention_head": {"heads": 1}})
    with pytest.raises(SpecError, match="deletion_steps"):
        AssessSpec(deletion_steps=0)
    assert AssessSpec(ensemble_sizes=[1, 3]).check_members(2)[0].field == "ensemble_sizes[1]"


def test_seeded_explainers_are_declared_by_their_signature() -> None:
    assert {n for n, e in EXPLAINERS.items() if e.takes_seed} == {"milli", "random", "shapley"}
    assert copy.copy(EXPLAINERS.get("random")).takes_seed
