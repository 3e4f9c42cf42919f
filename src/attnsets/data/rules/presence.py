"""Classical MIL (Ilse et al. MNIST-bags): positive iff at least one key-concept instance."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnsets.data.rules.base import RULES, LabelRule, as_id_list, background, check_concepts
from attnsets.data.spec import WitnessSpec
from attnsets.errors import SpecError


@RULES.register("presence")
@dataclass
class Presence(LabelRule):
    """Positive iff the bag holds at least one instance of a `key` concept.

    Evidence: key instances are +1 for class 1 and -1 for class 0; all others 0.
    """

    key: int | list[int] = 9

    def __post_init__(self) -> None:
        self.keys = as_id_list("key", self.key)

    def check(self, n_concepts: int, min_size: int, witnesses: WitnessSpec) -> list[SpecError]:
        return check_concepts("key", self.keys, n_concepts)

    def label(self, concepts: np.ndarray) -> int:
        return int(np.isin(concepts, self.keys).any())

    def evidence(self, concepts: np.ndarray) -> np.ndarray:
        key = np.isin(concepts, self.keys).astype(np.int8)
        return np.stack([-key, key], axis=1)

    def sample_concepts(self, label: int, size: int, n_concepts: int, witnesses: WitnessSpec,
                        split: str, rng: np.random.Generator) -> np.ndarray:
        n_key = witnesses.sample(size, rng) if label == 1 else 0
        keys = np.asarray(self.keys)[rng.integers(0, len(self.keys), size=n_key)]
        return np.concatenate([keys, background(size - n_key, self.keys, n_concepts, rng)])
