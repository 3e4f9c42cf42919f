"""Faithfulness by deletion: remove the most important instances first and watch the prediction.

This module only does the arithmetic; the model is called by the explainer stage. Recipe for a
batch with ``scores: (B, N)``, ``mask: (B, N)`` and target classes ``target: (B,)``:

1. ``order = deletion_order(scores, mask, seed)`` -- real instances by descending score, ties
   broken at random (seeded), padding last.
2. For k = 0..S: ``keep = removal_mask(order, mask, k)`` and run the model on the same ``x`` with
   ``keep`` as its mask, i.e. the k top instances are *removed* from the bag (not zeroed, which
   would still let them take part in the attention softmax). Store
   ``curve[:, k] = P(target | bag without its k top instances)``; column 0 is the unperturbed
   prediction. Steps that would empty a bag (k >= its size) are NaN.
3. For the random baseline, repeat with ``deletion_order(rng.random((B, N)), mask)`` for R
   random orders and stack the curves as ``random_curve: (R, B, S + 1)``.
4. ``aopc(curve, random_curve)``.

AOPC (Samek et al. 2017; MILLI's relative variant, Early et al. 2022) of one bag with S_b
evaluated steps is ``(1 / (S_b + 1)) * sum_{k=0..S_b} (p_0 - p_k)``; higher = removing the
top-scored instances hurts the prediction more. AOPC-R = AOPC(explanation) - AOPC(random order);
its chance level is 0.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from attnsets.errors import SpecError
from attnsets.metrics.importance import MetricDict, check_scores_mask


def deletion_order(scores: Any, mask: Any = None, seed: int = 0) -> np.ndarray:
    """(B, N) int64: per bag, instance indices by descending score (ties in seeded random order),
    followed by the padding positions. The first ``mask[b].sum()`` entries of row b are real."""
    scores_arr, mask_arr = check_scores_mask(scores, mask)
    tie_break = np.random.default_rng(seed).random(scores_arr.shape)
    # lexsort: the last key is primary -> real before padding, then descending score.
    return np.lexsort((tie_break, -scores_arr, ~mask_arr), axis=-1).astype(np.int64)


def removal_mask(order: Any, mask: Any, n_removed: int | Any) -> np.ndarray:
    """(B, N) bool: `mask` without the first `n_removed` instances of `order` in each bag.

    order: (B, N) from `deletion_order`; n_removed: int or (B,) ints >= 0.
    """
    order_arr = np.asarray(order)
    mask_arr = np.asarray(mask, dtype=bool)
    if order_arr.shape != mask_arr.shape or order_arr.ndim != 2:
        raise SpecError("order", f"array of shape {order_arr.shape}",
                        f"a (B, N) array shaped like mask {mask_arr.shape}")
    n = order_arr.shape[1]
    if not np.array_equal(np.sort(order_arr, axis=1), np.broadcast_to(np.arange(n), order_arr.shape)):
        raise SpecError("order", "rows that are not permutations of 0..N-1",
                        "the output of deletion_order")
    try:
        removed = np.broadcast_to(np.asarray(n_removed, dtype=np.float64), (order_arr.shape[0],))
    except ValueError:
        raise SpecError("n_removed", n_removed, "an integer >= 0 or one per bag") from None
    if (np.mod(removed, 1) != 0).any() or (removed < 0).any():
        raise SpecError("n_removed", n_removed, "an integer >= 0 or one per bag")
    removed = removed.astype(np.int64)
    position = np.empty(order_arr.shape, dtype=np.int64)
    np.put_along_axis(position, order_arr, np.broadcast_to(np.arange(n), order_arr.shape), axis=1)
    return mask_arr & (position >= removed[:, None])


def _check_curve(curve: Any, field_name: str) -> np.ndarray:
    arr = np.asarray(curve, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise SpecError(field_name, f"array of shape {arr.shape}", "a (B, S + 1) array")
    if np.isinf(arr).any():
        raise SpecError(field_name, "infinite values", "finite values (NaN = step not evaluated)")
    return arr


def aopc_per_bag(curve_probs: Any) -> np.ndarray:
    """(B,) AOPC of each bag from ``curve_probs: (B, S + 1)``; NaN steps (not evaluated) are
    skipped, a bag with NaN at step 0 gets NaN."""
    curve = _check_curve(curve_probs, "curve_probs")
    drops = curve[:, :1] - curve
    evaluated = ~np.isnan(drops)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.where(evaluated, drops, 0.0).sum(axis=1) / evaluated.sum(axis=1)
    return np.where(np.isnan(curve[:, 0]), np.nan, values)


def aopc(curve_probs: Any, random_curve: Any = None) -> MetricDict:
    """AOPC of a deletion curve, and relative to random-order deletion (MILLI's AOPC-R).

    curve_probs: (B, S + 1), column k = P(target) after removing the k top instances (column 0 =
    nothing removed; NaN = step not evaluated). random_curve: (B, S + 1), or (R, B, S + 1) for R
    random orders whose AOPCs are averaged. Returns aopc, aopc_random, aopc_relative (means over
    bags with a defined value), n_bags, n_steps; NaN values have a reason in ``.reasons``.
    """
    per_bag = aopc_per_bag(curve_probs)
    out = MetricDict({"n_bags": float(len(per_bag)),
                      "n_steps": float(np.asarray(curve_probs).shape[1] - 1)})
    defined = ~np.isnan(per_bag)
    out["aopc"] = float(per_bag[defined].mean()) if defined.any() else math.nan
    if not defined.any():
        out.reasons["aopc"] = "no bags" if len(per_bag) == 0 else "no bag has a step-0 value"
    if random_curve is None:
        out["aopc_random"] = out["aopc_relative"] = math.nan
        out.reasons["aopc_random"] = out.reasons["aopc_relative"] = "no random_curve given"
        return out
    random_arr = np.asarray(random_curve, dtype=np.float64)
    if random_arr.ndim == 2:
        random_arr = random_arr[None]
    if random_arr.ndim != 3 or random_arr.shape[1] != len(per_bag):
        raise SpecError("random_curve", f"array of shape {np.asarray(random_curve).shape}",
                        f"(B, S + 1) or (R, B, S + 1) with B = {len(per_bag)}")
    random_per_bag = np.stack([aopc_per_bag(r) for r in random_arr]).mean(axis=0)
    both = defined & ~np.isnan(random_per_bag)
    if both.any():
        out["aopc_random"] = float(random_per_bag[both].mean())
        out["aopc_relative"] = float((per_bag[both] - random_per_bag[both]).mean())
    else:
        out["aopc_random"] = out["aopc_relative"] = math.nan
        out.reasons["aopc_random"] = out.reasons["aopc_relative"] = (
            "no bag has both a defined curve and a defined random curve")
    return out
