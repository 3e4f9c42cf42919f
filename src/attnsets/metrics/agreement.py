"""Label-free agreement of several members' explanations of the same bags: the reliability
signal `attnsets explain-data` reports where no instance labels exist (docs/own_data.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from attnsets.errors import SpecError
from attnsets.metrics.ensemble import combine_scores
from attnsets.metrics.importance import average_ranks, normalise_per_bag
from attnsets.spec.constraints import is_real


@dataclass(frozen=True)
class Agreement:
    """Label-free agreement of K members' scores (K, B, N) over each bag's real instances.

    Per bag (B,): rank_agreement = mean pairwise Spearman correlation (NaN when a member's scores
    are constant in the bag or the bag has < 2 instances); top_k_overlap = mean pairwise
    |T_a & T_b| / k with T_a member a's k top-scored instances; k = max(1, ceil(top_fraction *
    n_b)). Per instance (B, N), 0 at padding: consensus = combine_scores mean_normalised;
    rank_mean / rank_spread = mean and max - min over members of the rank normalised to [0, 1]
    (1 = top of the bag); top_k_votes = share of members with the instance in their top k."""

    rank_agreement: np.ndarray
    top_k_overlap: np.ndarray
    k: np.ndarray
    consensus: np.ndarray
    rank_mean: np.ndarray
    rank_spread: np.ndarray
    top_k_votes: np.ndarray


def agreement(scores: Any, mask: Any, top_fraction: float = 0.1) -> Agreement:
    """Agreement signals of member scores ``(K, B, N)`` (K >= 2) over ``mask: (B, N)``; see
    `Agreement`. Vectorised over members and bags."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[0] < 2:
        raise SpecError("scores", f"array of shape {arr.shape}", "a (K, B, N) array, K >= 2 "
                                                                 "members")
    mask_arr = np.asarray(mask, dtype=bool)
    if mask_arr.shape != arr.shape[1:]:
        raise SpecError("mask", f"array of shape {mask_arr.shape}", f"shape {arr.shape[1:]}")
    if not is_real(top_fraction) or not 0 < top_fraction <= 1:
        raise SpecError("top_fraction", top_fraction, "a fraction in (0, 1]")
    if not np.isfinite(arr[:, mask_arr]).all():
        raise SpecError("scores", "non-finite values at real instances", "finite scores")
    n_members, n_bags, n = arr.shape
    arr = np.where(mask_arr, arr, 0.0)
    sizes = mask_arr.sum(axis=1)
    flat_mask = np.broadcast_to(mask_arr, arr.shape).reshape(-1, n)
    ranks = average_ranks(arr.reshape(-1, n), flat_mask).reshape(arr.shape)
    ranks = np.where(mask_arr, ranks, 0.0)

    # Spearman = Pearson of ranks. With z_a the centred ranks of member a scaled to unit norm,
    # sum over pairs a != b of z_a . z_b = |sum_a z_a|^2 - K (each |z_a| = 1).
    centred = np.where(mask_arr, ranks - ranks.sum(axis=2, keepdims=True)
                       / np.maximum(sizes, 1)[None, :, None], 0.0)
    norms = np.sqrt((centred ** 2).sum(axis=2))  # (K, B)
    defined = (norms > 0).all(axis=0) & (sizes >= 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        unit = centred / norms[..., None]
        pair_sum = (unit.sum(axis=0) ** 2).sum(axis=1) - n_members
        rank_agreement = np.where(defined, pair_sum / (n_members * (n_members - 1)), np.nan)

    k = np.maximum(1, np.ceil(top_fraction * sizes - 1e-9)).astype(np.int64)
    # Position of each instance in its member's descending order; ties keep the bag's order,
    # identically for every member, so identical scores give identical top-k sets.
    order = np.argsort(np.where(mask_arr, -arr, np.inf), axis=2, kind="stable")
    position = np.empty_like(order)
    np.put_along_axis(position, order, np.broadcast_to(np.arange(n), order.shape), axis=2)
    in_top = (position < k[None, :, None]) & mask_arr  # (K, B, N)
    votes = in_top.sum(axis=0)  # (B, N)
    # sum over pairs a != b of |T_a & T_b| = sum_i c_i (c_i - 1), c_i = members choosing i.
    overlap = (votes * (votes - 1)).sum(axis=1) / (n_members * (n_members - 1) * k)

    normalised_ranks = normalise_per_bag(arr.reshape(-1, n), flat_mask, "rank").reshape(arr.shape)
    consensus = combine_scores(arr, mask_arr, "mean_normalised")
    return Agreement(rank_agreement, np.where(sizes > 0, overlap, np.nan), k, consensus,
                     np.where(mask_arr, normalised_ranks.mean(axis=0), 0.0),
                     np.where(mask_arr, normalised_ranks.max(axis=0)
                              - normalised_ranks.min(axis=0), 0.0),
                     np.where(mask_arr, votes / n_members, 0.0))


def descending_rank(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(B, N) int64 rank within each bag, 1 = highest score; tied instances share the best rank
    of their group (1 + number of strictly higher scores). 0 at padding."""
    keyed = np.where(mask, -np.asarray(scores, dtype=np.float64), np.inf)
    order = np.argsort(keyed, axis=1, kind="stable")
    ordered = np.take_along_axis(keyed, order, axis=1)
    starts = np.ones(ordered.shape, dtype=bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    position = np.broadcast_to(np.arange(ordered.shape[1]), ordered.shape)
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=1)
    ranks = np.empty(ordered.shape, dtype=np.int64)
    np.put_along_axis(ranks, order, first + 1, axis=1)
    return np.where(mask, ranks, 0)


def correlation(x: Any, y: Any) -> dict[str, float]:
    """Spearman and Pearson correlation of x and y over the pairs where both are finite:
    {"spearman", "pearson", "n"}; NaN when n < 3 or either side is constant."""
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    out = {"spearman": math.nan, "pearson": math.nan, "n": float(len(xa))}
    if len(xa) < 3 or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return out
    out["pearson"] = float(np.corrcoef(xa, ya)[0, 1])
    ranks = average_ranks(np.stack([xa, ya]))
    out["spearman"] = float(np.corrcoef(ranks[0], ranks[1])[0, 1])
    return out
