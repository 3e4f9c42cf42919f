"""Classical MIL (Ilse et al. MNIST-bags): positive iff at least one key-concept instance."""

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


@RULES.register("presence")
@dataclass
class Presence(LabelRule):
    """Positive iff the bag holds at least one instance of a `key` concept.

    Positive bags hold w key instances (w from the WitnessSpec; each of a random key concept if
    `key` is a list), negatives none; the rest is background (all other concepts, uniform).
    Evidence: key instances are +1 for class 1 and -1 for class 0; all others 0.
    """

    concept_fields: ClassVar[tuple[str, ...]] = ("key",)

    key: int | list[int] = 9

    def __post_init__(self) -> None:
        self.keys = as_id_list("key", self.key)

    def check(self, n_concepts: int, min_size: int, witnesses: WitnessSpec) -> list[SpecError]:
        errors = check_concepts("key", self.keys, n_concepts)
        return errors + check_background("key", self.keys, n_concepts) \
            + check_room(witnesses, min_size)

    def label(self, concepts: np.ndarray) -> int:
        return int(np.isin(concepts, self.keys).any())

    def evidence(self, concepts: np.ndarray) -> np.ndarray:
        return binary_evidence(np.isin(concepts, self.keys))

    def sample_concepts(self, label: int, size: int, n_concepts: int, witnesses: WitnessSpec,
                        split: str, rng: np.random.Generator) -> np.ndarray:
        n_key = int(draw_counts(witnesses, 1, size, size, rng)[0]) if label == 1 else 0
        keys = pick(self.keys, n_key, rng)
        return np.concatenate([keys, background(size - n_key, self.keys, n_concepts, rng)])
