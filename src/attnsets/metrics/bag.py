"""Bag-level metrics from labels (B,) and predicted probabilities (B, C).

Definitions match scikit-learn: predictions are ``argmax`` of the probabilities; balanced accuracy
is the mean recall over the classes present in `labels`; AUROC is binary on ``probs[:, 1]`` for
two classes and one-vs-rest macro for more; log loss clips probabilities to [eps, 1 - eps].
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from attnsets.errors import SpecError
from attnsets.metrics.importance import MetricDict, rank_auroc

#: How far a row of probabilities may be from summing to 1 (float32 softmax output passes).
SUM_TOLERANCE = 1e-3


def check_bag_inputs(labels: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``labels: (B,)`` ints in 0..C-1 and ``probs: (B, C)`` rows summing to 1.

    ``probs: (B,)`` is read as P(class 1) of a binary problem. Returns (int64, float64) arrays.
    """
    probs_arr = np.asarray(probs, dtype=np.float64)
    if probs_arr.ndim == 1:
        probs_arr = np.stack([1.0 - probs_arr, probs_arr], axis=1)
    if probs_arr.ndim != 2 or probs_arr.shape[1] < 2:
        raise SpecError("probs", f"array of shape {probs_arr.shape}",
                        "a (B, C) array with C >= 2, or (B,) P(class 1) for binary problems")
    labels_raw = np.asarray(labels)
    if labels_raw.shape != (probs_arr.shape[0],):
        raise SpecError("labels", f"array of shape {labels_raw.shape}",
                        f"a ({probs_arr.shape[0]},) array, one label per row of probs")
    if labels_raw.size and not np.all(np.mod(labels_raw, 1) == 0):
        raise SpecError("labels", "non-integer values", "integer class indices")
    labels_arr = labels_raw.astype(np.int64)
    n_classes = probs_arr.shape[1]
    if labels_arr.size and (labels_arr.min() < 0 or labels_arr.max() >= n_classes):
        raise SpecError("labels", f"range {labels_arr.min()}..{labels_arr.max()}",
                        f"class indices 0..{n_classes - 1}")
    if not np.isfinite(probs_arr).all() or (probs_arr < 0).any() or (probs_arr > 1).any():
        raise SpecError("probs", "values outside [0, 1] or not finite", "probabilities in [0, 1]")
    row_sums = probs_arr.sum(axis=1)
    if probs_arr.size and np.abs(row_sums - 1.0).max() > SUM_TOLERANCE:
        raise SpecError("probs", f"rows summing to {row_sums.min():.4g}..{row_sums.max():.4g}",
                        f"rows summing to 1 (+/- {SUM_TOLERANCE})")
    return labels_arr, probs_arr


#: Bag metrics that are scores in [0, 1] (higher is better): what a criterion may threshold.
BAG_SCORES = ("accuracy", "balanced_accuracy", "auroc")


def bag_metrics(labels: Any, probs: Any) -> MetricDict:
    """accuracy, balanced_accuracy, auroc, log_loss, n_bags, n_classes, auroc_n_classes_scored.

    labels: (B,) int; probs: (B, C). Undefined values are NaN with a reason in ``.reasons``; a
    multi-class AUROC that had to skip classes absent from `labels` carries a caveat there.
    """
    labels_arr, probs_arr = check_bag_inputs(labels, probs)
    n_bags, n_classes = probs_arr.shape
    out = MetricDict({"n_bags": float(n_bags), "n_classes": float(n_classes)})
    if n_bags == 0:
        for key in ("accuracy", "balanced_accuracy", "auroc", "log_loss"):
            out[key] = math.nan
            out.reasons[key] = "no bags"
        out["auroc_n_classes_scored"] = 0.0
        return out
    predictions = probs_arr.argmax(axis=1)
    correct = predictions == labels_arr
    out["accuracy"] = float(correct.mean())
    present = np.bincount(labels_arr, minlength=n_classes) > 0
    hits = np.bincount(labels_arr[correct], minlength=n_classes)
    totals = np.bincount(labels_arr, minlength=n_classes)
    out["balanced_accuracy"] = float((hits[present] / totals[present]).mean())
    auroc, scored, note = _auroc(labels_arr, probs_arr)
    out["auroc"] = auroc
    out["auroc_n_classes_scored"] = float(scored)
    if note is not None:
        out.reasons["auroc"] = note
    eps = np.finfo(np.float64).eps
    chosen = np.clip(probs_arr[np.arange(n_bags), labels_arr], eps, 1.0 - eps)
    out["log_loss"] = float(-np.log(chosen).mean())
    return out


def _auroc(labels: np.ndarray, probs: np.ndarray) -> tuple[float, int, str | None]:
    """(AUROC, number of classes scored, reason or caveat)."""
    n_bags, n_classes = probs.shape
    if n_classes == 2:
        value = float(rank_auroc(probs[None, :, 1], labels[None, :] == 1,
                                 np.ones((1, n_bags), dtype=bool))[0])
        if math.isnan(value):
            return value, 0, "only one class present in labels"
        return value, 2, None
    # One-vs-rest: one row per class, all bags real in every row.
    one_vs_rest = rank_auroc(probs.T.copy(), labels[None, :] == np.arange(n_classes)[:, None],
                             np.ones((n_classes, n_bags), dtype=bool))
    defined = ~np.isnan(one_vs_rest)
    if not defined.any():
        return math.nan, 0, "only one class present in labels"
    note = None
    if not defined.all():
        missing = np.flatnonzero(~defined).tolist()
        note = (f"macro over {int(defined.sum())} of {n_classes} classes; classes {missing} "
                "have no positive (or no negative) bag")
    return float(one_vs_rest[defined].mean()), int(defined.sum()), note
