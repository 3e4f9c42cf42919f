"""The typed result of an assessment, and its one JSON form for the results store.

`Assessment` holds, for K trained members scored on the test split: bag metrics per member, of
their mean and of the ensemble; per explainer the importance metrics, silent-failure flags,
misleading-bag rates, deletion AOPC and the ensemble-size curve; the algorithmic unit-test flags
for rules whose test split is shifted; and the per-instance arrays. `to_dict()` writes the
layout every store since the first release holds, `from_dict()` reads it back.

Flat metric tables (`MetricTable`) keep the names `attnsets.metrics.bag_metrics` and
`attnsets.metrics.importance_report` give them (listed in docs/metrics.md): a criterion such as
``importance_metric = "auprc2"`` selects one of them by name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from attnsets.headline import OneCell, headline
from attnsets.metrics.cluster import nanmean
from attnsets.metrics.silent import SilentFailureCriteria, UnitTestResult

#: A flat table of named metrics (NaN where undefined).
MetricTable = dict[str, float]


class Stage:
    """Names of the timed stages of a cell (`Assessment.stage_seconds`, `CellRecord.stage_seconds`):
    whole-cell stages, and per-method ones ``<kind>/<method>`` built by `Stage.of`."""

    GENERATE = "generate"
    PREDICT = "predict"
    UNIT_TEST = "unit_test"
    EXPLAIN = "explain"
    EXPLAIN_ALL_CLASSES = "explain_all_classes"
    DELETION = "deletion"
    METRICS = "metrics"
    #: The random-order reference deletion curves (one per member).
    RANDOM_DELETION = "deletion/random"

    @staticmethod
    def of(kind: str, method: str) -> str:
        return f"{kind}/{method}"

    @staticmethod
    def split(stage: str) -> tuple[str, str]:
        """(kind, method) of a stage name; method is "" for a whole-cell stage."""
        kind, _, method = stage.partition("/")
        return kind, method


class ArrayKey:
    """Names of the per-instance arrays of an assessment (`Assessment.arrays`, stored per cell).

    ``scores/<method>`` (K, B, N) float32 holds 0 for the bags a bag budget skipped; which bags
    were scored is ``explained_bags/<method>`` (B,) bool, present only when a budget skipped
    some: read scores through `explained_bags` (every bag when absent)."""

    MASK = "mask"
    EVIDENCE = "evidence"
    LABELS = "labels"
    PROBS = "probs"
    CONCEPTS = "concepts"

    @staticmethod
    def scores(method: str) -> str:
        return f"scores/{method}"

    @staticmethod
    def explained(method: str) -> str:
        return f"explained_bags/{method}"

    @staticmethod
    def split_scores(split: str) -> str:
        """Per-split scores of explain-data's saved outputs."""
        return f"{split}/scores"


def explained_bags(arrays: Mapping[str, np.ndarray], method: str) -> np.ndarray:
    """(B,) bool: the bags `method` scored (all of them when no budget skipped any)."""
    key = ArrayKey.explained(method)
    if key in arrays:
        return np.asarray(arrays[key], dtype=bool)
    return np.ones(np.asarray(arrays[ArrayKey.MASK]).shape[0], dtype=bool)


def _floats(table: Mapping[str, Any]) -> MetricTable:
    return {str(k): float(v) for k, v in table.items()}


@dataclass(frozen=True)
class BagMetrics:
    """Bag classification on one split (see `attnsets.metrics.bag_metrics`)."""

    accuracy: float
    balanced_accuracy: float
    auroc: float
    log_loss: float
    n_bags: float
    n_classes: float
    auroc_n_classes_scored: float

    def value(self, name: str) -> float:
        """The metric called `name` (e.g. a criterion's bag_metric)."""
        return float(getattr(self, name))

    def to_dict(self) -> MetricTable:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> BagMetrics:
        return BagMetrics(**{f.name: float(data.get(f.name, math.nan)) for f in fields(BagMetrics)})

    @staticmethod
    def mean(items: list[BagMetrics]) -> BagMetrics:
        """Member mean of each metric over the members where it is defined."""
        return BagMetrics(**{f.name: nanmean([getattr(m, f.name) for m in items])
                             for f in fields(BagMetrics)})


@dataclass(frozen=True)
class Aopc:
    """Deletion faithfulness of one member: AOPC of the explainer's ranking and of random
    orders (aopc_relative = MILLI's AOPC-R), and the mean curves over bags (step k = P(target)
    after removing k instances)."""

    aopc: float
    aopc_random: float
    aopc_relative: float
    n_bags: float
    n_steps: float
    curve: list[float]
    random_curve: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {"aopc": self.aopc, "aopc_random": self.aopc_random,
                "aopc_relative": self.aopc_relative, "n_bags": self.n_bags,
                "n_steps": self.n_steps, "curve": list(self.curve),
                "random_curve": list(self.random_curve)}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Aopc:
        return Aopc(*(float(data.get(k, math.nan)) for k in (
            "aopc", "aopc_random", "aopc_relative", "n_bags", "n_steps")),
            [float(v) for v in data.get("curve", [])],
            [float(v) for v in data.get("random_curve", [])])


