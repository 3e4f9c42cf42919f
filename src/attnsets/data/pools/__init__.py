"""Instance pools (modalities). Importing this package registers the built-in ones."""

from attnsets.data.pools import digits, gaussian, idx, sequences, table  # noqa: F401
from attnsets.data.pools.base import POOLS, FinitePool, InstancePool

__all__ = ["POOLS", "FinitePool", "InstancePool"]
