"""Raff & Holt (NeurIPS 2023) algorithmic unit tests: datasets whose test split is shifted on
purpose so that a model relying on a shortcut, not on the key concept, fails there."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from attnsets.data.rules.base import (
    RULES,
    LabelRule,
    as_id_list,
    background,
    binary_evidence,
    check_background,
    check_concepts,
    check_room,
    distinct,
    draw_counts,
    pick,
)
from attnsets.data.rules.sets import random_subset
from attnsets.data.spec import WitnessSpec
from attnsets.errors import SpecError
from attnsets.spec.constraints import is_int

#: The split whose bags are shifted; train and val share the training distribution.
SHIFTED_SPLIT = "test"


def count_range(field: str, value: object, lowest: int) -> tuple[int, int]:
    """Parse an int or a [low, high] pair with lowest <= low <= high."""
    pair = [value, value] if isinstance(value, int | np.integer) else value
    if not isinstance(pair, list | tuple) or len(pair) != 2 or not all(
            is_int(v) for v in pair):
        raise SpecError(field, value, "an integer or [low, high] integers")
    low, high = int(pair[0]), int(pair[1])
    if not lowest <= low <= high:
        raise SpecError(field, list(pair), f"[low, high] with {lowest} <= low <= high")
    return low, high


@RULES.register("poison")
@dataclass
class Poison(LabelRule):
    """Positive iff a `key` instance is present; a neutral `poison` instance flips sides.

    Positive bags hold w key instances (w from the WitnessSpec, 1-3 by default). In train and
    val every negative bag holds exactly one poison instance and positives none; in test every
    positive bag holds exactly one and negatives none. A model that learned "poison absent =>
    positive" instead of "key present => positive" flips its test predictions. Every bag has at
    least 2 instances (room for a witness and the poison), whatever its label.
    Evidence: key instances +1 for class 1 and -1 for class 0; poison and background 0.
    """

    concept_fields: ClassVar[tuple[str, ...]] = ("key", "poison")

    shifted_test: ClassVar[bool] = True

    key: int | list[int] = 9
    poison: int | list[int] = 0

    def __post_init__(self) -> None:
        self.keys = as_id_list("key", self.key)
        self.poison_ids = as_id_list("poison", self.poison)
        distinct("poison", self.keys, self.poison_ids)

    def check(self, n_concepts: int, min_size: int, witnesses: WitnessSpec) -> list[SpecError]:
        errors = check_concepts("key", self.keys, n_concepts)
        errors += check_concepts("poison", self.poison_ids, n_concepts)
        errors += check_background("poison", self.keys + self.poison_ids, n_concepts)
        return errors + check_room(witnesses, max(min_size, 2), reserved=1)

    def required_size(self, label: int, split: str) -> int:
        return 2

    def label(self, concepts: np.ndarray) -> int:
        return int(np.isin(concepts, self.keys).any())

    def evidence(self, concepts: np.ndarray) -> np.ndarray:
        return binary_evidence(np.isin(concepts, self.keys))

    def sample_concepts(self, label: int, size: int, n_concepts: int, witnesses: WitnessSpec,
                        split: str, rng: np.random.Generator) -> np.ndarray:
        poisoned = (label == 1) if split == SHIFTED_SPLIT else (label == 0)
        n_poison = int(poisoned)
        n_key = int(draw_counts(witnesses, 1, size, size - n_poison, rng)[0]) if label == 1 else 0
        parts = [pick(self.keys, n_key, rng), pick(self.poison_ids, n_poison, rng)]
        return np.concatenate([*parts, background(size - n_key - n_poison,
                                                  self.keys + self.poison_ids, n_concepts, rng)])


@RULES.register("false_frequency")
@dataclass
class FalseFrequency(LabelRule):
    """Positive iff a `key` instance is present; a neutral `frequent` concept's count is a
    shortcut in training that reverses in test.

    Following Raff & Holt's false-frequency test (positives hold two signal instances, train
    negatives one copy of a signal concept, test negatives 35-44 copies): every positive bag
    (all splits) holds w key instances (WitnessSpec) and `positive_copies` (default 2-3) copies of
    `frequent`; train/val negatives hold exactly one copy, test negatives `test_copies` (default
    35-44). In training "more than one frequent instance => positive" is as accurate as the key,
    so a model that counts is rewarded there and fails on the test negatives. Every bag of every
    split and label is grown to max(test_copies) instances, so the size distribution is the same
    everywhere (max(drawn size, max(test_copies))) and bag size tells neither the label nor the
    split: only the frequent concept's count changes at test time.
    Evidence: key instances +1 for class 1 and -1 for class 0; frequent and background 0.
    """

    concept_fields: ClassVar[tuple[str, ...]] = ("key", "frequent")

    shifted_test: ClassVar[bool] = True

    key: int | list[int] = 9
    frequent: int | list[int] = 8
    positive_copies: int | tuple[int, int] = (2, 3)
    test_copies: int | tuple[int, int] = (35, 44)

    def __post_init__(self) -> None:
        self.keys = as_id_list("key", self.key)
        self.frequent_ids = as_id_list("frequent", self.frequent)
        distinct("frequent", self.keys, self.frequent_ids)
        # At least 2, so that positives hold more copies than train negatives (exactly 1).
        self.positive_range = count_range("positive_copies", self.positive_copies, 2)
        self.test_range = count_range("test_copies", self.test_copies, 1)
        if self.test_range[0] <= self.positive_range[1]:
            raise SpecError("test_copies", list(self.test_range),
                            f"a low above positive_copies' high ({self.positive_range[1]}), so "
                            "test negatives out-count every positive")

    def check(self, n_concepts: int, min_size: int, witnesses: WitnessSpec) -> list[SpecError]:
        errors = check_concepts("key", self.keys, n_concepts)
        errors += check_concepts("frequent", self.frequent_ids, n_concepts)
        errors += check_background("frequent", self.keys + self.frequent_ids, n_concepts)
        room = max(min_size, self.required_size(1, "train"))
        return errors + check_room(witnesses, room, reserved=self.positive_range[1])

    def required_size(self, label: int, split: str) -> int:
        # Test negatives need room for max(test_copies); growing every bag to it (not only
        # theirs) keeps size uninformative. test_range[0] > positive_range[1], so positives
        # still have room for a key.
        return self.test_range[1]

    def label(self, concepts: np.ndarray) -> int:
        return int(np.isin(concepts, self.keys).any())

    def evidence(self, concepts: np.ndarray) -> np.ndarray:
        return binary_evidence(np.isin(concepts, self.keys))

    def sample_concepts(self, label: int, size: int, n_concepts: int, witnesses: WitnessSpec,
                        split: str, rng: np.random.Generator) -> np.ndarray:
        if label == 1:
            low, high = self.positive_range
        elif split == SHIFTED_SPLIT:
            low, high = self.test_range
        else:
            low, high = 1, 1
        n_frequent = int(rng.integers(low, high + 1))
        n_key = int(draw_counts(witnesses, 1, size, size - n_frequent, rng)[0]) \
            if label == 1 else 0
        parts = [pick(self.keys, n_key, rng), pick(self.frequent_ids, n_frequent, rng)]
        return np.concatenate([*parts, background(size - n_key - n_frequent,
                                                  self.keys + self.frequent_ids, n_concepts,
                                                  rng)])


@RULES.register("multi_concept_poison")
@dataclass
class MultiConceptPoison(LabelRule):
    """Positive iff every listed concept is present (Raff & Holt's multi-concept test, A and B);
    a neutral `poison` instance flips sides at test time as in `poison`.

    Positive bags hold every listed concept, negatives a uniformly random proper subset of them
    (the empty one included), each present concept with its own w instances (WitnessSpec), as in
    `all_of`. In train and val every negative holds exactly one poison instance and positives
    none; in test every positive holds exactly one and negatives none. A model that learned
    "poison absent => positive" flips on test; one that checks each concept's presence does not.
    Every bag is grown to len(concepts) + 1 instances whatever its label and split.
    Evidence: listed-concept instances +1 for class 1 and -1 for class 0; poison and background 0.
    """

    concept_fields: ClassVar[tuple[str, ...]] = ("concepts", "poison")

    shifted_test: ClassVar[bool] = True

    concepts: list[int] = field(default_factory=lambda: [8, 9])
    poison: int | list[int] = 0

    def __post_init__(self) -> None:
        self.ids = as_id_list("concepts", self.concepts)
        if len(self.ids) < 2:
            raise SpecError("concepts", self.concepts,
                            "at least two concept ids (one concept is the `poison` rule)")
        self.poison_ids = as_id_list("poison", self.poison)
        distinct("concepts", self.ids)
        distinct("poison", self.ids, self.poison_ids)

    def check(self, n_concepts: int, min_size: int, witnesses: WitnessSpec) -> list[SpecError]:
        errors = check_concepts("concepts", self.ids, n_concepts)
        errors += check_concepts("poison", self.poison_ids, n_concepts)
        errors += check_background("poison", self.ids + self.poison_ids, n_concepts)
        room = max(min_size, self.required_size(1, "train"))
        return errors + check_room(witnesses, room, groups=len(self.ids), reserved=1)

    def required_size(self, label: int, split: str) -> int:
        return len(self.ids) + 1

    def label(self, concepts: np.ndarray) -> int:
        return int(np.isin(np.asarray(self.ids), concepts).all())

    def evidence(self, concepts: np.ndarray) -> np.ndarray:
        return binary_evidence(np.isin(concepts, self.ids))

    def sample_concepts(self, label: int, size: int, n_concepts: int, witnesses: WitnessSpec,
                        split: str, rng: np.random.Generator) -> np.ndarray:
        poisoned = (label == 1) if split == SHIFTED_SPLIT else (label == 0)
        n_poison = int(poisoned)
        present = np.ones(len(self.ids), dtype=bool) if label == 1 \
            else random_subset(len(self.ids), proper=True, rng=rng)
        ids = np.asarray(self.ids, dtype=np.int64)[present]
        counts = draw_counts(witnesses, len(ids), size, size - n_poison, rng) if len(ids) \
            else np.zeros(0, dtype=np.int64)
        members = np.repeat(ids, counts)
        parts = [members, pick(self.poison_ids, n_poison, rng)]
        return np.concatenate([*parts, background(size - len(members) - n_poison,
                                                  self.ids + self.poison_ids, n_concepts, rng)])
