"""Auditing a user's own model: the example model passes a tiny battery, broken models are
caught (wrong shapes before training, attention on padding and silent failures in the table)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from attnsets.audit import VERDICTS, AuditResult, audit
from attnsets.data import DatasetSpec, make_dataset
from attnsets.data.battery import BatteryEntry, default_battery, load_battery, resolve_battery
from attnsets.data.pools.gaussian import GaussianPool
from attnsets.errors import SpecError
from attnsets.models import InputInfo, SetOutput
from attnsets.models.user import UserModel, load_builder, probe_model

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "my_model.py"
KEY = 2
POOL = {"name": "gaussian", "num_concepts": 4, "dim": 6, "separation": 8.0}
FAST = {"epochs": 12, "patience": 4, "lr": 0.005}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(name: str = "tiny-presence", rule: dict | None = None) -> dict:
    return {"name": name, "pool": POOL, "rule": rule or {"name": "presence", "key": KEY},
            "bags": {"train": 60, "val": 30, "test": 30},
            "bag_size": {"kind": "uniform", "low": 5, "high": 9}}


# --------------------------------------------------------------------------- example model


@pytest.fixture(scope="module")
def example_audit() -> AuditResult:
    poison = tiny("tiny-poison", {"name": "poison", "key": KEY, "poison": 0})
    return audit(f"{EXAMPLE}:build", battery=[tiny(), poison], seeds=(0,), members=2,
                 training=FAST)


def test_the_example_model_passes_a_tiny_presence_battery(example_audit: AuditResult) -> None:
    row = example_audit.table.set_index("entry").loc["tiny-presence"]
    assert row["learns_task"] and row["attention_finds_witnesses"]
    assert row["no_silent_failures"] and row["respects_padding"] and row["passed"]
    assert row["test_balanced_accuracy"] >= 0.9
    assert row["attention_auroc"] > 0.7
    assert row["attention_auroc_worst"] <= row["attention_auroc"]
    # written with a masked softmax: exactly zero attention at padding, padding-invariant logits
    assert row["padding_attention_max"] == 0.0
    assert row["padding_probability_change"] < 1e-6
    assert row["members_trained"] == row["members_planned"] == 2
    assert pd.isna(row["passes_unit_test"])  # presence has no shifted test split
    assert example_audit.runs[0].probe.output_kind == "tuple"


def test_shifted_test_entries_judge_on_val_and_run_the_unit_test(example_audit) -> None:  # type: ignore[no-untyped-def]
    row = example_audit.table.set_index("entry").loc["tiny-poison"]
    assert row["shifted_test"] and row["learn_split"] == "val"
    assert row["learn_score"] == row["val_balanced_accuracy"]
    metrics = example_audit.runs[1].metrics[0]
    assert metrics.unit_test is not None
    flags = [f.flagged for f in metrics.unit_test.members]
    assert row["unit_test_flagged_members"] == sum(flags)
    if row["learns_task"]:
        assert row["passes_unit_test"] == (sum(flags) == 0)
    else:
        assert pd.isna(row["passes_unit_test"])
    assert bool(row["passed"]) == all(row[v] is not False for v in VERDICTS[:-1])


def test_table_columns_and_types_survive_csv_and_parquet(example_audit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    table = example_audit.table
    assert list(table.columns[:4]) == ["entry", "modality", "rule", "shifted_test"]
    assert list(table.columns[4:10]) == list(VERDICTS)
    assert str(table["attention_finds_witnesses"].dtype) == "boolean"
    for suffix in (".csv", ".parquet"):
        path = example_audit.write(tmp_path / f"audit{suffix}")
        back = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
        assert list(back["entry"]) == list(table["entry"])
        assert np.allclose(back["attention_auroc"], table["attention_auroc"])
    with pytest.raises(SpecError, match="path"):
        example_audit.write(tmp_path / "audit.xlsx")
    assert example_audit.verdict.startswith("pass") == example_audit.passed


def test_the_example_is_importable_as_a_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    builder = load_builder("examples.my_model:build")
    assert callable(builder) and builder.__name__ == "build"
    info = InputInfo("sequence", (12,), 3, vocab_size=21)  # every modality of the battery
    model = builder(info, 0)
    logits, attention = model(torch.randint(0, 21, (2, 5, 12)), torch.ones(2, 5, dtype=torch.bool))
    assert logits.shape == (2, 3) and torch.allclose(attention.sum(-1), torch.ones(2))


# --------------------------------------------------------------------------- broken models


class UnmaskedAttention(nn.Module):
    """The classic bug: softmax over every position, padding included."""

    def __init__(self, dim: int, n_classes: int) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1)
        self.out = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attention = torch.softmax(self.score(x).squeeze(-1), dim=-1)
        return self.out(torch.einsum("bn,bnd->bd", attention, x)), attention


class WrongLogits(UnmaskedAttention):
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, attention = super().forward(x, mask)
        return logits[:, :1], attention * mask


def test_attention_on_padding_is_reported_not_hidden() -> None:
    result = audit(lambda info, seed: UnmaskedAttention(info.instance_shape[0], info.n_classes),
                   battery=[tiny()], seeds=(0,), members=1, training={"epochs": 2})
    row = result.table.iloc[0]
    assert row["padding_attention_max"] > 1e-3
    assert row["padding_probability_change"] > 1e-4  # junk in the padding moves the prediction
    assert not row["respects_padding"] and not row["passed"] and not result.passed
    assert "attention at padded positions" in row["notes"]
    assert "padding changes the prediction" in row["notes"]


def test_wrong_logits_shape_fails_before_any_training() -> None:
    messages: list[str] = []
    with pytest.raises(SpecError) as caught:
        audit(lambda info, seed: WrongLogits(info.instance_shape[0], info.n_classes),
              battery=[tiny()], seeds=(0,), members=1, progress=messages.append)
    assert caught.value.field == "model_builder.forward"
    assert "(B, C)" in str(caught.value) and "(4, 1)" in str(caught.value)
    assert not any("training" in m for m in messages)


@pytest.fixture(scope="module")
def gaussian_data():  # type: ignore[no-untyped-def]
    return make_dataset(DatasetSpec.from_dict({k: v for k, v in tiny().items() if k != "name"}))


class Returns(nn.Module):
    """A module returning whatever `make(x, mask)` builds, for probing output checks."""

    def __init__(self, make) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.make = make

    def forward(self, x: torch.Tensor, mask: torch.Tensor):  # type: ignore[no-untyped-def]
        return self.make(x, mask)


@pytest.mark.parametrize(("make", "message"), [
    (lambda x, m: {"logits": torch.zeros(len(x), 2)}, "SetOutput"),
    (lambda x, m: (torch.zeros(len(x), 2), torch.zeros(len(x), 3)), "attention of shape"),
    (lambda x, m: (torch.zeros(len(x), 2), torch.zeros(len(x)), 1), "tuple"),
    (lambda x, m: torch.full((len(x), 2), float("nan")), "finite"),
    (lambda x, m: torch.zeros(len(x), 2, dtype=torch.long), "floating"),
    (lambda x, m: x.sum() + "oops", "forward"),
])
def test_probe_rejects_wrong_outputs(gaussian_data, make, message: str) -> None:  # type: ignore[no-untyped-def]
    model = UserModel(Returns(make), InputInfo.from_dataset(gaussian_data))
    with pytest.raises(SpecError, match=message):
        probe_model(model, gaussian_data)


def test_builders_must_return_trainable_modules() -> None:
    with pytest.raises(SpecError, match="torch.nn.Module"):
        audit(lambda info, seed: "not a model", battery=[tiny()], seeds=(0,), members=1)
    with pytest.raises(SpecError, match="trainable"):
        audit(lambda info, seed: nn.Identity(), battery=[tiny()], seeds=(0,), members=1)
    with pytest.raises(SpecError, match=r"builder\(info, seed\)"):
        audit(lambda info: nn.Linear(2, 2), battery=[tiny()], seeds=(0,), members=1)


class FailsWhileTraining(UnmaskedAttention):
    """Passes the probe (eval mode) but raises in training mode."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            raise RuntimeError("dropout layer misconfigured")
        logits, attention = super().forward(x, mask)
        return logits, attention * mask


