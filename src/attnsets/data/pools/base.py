"""Instance pools: where instances come from. Each instance has a concept id in [0, n_concepts)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from attnsets.errors import SpecError
from attnsets.registry import Registry

POOLS: Registry[type[InstancePool]] = Registry("modality")

SPLIT_NAMES = ("train", "val", "test")


class InstancePool(ABC):
    """A modality. Subclasses are dataclasses whose fields are their parameters.

    `draw` returns features for requested concepts; finite pools give each split a disjoint
    part of their items so that test bags hold unseen instances.
    """

    #: "vector" (float32 (d,)), "image" (float32 (1, H, W)) or "sequence" (int64 (L,), 0 = padding)
    kind: str = "vector"

    @property
    @abstractmethod
    def n_concepts(self) -> int: ...

    @property
    @abstractmethod
    def instance_shape(self) -> tuple[int, ...]: ...

    @property
    def concept_names(self) -> list[str]:
        return [str(i) for i in range(self.n_concepts)]

    @property
    def vocab_size(self) -> int:
        """Number of token ids including padding 0 (sequence pools only)."""
        return 0

    @abstractmethod
    def draw(self, concepts: np.ndarray, split: str, rng: np.random.Generator) -> np.ndarray:
        """Features for each concept id. concepts: (n,) int -> (n, *instance_shape)."""

    def metadata(self) -> dict[str, object]:
        """Extra facts worth saving with the dataset (e.g. motifs)."""
        return {}

    def draw_traced(self, concepts: np.ndarray, split: str, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(features as `draw`, (n,) int64 source row of each instance or None when instances
        are generated rather than taken from a fixed collection)."""
        return self.draw(concepts, split, rng), None

    def embedding_2d(self, rows: np.ndarray) -> tuple[np.ndarray, tuple[str, str]] | None:
        """The data set's own 2-D map of these source rows ((n, 2) coordinates and the two
        axis names), or None when the pool has none (the report then uses a PCA)."""
        return None


@dataclass
class FinitePool(InstancePool, ABC):
    """A pool backed by a fixed array of items, partitioned per split, stratified by concept."""

    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    partition_seed: int = 0

    def __post_init__(self) -> None:
        fr = tuple(float(f) for f in self.split_fractions)
        if len(fr) != 3 or min(fr) <= 0 or abs(sum(fr) - 1.0) > 1e-6:
            raise SpecError("split_fractions", list(self.split_fractions),
                            "three positive fractions (train, val, test) summing to 1")
        self.split_fractions = fr  # type: ignore[assignment]

    @abstractmethod
    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """(features (M, *shape) float32, concept ids (M,) int64) for the whole pool."""

    @cached_property
    def _data(self) -> tuple[np.ndarray, np.ndarray]:
        return self.load()

    @property
    def features(self) -> np.ndarray:
        return self._data[0]

    @property
    def item_concepts(self) -> np.ndarray:
        return self._data[1]

    @property
    def n_concepts(self) -> int:
        return int(self.item_concepts.max()) + 1

    @property
    def instance_shape(self) -> tuple[int, ...]:
        return tuple(self.features.shape[1:])

    @cached_property
    def partition(self) -> dict[tuple[str, int], np.ndarray]:
        """(split, concept) -> item indices. Disjoint across splits."""
        rng = np.random.default_rng(self.partition_seed)
        parts: dict[tuple[str, int], np.ndarray] = {}
        cum = np.cumsum(self.split_fractions)[:-1]
        for c in range(self.n_concepts):
            items = rng.permutation(np.flatnonzero(self.item_concepts == c))
            cuts = np.floor(cum * len(items) + 0.5).astype(int)
            for split, chunk in zip(SPLIT_NAMES, np.split(items, cuts), strict=True):
                parts[(split, c)] = chunk
        return parts

    def draw(self, concepts: np.ndarray, split: str, rng: np.random.Generator) -> np.ndarray:
        return self.draw_traced(concepts, split, rng)[0]

    def draw_traced(self, concepts: np.ndarray, split: str, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Items of the split's part of each concept, drawn uniformly *with replacement* (a
        concept with few items in a split repeats them). -> (features, (n,) item rows)."""
        concepts = np.asarray(concepts, dtype=np.int64)
        rows = np.empty(len(concepts), dtype=np.int64)
        for c in np.unique(concepts):
            where = np.flatnonzero(concepts == c)
            items = self.partition[(split, int(c))]
            if len(items) == 0:
                raise SpecError("pool.split_fractions", list(self.split_fractions),
                                f"fractions that leave split {split!r} some items of concept {c}")
            rows[where] = items[rng.integers(0, len(items), size=len(where))]
        return self.features[rows], rows
