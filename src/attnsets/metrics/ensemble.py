"""Ensembles of explanations: combine member scores, and measure how the chance of a silent
failure shrinks with the number of members (the ensemble-size curve)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from attnsets.errors import SpecError
from attnsets.metrics.importance import check_importance_inputs, normalise_per_bag, rank_auroc
from attnsets.spec.constraints import Interval

METHODS = ("mean_normalised", "mean_rank", "median")

#: Elements per gathered (subsets, K, B, N) block in the curve; bounds memory, not results.
_CHUNK_ELEMENTS = 8_000_000


def _check_members(scores: Any, mask: Any, field_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(K, B, N) float64 scores (NaN only at padding) and (B, N) bool mask."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[0] < 1:
        raise SpecError(field_name, f"array of shape {arr.shape}", "a (K, B, N) array, K >= 1")
    mask_arr = np.ones(arr.shape[1:], dtype=bool) if mask is None else np.asarray(mask)
    if mask_arr.shape != arr.shape[1:]:
        raise SpecError("mask", f"array of shape {mask_arr.shape}", f"shape {arr.shape[1:]}")
    mask_arr = mask_arr.astype(bool)
    n_nan = int(np.isnan(arr[:, mask_arr]).sum())
    if n_nan:
        raise SpecError(field_name, f"NaN at {n_nan} real instance(s)",
                        "numbers at real instances (NaN only at padding)")
    return np.where(mask_arr, arr, 0.0), mask_arr


def _normalise_members(scores: np.ndarray, mask: np.ndarray, method: str,
                       normalisation: str) -> np.ndarray:
    """(K, B, N) member scores, each normalised within each bag as `method` requires."""
    if method not in METHODS:
        raise SpecError("method", method, f"one of {list(METHODS)}")
    k, b, n = scores.shape
    flat_mask = np.broadcast_to(mask, (k, b, n)).reshape(k * b, n)
    flat = scores.reshape(k * b, n)
    if method == "mean_rank":
        return normalise_per_bag(flat, flat_mask, "rank").reshape(k, b, n)
    if normalisation not in ("minmax", "sum"):
        raise SpecError("normalisation", normalisation, "'minmax' or 'sum'")
    return normalise_per_bag(flat, flat_mask, normalisation).reshape(k, b, n)


def _combine(normalised: np.ndarray, method: str, axis: int) -> np.ndarray:
    if method == "median":
        return np.median(normalised, axis=axis)
    return normalised.mean(axis=axis)


def combine_scores(scores: Any, mask: Any = None, method: str = "mean_normalised",
                   normalisation: str = "minmax") -> np.ndarray:
    """(B, N) ensemble explanation from member ``scores: (K, B, N)``; 0 at padding.

    Each member is first normalised within each bag over its real instances, so members with
    different scales count equally: mean_normalised = mean of the normalised scores; mean_rank =
    mean of ranks rescaled to [0, 1] per bag (ties averaged); median = median of the normalised
    scores. normalisation (for mean_normalised and median): minmax ((s - min) / (max - min),
    scale- and shift-free, works for signed scores; a constant bag maps to 0.5) or sum
    (s / sum s, for non-negative scores such as attention).
    """
    arr, mask_arr = _check_members(scores, mask, "scores")
    normalised = _normalise_members(arr, mask_arr, method, normalisation)
    return np.where(mask_arr, _combine(normalised, method, axis=0), 0.0)


def combine_probs(probs: Any) -> np.ndarray:
    """(B, C) ensemble prediction: the mean of member probabilities ``probs: (K, B, C)``."""
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[0] < 1:
        raise SpecError("probs", f"array of shape {arr.shape}", "a (K, B, C) array, K >= 1")
    if not np.isfinite(arr).all() or (arr < 0).any() or (arr > 1).any():
        raise SpecError("probs", "values outside [0, 1] or not finite", "probabilities in [0, 1]")
    return arr.mean(axis=0)


def _subsets(n_members: int, size: int, n_subsets: int,
             rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """(S, size) member indices. All distinct subsets when there are at most `n_subsets` of
    them (exact), else `n_subsets` random ones, each drawn without replacement."""
    if math.comb(n_members, size) <= n_subsets:
        return np.array(list(itertools.combinations(range(n_members), size)), dtype=np.int64), True
    return np.argsort(rng.random((n_subsets, n_members)), axis=1)[:, :size], False


def ensemble_size_curve(member_scores: Any, evidence: Any, mask: Any = None,
                        ks: Any = None, n_subsets: int = 200, seed: int = 0,
                        threshold: float = 0.7, method: str = "mean_normalised",
                        normalisation: str = "minmax",
                        quantiles: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95),
                        ) -> list[dict[str, Any]]:
    """Importance AUROC of K-member ensembles, for each K in `ks` (default 1..M).

    member_scores: (M, B, N); evidence, mask: (B, N). For each K, subsets of K distinct members
    are drawn (all of them when there are at most `n_subsets`), their scores combined with
    `combine_scores`, and the mean per-bag AUROC over eligible bags (witnesses and non-witnesses
    present) computed for each subset. One row per K (``pandas.DataFrame(rows)`` works):
    k, n_subsets, exhaustive, auroc_mean, auroc_sd (over subsets, ddof=0), auroc_q{..},
    p_fail = P(subset AUROC <= threshold), bag_fail_rate = mean share of bags with AUROC <=
    threshold, threshold, n_eligible_bags, reason (None, or why the row is NaN).
    """
    arr, mask_arr = _check_members(member_scores, mask, "member_scores")
    _, evidence_arr, _ = check_importance_inputs(arr[0], evidence, mask_arr)
    n_members, n_bags, n = arr.shape
    ks_list = list(range(1, n_members + 1)) if ks is None else [int(k) for k in np.ravel(ks)]
    if not ks_list or any(k < 1 or k > n_members for k in ks_list):
        raise SpecError("ks", ks, f"sizes in 1..{n_members}")
    Interval(int, 1).require(n_subsets, "n_subsets")
    if not 0.0 <= threshold <= 1.0:
        raise SpecError("threshold", threshold, "an AUROC in [0, 1]")
    if any(not 0.0 <= q <= 1.0 for q in quantiles):
        raise SpecError("quantiles", quantiles, "probabilities in [0, 1]")
    normalised = _normalise_members(arr, mask_arr, method, normalisation)
    positive = (evidence_arr > 0) & mask_arr
    n_pos, n_real = positive.sum(axis=1), mask_arr.sum(axis=1)
    eligible = (n_pos > 0) & (n_pos < n_real)
    rng = np.random.default_rng(seed)
    rows = []
    for k in ks_list:
        subsets, exhaustive = _subsets(n_members, k, n_subsets, rng)
        row: dict[str, Any] = {"k": k, "n_subsets": len(subsets), "exhaustive": exhaustive,
                               "threshold": threshold, "n_eligible_bags": int(eligible.sum())}
        if not eligible.any():
            row.update({"auroc_mean": math.nan, "auroc_sd": math.nan,
                        **{_quantile_key(q): math.nan for q in quantiles},
                        "p_fail": math.nan, "bag_fail_rate": math.nan,
                        "reason": "no bag has both witnesses and non-witnesses"})
            rows.append(row)
            continue
        subset_auroc, bag_fail = _subset_aurocs(normalised, subsets, method,
                                                positive[eligible], mask_arr[eligible],
                                                eligible, threshold)
        row.update({"auroc_mean": float(subset_auroc.mean()),
                    "auroc_sd": float(subset_auroc.std()),
                    **{_quantile_key(q): float(np.quantile(subset_auroc, q)) for q in quantiles},
                    "p_fail": float((subset_auroc <= threshold).mean()),
                    "bag_fail_rate": float(bag_fail.mean()), "reason": None})
        rows.append(row)
    return rows


def _quantile_key(q: float) -> str:
    return f"auroc_q{round(q * 100):02d}"


def _subset_aurocs(normalised: np.ndarray, subsets: np.ndarray, method: str,
                   positive: np.ndarray, mask: np.ndarray, eligible: np.ndarray,
                   threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per subset: (mean per-bag AUROC over eligible bags, share of them with AUROC <=
    threshold). Vectorised over subsets and bags; only the chunking loop is in Python."""
    members = normalised[:, eligible]  # (M, B_e, N)
    _, n_bags, n = members.shape
    size = subsets.shape[1]
    per_chunk = max(1, _CHUNK_ELEMENTS // max(1, size * n_bags * n))
    means, fail_shares = [], []
    for start in range(0, len(subsets), per_chunk):
        chunk = subsets[start:start + per_chunk]
        gathered = members[chunk]  # (S_c, K, B_e, N)
        combined = _combine(gathered, method, axis=1)  # (S_c, B_e, N)
        auroc = rank_auroc(combined, np.broadcast_to(positive, combined.shape),
                           np.broadcast_to(mask, combined.shape))
        means.append(auroc.mean(axis=1))
        fail_shares.append((auroc <= threshold).mean(axis=1))
    return np.concatenate(means), np.concatenate(fail_shares)
