"""Study configs: validation reports every problem with its path before anything runs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from attnsets.errors import SpecErrors
from attnsets.study.config import Cell, expand_grid, load_study, study_cells, validate_config

ROOT = Path(__file__).resolve().parents[1]


def minimal() -> dict[str, Any]:
    return {
        "study": {"name": "t", "seeds": [0, 1], "members": 3, "explainers": ["attention"]},
        "training": {"epochs": 2},
        "datasets": [{"name": "g", "pool": {"name": "gaussian", "dim": 4},
                      "rule": {"name": "presence", "key": 1},
                      "bags": {"train": 20, "val": 10, "test": 10}}],
        "models": [{"name": "att", "pooling": "attention", "embed_dim": 8}],
    }


def test_shipped_configs_validate() -> None:
    from test_constraints import assert_cells_carry_their_tables

    loaded = {name: load_study(ROOT / "configs" / name)
              for name in ("demo.toml", "paper.toml", "paper-large.toml")}
    for name, config in loaded.items():
        assert study_cells(config)
        assert_cells_carry_their_tables(name, config)
    large = study_cells(loaded["paper-large.toml"])
    assert len({c.replicate for c in large}) == 5
    assert {c.pooling for c in large} == {c.pooling for c in study_cells(loaded["paper.toml"])}
    assert all(c.run_spec.assess is not None and c.run_spec.assess.bag_budget == 20
               for c in large)
    paper = study_cells(loaded["paper.toml"])
    from attnsets.data import RULES
    from attnsets.models import POOLINGS

    assert {c.rule for c in paper} == set(RULES.names())
    assert {c.pooling for c in paper} == set(POOLINGS.names())
    assert {c.pool for c in paper} == {"gaussian", "digits", "sequences", "table"}
    assert len({c.replicate for c in paper}) >= 2


def test_mnist_addon_needs_files_and_names_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from attnsets.data.pools.idx import write_idx

    monkeypatch.delenv("ATTNSETS_DATA_DIR", raising=False)
    with pytest.raises(SpecErrors, match="ATTNSETS_DATA_DIR"):
        load_study(ROOT / "configs" / "paper-mnist.toml")
    rng = np.random.default_rng(0)
    for folder in ("mnist", "fashion_mnist"):
        (tmp_path / folder).mkdir()
        for prefix, n in (("train", 60), ("t10k", 20)):
            write_idx(tmp_path / folder / f"{prefix}-images-idx3-ubyte.gz",
                      rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
            write_idx(tmp_path / folder / f"{prefix}-labels-idx1-ubyte.gz",
                      (np.arange(n) % 10).astype(np.uint8))
    monkeypatch.setenv("ATTNSETS_DATA_DIR", str(tmp_path))
    assert study_cells(load_study(ROOT / "configs" / "paper-mnist.toml"))


def test_cells_are_the_product_and_ids_are_stable() -> None:
    raw = minimal()
    raw["models"].append({"name": "mean", "pooling": "mean", "embed_dim": 8})
    cells = study_cells(validate_config(raw))
    assert len(cells) == 1 * 2 * 2
    assert len({c.cell_id for c in cells}) == 4
    assert [c.cell_id for c in study_cells(validate_config(copy.deepcopy(raw)))] == \
        [c.cell_id for c in cells]
    assert Cell.from_dict(cells[0].to_dict()) == cells[0]
    assert cells[0].run.dataset.seed == cells[0].replicate
    assert set(cells[0].seeds).isdisjoint(cells[1].seeds)


def test_grid_expands_over_every_dataset_and_training() -> None:
    raw = minimal()
    raw["grid"] = {"datasets.bag_size.mean": [5, 20], "training.lr": [0.01, 0.001]}
    cells = study_cells(validate_config(raw))
    assert len(cells) == 4 * 2
    assert {(c.run.dataset.bag_size.mean, c.run.training.lr) for c in cells} == \
        {(5, 0.01), (5, 0.001), (20, 0.01), (20, 0.001)}
    assert len(expand_grid(raw, raw["grid"])) == 4


def test_dataset_training_replaces_the_shared_settings_for_its_cells_only() -> None:
    raw = minimal()
    raw["datasets"].append(copy.deepcopy(raw["datasets"][0]) | {"name": "long"})
    before = {c.dataset_name: c.cell_id for c in study_cells(validate_config(raw))}
    raw["datasets"][1]["training"] = {"epochs": 7, "lr": 0.003}
    cells = study_cells(validate_config(raw))
    by_name = {c.dataset_name: c for c in cells}
    short, long = by_name["g"], by_name["long"]
    assert short.run_spec.training.epochs == 2 and short.run_spec.training.lr == 0.001
    assert long.run_spec.training.epochs == 7 and long.run_spec.training.lr == 0.003
    # The cells of a dataset without its own settings keep their ids (a store resumes them);
    # the others are new cells.
    assert short.cell_id == before["g"] and long.cell_id != before["long"]
    assert Cell.from_dict(long.to_dict()) == long
    # A grid path reaches the per-dataset table like any other key.
    raw["grid"] = {"datasets.training.patience": [3, 4]}
    patience = {(c.dataset_name, c.run_spec.training.patience, c.run_spec.training.epochs)
                for c in study_cells(validate_config(raw))}
    assert patience == {("g", 3, 2), ("g", 4, 2), ("long", 3, 7), ("long", 4, 7)}


def _edit(path: str, value: Any) -> dict[str, Any]:
    raw = minimal()
    target: Any = raw
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if value is KeyError:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return raw


BAD = [
    ("study.members", 0, "study.members"),
    ("study.name", KeyError, "study.name"),
    ("study.colour", "red", "study.colour"),
    ("study.explainers", ["attention", "telepathy"], "study.explainers[1]"),
    ("study.ensemble_sizes", [1, 7], "study.ensemble_sizes[1]"),
    ("training.lr", -1.0, "training.lr"),
    ("training.epoch", 3, "training.epoch"),
    ("thresholds", {"min_bag_score": 1.5}, "thresholds.min_bag_score"),
    ("datasets.0.pool", {"name": "hologram"}, "datasets[0].pool.name"),
    ("datasets.0.rule", {"name": "presence", "key": 99}, "datasets[0].rule.key"),
    ("datasets.0.bags", {"train": -3, "val": 1, "test": 1}, "datasets[0].bags.train"),
    ("datasets.0.witnesses", {"rate": 1.5}, "datasets[0].witnesses.rate"),
    ("models.0.pooling", "averaging", "models[0].pooling"),
    ("models.0.pooling_params", {"nonsense": 1}, "models[0].pooling_params.nonsense"),
    ("models.0.embed_dim", 0, "models[0].embed_dim"),
    ("models.0.per_encoder", {"cnn": {"chanels": [4]}}, "models[0].per_encoder.cnn.chanels"),
    ("models.0.per_encoder", {"gpt": {}}, "models[0].per_encoder.gpt"),
    ("models", [], "models"),
    ("datasets.0.training", {"lr": -1.0}, "datasets[0].training.lr"),
    ("datasets.0.training", {"epoch": 3}, "datasets[0].training.epoch"),
    ("datasets.0.training", {"device": "cpu"}, "datasets[0].training.device"),
    ("datasets.0.training", 5, "datasets[0].training"),
    ("datasets.0.training", {"class_weights": [1.0, 2.0, 3.0]}, "datasets[0].training.class_weights"),
    ("grid", {"nowhere.x": [1]}, "grid.nowhere.x"),
]


@pytest.mark.parametrize(("path", "value", "field"), BAD, ids=[b[2] for b in BAD])
def test_bad_config_names_its_path(path: str, value: Any, field: str) -> None:
    with pytest.raises(SpecErrors) as info:
        validate_config(_edit(path, value))
    fields = [e.field for e in info.value.errors]
    assert field in fields, fields


def test_all_problems_reported_at_once() -> None:
    raw = _edit("training.lr", -1.0)
    raw["models"][0]["pooling"] = "averaging"
    raw["datasets"][0]["rule"]["key"] = 99
    with pytest.raises(SpecErrors) as info:
        validate_config(raw)
    assert {"training.lr", "models[0].pooling", "datasets[0].rule.key"} <= \
        {e.field for e in info.value.errors}


def test_per_encoder_params_apply_only_to_their_encoder() -> None:
    from attnsets.models import InputInfo, ModelSpec, build_model

    spec = ModelSpec(embed_dim=8, per_encoder={"cnn": {"channels": [3, 5]}, "mlp": {"hidden": 7}})
    image = build_model(spec, InputInfo("image", (1, 8, 8), 2))
    vector = build_model(spec, InputInfo("vector", (4,), 2))
    conv_channels = [m.out_channels for m in image.encoder.modules() if hasattr(m, "out_channels")]
    assert conv_channels == [3, 5]
    assert [m.out_features for m in vector.encoder.modules() if hasattr(m, "out_features")] == [7, 8]


# -- cell ids: spelling never changes them, a real change always does (issue 21) -----------------

def _ids(raw: dict[str, Any]) -> list[str]:
    return [c.cell_id for c in study_cells(validate_config(raw))]


SPELLINGS: list[tuple[str, Any]] = [
    # (dotted path into minimal(), a value equal to what is there or to the default)
    ("training.batch_size", 16), ("training.lr", 0.001), ("training.patience", 10),
    ("models.0.embed_dim", 8), ("models.0.pooling_params", {}), ("models.0.encoder", None),
    ("datasets.0.witnesses", {"count": [1, 3]}), ("datasets.0.bag_size", {"kind": "normal"}),
    ("datasets.0.pool", {"name": "gaussian", "dim": 4, "noise": 1}),
    ("study.combine", "mean_normalised"),
    ("study.ensemble_sizes", [1, 2, 3]), ("study.bootstrap", 200), ("thresholds.max_importance", 0.7),
    ("training.weight_decay", 1e-4), ("training.class_weights", "balanced"),
]
CHANGES: list[tuple[str, Any]] = [
    ("training.batch_size", 8), ("training.lr", 0.01), ("training.patience", None),
    ("models.0.embed_dim", 16), ("models.0.pooling_params", {"attention_dim": 16}),
    ("datasets.0.witnesses", {"count": [1, 2]}), ("datasets.0.bag_size", {"kind": "fixed"}),
    ("datasets.0.pool", {"name": "gaussian", "dim": 5}), ("study.combine", "median"),
    ("study.ensemble_sizes", [1, 3]), ("study.bootstrap", 50), ("thresholds.max_importance", 0.6),
    ("datasets.0.rule", {"name": "presence", "key": 2}), ("study.explainers", ["attention", "random"]),
]


def _set(raw: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    *parents, last = dotted.split(".")
    node: Any = raw
    for key in parents:
        node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
    node[last] = value
    return raw


@pytest.mark.parametrize(("path", "value"), SPELLINGS)
def test_how_a_setting_is_spelled_never_changes_a_cell_id(path: str, value: Any) -> None:
    """Fails on the code before issue 21 (the id hashed the raw tables): writing a default
    out (`batch_size = 16`) made --resume retrain a finished cell."""
    assert _ids(_set(minimal(), path, value)) == _ids(minimal())


@pytest.mark.parametrize(("path", "value"), CHANGES)
def test_every_real_change_changes_the_cell_ids(path: str, value: Any) -> None:
    changed = _ids(_set(minimal(), path, value))
    assert not set(changed) & set(_ids(minimal()))


def test_the_pool_shorthand_and_its_table_are_one_cell() -> None:
    plain = minimal()
    plain["datasets"][0]["pool"] = "gaussian"
    table = _set(plain, "datasets.0.pool", {"name": "gaussian"})
    explicit = _set(table, "models.0.embed_dim", 8)
    assert _ids(plain) == _ids(table) == _ids(explicit)
    (cell, *_) = study_cells(validate_config(plain))
    assert Cell.from_dict(cell.to_dict()) == cell and cell.pool == "gaussian"


def test_device_and_names_what_is_and_is_not_identity() -> None:
    base = _ids(minimal())
    assert _ids(_set(minimal(), "study.device", "cpu")) == base  # where it runs: not identity
    assert not set(_ids(_set(minimal(), "models.0.name", "other"))) & set(base)
    assert not set(_ids(_set(minimal(), "study.name", "other"))) & set(base)
