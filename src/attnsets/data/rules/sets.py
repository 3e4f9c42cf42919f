"""Set-of-concepts rules: conjunction (`all_of`, Raff & Holt's multi-concept test) and
disjunction (`any_of`) of concept presence."""

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
)
from attnsets.data.spec import WitnessSpec
from attnsets.errors import SpecError


def random_subset(m: int, proper: bool, rng: np.random.Generator) -> np.ndarray:
    """(m,) bool mask of a uniformly random subset of m items: a proper subset (not all, may be
    empty) if `proper`, else a non-empty one. Rejection sampling: at most 2 tries on average."""
    while True:
        mask = rng.random(m) < 0.5
        if (proper and not mask.all()) or (not proper and mask.any()):
            return mask


@dataclass
class ConceptSet(LabelRule):
    """Shared parts of all_of / any_of: each listed concept that is present in a bag gets its own
    witness count from the WitnessSpec; the rest of the bag is background."""

    concept_fields: ClassVar[tuple[str, ...]] = ("concepts",)

    concepts: int | list[int] = field(default_factory=lambda: [8, 9])

    def __post_init__(self) -> None:
        self.ids = as_id_list("concepts", self.concepts)
        distinct("concepts", self.ids)

    def check(self, n_concepts: int, min_size: int, witnesses: WitnessSpec) -> list[SpecError]:
        errors = check_concepts("concepts", self.ids, n_concepts)
        errors += check_background("concepts", self.ids, n_concepts)
        return errors + check_room(witnesses, min_size, groups=len(self.ids))

    def presence(self, concepts: np.ndarray) -> np.ndarray:
        """(m,) bool: is listed concept i in the bag?"""
        return np.isin(np.asarray(self.ids), concepts)

    def evidence(self, concepts: np.ndarray) -> np.ndarray:
        return binary_evidence(np.isin(concepts, self.ids))

    def build(self, present: np.ndarray, size: int, n_concepts: int, witnesses: WitnessSpec,
              rng: np.random.Generator) -> np.ndarray:
        """(size,) concepts: the listed concepts where `present` (m,) with their witnesses."""
        ids = np.asarray(self.ids, dtype=np.int64)[present]
        counts = draw_counts(witnesses, len(ids), size, size, rng) if len(ids) \
            else np.zeros(0, dtype=np.int64)
        members = np.repeat(ids, counts)
        return np.concatenate([members, background(size - len(members), self.ids, n_concepts,
                                                   rng)])


@RULES.register("all_of")
@dataclass
class AllOf(ConceptSet):
    """Positive iff every listed concept is present (conjunction).

    Positive bags hold every listed concept; negative bags hold a uniformly random proper subset
    of them (any of the 2^m - 1, the empty one included). Each present listed concept gets w
    instances (w from the WitnessSpec, drawn per concept), so no single concept's count tells
    the label. Evidence: listed-concept instances are +1 for class 1 and -1 for class 0 in every
    bag; others 0.
    """

    def label(self, concepts: np.ndarray) -> int:
        return int(self.presence(concepts).all())

    def sample_concepts(self, label: int, size: int, n_concepts: int, witnesses: WitnessSpec,
                        split: str, rng: np.random.Generator) -> np.ndarray:
        present = np.ones(len(self.ids), dtype=bool) if label == 1 \
            else random_subset(len(self.ids), proper=True, rng=rng)
        return self.build(present, size, n_concepts, witnesses, rng)


@RULES.register("any_of")
@dataclass
class AnyOf(ConceptSet):
    """Positive iff at least one listed concept is present (disjunction).

    Positive bags hold a uniformly random non-empty subset of the listed concepts, each present
    concept with its own w instances (w from the WitnessSpec); negative bags hold none. Unlike
    `presence` with a list key (w witnesses in total, each of a random key), positives here often
    hold several different listed concepts. Evidence: listed-concept instances are +1 for class 1
    and -1 for class 0; others 0.
    """

    def label(self, concepts: np.ndarray) -> int:
        return int(self.presence(concepts).any())

    def sample_concepts(self, label: int, size: int, n_concepts: int, witnesses: WitnessSpec,
                        split: str, rng: np.random.Generator) -> np.ndarray:
        present = random_subset(len(self.ids), proper=False, rng=rng) if label == 1 \
            else np.zeros(len(self.ids), dtype=bool)
        return self.build(present, size, n_concepts, witnesses, rng)
