"""Instance pools (modalities). Importing this package registers the built-in ones."""

from attnsets.data.pools import digits, gaussian, h5ad, idx, receptors, sequences, table  # noqa: F401
from attnsets.data.pools.base import POOLS, FinitePool, InstancePool

__all__ = ["POOLS", "FinitePool", "InstancePool"]
