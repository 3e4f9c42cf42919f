"""Continuous vectors: C concepts, each an isotropic Gaussian in R^d (single-cell-like clouds)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from attnsets.data.pools.base import POOLS, InstancePool
from attnsets.errors import SpecError


@POOLS.register("gaussian")
@dataclass
class GaussianPool(InstancePool):
    """Concept k ~ N(mu_k, noise^2 I). Means are random unit directions scaled so that
    neighbouring means are `separation` apart on average: 0 = identical, 1 ~ overlapping
    clouds (noise 1), 4+ = well separated. Infinite: every draw is a fresh instance."""

    num_concepts: int = 10
    dim: int = 16
    separation: float = 3.0
    noise: float = 1.0
    means_seed: int = 0

    kind = "vector"

    def __post_init__(self) -> None:
        if not isinstance(self.num_concepts, int) or self.num_concepts < 2:
            raise SpecError("num_concepts", self.num_concepts, "an integer >= 2")
        if not isinstance(self.dim, int) or self.dim < 1:
            raise SpecError("dim", self.dim, "an integer >= 1")
        if not self.separation >= 0:
            raise SpecError("separation", self.separation, "a number >= 0")
        if not self.noise > 0:
            raise SpecError("noise", self.noise, "a number > 0")

    @property
    def n_concepts(self) -> int:
        return self.num_concepts

    @property
    def instance_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    @cached_property
    def means(self) -> np.ndarray:
        """(C, d) concept means with pairwise distance ~ separation."""
        rng = np.random.default_rng(self.means_seed)
        directions = rng.normal(size=(self.n_concepts, self.dim))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        # Random unit vectors are ~sqrt(2) apart in high dimension.
        return (directions * self.separation / np.sqrt(2)).astype(np.float32)

    def draw(self, concepts: np.ndarray, split: str, rng: np.random.Generator) -> np.ndarray:
        concepts = np.asarray(concepts, dtype=np.int64)
        noise = rng.standard_normal((len(concepts), self.dim), dtype=np.float32) * self.noise
        return self.means[concepts] + noise

    def metadata(self) -> dict[str, object]:
        return {"means": self.means.tolist()}
