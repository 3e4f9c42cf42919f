"""The headline: the few numbers a reader wants first about one group of cells (a single cell,
or the replicate cells of one dataset x model), for any importance metric, with 95% CIs.

`headline` is the one computation behind every place that shows a headline: the
`attnsets run` / `attnsets results` table, the HTML report, the results pages, the per-cell
``headline.*`` record and MLflow metrics. It reads the typed `Assessment` of each cell; the
metric is the cells' `SilentFailureCriteria.importance_metric` unless one is asked for.

CIs: with at least two cells that have values, a cluster bootstrap of the mean over all
members that resamples whole cells (`ci_source` "cells": members of a cell share their data);
with one cell, the members' mean of the bag-bootstrap bounds stored with each member
(`ci_source` "bags").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from attnsets.metrics.cluster import cluster_bootstrap, nanmean

if TYPE_CHECKING:  # assessment.py flattens `headline` into its record: no import cycle at run time
    from attnsets.assessment import Assessment, ExplainerAssessment


class AssessedCell(Protocol):
    """A finished cell: its id (the cluster of its members) and its assessment."""

    @property
    def cell_id(self) -> str: ...

    @property
    def assessment(self) -> Assessment: ...


@dataclass(frozen=True)
class OneCell:
    """An assessment on its own (a single `execute` result) as an AssessedCell."""

    assessment: Assessment
    cell_id: str = "cell"


@dataclass(frozen=True)
class Interval:
    """A mean with its 95% CI bounds (NaN where there is nothing to resample)."""

    value: float
    low: float
    high: float

    @staticmethod
    def missing() -> Interval:
        return Interval(math.nan, math.nan, math.nan)


@dataclass(frozen=True)
class Members:
    """Per member of every cell of a group that has the explainer: (n,) arrays."""

    cell_ids: np.ndarray
    primary: np.ndarray
    secondary: np.ndarray
    auprc_chance: np.ndarray
    bag_score: np.ndarray
    min_bag_score: np.ndarray
    silent: np.ndarray


@dataclass(frozen=True)
class BagHeadline:
    """Bag classification of a group of cells: means over its cells."""

    cells: int
    members: int
    accuracy: float
    balanced_accuracy: float
    ensemble_accuracy: float
    unit_test_flagged_rate: float


@dataclass(frozen=True)
class ExplainerHeadline:
    """One explainer over the cells of a group that have it.

    importance: the members' mean of the metric; secondary: of the secondary metric; ensemble:
    the mean over cells of the combined scores' metric; ensemble_gain = ensemble - importance;
    P(fail) from the ensemble-size curves (AUROC at or below the threshold) at the smallest and
    the largest K; all_classes: the mean over cells of the metric over every class (None unless
    a cell scored every class)."""

    importance: Interval
    secondary: Interval
    ci_source: str
    auprc_chance: float
    min_bag_score: float
    max_importance: float
    members_accurate: int
    silent_failures: int
    silent_rate: float
    ensemble: float
    ensemble_gain: float
    ensemble_silent_rate: float
    all_classes: float | None
    ensemble_k: int | float
    p_fail_single: float
    p_fail_ensemble: float


@dataclass(frozen=True)
class Headline:
    """The headline of a group of cells for explainer `method` and importance `metric`;
    `explainer` is None when no cell of the group has `method` (`note` says why)."""

    method: str | None
    metric: str
    bags: BagHeadline
    explainer: ExplainerHeadline | None
    note: str

    @property
    def secondary_metric(self) -> str:
        return secondary_metric(self.metric)

    def columns(self) -> dict[str, object]:
        """The flat table row (see `headline_columns`) without the group's identity; NaN
        where the explainer has no results."""
        bags, found = self.bags, self.explainer
        primary, second = f"importance_{self.metric}", f"importance_{self.secondary_metric}"
        row: dict[str, object] = {
            "cells": bags.cells, "members": bags.members, "explainer": self.method or "",
            "bag_accuracy": bags.accuracy, "bag_balanced_accuracy": bags.balanced_accuracy,
            "ensemble_bag_accuracy": bags.ensemble_accuracy}
        nan = math.nan
        for name, interval in ((primary, found.importance if found else None),
                               (second, found.secondary if found else None)):
            interval = interval or Interval.missing()
            row.update({name: interval.value, f"{name}_ci_low": interval.low,
                        f"{name}_ci_high": interval.high})
        row.update({
            "auprc_chance": found.auprc_chance if found else nan,
            "ci_source": found.ci_source if found else nan,
            "min_bag_score": found.min_bag_score if found else nan,
            "max_importance": found.max_importance if found else nan,
            "members_accurate": found.members_accurate if found else nan,
            "silent_failures": found.silent_failures if found else nan,
            "silent_rate": found.silent_rate if found else nan,
            f"ensemble_{self.metric}": found.ensemble if found else nan,
            "ensemble_gain": found.ensemble_gain if found else nan,
            "ensemble_k": found.ensemble_k if found else nan,
            "p_fail_single": found.p_fail_single if found else nan,
            "p_fail_ensemble": found.p_fail_ensemble if found else nan,
            "unit_test_flagged_rate": bags.unit_test_flagged_rate, "note": self.note})
        return row

    def record(self) -> dict[str, float]:
        """The per-explainer keys of a cell's ``headline`` record (and its MLflow metrics):
        ``<method>.<metric>``, ``.silent_rate``, ``.ensemble_<metric>``, ``.ensemble_gain``,
        ``.ensemble_silent`` and, when the cell scored every class, ``.all_classes_<metric>``.
        Empty without explainer results."""
        found = self.explainer
        if found is None:
            return {}
        key = f"{self.method}."
        out = {f"{key}{self.metric}": found.importance.value,
               f"{key}silent_rate": found.silent_rate,
               f"{key}ensemble_{self.metric}": found.ensemble,
               f"{key}ensemble_gain": found.ensemble_gain,
               f"{key}ensemble_silent": found.ensemble_silent_rate}
        if found.all_classes is not None:
            out[f"{key}all_classes_{self.metric}"] = found.all_classes
        return out


def headline_columns(metric: str = "auroc") -> list[str]:
    """The columns of a headline table (identity first) for importance `metric`."""
    primary, secondary = f"importance_{metric}", f"importance_{secondary_metric(metric)}"
    return [
        "dataset", "model", "pool", "rule", "cells", "members", "explainer",
        "bag_accuracy", "bag_balanced_accuracy", "ensemble_bag_accuracy",
        primary, f"{primary}_ci_low", f"{primary}_ci_high",
        secondary, f"{secondary}_ci_low", f"{secondary}_ci_high", "auprc_chance",
        "ci_source", "min_bag_score", "max_importance", "members_accurate", "silent_failures",
        "silent_rate", f"ensemble_{metric}", "ensemble_gain", "ensemble_k", "p_fail_single",
        "p_fail_ensemble", "unit_test_flagged_rate", "note",
    ]


def secondary_metric(metric: str) -> str:
    """The second importance metric shown beside `metric`: AUPRC, or AUROC for AUPRC itself."""
    return "auroc" if metric == "auprc" else "auprc"


def _members(cells: Sequence[AssessedCell], method: str, metric: str, second: str) -> Members:
    rows: list[tuple[str, float, float, float, float, float, bool]] = []
    for cell in cells:
        assessment = cell.assessment
        criteria, bag = assessment.criteria, assessment.member_bag
        result = assessment.explainers[method]
        for k, report in enumerate(result.members):
            bag_score = bag[k].value(criteria.bag_metric) if k < len(bag) else math.nan
            silent = bool(result.silent[k]) if k < len(result.silent) else False
            rows.append((cell.cell_id, float(report.get(metric, math.nan)),
                         float(report.get(second, math.nan)),
                         float(report.get("auprc_chance", math.nan)), bag_score,
                         float(criteria.min_bag_score), silent))
    columns = list(zip(*rows, strict=True)) if rows else [()] * 7
    return Members(np.asarray(columns[0], dtype=object), *(np.asarray(c, dtype=np.float64)
                                                          for c in columns[1:6]),
                   np.asarray(columns[6], dtype=bool))


def _intervals(members: Members, first: ExplainerAssessment, metric: str, second: str
               ) -> tuple[Interval, Interval, str]:
    """The CIs of both metrics, from the cells (>= 2 with values) or the stored bag bootstraps."""
    primary, secondary = nanmean(members.primary), nanmean(members.secondary)
    with_values = len(set(members.cell_ids[~np.isnan(members.primary)]))
    if with_values >= 2:  # members of a cell are not independent: resample whole cells
        bounds = [cluster_bootstrap(values, members.cell_ids)
                  for values in (members.primary, members.secondary)]
        return (Interval(primary, bounds[0].low, bounds[0].high),
                Interval(secondary, bounds[1].low, bounds[1].high), "cells")
    return (Interval(primary, first.mean(f"{metric}_ci_low"), first.mean(f"{metric}_ci_high")),
            Interval(secondary, first.mean(f"{second}_ci_low"), first.mean(f"{second}_ci_high")),
            "bags")


def _p_fail(results: list[ExplainerAssessment]) -> tuple[int | float, float, float]:
    """Largest K of the ensemble-size curves and P(fail) at the smallest and largest K (means
    over cells)."""
    points = [p for r in results for p in r.curve]
    if not points:
        return math.nan, math.nan, math.nan
    k_min, k_max = min(p.k for p in points), max(p.k for p in points)
    return (k_max, nanmean([p.p_fail for p in points if p.k == k_min]),
            nanmean([p.p_fail for p in points if p.k == k_max]))


def headline(cells: Sequence[AssessedCell], method: str | None, metric: str | None = None
             ) -> Headline:
    """The headline of `cells` (at least one) for explainer `method` (None: bag numbers only)
    and importance `metric` (default: the first cell's criteria.importance_metric)."""
    metric = metric or cells[0].assessment.criteria.importance_metric
    flagged = [c.assessment.unit_test.flagged_rate for c in cells
               if c.assessment.unit_test is not None]
    bags = BagHeadline(
        cells=len(cells), members=sum(c.assessment.n_members for c in cells),
        accuracy=nanmean([c.assessment.member_mean_bag.accuracy for c in cells]),
        balanced_accuracy=nanmean([c.assessment.member_mean_bag.balanced_accuracy
                                   for c in cells]),
        ensemble_accuracy=nanmean([c.assessment.ensemble_bag.accuracy for c in cells]),
        unit_test_flagged_rate=nanmean(flagged) if flagged else math.nan)
    with_method = [c for c in cells if method is not None and method in c.assessment.explainers]
    if method is None or not with_method:
        reasons = sorted({c.assessment.not_applicable.get(method or "", "") for c in cells} - {""})
        note = f"{method}: {'; '.join(reasons) or 'not computed'}" if method else \
            "no explainer results"
        return Headline(method, metric, bags, None, note)
    missing = len(cells) - len(with_method)
    note = f"{method} missing in {missing} of {len(cells)} cells" if missing else ""
    return Headline(method, metric, bags, _explainer(with_method, method, metric), note)


def _explainer(cells: Sequence[AssessedCell], method: str, metric: str) -> ExplainerHeadline:
    """The explainer's numbers over `cells` (each has `method`)."""
    second = secondary_metric(metric)
    results = [c.assessment.explainers[method] for c in cells]
    members = _members(cells, method, metric, second)
    importance, secondary, source = _intervals(members, results[0], metric, second)
    ensemble = nanmean([r.ensemble_value(metric) for r in results])
    every_class = [r.all_classes.mean.get(metric, math.nan) for r in results
                   if r.all_classes is not None]
    k_max, p_single, p_ensemble = _p_fail(results)
    criteria = cells[0].assessment.criteria
    return ExplainerHeadline(
        importance=importance, secondary=secondary, ci_source=source,
        auprc_chance=nanmean(members.auprc_chance),
        min_bag_score=float(criteria.min_bag_score),
        max_importance=float(criteria.max_importance),
        members_accurate=int((members.bag_score >= members.min_bag_score).sum()),
        silent_failures=int(members.silent.sum()),
        silent_rate=float(members.silent.mean()) if members.silent.size else math.nan,
        ensemble=ensemble, ensemble_gain=ensemble - importance.value,
        ensemble_silent_rate=float(np.mean([r.ensemble_silent for r in results])),
        all_classes=nanmean(every_class) if every_class else None,
        ensemble_k=k_max, p_fail_single=p_single, p_fail_ensemble=p_ensemble)