def test_a_user_model_failing_in_training_is_reported_per_entry() -> None:
    result = audit(lambda info, seed: FailsWhileTraining(info.instance_shape[0], info.n_classes),
                   battery=[tiny()], seeds=(0,), members=1)
    row = result.table.iloc[0]
    assert not row["passed"] and row["members_trained"] == 0
    assert "training failed: RuntimeError: dropout layer misconfigured" in row["notes"]
    assert not row["learns_task"] and pd.isna(row["no_silent_failures"])


# --------------------------------------------------------------------------- verdict logic


class KeyDetector(nn.Module):
    """Predicts presence exactly (max projection on the key concept's mean) while its attention
    points *away* from the key instances: a deliberate silent failure. Its one parameter does not
    touch the output, so training cannot change it."""

    def __init__(self) -> None:
        super().__init__()
        key_mean = GaussianPool(**{k: v for k, v in POOL.items() if k != "name"}).means[KEY]
        length = float(np.linalg.norm(key_mean))
        self.register_buffer("direction", torch.as_tensor(key_mean) / length)
        self.threshold = length / 2
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> SetOutput:
        keyness = x @ self.direction
        strongest = keyness.masked_fill(~mask, -torch.inf).amax(dim=1) - self.threshold
        logits = torch.stack([-strongest, strongest], -1) * 4 + 0 * self.unused
        attention = torch.softmax((-keyness).masked_fill(~mask, -torch.inf), -1)
        return SetOutput(logits, torch.where(mask, attention, 0.0))


