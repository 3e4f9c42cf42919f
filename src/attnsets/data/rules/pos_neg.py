"""Pos-Neg (xMIL, Hense et al.): positive-evidence vs negative-evidence concepts decide."""

from __future__ import annotations

from dataclasses import dataclass, field

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
from attnsets.data.spec import WitnessSpec
from attnsets.errors import SpecError


@RULES.register("pos_neg")
@dataclass
class PosNeg(LabelRule):
    """Positive iff #instances of `positive` concepts > #instances of `negative` concepts.

    The winning side gets w instances (w from the WitnessSpec, clipped to half the bag): a class-1
    bag holds w positive-evidence instances and 0..w-1 negative ones (uniform); a class-0 bag
    holds w negative-evidence instances and 0..w positive ones (uniform; a tie is class 0). So
    both classes carry witnesses and the largest count has the same law in both.
    Evidence: class 1: positive concepts +1, negative concepts -1; class 0: the negation.
    """

    positive: int | list[int] = field(default_factory=lambda: [8, 9])
    negative: int | list[int] = field(default_factory=lambda: [6, 7])

    def __post_init__(self) -> None:
        self.pos_ids = as_id_list("positive", self.positive)
        self.neg_ids = as_id_list("negative", self.negative)
        distinct("negative", self.pos_ids, self.neg_ids)

    def check(self, n_concepts: int, min_size: int, witnesses: WitnessSpec) -> list[SpecError]:
        errors = check_concepts("positive", self.pos_ids, n_concepts)
        errors += check_concepts("negative", self.neg_ids, n_concepts)
        errors += check_background("negative", self.pos_ids + self.neg_ids, n_concepts)
        return errors + check_room(witnesses, min_size, groups=2)

    def signed(self, concepts: np.ndarray) -> np.ndarray:
        """(n,) int8: +1 positive-evidence concept, -1 negative-evidence concept, else 0."""
        return np.isin(concepts, self.pos_ids).astype(np.int8) \
            - np.isin(concepts, self.neg_ids).astype(np.int8)

    def label(self, concepts: np.ndarray) -> int:
        return int(self.signed(concepts).sum(dtype=np.int64) > 0)

    def evidence(self, concepts: np.ndarray) -> np.ndarray:
        return binary_evidence(self.signed(concepts))

    def sample_concepts(self, label: int, size: int, n_concepts: int, witnesses: WitnessSpec,
                        split: str, rng: np.random.Generator) -> np.ndarray:
        winning = int(draw_counts(witnesses, 1, size, size // 2, rng)[0])
        # A tie goes to class 0, so the losing side of class 1 stops one short of `winning`.
        losing = int(rng.integers(0, winning + (0 if label == 1 else 1)))
        n_pos, n_neg = (winning, losing) if label == 1 else (losing, winning)
        parts = [pick(self.pos_ids, n_pos, rng), pick(self.neg_ids, n_neg, rng)]
        return np.concatenate([*parts, background(size - n_pos - n_neg,
                                                  self.pos_ids + self.neg_ids, n_concepts, rng)])