@dataclass(frozen=True)
class CurvePoint:
    """One K of the ensemble-size curve (see `attnsets.metrics.ensemble_size_curve`):
    quantiles maps ``auroc_q05`` ... ``auroc_q95`` to the subset-AUROC quantiles."""

    k: int
    n_subsets: int
    exhaustive: bool
    threshold: float
    n_eligible_bags: int
    auroc_mean: float
    auroc_sd: float
    p_fail: float
    bag_fail_rate: float
    quantiles: dict[str, float] = field(default_factory=dict)
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "n_subsets": self.n_subsets, "exhaustive": self.exhaustive,
                "threshold": self.threshold, "n_eligible_bags": self.n_eligible_bags,
                "auroc_mean": self.auroc_mean, "auroc_sd": self.auroc_sd, **self.quantiles,
                "p_fail": self.p_fail, "bag_fail_rate": self.bag_fail_rate,
                "reason": self.reason}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> CurvePoint:
        return CurvePoint(
            k=int(data["k"]), n_subsets=int(data.get("n_subsets", 0)),
            exhaustive=bool(data.get("exhaustive", False)),
            threshold=float(data.get("threshold", math.nan)),
            n_eligible_bags=int(data.get("n_eligible_bags", 0)),
            auroc_mean=float(data.get("auroc_mean", math.nan)),
            auroc_sd=float(data.get("auroc_sd", math.nan)),
            p_fail=float(data.get("p_fail", math.nan)),
            bag_fail_rate=float(data.get("bag_fail_rate", math.nan)),
            quantiles={k: float(v) for k, v in data.items() if k.startswith("auroc_q")},
            reason=data.get("reason"))


@dataclass(frozen=True)
class ClassScores:
    """Explanations for every class (``evaluated_classes = "all"``): each bag explained for each
    of the `n_classes` classes against that class's signed evidence, the importance metrics
    computed over all (bag, class) pairs: per member (`members`) and their mean (`mean`)."""

    n_classes: int
    members: list[MetricTable]
    mean: MetricTable

    def to_dict(self) -> dict[str, Any]:
        return {"n_classes": self.n_classes, "members": [dict(m) for m in self.members],
                "member_mean": dict(self.mean)}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> ClassScores:
        return ClassScores(int(data["n_classes"]), [_floats(m) for m in data.get("members", [])],
                           _floats(data.get("member_mean", {})))


@dataclass(frozen=True)
class ExplainerAssessment:
    """One explainer over K members.

    members: per member the importance metrics; silent / misleading_rate / aopc: per member;
    member_mean: the members' mean of each importance metric plus silent_rate,
    misleading_rate, aopc and aopc_relative; ensemble: the importance metrics of the combined
    scores; ensemble_silent: the ensemble fails silently; curve: the ensemble-size curve
    (empty for a single member); all_classes: the scores for every class (None unless the
    assessment asked for ``evaluated_classes = "all"``)."""

    method: str
    members: list[MetricTable]
    silent: list[bool]
    misleading_rate: list[float]
    aopc: list[Aopc]
    member_mean: MetricTable
    ensemble: MetricTable
    ensemble_silent: bool
    curve: list[CurvePoint] = field(default_factory=list)
    all_classes: ClassScores | None = None

    @property
    def silent_rate(self) -> float:
        return float(self.member_mean.get("silent_rate", math.nan))

    def mean(self, metric: str) -> float:
        """The members' mean of `metric` (NaN where no member has it)."""
        return float(self.member_mean.get(metric, math.nan))

    def ensemble_value(self, metric: str) -> float:
        return float(self.ensemble.get(metric, math.nan))


@dataclass(frozen=True)
class UnitTest:
    """Algorithmic unit test (shifted test split): `metric` on val vs test per member and for
    the ensemble; flagged_rate = share of members flagged."""

    metric: str
    members: list[UnitTestResult]
    flagged_rate: float
    ensemble: UnitTestResult

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "members": [m.to_dict() for m in self.members],
                "flagged_rate": self.flagged_rate, "ensemble": self.ensemble.to_dict()}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> UnitTest:
        return UnitTest(str(data["metric"]), [_unit_result(m) for m in data.get("members", [])],
                        float(data.get("flagged_rate", math.nan)), _unit_result(data["ensemble"]))


def _unit_result(data: Mapping[str, Any]) -> UnitTestResult:
    names = {f.name for f in fields(UnitTestResult)}
    return UnitTestResult(**{k: v for k, v in data.items() if k in names})