def test_a_silent_failure_fails_the_audit_for_the_right_reason() -> None:
    result = audit(lambda info, seed: KeyDetector(), battery=[tiny()], seeds=(0,), members=2,
                   training={"epochs": 1})
    row = result.table.iloc[0]
    assert row["learns_task"] and row["respects_padding"]
    assert row["attention_auroc"] < 0.3
    assert not row["attention_finds_witnesses"]
    assert row["silent_members"] == 2 and not row["no_silent_failures"]
    assert not row["passed"] and "fail silently" in row["notes"]
    assert result.runs[0].probe.output_kind == "SetOutput"


def test_a_registered_pooling_without_attention_is_not_judged_on_attention() -> None:
    result = audit("mean", battery=[tiny()], seeds=(0,), members=2, training=FAST)
    row = result.table.iloc[0]
    assert pd.isna(row["attention_finds_witnesses"]) and pd.isna(row["no_silent_failures"])
    assert pd.isna(row["silent_members"]) and math.isnan(row["attention_auroc"])
    assert "no attention" in row["notes"]
    assert bool(row["passed"]) == bool(row["learns_task"])


# --------------------------------------------------------------------------- inputs


def test_the_default_battery_covers_modalities_and_unit_tests() -> None:
    battery = default_battery()
    pairs = {(e.dataset.pool.name, e.dataset.rule.name) for e in battery}
    assert {("gaussian", "presence"), ("gaussian", "threshold"), ("digits", "presence"),
            ("sequences", "presence"), ("gaussian", "poison"),
            ("gaussian", "false_frequency")} <= pairs
    assert [e.shifted_test for e in battery].count(True) == 2
    assert all(isinstance(e, BatteryEntry) and e.about for e in battery)


def test_battery_and_reference_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="distinct name"):
        resolve_battery([tiny(), tiny()])
    with pytest.raises(SpecError, match=r"battery\[0\]\.name"):
        resolve_battery([{k: v for k, v in tiny().items() if k != "name"}])
    with pytest.raises(SpecError, match="non-empty list"):
        resolve_battery([])
    with pytest.raises(SpecError, match="registered pooling"):
        load_builder("no_such_pooling")
    with pytest.raises(SpecError, match="no 'missing' there"):
        load_builder(f"{EXAMPLE}:missing")
    with pytest.raises(SpecError, match="existing Python file"):
        load_builder(f"{tmp_path / 'nope.py'}:build")
    with pytest.raises(SpecError, match="importable module"):
        load_builder("no_such_module_xyz:build")
    with pytest.raises(SpecError, match="seeds"):
        audit("attention", battery=[tiny()], seeds=(0, 0))
    with pytest.raises(SpecError, match="members"):
        audit("attention", battery=[tiny()], members=0)
    with pytest.raises(SpecError, match="training.epochs"):
        audit("attention", battery=[tiny()], training={"epochs": 0})
    with pytest.raises(SpecError, match="thresholds.bogus"):
        audit("attention", battery=[tiny()], thresholds={"bogus": 1})
    config = tmp_path / "battery.toml"
    config.write_text('[[datasets]]\nname = "mine"\npool = { name = "gaussian" }\n'
                      'rule = { name = "presence", key = 1 }\n')
    assert [e.name for e in load_battery(config)] == ["mine"]
