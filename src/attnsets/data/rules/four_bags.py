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
#: How a bag of a class is built: ours (witness counts from the WitnessSpec) or MILLI's stream.
CONSTRUCTIONS = ("attnsets", "milli")
#: MILLI's stream draws this many instances at a time while it looks for a window of the class.
STREAM_BLOCK = 64
#: (class, has A, has B) for the four classes.
CLASSES = ((0, False, False), (1, True, False), (2, False, True), (3, True, True))


@RULES.register("four_bags")
@dataclass
class FourBags(LabelRule):
    """Class 0: neither A nor B; 1: A only; 2: B only; 3: both (label = hasA + 2 hasB).

    construction = "attnsets" (default): a bag of a class with A holds w_A instances of A (w_A
    from the WitnessSpec, each of a random concept of `a` if it is a list), one with B likewise
    w_B of B; the rest is background.
    construction = "milli" (Early et al. 2022, FOUR-MNIST-BAGS): instances are drawn one by one;
    for classes 1-3 each draw is discriminative with probability `discriminative_probability`
    (an A for class 1, a B for class 2, an A or a B with equal chance for class 3), else
    background; class 0 draws only background. The bag is the first window of `size`
    consecutive draws whose label is the class (a sliding window: once `size` draws are in,
    each new draw pushes out the oldest). The WitnessSpec is not used.
    Signed, class-specific evidence:
      class 1: A +1, B -1;  class 2: A -1, B +1;  class 3: A +1, B +1; background 0;
      class 0, evidence_convention = "attnsets" (default): A -1, B -1, background 0;
      class 0, evidence_convention = "milli" (MILLI's code): A 0, B 0, background +1.
    """

    concept_fields: ClassVar[tuple[str, ...]] = ("a", "b")

    a: int | list[int] = 8
    b: int | list[int] = 9
    evidence_convention: str = "attnsets"
    construction: str = "attnsets"
    discriminative_probability: float = 0.1

    n_classes = 4

    def __post_init__(self) -> None:
        choice("evidence_convention", self.evidence_convention, EVIDENCE_CONVENTIONS)
        choice("construction", self.construction, CONSTRUCTIONS)
        p = self.discriminative_probability
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 < p <= 1:
            raise SpecError("discriminative_probability", p, "a probability in (0, 1]")
        self.a_ids = as_id_list("a", self.a)
        self.b_ids = as_id_list("b", self.b)
        distinct("b", self.a_ids, self.b_ids)

    def check(self, n_concepts: int, min_size: int, witnesses: WitnessSpec) -> list[SpecError]:
        errors = check_concepts("a", self.a_ids, n_concepts)
        errors += check_concepts("b", self.b_ids, n_concepts)
        errors += check_background("b", self.a_ids + self.b_ids, n_concepts)
        if self.construction == "milli":
            if min_size < 2:
                errors.append(SpecError("bag_size", min_size, "a smallest bag of at least 2 "
                                        "instances (class 3 needs an A and a B)"))
            return errors
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
        if self.construction == "milli":
            return self.milli_window(label, size, n_concepts, rng)
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

    def milli_draws(self, label: int, n: int, n_concepts: int, rng: np.random.Generator
                    ) -> np.ndarray:
        """(n,) concept ids of MILLI's stream for `label` (see the class docstring)."""
        _, has_a, has_b = CLASSES[label]
        marked = (self.a_ids if has_a else []) + (self.b_ids if has_b else [])
        filler = background(n, self.a_ids + self.b_ids, n_concepts, rng)
        if not marked:
            return filler
        discriminative = rng.random(n) < self.discriminative_probability
        if has_a and has_b:  # A or B with equal chance, then a concept of that group
            groups = np.where(rng.random(n) < 0.5, 0, 1)
            drawn = np.where(groups == 0, pick(self.a_ids, n, rng), pick(self.b_ids, n, rng))
        else:
            drawn = pick(marked, n, rng)
        return np.where(discriminative, drawn, filler)

    def milli_window(self, label: int, size: int, n_concepts: int, rng: np.random.Generator
                     ) -> np.ndarray:
        """(size,) the first window of `size` consecutive stream draws labelled `label`."""
        stream = np.zeros(0, dtype=np.int64)
        while True:
            stream = np.concatenate([stream, self.milli_draws(label, STREAM_BLOCK, n_concepts,
                                                              rng)])
            a_count = np.concatenate([[0], np.cumsum(np.isin(stream, self.a_ids))])
            b_count = np.concatenate([[0], np.cumsum(np.isin(stream, self.b_ids))])
            ends = np.arange(size, len(stream) + 1)  # window = stream[end - size:end]
            has_a = a_count[ends] - a_count[ends - size] > 0
            has_b = b_count[ends] - b_count[ends - size] > 0
            hits = np.flatnonzero(has_a.astype(np.int64) + 2 * has_b.astype(np.int64) == label)
            if len(hits):
                end = int(ends[hits[0]])
                return stream[end - size:end]
