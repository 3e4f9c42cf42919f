"""FOUR-MNIST-BAGS (Early et al., MILLI): four classes from the presence of two concepts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from attnsets.data.rules.base import (
    RULES,
    LabelRule,
    as_id_list,
    background,
    check_background,
    check_concepts,
    check_room,
    choice,
    distinct,
    draw_counts,
    pick,
)
from attnsets.data.spec import WitnessSpec
from attnsets.errors import SpecError

#: ours: A and B refute class 0; MILLI's: the background supports class 0, A and B are neutral.
EVIDENCE_CONVENTIONS = ("attnsets", "milli")
#: (class, has A, has B) for the four classes.
CLASSES = ((0, False, False), (1, True, False), (2, False, True), (3, True, True))


@RULES.register("four_bags")
@dataclass
class FourBags(LabelRule):
    """Class 0: neither A nor B; 1: A only; 2: B only; 3: both (label = hasA + 2 hasB).

    A bag of a class with A holds w_A instances of A (w_A from the WitnessSpec, each of a random
    concept of `a` if it is a list), one with B likewise w_B of B; the rest is background.
    Signed, class-specific evidence:
      class 1: A +1, B -1;  class 2: A -1, B +1;  class 3: A +1, B +1; background 0;
      class 0, evidence_convention = "attnsets" (default): A -1, B -1, background 0;
      class 0, evidence_convention = "milli" (MILLI's code): A 0, B 0, background +1.
    """

    concept_fields: ClassVar[tuple[str, ...]] = ("a", "b")

    a: int | list[int] = 8
    b: int | list[int] = 9
    evidence_convention: str = "attnsets"

    n_classes = 4

    def __post_init__(self) -> None:
        choice("evidence_convention", self.evidence_convention, EVIDENCE_CONVENTIONS)
        self.a_ids = as_id_list("a", self.a)
        self.b_ids = as_id_list("b", self.b)
        distinct("b", self.a_ids, self.b_ids)

    def check(self, n_concepts: int, min_size: int, witnesses: WitnessSpec) -> list[SpecError]:
        errors = check_concepts("a", self.a_ids, n_concepts)
        errors += check_concepts("b", self.b_ids, n_concepts)
        errors += check_background("b", self.a_ids + self.b_ids, n_concepts)
        return errors + check_room(witnesses, min_size, groups=2)

    def label(self, concepts: np.ndarray) -> int:
        has_a = bool(np.isin(concepts, self.a_ids).any())
        has_b = bool(np.isin(concepts, self.b_ids).any())
        return int(has_a) + 2 * int(has_b)

    def evidence(self, concepts: np.ndarray) -> np.ndarray:
        is_a = np.isin(concepts, self.a_ids).astype(np.int8)
        is_b = np.isin(concepts, self.b_ids).astype(np.int8)
        # MILLI: "neither 8 nor 9" is supported by the digits that are neither (a and b are
        # disjoint, so 1 - is_a - is_b is 1 on background and 0 on A and B).
        class_0 = 1 - is_a - is_b if self.evidence_convention == "milli" else -is_a - is_b
        return np.stack([class_0, is_a - is_b, is_b - is_a, is_a + is_b], axis=1)

    def sample_concepts(self, label: int, size: int, n_concepts: int, witnesses: WitnessSpec,
                        split: str, rng: np.random.Generator) -> np.ndarray:
        _, has_a, has_b = CLASSES[label]
        groups = int(has_a) + int(has_b)
        counts = draw_counts(witnesses, groups, size, size, rng).tolist() if groups else []
        parts = []
        if has_a:
            parts.append(pick(self.a_ids, counts.pop(0), rng))
        if has_b:
            parts.append(pick(self.b_ids, counts.pop(0), rng))
        n_marked = sum(len(p) for p in parts)
        parts.append(background(size - n_marked, self.a_ids + self.b_ids, n_concepts, rng))
        return np.concatenate(parts)
