"""Confidence intervals for quantities measured on several study cells. Members of one cell
share their data and training set-up, so they are not independent: the interval resamples whole
cells (a cluster bootstrap). The HTML report and the results page both use it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

#: Resamples behind every interval of the findings, and their level.
N_BOOT = 2000
LEVEL = 0.95


def nanmean(values: Any) -> float:
    """Mean of the finite values of a sequence or array; NaN (no warning) when there are none."""
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


@dataclass(frozen=True)
class Estimate:
    """A mean (or a rate: the mean of 0/1 values) with its cluster-bootstrap interval."""

    value: float
    low: float
    high: float
    n: int
    clusters: int

    def text(self, percent: bool = False) -> str:
        if math.isnan(self.value):
            return "–"
        if math.isnan(self.low):  # one cluster: nothing to resample
            return f"{100 * self.value:.0f}% (1 cell)" if percent else f"{self.value:.3f} (1 cell)"
        if percent:
            return f"{100 * self.value:.0f}% [{100 * self.low:.0f}, {100 * self.high:.0f}]"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def cluster_bootstrap(values: Any, clusters: Any, *, n_boot: int = N_BOOT, level: float = LEVEL,
                      seed: int = 0) -> Estimate:
    """Mean of the finite `values` and a percentile interval from resampling whole clusters.

    values, clusters: (n,). The mean of a resample is the ratio of the resampled cluster sums
    to the resampled cluster sizes, so big and small clusters weigh what they hold."""
    vals = np.asarray(values, dtype=np.float64)
    keys = np.asarray(clusters)
    keep = np.isfinite(vals)
    vals, keys = vals[keep], keys[keep]
    if vals.size == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, 0)
    codes, uniques = pd.factorize(keys)
    sums = np.bincount(codes, weights=vals)
    sizes = np.bincount(codes).astype(np.float64)
    n_clusters = len(uniques)
    value = float(vals.mean())
    if n_clusters < 2:
        return Estimate(value, math.nan, math.nan, int(vals.size), n_clusters)
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_boot)
    boot = (weights @ sums) / (weights @ sizes)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [tail, 1.0 - tail])
    return Estimate(value, float(low), float(high), int(vals.size), n_clusters)
