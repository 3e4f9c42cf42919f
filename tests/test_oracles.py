"""The algorithmic unit tests, validated by oracles: hand-set models whose behaviour is known by
construction, run through `assess` on every shifted-test rule.

On a gaussian pool with well separated means the nearest concept mean tells each instance's
concept (the noise would have to exceed ~6 sd), so each oracle is an exact function of the bag:
- an instance detector + max (per required concept, then all present), which obeys the
  (multi-concept) MIL assumption and so must pass every unit test;
- a counting model (positive iff at least k instances of some concepts), which Raff & Holt's
  false-frequency test must catch;
- a model keyed to the absence of the poison, which the poison tests must catch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from attnsets.assess import AssessSpec, assess
from attnsets.data import RULES, DatasetSpec, SetDataset, make_dataset
from attnsets.data.bags import BagSplit
from attnsets.models import InputInfo, SetModel, SetOutput, masked_softmax

#: Logit scale of the hard decisions: probabilities within 1e-3 of 0 or 1.
SCALE = 8.0
POOL = {"name": "gaussian", "num_concepts": 6, "dim": 8, "separation": 12.0}
BAGS = {"train": 1, "val": 60, "test": 60}  # nothing is trained; assess reads val and test
RULE_SPECS: dict[str, dict[str, Any]] = {
    "poison": {"name": "poison", "key": 2, "poison": 0},
    "false_frequency": {"name": "false_frequency", "key": 2, "frequent": 3},
    "multi_concept_poison": {"name": "multi_concept_poison", "concepts": [1, 4], "poison": 0},
}
#: The concepts each rule requires (all present => positive): what the MIL-valid oracle detects.
REQUIRED = {"poison": [2], "false_frequency": [2], "multi_concept_poison": [1, 4]}


@pytest.fixture(scope="module")
def datasets(one_torch_thread: None) -> dict[str, SetDataset]:
    return {name: make_dataset(DatasetSpec.from_dict({
        "pool": POOL, "rule": rule, "bags": BAGS, "seed": 11,
        "bag_size": {"kind": "uniform", "low": 6, "high": 14}}))
        for name, rule in RULE_SPECS.items()}


class NearestConcept(nn.Module):
    """h: (B, N, d) -> (B, N, C) float one-hot of each instance's nearest concept mean."""

    def __init__(self, means: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("means", torch.as_tensor(means, dtype=torch.float32))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        distances = ((h[:, :, None, :] - self.means) ** 2).sum(-1)  # (B, N, C)
        return nn.functional.one_hot(distances.argmin(-1), len(self.means)).to(h.dtype)


class Oracle(nn.Module):
    """A pooling head with a hand-set decision on the instances' concepts.

    kind = "detect_max": positive iff every concept of `concepts` is present (max over the
      instances of each concept's detector, then the minimum over the concepts);
    kind = "count": positive iff at least `k` instances belong to `concepts` (sum, not max);
    kind = "absent": positive iff no instance belongs to `concepts` (the poison).
    Attention: uniform over the instances of `concepts` (all instances where there is none).
    """

    def __init__(self, means: np.ndarray, kind: str, concepts: list[int], k: int = 1) -> None:
        super().__init__()
        self.nearest = NearestConcept(means)
        self.kind, self.concepts, self.k = kind, concepts, k

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> SetOutput:
        hits = self.nearest(h)[:, :, self.concepts] * mask[:, :, None]  # (B, N, S)
        if self.kind == "detect_max":
            decision = hits.amax(dim=1).amin(dim=1) - 0.5
        elif self.kind == "count":
            decision = (hits.sum(dim=(1, 2)) - (self.k - 0.5)).clamp(-1, 1)
        else:
            decision = 0.5 - hits.amax(dim=(1, 2))
        logits = SCALE * torch.stack([-decision, decision], dim=-1)
        attention = masked_softmax(SCALE * hits.amax(dim=2), mask)
        return SetOutput(logits, attention, attention[:, None])


def oracle(dataset: SetDataset, kind: str, concepts: list[int], k: int = 1) -> SetModel:
    means = np.asarray(dataset.metadata["means"])
    return SetModel(nn.Identity(), Oracle(means, kind, concepts, k),
                    info=InputInfo.from_dataset(dataset))


def unit_test(model: SetModel, dataset: SetDataset) -> dict[str, Any]:
    """The member's unit-test result from `assess` (val = training distribution vs test)."""
    unit = assess([model], dataset, AssessSpec(explainers=("attention",), bootstrap=0,
                                               deletion_steps=2)).unit_test
    assert unit is not None  # a shifted-test rule
    result: dict[str, Any] = unit.members[0].to_dict()
    assert unit.ensemble.flagged == result["flagged"]
    return result


def test_the_battery_covers_every_shifted_test_rule() -> None:
    assert {name for name, rule in RULES.items() if rule.shifted_test} == set(RULE_SPECS)


@pytest.mark.parametrize("rule", sorted(RULE_SPECS))
def test_mil_valid_detector_passes_every_unit_test(rule: str,
                                                   datasets: dict[str, SetDataset]) -> None:
    result = unit_test(oracle(datasets[rule], "detect_max", REQUIRED[rule]), datasets[rule])
    assert not result["flagged"], result["reason"]
    # a pass, not a model that never learned the training distribution
    assert result["train_metric"] == 1.0 and result["test_metric"] == 1.0, result["reason"]


@pytest.mark.parametrize("counted", [[3], [2, 3]], ids=["frequent", "signal"])
def test_counting_model_fails_false_frequency(counted: list[int],
                                              datasets: dict[str, SetDataset]) -> None:
    """Counting the frequent concept, or all signal instances whatever their concept (Raff &
    Holt's counting shortcut), is perfect on the training distribution: positives hold >= 3,
    negatives exactly 1. Test negatives hold 35-44 and are all called positive."""
    ds = datasets["false_frequency"]
    result = unit_test(oracle(ds, "count", counted, k=2), ds)
    assert result["flagged"], result["reason"]
    assert result["train_metric"] == 1.0 and result["test_metric"] == 0.5


@pytest.mark.parametrize("rule", ["poison", "multi_concept_poison"])
def test_poison_absence_model_fails_the_poison_tests(rule: str,
                                                     datasets: dict[str, SetDataset]) -> None:
    result = unit_test(oracle(datasets[rule], "absent", [0]), datasets[rule])
    assert result["flagged"], result["reason"]
    assert result["train_metric"] == 1.0 and result["test_metric"] == 0.0


def test_one_concept_detector_errs_exactly_on_the_multi_concept_negatives_holding_it(
        datasets: dict[str, SetDataset]) -> None:
    """The multi-concept negatives hold A alone, B alone or neither: a detector of A alone is
    right on every positive and wrong on exactly the negatives holding A, in every split, so
    the oracle's balanced accuracy is known from the bags themselves."""
    ds = datasets["multi_concept_poison"]
    result = unit_test(oracle(ds, "detect_max", [1]), ds)

    def expected(split: BagSplit) -> float:
        negatives = [bag for bag in split if bag.label == 0]
        with_a = np.mean([bool((bag.concepts == 1).any()) for bag in negatives])
        return float((1.0 + (1.0 - with_a)) / 2)

    assert result["train_metric"] == pytest.approx(expected(ds.val))
    assert result["test_metric"] == pytest.approx(expected(ds.test))
    assert max(result["train_metric"], result["test_metric"]) < 1.0


def test_sizes_do_not_separate_training_from_test_in_false_frequency(
        datasets: dict[str, SetDataset]) -> None:
    """What lets the MIL-valid oracle pass without luck: every false_frequency bag has the same
    size law (here all 44), so a max over the bag sees as many instances in test as in val."""
    ds = datasets["false_frequency"]
    assert set(ds.val.sizes.tolist()) == set(ds.test.sizes.tolist()) == {44}
