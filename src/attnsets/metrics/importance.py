"""Instance-importance metrics: how well per-instance scores point at the ground-truth witnesses.

Inputs are padded like a Batch: ``scores: (B, N)`` float, ``evidence: (B, N)`` in {-1, 0, +1} for the
target class (+1 = witness supporting it, -1 = evidence against it), ``mask: (B, N)`` bool with True
= real instance. Padding never enters any metric, whatever values it holds.

Ties follow scikit-learn exactly: average ranks for AUROC, one threshold per tied group for AUPRC,
tie-averaged gains for NDCG@k (and, the same way, for precision@k). Everything is vectorised over
bags: one sort of the whole (B, N) array, no Python loop per bag.

A value that cannot be computed is NaN and its reason is recorded (``PerBagResult.reason``,
``MetricDict.reasons``); it is never replaced by a silent 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from attnsets.errors import SpecError
from attnsets.spec.constraints import Interval, is_int

#: Per-bag normalisations accepted by `normalise_per_bag` (and the pooled metrics).
NORMALISATIONS = ("none", "rank", "minmax", "sum")

#: Why a bag is left out of a per-bag ranking metric.
EXCLUSION_REASONS = {
    "empty_bag": "bag has no real instance",
    "no_witness": "bag has no witness (evidence > 0), so nothing can be found",
    "all_witness": "every instance is a witness, so any score gives the same value",
}


class MetricDict(dict[str, float]):
    """A plain ``dict[str, float]`` (JSON- and DataFrame-friendly) that also carries ``reasons``:
    metric name -> why the value is NaN, or a caveat on how it was computed."""

    def __init__(self, values: Mapping[str, float] | None = None,
                 reasons: Mapping[str, str] | None = None) -> None:
        super().__init__(values or {})
        self.reasons: dict[str, str] = dict(reasons or {})

    def __repr__(self) -> str:
        return f"MetricDict({dict.__repr__(self)}, reasons={self.reasons!r})"


@dataclass(frozen=True)
class PerBagResult:
    """One metric per bag. values: (B,) NaN for excluded bags; mean over eligible bags;
    chance: expected mean for random scores over the same eligible bags; excluded: reason ->
    number of bags; counts: extra tallies (e.g. one-sided bags for AUROC-2); reason: why `mean`
    is NaN (None when it is defined)."""

    name: str
    values: np.ndarray
    mean: float
    chance: float
    n_eligible: int
    excluded: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    reason: str | None = None

    @property
    def n_excluded(self) -> int:
        return int(sum(self.excluded.values()))


@dataclass(frozen=True)
class PooledResult:
    """One metric over all real instances of all bags. chance: its value for random scores."""

    name: str
    value: float
    chance: float
    n_instances: int
    n_positive: int
    reason: str | None = None


@dataclass(frozen=True)
class ConfidenceInterval:
    """Percentile bootstrap interval of the mean over bags (NaN per-bag values dropped first)."""

    estimate: float
    low: float
    high: float
    level: float
    n_boot: int
    n: int
    reason: str | None = None


# --------------------------------------------------------------------------- input checks


def check_scores_mask(scores: Any, mask: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``scores: (B, N)`` and ``mask: (B, N)`` (None = all real).

    Returns float64 scores with padding set to 0 and a bool mask. NaN is allowed only at padding.
    """
    scores_arr = np.asarray(scores, dtype=np.float64)
    if scores_arr.ndim != 2:
        raise SpecError("scores", f"array of shape {scores_arr.shape}", "a (B, N) array")
    if mask is None:
        mask_arr = np.ones(scores_arr.shape, dtype=bool)
    else:
        raw = np.asarray(mask)
        if raw.shape != scores_arr.shape:
            raise SpecError("mask", f"array of shape {raw.shape}",
                            f"the shape of scores {scores_arr.shape}")
        if raw.dtype != bool and not np.isin(raw, (0, 1)).all():
            raise SpecError("mask", f"values {np.unique(raw)[:5].tolist()}",
                            "booleans (True = real instance) or 0/1")
        mask_arr = raw.astype(bool)
    n_nan = int(np.isnan(scores_arr[mask_arr]).sum())
    if n_nan:
        raise SpecError("scores", f"NaN at {n_nan} real instance(s)",
                        "numbers at real instances (NaN only at padding)")
    return np.where(mask_arr, scores_arr, 0.0), mask_arr


