"""Silent failures: a model that classifies bags well while its explanation misses the witnesses,
and models that pass their training distribution but fail an algorithmic unit test."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from attnsets.errors import SpecError
from attnsets.metrics.bag import BAG_SCORES
from attnsets.metrics.importance import IMPORTANCE_SCORES, check_importance_inputs
from attnsets.spec.constraints import Interval, Options, check_declared, constrained

#: A threshold on a metric in [0, 1].
UNIT_INTERVAL = Interval(float, 0, 1)


@dataclass(frozen=True)
class SilentFailureCriteria:
    """A run fails silently when ``bag_metrics[bag_metric] >= min_bag_score`` and
    ``importance_metrics[importance_metric] <= max_importance``. Defaults: balanced accuracy
    >= 0.9 with mean per-bag importance AUROC <= 0.7. Also the [thresholds] table of a study."""

    min_bag_score: float = constrained(UNIT_INTERVAL, default=0.9)
    max_importance: float = constrained(UNIT_INTERVAL, default=0.7)
    bag_metric: str = constrained(Options(BAG_SCORES), default="balanced_accuracy")
    importance_metric: str = constrained(Options(IMPORTANCE_SCORES), default="auroc")

    def __post_init__(self) -> None:
        check_declared(self)


def _lookup(metrics: Mapping[str, float], name: str, field_name: str) -> float:
    if name not in metrics:
        raise SpecError(field_name, name, f"a key of the given metrics {sorted(metrics)}")
    return float(metrics[name])


def is_silent_failure(bag_metrics: Mapping[str, float], importance_metrics: Mapping[str, float],
                      criteria: SilentFailureCriteria | None = None) -> tuple[bool, str]:
    """(flag, reason). True when the bag metric passes but the importance metric does not.

    A NaN metric cannot be judged: the result is False and the reason says so (with the
    metric's own reason when the mapping is a MetricDict).
    """
    criteria = criteria or SilentFailureCriteria()
    bag_score = _lookup(bag_metrics, criteria.bag_metric, "criteria.bag_metric")
    importance = _lookup(importance_metrics, criteria.importance_metric,
                         "criteria.importance_metric")
    for name, value, source in ((criteria.bag_metric, bag_score, bag_metrics),
                                (criteria.importance_metric, importance, importance_metrics)):
        if math.isnan(value):
            why = getattr(source, "reasons", {}).get(name)
            return False, f"undecided: {name} is NaN" + (f" ({why})" if why else "")
    bag_ok = bag_score >= criteria.min_bag_score
    importance_bad = importance <= criteria.max_importance
    summary = (f"{criteria.bag_metric} {bag_score:.3f} (pass >= {criteria.min_bag_score}), "
               f"{criteria.importance_metric} {importance:.3f} "
               f"(fail <= {criteria.max_importance})")
    if bag_ok and importance_bad:
        return True, f"silent failure: good bag predictions, explanation misses the witnesses; {summary}"
    if not bag_ok:
        return False, f"not silent: the bag predictions themselves fall short; {summary}"
    return False, f"no failure: the explanation finds the witnesses; {summary}"


def misleading_bags(scores: Any, evidence: Any, mask: Any, correct: Any) -> np.ndarray:
    """(B,) bool: correctly classified bags with at least one witness whose top score is held by
    a non-witness. With ties at the top, a bag is misleading if any instance tied for the
    maximum is a non-witness (some tie-break would show it first).

    scores, evidence, mask: (B, N); correct: (B,) bool.
    """
    scores_arr, evidence_arr, mask_arr = check_importance_inputs(scores, evidence, mask)
    correct_arr = np.asarray(correct)
    if correct_arr.shape != (scores_arr.shape[0],):
        raise SpecError("correct", f"array of shape {correct_arr.shape}",
                        f"a ({scores_arr.shape[0]},) bool array")
    correct_arr = correct_arr.astype(bool)
    witness = (evidence_arr > 0) & mask_arr
    top = np.where(mask_arr, scores_arr, -np.inf).max(axis=1, initial=-np.inf, keepdims=True)
    at_top = mask_arr & (scores_arr == top)
    return correct_arr & witness.any(axis=1) & (at_top & ~witness).any(axis=1)


@dataclass(frozen=True)
class UnitTestResult:
    """Outcome of `unit_test_flag` with the thresholds that produced it."""

    flagged: bool
    reason: str
    train_metric: float
    test_metric: float
    drop: float
    pass_threshold: float
    fail_threshold: float
    max_drop: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def unit_test_flag(train_metric: float, test_metric: float, *, pass_threshold: float = 0.9,
                   fail_threshold: float = 0.6, max_drop: float | None = 0.2) -> UnitTestResult:
    """Flag a model that passes its training distribution but fails the shifted test split.

    Flagged when ``train_metric >= pass_threshold`` and (``test_metric < fail_threshold`` or
    ``train_metric - test_metric > max_drop``; max_drop=None disables the drop rule).
    train_metric is usually validation balanced accuracy, test_metric the same on the unit
    test's shifted split (e.g. Raff & Holt's poison or false-frequency test).
    """
    UNIT_INTERVAL.require(pass_threshold, "pass_threshold")
    UNIT_INTERVAL.require(fail_threshold, "fail_threshold")
    if max_drop is not None:
        UNIT_INTERVAL.require(max_drop, "max_drop")
    train, test = float(train_metric), float(test_metric)
    drop = train - test
    settings = dict(train_metric=train, test_metric=test, drop=drop,
                    pass_threshold=pass_threshold, fail_threshold=fail_threshold,
                    max_drop=max_drop)
    if math.isnan(train) or math.isnan(test):
        return UnitTestResult(False, "undecided: a metric is NaN", **settings)
    if train < pass_threshold:
        return UnitTestResult(False, f"not flagged: the model does not pass training "
                              f"({train:.3f} < {pass_threshold})", **settings)
    fails = test < fail_threshold
    drops = max_drop is not None and drop > max_drop
    if fails or drops:
        causes = []
        if fails:
            causes.append(f"test {test:.3f} < {fail_threshold}")
        if drops:
            causes.append(f"drop {drop:.3f} > {max_drop}")
        return UnitTestResult(True, f"flagged: passes training ({train:.3f} >= "
                              f"{pass_threshold}) but {' and '.join(causes)}", **settings)
    return UnitTestResult(False, f"passed: train {train:.3f}, test {test:.3f}", **settings)
