"""Labelling rules: a bag's concepts -> its label and each instance's signed evidence per class."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from attnsets.data.spec import WitnessSpec
from attnsets.errors import SpecError
from attnsets.registry import Registry

RULES: Registry[type[LabelRule]] = Registry("rule")


class LabelRule(ABC):
    """A rule. Subclasses are dataclasses whose fields are their parameters.

    The generator asks `sample_concepts` for a bag of a given label and size (constructive, so
    class balance is exact and sizes do not depend on the label); `label` and `evidence` are the
    rule's definition and are what the property tests check generated bags against.
    """

    n_classes: int = 2

    @abstractmethod
    def check(self, n_concepts: int, min_size: int, witnesses: WitnessSpec) -> list[SpecError]:
        """Problems with this rule for a pool of `n_concepts` and bags of at least `min_size`."""

    @abstractmethod
    def label(self, concepts: np.ndarray) -> int:
        """The label of a bag whose instances have these concept ids. concepts: (n,)."""

    @abstractmethod
    def evidence(self, concepts: np.ndarray) -> np.ndarray:
        """(n, n_classes) int8 in {-1, 0, +1}: does instance j support class c?"""

    @abstractmethod
    def sample_concepts(self, label: int, size: int, n_concepts: int, witnesses: WitnessSpec,
                        split: str, rng: np.random.Generator) -> np.ndarray:
        """(size,) concept ids of a bag with this label (any order; the generator shuffles)."""

    def required_size(self, label: int, split: str) -> int:
        """The smallest bag this rule can build for `label` in `split` (bags are grown to it)."""
        return 1


def check_concepts(field: str, values: list[int], n_concepts: int) -> list[SpecError]:
    """Errors for concept ids outside the pool."""
    bad = [v for v in values if not (isinstance(v, int | np.integer) and 0 <= v < n_concepts)]
    if bad:
        return [SpecError(field, bad[0] if len(values) == 1 else values,
                          f"concept ids in 0..{n_concepts - 1} (the pool has {n_concepts})")]
    return []


def background(n: int, excluded: list[int], n_concepts: int,
               rng: np.random.Generator) -> np.ndarray:
    """(n,) concept ids drawn uniformly from the concepts not in `excluded`."""
    allowed = np.setdiff1d(np.arange(n_concepts), np.asarray(excluded, dtype=np.int64))
    if n and len(allowed) == 0:
        raise SpecError("rule", excluded, "rules that leave at least one background concept")
    return allowed[rng.integers(0, len(allowed), size=n)] if n else np.zeros(0, dtype=np.int64)


def as_id_list(field: str, value: int | list[int]) -> list[int]:
    """Accept one concept id or a list of them."""
    values = [value] if isinstance(value, int | np.integer) else list(value)
    if not values:
        raise SpecError(field, value, "at least one concept id")
    if not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values):
        raise SpecError(field, value, "integer concept ids")
    return [int(v) for v in values]