def check_importance_inputs(scores: Any, evidence: Any,
                            mask: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate scores, evidence and mask (all (B, N)).

    Returns (scores float64, evidence int8 with 0 at padding, mask bool).
    """
    scores_arr, mask_arr = check_scores_mask(scores, mask)
    evidence_arr = np.asarray(evidence, dtype=np.float64)
    if evidence_arr.shape != scores_arr.shape:
        raise SpecError("evidence", f"array of shape {evidence_arr.shape}",
                        f"the shape of scores {scores_arr.shape}")
    real_evidence = evidence_arr[mask_arr]
    bad = ~np.isin(real_evidence, (-1.0, 0.0, 1.0))
    if bad.any():
        raise SpecError("evidence", f"values {np.unique(real_evidence[bad])[:5].tolist()}",
                        "-1, 0 or +1 at real instances")
    return scores_arr, np.where(mask_arr, evidence_arr, 0.0).astype(np.int8), mask_arr


def _check_normalisation(normalisation: str, field_name: str = "normalisation") -> None:
    if normalisation not in NORMALISATIONS:
        raise SpecError(field_name, normalisation, f"one of {list(NORMALISATIONS)}")


# --------------------------------------------------------------------------- vectorised ranking


@dataclass(frozen=True)
class _TieGroups:
    """A per-row sort with its tie structure. All arrays (R, N), indexed by sorted position:
    order[r, j] = column at sorted position j; first/last = sorted positions bounding the tie group
    of position j. Real entries come first in every row; padding never shares a group with them."""

    order: np.ndarray
    first: np.ndarray
    last: np.ndarray


def _sort_with_ties(keys: np.ndarray, mask: np.ndarray) -> _TieGroups:
    """Sort each row of ``keys: (R, N)`` ascending (real entries first) and find the tie groups."""
    rows, n = keys.shape
    keys = np.where(mask, keys, 0.0)
    if np.isfinite(keys).all():
        # Fast path: +inf padding sorts after every real value.
        order = np.argsort(np.where(mask, keys, np.inf), axis=1)
    else:
        # Real +/-inf values could interleave with +inf padding; sort by (is padding, key).
        order = np.lexsort((keys, ~mask), axis=1)
    sorted_keys = np.take_along_axis(keys, order, axis=1)
    sorted_mask = np.take_along_axis(mask, order, axis=1)
    starts = np.ones((rows, n), dtype=bool)
    starts[:, 1:] = (sorted_keys[:, 1:] != sorted_keys[:, :-1]) | (
        sorted_mask[:, 1:] != sorted_mask[:, :-1])
    ends = np.ones((rows, n), dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    position = np.broadcast_to(np.arange(n), (rows, n))
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, position, n - 1)[:, ::-1], axis=1)[:, ::-1]
    return _TieGroups(order, first, last)


def _ranks(keys: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(R, N) ascending average ranks 1..n_r within the real entries of each row; NaN at padding."""
    groups = _sort_with_ties(keys, mask)
    sorted_ranks = (groups.first + groups.last) / 2.0 + 1.0
    ranks = np.empty(keys.shape, dtype=np.float64)
    np.put_along_axis(ranks, groups.order, sorted_ranks, axis=1)
    return np.where(mask, ranks, np.nan)


def average_ranks(scores: Any, mask: Any = None) -> np.ndarray:
    """(B, N) ranks 1..n_b of each bag's real instances, ties averaged (scipy's 'average'
    method); NaN at padding."""
    scores_arr, mask_arr = check_scores_mask(scores, mask)
    return _ranks(scores_arr, mask_arr)


def _auroc_rows(keys: np.ndarray, positive: np.ndarray,
                mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mann-Whitney AUROC of each row. Returns (auroc (R,), n_pos (R,), n_neg (R,)); auroc is NaN
    where a row lacks positives or negatives."""
    positive = positive & mask
    n_pos = positive.sum(axis=1)
    n_neg = mask.sum(axis=1) - n_pos
    rank_sum = np.where(positive, _ranks(keys, mask), 0.0).sum(axis=1)
    defined = (n_pos > 0) & (n_neg > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        auroc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return np.where(defined, auroc, np.nan), n_pos, n_neg


def rank_auroc(scores: np.ndarray, positive: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Vectorised per-row AUROC (rank-based Mann-Whitney U / (n_pos n_neg), ties averaged).

    scores: (..., N) float; positive, mask: (..., N) bool. Returns (...,) with NaN for rows that
    lack positives or negatives. No input validation: this is the hot path of the ensemble curve.
    """
    lead = scores.shape[:-1]
    n = scores.shape[-1]
    auroc, _, _ = _auroc_rows(scores.reshape(-1, n), positive.reshape(-1, n), mask.reshape(-1, n))
    return auroc.reshape(lead)


def _average_precision_rows(keys: np.ndarray, positive: np.ndarray,
                            mask: np.ndarray) -> np.ndarray:
    """sklearn's average precision of each row (ranking by descending key); NaN without
    positives. AP = (1/n_pos) sum over positives of the precision at the end of its tie group."""
    positive = positive & mask
    n_pos = positive.sum(axis=1)
    groups = _sort_with_ties(-keys, mask)
    relevant = np.take_along_axis(positive, groups.order, axis=1).astype(np.float64)
    hits = np.cumsum(relevant, axis=1)
    precision_at_group_end = np.take_along_axis(hits, groups.last, axis=1) / (groups.last + 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ap = (relevant * precision_at_group_end).sum(axis=1) / n_pos
    return np.where(n_pos > 0, ap, np.nan)


def _discounts(n: int) -> np.ndarray:
    """(n,) NDCG position discounts 1 / log2(position + 2)."""
    return 1.0 / np.log2(np.arange(n) + 2.0)


def _top_k_rows(keys: np.ndarray, gains: np.ndarray, mask: np.ndarray,
                k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ndcg@k (R,), precision@k (R,)) ranking by descending key, ties averaged as in sklearn:
    each position gets the mean gain of its tie group. gains: (R, N) bool (binary relevance) or
    float (signed gains +1 / 0 / -1); the ideal DCG puts the +1 (gain > 0) instances first.
    k: (R,) int in 1..n_r."""
    gains = np.where(mask, gains.astype(np.float64), 0.0)
    n_pos = (gains > 0).sum(axis=1)
    n = keys.shape[1]
    groups = _sort_with_ties(-keys, mask)
    relevant = np.take_along_axis(gains, groups.order, axis=1)
    hits = np.cumsum(relevant, axis=1)
    hits_before_group = (np.take_along_axis(hits, groups.first, axis=1)
                         - np.take_along_axis(relevant, groups.first, axis=1))
    group_hits = np.take_along_axis(hits, groups.last, axis=1) - hits_before_group
    group_mean = group_hits / (groups.last - groups.first + 1.0)
    in_top = np.arange(n)[None, :] < k[:, None]
    discount = _discounts(n)
    dcg = (np.where(in_top, group_mean, 0.0) * discount).sum(axis=1)
    ideal_cut = np.minimum(k, n_pos)
    cumulative = np.concatenate([[0.0], np.cumsum(discount)])
    ideal = cumulative[ideal_cut]
    with np.errstate(divide="ignore", invalid="ignore"):
        ndcg = np.where(ideal > 0, dcg / ideal, np.nan)
        precision = np.where(k > 0, np.where(in_top, group_mean, 0.0).sum(axis=1) / k, np.nan)
    return ndcg, precision


# --------------------------------------------------------------------------- normalisation


def normalise_per_bag(scores: Any, mask: Any = None, method: str = "minmax") -> np.ndarray:
    """(B, N) scores rescaled within each bag over its real instances; 0 at padding.

    none: unchanged. rank: (average rank - 1) / (n - 1) in [0, 1]. minmax: (s - min) /
    (max - min). sum: s / sum(s), needs non-negative scores with a positive sum (attention).
    A bag whose scores are all equal (or that has one instance) maps to 0.5 under rank and
    minmax, and to 1/n under sum.
    """
    _check_normalisation(method, "method")
    scores_arr, mask_arr = check_scores_mask(scores, mask)
    if method == "none":
        return scores_arr
    if method == "rank":
        return _rank_normalise(scores_arr, mask_arr)
    real = scores_arr[mask_arr]
    if not np.isfinite(real).all():
        raise SpecError("scores", "infinite values at real instances",
                        f"finite scores for {method!r} normalisation (use 'rank')")
    if method == "minmax":
        return _minmax_normalise(scores_arr, mask_arr)
    if (real < 0).any():
        raise SpecError("scores", f"negative values (min {real.min():.3g})",
                        "non-negative scores for 'sum' normalisation (use 'minmax' or 'rank')")
    totals = scores_arr.sum(axis=1, keepdims=True)
    sizes = mask_arr.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = np.where(totals > 0, scores_arr / totals, 1.0 / sizes)
    return np.where(mask_arr, normalised, 0.0)


def _rank_normalise(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    ranks = _ranks(scores, mask)
    spread = mask.sum(axis=1, keepdims=True) - 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = np.where(spread > 0, (ranks - 1.0) / spread, 0.5)
    return np.where(mask, normalised, 0.0)


def _minmax_normalise(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    low = np.where(mask, scores, np.inf).min(axis=1, keepdims=True)
    high = np.where(mask, scores, -np.inf).max(axis=1, keepdims=True)
    spread = high - low
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = np.where(spread > 0, (scores - low) / spread, 0.5)
    return np.where(mask, normalised, 0.0)


# --------------------------------------------------------------------------- per-bag metrics


def _eligibility(n_pos: np.ndarray, n_real: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """Bags with at least one witness and one non-witness; counts of the others by reason."""
    empty = n_real == 0
    no_witness = ~empty & (n_pos == 0)
    all_witness = ~empty & (n_pos == n_real)
    excluded = {"empty_bag": int(empty.sum()), "no_witness": int(no_witness.sum()),
                "all_witness": int(all_witness.sum())}
    return ~(empty | no_witness | all_witness), {k: v for k, v in excluded.items() if v}


def _describe_exclusions(excluded: Mapping[str, int]) -> str:
    return ", ".join(f"{count} {reason}" for reason, count in excluded.items()) or "none"


def _summarise(name: str, values: np.ndarray, eligible: np.ndarray, chance: np.ndarray,
               excluded: dict[str, int], counts: dict[str, int] | None = None,
               reason: str | None = None) -> PerBagResult:
    """Mean over eligible bags; NaN with a reason when none is eligible."""
    values = np.where(eligible, values, np.nan)
    n_eligible = int(eligible.sum())
    if reason is None and n_eligible == 0:
        reason = ("no bags" if len(values) == 0 else
                  f"no eligible bag (excluded: {_describe_exclusions(excluded)})")
    if reason is not None:
        return PerBagResult(name, np.full(len(values), np.nan), math.nan, math.nan, 0,
                            excluded, counts or {}, reason)
    return PerBagResult(name, values, float(values[eligible].mean()),
                        float(np.mean(chance[eligible])), n_eligible, excluded, counts or {})


def per_bag_auroc(scores: Any, evidence: Any, mask: Any = None) -> PerBagResult:
    """Per-bag AUROC of witnesses (evidence > 0) against all other real instances.

    Bags that are all one class are excluded and counted. Chance level 0.5.
    """
    scores_arr, evidence_arr, mask_arr = check_importance_inputs(scores, evidence, mask)
    values, n_pos, _ = _auroc_rows(scores_arr, evidence_arr > 0, mask_arr)
    eligible, excluded = _eligibility(n_pos, mask_arr.sum(axis=1))
    return _summarise("auroc", values, eligible, np.full(len(values), 0.5), excluded)


def per_bag_auprc(scores: Any, evidence: Any, mask: Any = None) -> PerBagResult:
    """Per-bag average precision (sklearn's definition) of witnesses.

    Same eligibility as AUROC (an all-witness bag would score 1 for any explanation). Chance
    level: the mean witness rate of the eligible bags.
    """
    scores_arr, evidence_arr, mask_arr = check_importance_inputs(scores, evidence, mask)
    values = _average_precision_rows(scores_arr, evidence_arr > 0, mask_arr)
    n_pos, n_real = (evidence_arr > 0).sum(axis=1), mask_arr.sum(axis=1)
    eligible, excluded = _eligibility(n_pos, n_real)
    return _summarise("auprc", values, eligible, _rate(n_pos, n_real), excluded)


def _rate(n_pos: np.ndarray, n_real: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n_real > 0, n_pos / np.maximum(n_real, 1), np.nan)


def _resolve_k(k: int | None, n_pos: np.ndarray, n_real: np.ndarray) -> np.ndarray:
    if k is None:
        return n_pos.astype(np.int64)
    if not is_int(k) or k < 1:
        raise SpecError("k", k, "None (k = number of witnesses in each bag) or an integer >= 1")
    return np.minimum(int(k), n_real).astype(np.int64)


#: NDCG gains: "binary" (witness 1, else 0) or "signed" (MILLI: the evidence +1 / 0 / -1).
NDCG_GAINS = ("binary", "signed")
#: Bags NDCG is averaged over: "witnessed" (ours: at least one witness and one non-witness) or
#: "milli" (MILLI's: every bag with a witness and more than MIN_MILLI_BAG instances, all-witness
#: bags included).
NDCG_BAGS = ("witnessed", "milli")
#: MILLI skips bags of at most this many instances.
MIN_MILLI_BAG = 2


def _top_k_metric(which: str, scores: Any, evidence: Any, mask: Any, k: int | None,
                  gains: str = "binary", bags: str = "witnessed") -> PerBagResult:
    if gains not in NDCG_GAINS:
        raise SpecError("gains", gains, f"one of {list(NDCG_GAINS)}")
    if bags not in NDCG_BAGS:
        raise SpecError("bags", bags, f"one of {list(NDCG_BAGS)}")
    scores_arr, evidence_arr, mask_arr = check_importance_inputs(scores, evidence, mask)
    positive = evidence_arr > 0
    n_pos, n_real = positive.sum(axis=1), mask_arr.sum(axis=1)
    k_per_bag = _resolve_k(k, n_pos, n_real)
    relevance = np.sign(evidence_arr).astype(np.float64) if gains == "signed" else positive
    ndcg, precision = _top_k_rows(scores_arr, relevance, mask_arr, k_per_bag)
    if bags == "milli":
        small = (n_real > 0) & (n_real <= MIN_MILLI_BAG)
        no_witness = (n_real > MIN_MILLI_BAG) & (n_pos == 0)
        eligible = (n_real > MIN_MILLI_BAG) & (n_pos > 0)
        excluded = {key: int(v.sum()) for key, v in (("empty_bag", n_real == 0),
                    ("small_bag", small), ("no_witness", no_witness)) if v.any()}
    else:
        eligible, excluded = _eligibility(n_pos, n_real)
    mean_gain = np.where(mask_arr, relevance, 0.0).sum(axis=1) / np.maximum(n_real, 1)
    rate = _rate(n_pos, n_real)
    if which == "precision_at_k":
        return _summarise(which, precision, eligible, rate, excluded)
    # Random order: every position has expected gain `mean_gain`, so E[DCG@k] = it * D(k).
    cumulative = np.concatenate([[0.0], np.cumsum(_discounts(mask_arr.shape[1]))])
    with np.errstate(divide="ignore", invalid="ignore"):
        chance = mean_gain * cumulative[k_per_bag] / cumulative[np.minimum(k_per_bag, n_pos)]
    return _summarise(which, ndcg, eligible, chance, excluded)


def ndcg_at_k(scores: Any, evidence: Any, mask: Any = None, k: int | None = None,
              gains: str = "binary", bags: str = "witnessed") -> PerBagResult:
    """Per-bag NDCG@k, discount 1/log2(rank + 1), tied scores averaged as in
    ``sklearn.metrics.ndcg_score``. k=None: k = number of witnesses of the bag (MILLI's NDCG@n);
    an int k is capped at the bag size. gains: "binary" (relevance = evidence > 0) or "signed"
    (MILLI: gain = the evidence sign, so a refuting instance in the top k costs; the ideal
    ranks the witnesses first, and a score can be negative). bags: "witnessed" (bags with a
    witness and a non-witness) or "milli" (bags with a witness and more than 2 instances,
    all-witness bags included). Chance level: the mean gain (for k = number of witnesses)."""
    return _top_k_metric("ndcg_at_k", scores, evidence, mask, k, gains, bags)


def precision_at_k(scores: Any, evidence: Any, mask: Any = None,
                   k: int | None = None) -> PerBagResult:
    """Per-bag fraction of witnesses among the k top-scored instances; a tie group straddling
    the cut contributes its mean relevance (expected value over random tie-breaks). k=None: k =
    number of witnesses. Chance level: witness rate."""
    return _top_k_metric("precision_at_k", scores, evidence, mask, k)


def _two_sided(which: str, scores: Any, evidence: Any, mask: Any,
               require_both_sides: bool) -> PerBagResult:
    scores_arr, evidence_arr, mask_arr = check_importance_inputs(scores, evidence, mask)
    n_real = mask_arr.sum(axis=1)
    supporting, refuting = evidence_arr > 0, evidence_arr < 0
    if which == "auroc2":
        side_pos = _auroc_rows(scores_arr, supporting, mask_arr)[0]
        side_neg = _auroc_rows(-scores_arr, refuting, mask_arr)[0]
    else:
        side_pos = _average_precision_rows(scores_arr, supporting, mask_arr)
        side_neg = _average_precision_rows(-scores_arr, refuting, mask_arr)
    n_sup, n_ref = supporting.sum(axis=1), refuting.sum(axis=1)
    has_pos = (n_sup > 0) & (n_sup < n_real)
    has_neg = (n_ref > 0) & (n_ref < n_real)
    # Chance: 0.5 per side for AUROC, the class rate per side for AUPRC.
    chance_pos = np.full(len(n_real), 0.5) if which == "auroc2" else _rate(n_sup, n_real)
    chance_neg = np.full(len(n_real), 0.5) if which == "auroc2" else _rate(n_ref, n_real)
    n_sides = has_pos.astype(np.int64) + has_neg
    with np.errstate(divide="ignore", invalid="ignore"):
        values = (np.where(has_pos, side_pos, 0.0) + np.where(has_neg, side_neg, 0.0)) / n_sides
        chance = (np.where(has_pos, chance_pos, 0.0)
                  + np.where(has_neg, chance_neg, 0.0)) / n_sides
    counts = {"both_sides": int((has_pos & has_neg).sum()),
              "positive_side_only": int((has_pos & ~has_neg).sum()),
              "negative_side_only": int((~has_pos & has_neg).sum())}
    eligible = (has_pos & has_neg) if require_both_sides else (has_pos | has_neg)
    excluded = {"empty_bag": int((n_real == 0).sum()),
                "no_contrast": int(((n_real > 0) & ~has_pos & ~has_neg).sum())}
    if require_both_sides:
        excluded["one_sided"] = counts["positive_side_only"] + counts["negative_side_only"]
    excluded = {key: count for key, count in excluded.items() if count}
    reason = None
    if len(n_real) and not has_neg.any():
        reason = ("no bag has a contrast of negative evidence (evidence = -1), so the two-sided "
                  f"metric would just repeat {which[:-1].upper()}")
    return _summarise(which, values, eligible, chance, excluded, counts, reason)


def auroc2(scores: Any, evidence: Any, mask: Any = None,
           require_both_sides: bool = False) -> PerBagResult:
    """xMIL's AUROC-2 per bag: mean of AUROC(evidence > 0 vs rest, score) and
    AUROC(evidence < 0 vs rest, -score). A side is defined when the bag holds both that evidence
    and other instances; a bag with one defined side uses that side alone (counted in
    ``counts``) unless `require_both_sides`, which excludes it. NaN with a reason when no bag has
    negative evidence. Chance level 0.5."""
    return _two_sided("auroc2", scores, evidence, mask, require_both_sides)


def auprc2(scores: Any, evidence: Any, mask: Any = None,
           require_both_sides: bool = False) -> PerBagResult:
    """xMIL's AUPRC-2 per bag: mean of AP(evidence > 0, score) and AP(evidence < 0, -score),
    with the side handling of `auroc2`. Chance level: mean of the two class rates."""
    return _two_sided("auprc2", scores, evidence, mask, require_both_sides)


def concentration(scores: Any, evidence: Any, mask: Any = None) -> PerBagResult:
    """Per-bag share of the score mass on witnesses: sum(scores on witnesses) / sum(scores).

    Only for non-negative scores such as attention; signed scores give NaN with a reason.
    Eligibility as AUROC, plus a positive score sum. Chance level (uniform scores): witness rate.
    """
    scores_arr, evidence_arr, mask_arr = check_importance_inputs(scores, evidence, mask)
    positive = evidence_arr > 0
    n_pos, n_real = positive.sum(axis=1), mask_arr.sum(axis=1)
    eligible, excluded = _eligibility(n_pos, n_real)
    real = scores_arr[mask_arr]
    reason = None
    if (real < 0).any():
        reason = ("signed scores (some < 0): concentration needs non-negative scores such as "
                  "attention")
    elif not np.isfinite(real).all():
        reason = "infinite scores: concentration needs finite non-negative scores"
    if reason is not None:
        return _summarise("concentration", np.full(len(n_real), np.nan), eligible,
                          np.full(len(n_real), np.nan), excluded, reason=reason)
    totals = scores_arr.sum(axis=1)
    zero_mass = eligible & (totals <= 0)
    if zero_mass.any():
        excluded["zero_score_mass"] = int(zero_mass.sum())
    eligible = eligible & ~zero_mass
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.where(positive, scores_arr, 0.0).sum(axis=1) / totals
    return _summarise("concentration", values, eligible, _rate(n_pos, n_real), excluded)


# --------------------------------------------------------------------------- pooled metrics


def _pooled(which: str, scores: Any, evidence: Any, mask: Any,
            normalisation: str) -> PooledResult:
    _check_normalisation(normalisation)
    scores_arr, evidence_arr, mask_arr = check_importance_inputs(scores, evidence, mask)
    normalised = normalise_per_bag(scores_arr, mask_arr, normalisation)
    flat_scores = normalised[mask_arr][None, :]
    flat_evidence = evidence_arr[mask_arr][None, :]
    all_real = np.ones(flat_scores.shape, dtype=bool)
    n = flat_scores.shape[1]
    supporting, refuting = flat_evidence > 0, flat_evidence < 0
    n_sup, n_ref = int(supporting.sum()), int(refuting.sum())

    def side(positive: np.ndarray, sign: float) -> float:
        if which.startswith("auroc"):
            return float(_auroc_rows(sign * flat_scores, positive, all_real)[0][0])
        return float(_average_precision_rows(sign * flat_scores, positive, all_real)[0])

    sup_defined, ref_defined = 0 < n_sup < n, 0 < n_ref < n
    is_auroc = which.startswith("auroc")
    chance_sup = 0.5 if is_auroc else (n_sup / n if n else math.nan)
    chance_ref = 0.5 if is_auroc else (n_ref / n if n else math.nan)
    if which in ("auroc", "auprc"):
        if not sup_defined:
            reason = ("no instances" if n == 0 else
                      "all instances are witnesses" if n_sup == n else "no witness")
            return PooledResult(which, math.nan, math.nan, n, n_sup, reason)
        return PooledResult(which, side(supporting, 1.0), chance_sup, n, n_sup)
    if not (sup_defined and ref_defined):
        missing = "positive" if not sup_defined else "negative"
        return PooledResult(which, math.nan, math.nan, n, n_sup,
                            f"no contrast for {missing} evidence over the pooled instances")
    value = (side(supporting, 1.0) + side(refuting, -1.0)) / 2.0
    return PooledResult(which, value, (chance_sup + chance_ref) / 2.0, n, n_sup)


def pooled_auroc(scores: Any, evidence: Any, mask: Any = None,
                 normalisation: str = "none") -> PooledResult:
    """AUROC of witnesses vs. all other instances, pooled over all real instances of all bags.

    normalisation (per bag, before pooling): none | rank | minmax | sum (see
    `normalise_per_bag`); it removes differences of scale between bags, e.g. attention sums to
    1 in every bag so raw attention is smaller in large bags. Chance level 0.5."""
    return _pooled("auroc", scores, evidence, mask, normalisation)


def pooled_auprc(scores: Any, evidence: Any, mask: Any = None,
                 normalisation: str = "none") -> PooledResult:
    """Average precision over all pooled real instances. Chance level: overall witness rate."""
    return _pooled("auprc", scores, evidence, mask, normalisation)


def pooled_auroc2(scores: Any, evidence: Any, mask: Any = None,
                  normalisation: str = "none") -> PooledResult:
    """AUROC-2 over all pooled real instances; NaN with a reason if either side is undefined."""
    return _pooled("auroc2", scores, evidence, mask, normalisation)


def pooled_auprc2(scores: Any, evidence: Any, mask: Any = None,
                  normalisation: str = "none") -> PooledResult:
    """AUPRC-2 over all pooled real instances; NaN with a reason if either side is undefined."""
    return _pooled("auprc2", scores, evidence, mask, normalisation)


# --------------------------------------------------------------------------- bootstrap


def bootstrap_ci(values: np.ndarray | PerBagResult, n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0) -> ConfidenceInterval:
    """Percentile bootstrap CI of the mean of a per-bag metric, resampling bags with replacement.

    values: (B,) per-bag values or a PerBagResult; NaN entries (excluded bags) are dropped first.
    Same seed -> same interval.
    """
    Interval(int, 1).require(n_boot, "n_boot")
    if not 0.0 < level < 1.0:
        raise SpecError("level", level, "a number in (0, 1), e.g. 0.95")
    raw = values.values if isinstance(values, PerBagResult) else np.asarray(values, np.float64)
    if raw.ndim != 1:
        raise SpecError("values", f"array of shape {raw.shape}", "a (B,) array of per-bag values")
    kept = raw[~np.isnan(raw)]
    if len(kept) == 0:
        return ConfidenceInterval(math.nan, math.nan, math.nan, level, int(n_boot), 0,
                                  "no defined per-bag value to resample")
    rng = np.random.default_rng(seed)
    # Bounded chunks keep memory flat for many bags.
    chunk = max(1, 4_000_000 // len(kept))
    means = np.concatenate([
        kept[rng.integers(0, len(kept), size=(min(chunk, n_boot - start), len(kept)))].mean(axis=1)
        for start in range(0, int(n_boot), chunk)])
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return ConfidenceInterval(float(kept.mean()), float(low), float(high), level, int(n_boot),
                              len(kept))


# --------------------------------------------------------------------------- one entry point


#: Importance metrics of `importance_report` that are scores in [0, 1] (higher = closer to the
#: witnesses): what a silent-failure criterion may threshold.
IMPORTANCE_SCORES = ("auroc", "auprc", "ndcg_at_k", "precision_at_k", "auroc2", "auprc2",
                     "concentration", "auroc_pooled", "auprc_pooled", "auroc2_pooled",
                     "auprc2_pooled")


def importance_report(scores: Any, evidence: Any, mask: Any = None, *, k: int | None = None,
                      pooled_normalisation: str = "none", require_both_sides: bool = False,
                      n_boot: int = 1000, ci_level: float = 0.95,
                      seed: int = 0) -> MetricDict:
    """Every instance-importance metric as one flat ``dict[str, float]``.

    Per-bag metrics (mean over eligible bags) ``auroc, auprc, ndcg_at_k, precision_at_k, auroc2,
    auprc2, concentration`` each with ``_chance``, ``_n_eligible``, ``_n_excluded`` and, if
    n_boot > 0, ``_ci_low`` / ``_ci_high``; pooled ``auroc_pooled, auprc_pooled, auroc2_pooled,
    auprc2_pooled`` with ``_chance``; counts ``n_bags, n_instances, n_witnesses,
    n_bags_no_witness, n_bags_all_witness, auroc2_n_one_sided``. Every NaN value has an entry in
    ``.reasons``.
    """
    if not is_int(n_boot) or n_boot < 0:
        raise SpecError("n_boot", n_boot, "an integer >= 0 (0 = no confidence intervals)")
    scores_arr, evidence_arr, mask_arr = check_importance_inputs(scores, evidence, mask)
    out = MetricDict()
    n_pos, n_real = (evidence_arr > 0).sum(axis=1), mask_arr.sum(axis=1)
    out["n_bags"] = float(len(n_real))
    out["n_instances"] = float(n_real.sum())
    out["n_witnesses"] = float(n_pos.sum())
    out["n_bags_no_witness"] = float(((n_real > 0) & (n_pos == 0)).sum())
    out["n_bags_all_witness"] = float(((n_real > 0) & (n_pos == n_real)).sum())
    args = (scores_arr, evidence_arr, mask_arr)
    per_bag = [per_bag_auroc(*args), per_bag_auprc(*args), ndcg_at_k(*args, k=k),
               precision_at_k(*args, k=k), auroc2(*args, require_both_sides=require_both_sides),
               auprc2(*args, require_both_sides=require_both_sides), concentration(*args)]
    for result in per_bag:
        name = result.name
        out[name] = result.mean
        out[f"{name}_chance"] = result.chance
        out[f"{name}_n_eligible"] = float(result.n_eligible)
        out[f"{name}_n_excluded"] = float(result.n_excluded)
        if result.reason is not None:
            out.reasons[name] = out.reasons[f"{name}_chance"] = result.reason
        if n_boot > 0:
            interval = bootstrap_ci(result, n_boot=n_boot, level=ci_level, seed=seed)
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = interval.low, interval.high
            if interval.reason is not None:
                out.reasons[f"{name}_ci_low"] = out.reasons[f"{name}_ci_high"] = (
                    result.reason or interval.reason)
    two_sided = per_bag[4]
    out["auroc2_n_one_sided"] = float(two_sided.counts.get("positive_side_only", 0)
                                      + two_sided.counts.get("negative_side_only", 0))
    for pooled in (pooled_auroc, pooled_auprc, pooled_auroc2, pooled_auprc2):
        result_pooled = pooled(*args, normalisation=pooled_normalisation)
        key = f"{result_pooled.name}_pooled"
        out[key] = result_pooled.value
        out[f"{key}_chance"] = result_pooled.chance
        if result_pooled.reason is not None:
            out.reasons[key] = out.reasons[f"{key}_chance"] = result_pooled.reason
    return out
