"""Threshold (counting) MIL: positive iff at least `k` key-concept instances."""

from __future__ import annotations

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
    check_room,
    draw_counts,
    pick,
)
from attnsets.data.spec import WitnessSpec
from attnsets.errors import SpecError
from attnsets.spec.constraints import Interval


@RULES.register("threshold")
@dataclass
class Threshold(LabelRule):
    """Positive iff the bag holds at least `k` instances of the `key` concept(s).

    Positive bags hold max(k, w) key instances (w from the WitnessSpec, clipped to the bag);
    negative bags hold a number of key instances drawn uniformly from 0..k-1, so that near
    misses (k-1 keys) are as common as bags without any key and presence alone does not decide.
    Evidence: key instances are +1 for class 1 and -1 for class 0 in every bag; others 0.
    """

    concept_fields: ClassVar[tuple[str, ...]] = ("key",)

    key: int | list[int] = 9
    k: int = 2

    def __post_init__(self) -> None:
        self.keys = as_id_list("key", self.key)
        Interval(int, 1).require(self.k, "k")

    def check(self, n_concepts: int, min_size: int, witnesses: WitnessSpec) -> list[SpecError]:
        errors = check_concepts("key", self.keys, n_concepts)
        errors += check_background("key", self.keys, n_concepts)
        if self.k > min_size:
            errors.append(SpecError("k", self.k, f"an integer in 1..{min_size} (the smallest "
                                                 "bag must be able to hold k key instances)"))
        return errors + check_room(witnesses, min_size)

    def label(self, concepts: np.ndarray) -> int:
        return int(np.count_nonzero(np.isin(concepts, self.keys)) >= self.k)

    def evidence(self, concepts: np.ndarray) -> np.ndarray:
        return binary_evidence(np.isin(concepts, self.keys))

    def sample_concepts(self, label: int, size: int, n_concepts: int, witnesses: WitnessSpec,
                        split: str, rng: np.random.Generator) -> np.ndarray:
        if label == 1:
            n_key = min(max(self.k, int(draw_counts(witnesses, 1, size, size, rng)[0])), size)
        else:
            n_key = int(rng.integers(0, self.k))
        keys = pick(self.keys, n_key, rng)
        return np.concatenate([keys, background(size - n_key, self.keys, n_concepts, rng)])