@dataclass
class Assessment:
    """Everything attnsets reports about K trained members on one dataset's test split.

    arrays: per-instance data for later use: ``scores/<method>`` (K, B, N) float32, ``mask``
    (B, N), ``evidence`` (B, N) int8, ``labels`` (B,), ``probs`` (K, B, C), ``concepts`` (B, N).
    """

    n_members: int
    criteria: SilentFailureCriteria
    member_bag: list[BagMetrics]
    ensemble_bag: BagMetrics
    explainers: dict[str, ExplainerAssessment]
    not_applicable: dict[str, str] = field(default_factory=dict)
    unit_test: UnitTest | None = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    #: Wall seconds per stage of the assessment: ``predict``, ``deletion/random`` (the
    #: random-order reference curves), ``explain/<method>``, ``deletion/<method>``,
    #: ``metrics/<method>``, ``explain_all_classes/<method>``, ``unit_test``.
    stage_seconds: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def member_mean_bag(self) -> BagMetrics:
        return BagMetrics.mean(self.member_bag)

    @property
    def methods(self) -> list[str]:
        return list(self.explainers)

    def headline(self) -> dict[str, float]:
        """The few numbers a reader wants first (flat; NaN where undefined): per explainer,
        `attnsets.headline` of this assessment alone for the criteria's importance metric."""
        mean_bag = self.member_mean_bag
        out: dict[str, float] = {
            "bag_accuracy": mean_bag.accuracy,
            "bag_balanced_accuracy": mean_bag.balanced_accuracy,
            "ensemble_bag_accuracy": self.ensemble_bag.accuracy,
        }
        for method in self.explainers:
            out.update(headline([OneCell(self)], method).record())
        if self.unit_test is not None:
            out["unit_test_flagged_rate"] = self.unit_test.flagged_rate
        return out

    def to_dict(self) -> dict[str, Any]:
        """The store's JSON layout (unchanged since the first release)."""
        methods = self.explainers.values()
        members = {"bag": [b.to_dict() for b in self.member_bag],
                   "importance": {r.method: [dict(m) for m in r.members] for r in methods},
                   "silent": {r.method: list(r.silent) for r in methods},
                   "misleading_rate": {r.method: list(r.misleading_rate) for r in methods},
                   "aopc": {r.method: [a.to_dict() for a in r.aopc] for r in methods}}
        member_mean: dict[str, Any] = {"bag": self.member_mean_bag.to_dict()}
        member_mean.update({r.method: dict(r.member_mean) for r in methods})
        ensemble: dict[str, Any] = {"bag": self.ensemble_bag.to_dict()}
        ensemble.update({r.method: {**r.ensemble, "silent": float(r.ensemble_silent)}
                         for r in methods})
        out: dict[str, Any] = {
            "n_members": self.n_members, "not_applicable": dict(self.not_applicable),
            "members": members, "member_mean": member_mean, "ensemble": ensemble,
            "curve": {r.method: [p.to_dict() for p in r.curve] for r in methods if r.curve},
            "criteria": {"min_bag_score": self.criteria.min_bag_score,
                         "max_importance": self.criteria.max_importance,
                         "bag_metric": self.criteria.bag_metric,
                         "importance_metric": self.criteria.importance_metric},
        }
        if self.unit_test is not None:
            out["unit_test"] = self.unit_test.to_dict()
        every_class = {r.method: r.all_classes.to_dict() for r in methods
                       if r.all_classes is not None}
        if every_class:  # absent otherwise, as in stores written before it existed
            out["all_classes"] = every_class
        out["headline"] = self.headline()
        if self.stage_seconds:
            out["stage_seconds"] = dict(self.stage_seconds)
        return out

    @staticmethod
    def from_dict(data: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None
                  ) -> Assessment:
        """Read `to_dict()`'s layout (any store written so far); unknown keys are ignored."""
        members = data.get("members", {})
        criteria = SilentFailureCriteria(**{**_DEFAULT_CRITERIA, **data.get("criteria", {})})
        ensemble = data.get("ensemble", {})
        member_mean = data.get("member_mean", {})
        explainers = {}
        for method, reports in members.get("importance", {}).items():
            ens = dict(ensemble.get(method, {}))
            silent = bool(ens.pop("silent", False))
            explainers[method] = ExplainerAssessment(
                method=method, members=[_floats(r) for r in reports],
                silent=[bool(s) for s in members.get("silent", {}).get(method, [])],
                misleading_rate=[float(v) for v in
                                 members.get("misleading_rate", {}).get(method, [])],
                aopc=[Aopc.from_dict(a) for a in members.get("aopc", {}).get(method, [])],
                member_mean=_floats(member_mean.get(method, {})), ensemble=_floats(ens),
                ensemble_silent=silent,
                curve=[CurvePoint.from_dict(p) for p in data.get("curve", {}).get(method, [])],
                all_classes=ClassScores.from_dict(data["all_classes"][method])
                if method in data.get("all_classes", {}) else None)
        unit = data.get("unit_test")
        return Assessment(
            n_members=int(data.get("n_members", len(members.get("bag", [])))),
            criteria=criteria,
            member_bag=[BagMetrics.from_dict(b) for b in members.get("bag", [])],
            ensemble_bag=BagMetrics.from_dict(ensemble.get("bag", {})),
            explainers=explainers, not_applicable=dict(data.get("not_applicable", {})),
            unit_test=UnitTest.from_dict(unit) if unit else None,
            arrays=dict(arrays or {}),
            # "seconds": the name schema version 1 stored them under
            stage_seconds=_floats(data.get("stage_seconds", data.get("seconds", {}))))


_DEFAULT_CRITERIA = {f.name: f.default for f in fields(SilentFailureCriteria)}
