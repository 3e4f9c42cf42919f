"""Small images: scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnsets.data.pools.base import POOLS, FinitePool

#: load_digits stores pixel intensities as integers 0..16.
DIGITS_MAX_INTENSITY = 16.0


@POOLS.register("digits")
@dataclass
class DigitsPool(FinitePool):
    """Concept = the digit 0..9. Instances: (1, 8, 8) float32 in [0, 1].

    Finite: the 1,797 images are split once (stratified by digit, `partition_seed`) so that
    train, val and test bags never share an image.
    """

    kind = "image"

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = (bunch.images / DIGITS_MAX_INTENSITY).astype(np.float32)[:, None, :, :]
        return images, bunch.target.astype(np.int64)

    @property
    def n_concepts(self) -> int:
        return 10

    @property
    def concept_names(self) -> list[str]:
        return [str(digit) for digit in range(10)]
