"""Ratio MIL: positive iff the fraction of key-concept instances is at least `r`."""

from __future__ import annotations

import math
from dataclasses import dataclass
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
    pick,
)
from attnsets.data.spec import WitnessSpec
from attnsets.errors import SpecError
from attnsets.spec.constraints import is_real


@RULES.register("ratio")
@dataclass
class Ratio(LabelRule):
    """Positive iff (#key instances) / (bag size) >= `r`, r in (0, 1].

    With t = the smallest key count that reaches r in a bag of this size, positive bags hold
    a key count drawn uniformly from t..size and negative bags one from 0..t-1 (the fraction
    decides, not the bare count). The WitnessSpec is not used: r sets the counts.
    Evidence: key instances are +1 for class 1 and -1 for class 0 in every bag; others 0.
    """

    concept_fields: ClassVar[tuple[str, ...]] = ("key",)

    key: int | list[int] = 9
    r: float = 0.25

    def __post_init__(self) -> None:
        self.keys = as_id_list("key", self.key)
        if not is_real(self.r) or not (0.0 < self.r <= 1.0):
            raise SpecError("r", self.r, "a fraction in (0, 1]")

    def check(self, n_concepts: int, min_size: int, witnesses: WitnessSpec) -> list[SpecError]:
        return check_concepts("key", self.keys, n_concepts) \
            + check_background("key", self.keys, n_concepts)

    def reaches(self, n_key: int, size: int) -> bool:
        """The label's exact comparison (float division is correctly rounded: 3/10 >= 0.3)."""
        return n_key / size >= self.r

    def min_count(self, size: int) -> int:
        """Smallest key count t with t / size >= r (1 <= t <= size)."""
        t = min(max(math.ceil(self.r * size), 1), size)
        while t > 1 and self.reaches(t - 1, size):
            t -= 1
        while not self.reaches(t, size):
            t += 1
        return t

    def label(self, concepts: np.ndarray) -> int:
        return int(self.reaches(int(np.count_nonzero(np.isin(concepts, self.keys))),
                                len(concepts)))

    def evidence(self, concepts: np.ndarray) -> np.ndarray:
        return binary_evidence(np.isin(concepts, self.keys))

    def sample_concepts(self, label: int, size: int, n_concepts: int, witnesses: WitnessSpec,
                        split: str, rng: np.random.Generator) -> np.ndarray:
        t = self.min_count(size)
        n_key = int(rng.integers(t, size + 1)) if label == 1 else int(rng.integers(0, t))
        keys = pick(self.keys, n_key, rng)
        return np.concatenate([keys, background(size - n_key, self.keys, n_concepts, rng)])
