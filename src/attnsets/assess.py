"""Trained members + a dataset -> every number attnsets reports about them (an `Assessment`).

For each member and for the ensemble: bag metrics on the test split; for each explainer the
instance-importance metrics against the ground-truth evidence of the true label, the
silent-failure flag, the share of misleading bags and the deletion AOPC; the ensemble-size curve;
and, for rules whose test split is shifted (poison, false_frequency), the algorithmic unit-test
flag. `predict` and `explain_members` are the one place where members are run on a split.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from attnsets.assessment import (
    Aopc,
    Assessment,
    BagMetrics,
    ClassScores,
    CurvePoint,
    ExplainerAssessment,
    MetricTable,
    UnitTest,
    nanmean,
)
from attnsets.data.bags import BagSplit, Batch, collate
from attnsets.data.generate import SetDataset
from attnsets.device import check_device_string, device_of, resolve_device
from attnsets.errors import SpecError
from attnsets.explain import available_methods, deletion_curve, explain, random_deletion_curve
from attnsets.metrics import (
    COMBINE_METHODS,
    SilentFailureCriteria,
    aopc,
    bag_metrics,
    combine_probs,
    combine_scores,
    ensemble_size_curve,
    importance_report,
    is_silent_failure,
    misleading_bags,
    unit_test_flag,
)
from attnsets.models.base import SetModel, logits_only

#: Which classes each bag is explained for: its label only, or every class as well.
EVALUATED_CLASSES = ("label", "all")


def _int_at_least(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise SpecError(name, value, f"an integer >= {minimum}")


@dataclass(frozen=True)
class AssessSpec:
    """What to compute, validated when built.

    explainers: registered method names; explainer_options: {method: {option: value}} passed
    to that method (see docs/explainers.md); the `seed` of a seeded method is `seed` + the
    member's index, not an option. combine: how member explanations are combined
    (mean_normalised | mean_rank | median). ensemble_sizes: K values of the ensemble-size
    curve (default 1..M). bootstrap: resamples of each importance CI (0 = none). device: where
    to run the members (a device string, see attnsets.device; None = where they are).
    evaluated_classes: "label" scores each bag's explanation for its own label (the headline
    numbers); "all" also explains every bag for every class against that class's signed
    evidence and scores all (bag, class) pairs together, as xMIL and MILLI do
    (`ExplainerAssessment.all_classes`). bag_budget: the explainers that declare themselves
    expensive (perturbations, integrated gradients) and every deletion curve score at most this
    many test bags, one seeded random subset per assessment (None = all; the statistical cost
    is in docs/metrics.md); random_orders: random removal orders of the AOPC reference."""

    explainers: tuple[str, ...] = ("attention", "random")
    explainer_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    criteria: SilentFailureCriteria = field(default_factory=SilentFailureCriteria)
    combine: str = "mean_normalised"
    ensemble_sizes: tuple[int, ...] | None = None
    curve_subsets: int = 50
    bootstrap: int = 200
    deletion_steps: int = 10
    batch_size: int = 128
    seed: int = 0
    device: str | None = None
    evaluated_classes: str = "label"
    bag_budget: int | None = None
    random_orders: int = 10

    def __post_init__(self) -> None:
        from attnsets.explain import EXPLAINERS
        from attnsets.explain.base import check_options

        if isinstance(self.explainers, str) or not isinstance(self.explainers, Sequence) \
                or not self.explainers:
            raise SpecError("explainers", self.explainers, "a non-empty list of explainer names")
        object.__setattr__(self, "explainers", tuple(self.explainers))
        for i, name in enumerate(self.explainers):
            if name not in EXPLAINERS:
                raise EXPLAINERS.unknown(name, f"explainers[{i}]")
        if len(set(self.explainers)) != len(self.explainers):
            raise SpecError("explainers", list(self.explainers), "each explainer named once")
        if not isinstance(self.explainer_options, Mapping):
            raise SpecError("explainer_options", self.explainer_options,
                            "a table {explainer: {option: value}}")
        for name, options in self.explainer_options.items():
            where = f"explainer_options.{name}"
            if name not in self.explainers:
                raise SpecError(where, options, f"options of a chosen explainer "
                                                f"{list(self.explainers)}")
            if not isinstance(options, Mapping):
                raise SpecError(where, options, "a table {option: value}")
            if "seed" in options:
                raise SpecError(f"{where}.seed", options["seed"],
                                "no seed option here: member i uses seed + i (set `seed`)")
            check_options(name, EXPLAINERS.get(name), options, where)
        if not isinstance(self.criteria, SilentFailureCriteria):
            raise SpecError("criteria", self.criteria, "a SilentFailureCriteria")
        if self.combine not in COMBINE_METHODS:
            raise SpecError("combine", self.combine, f"one of {list(COMBINE_METHODS)}")
        if self.ensemble_sizes is not None:
            sizes = self.ensemble_sizes
            if isinstance(sizes, str) or not isinstance(sizes, Sequence) or not sizes:
                raise SpecError("ensemble_sizes", sizes, "None or a non-empty list of sizes >= 1")
            for i, k in enumerate(sizes):
                _int_at_least(f"ensemble_sizes[{i}]", k, 1)
            object.__setattr__(self, "ensemble_sizes", tuple(int(k) for k in sizes))
        _int_at_least("curve_subsets", self.curve_subsets, 1)
        _int_at_least("bootstrap", self.bootstrap, 0)
        _int_at_least("deletion_steps", self.deletion_steps, 1)
        _int_at_least("batch_size", self.batch_size, 1)
        _int_at_least("seed", self.seed, 0)
        if self.device is not None:
            check_device_string(self.device, "device")
        if self.bag_budget is not None:
            _int_at_least("bag_budget", self.bag_budget, 1)
        _int_at_least("random_orders", self.random_orders, 1)
        if self.evaluated_classes not in EVALUATED_CLASSES:
            raise SpecError("evaluated_classes", self.evaluated_classes,
                            f"one of {list(EVALUATED_CLASSES)}")

    def check_members(self, n_members: int) -> list[SpecError]:
        """Problems of this spec for an ensemble of `n_members` (sizes larger than it)."""
        return [SpecError(f"ensemble_sizes[{i}]", k, f"sizes in 1..{n_members} (the members)")
                for i, k in enumerate(self.ensemble_sizes or ()) if k > n_members]

    def options_for(self, method: str) -> dict[str, Any]:
        return dict(self.explainer_options.get(method, {}))

    @staticmethod
    def from_dict(data: Mapping[str, Any], path: str = "assess",
                  criteria: SilentFailureCriteria | None = None) -> AssessSpec:
        """From a config table (unknown keys and bad values raise SpecError at `path.key`)."""
        from attnsets.registry import build_dataclass

        if not isinstance(data, Mapping):
            raise SpecError(path, data, "a table of assessment settings")
        table = dict(data)
        if criteria is not None:
            table["criteria"] = criteria
        return build_dataclass(AssessSpec, table, path)  # type: ignore[no-any-return]


def padded_batches(split: BagSplit, batch_size: int, device: torch.device | None = None,
                   target: int | None = None, index: np.ndarray | None = None) -> list[Batch]:
    """The split in order (or its bags `index`) as batches of `batch_size` bags, all padded to
    the split's largest bag so that their (B, N) outputs concatenate; on `device` (default cpu).
    target: the class the explanations and evidence refer to (None = each bag's label)."""
    width = int(split.sizes.max())
    order = np.arange(len(split)) if index is None else np.asarray(index)
    batches = [collate([split[int(i)] for i in order[start:start + batch_size]],
                       target=target, pad_to=width) for start in range(0, len(order), batch_size)]
    if device is None or device.type == "cpu":
        return batches
    return [b.pin_memory().to(device, non_blocking=True) for b in batches]


def place_members(members: Sequence[SetModel], device: str | None) -> torch.device:
    """The device the members run on: `device` (a device string; the members are moved there)
    or, with None, the device of the first member (all must share it)."""
    target = resolve_device(device, "assess.device") if device is not None \
        else device_of(members[0])
    for model in members:
        if device_of(model) != target:
            model.to(target)
    return target


def _table(metrics: Mapping[str, Any]) -> MetricTable:
    return {k: float(v) for k, v in dict(metrics).items()}


@torch.no_grad()
def predict(members: Sequence[SetModel], batches: list[Batch]) -> np.ndarray:
    """(K, B, C) float64 class probabilities of each member on the batches (in eval mode)."""
    out = []
    for model in members:
        model.eval()
        out.append(np.concatenate([torch.softmax(logits_only(model, b.x, b.mask).double(), -1)
                                   .cpu().numpy() for b in batches]))
    return np.stack(out)


def explain_members(members: Sequence[SetModel], batches: list[Batch], method: str,
                    options: Mapping[str, Any] | None = None, seed: int = 0) -> np.ndarray:
    """(K, B, N) scores of `method` for each member; a seeded method (one that declares a
    `seed` option) gets seed + i for member i, so members draw independently."""
    from attnsets.explain.base import resolve_method

    _, explainer = resolve_method(method)
    options = dict(options or {})
    out = []
    for i, model in enumerate(members):
        seeded = {**options, "seed": seed + i} if explainer.takes_seed else options
        out.append(np.concatenate([explain(model, b, method, **seeded).cpu().numpy()
                                   for b in batches]))
    return np.stack(out)


def _random_curves(model: SetModel, batches: list[Batch], steps: int, seed: int,
                   n_orders: int = 10) -> np.ndarray:
    """(B, steps + 1) mean random-order deletion curve: the same for every explainer of a model,
    so it is computed once per member (on self-attention heads it is most of the AOPC cost)."""
    return np.concatenate([random_deletion_curve(model, b, steps=min(steps, b.x.shape[1]),
                                                 seed=seed, n_orders=n_orders).cpu().numpy()
                           for b in batches])


def _aopc(model: SetModel, batches: list[Batch], scores: np.ndarray, random_curves: np.ndarray,
          steps: int, seed: int) -> Aopc:
    ranked = []
    start = 0
    for b in batches:
        s = scores[start:start + len(b)]
        start += len(b)
        ranked.append(deletion_curve(model, b, s, steps=min(steps, b.x.shape[1]),
                                     seed=seed).cpu().numpy())
    ranked_curves = np.concatenate(ranked)
    result = _table(aopc(ranked_curves, random_curves))
    with warnings.catch_warnings():  # steps past every bag's size are all-NaN columns
        warnings.simplefilter("ignore", RuntimeWarning)
        curve = np.nanmean(ranked_curves, axis=0).tolist()
        random_curve = np.nanmean(random_curves, axis=0).tolist()
    return Aopc(result["aopc"], result["aopc_random"], result["aopc_relative"],
                result["n_bags"], result["n_steps"], curve, random_curve)


def applicable_methods(model: SetModel, batch: Batch, requested: Sequence[str]
                       ) -> tuple[list[str], dict[str, str]]:
    """(methods to run, {method: why it does not apply})."""
    available = set(available_methods(model, batch))
    run = [m for m in requested if m in available]
    skipped = {m: f"does not apply to pooling {getattr(model.spec, 'pooling', '?')!r}"
               for m in requested if m not in available}
    return run, skipped


@dataclass(frozen=True)
class _TestData:
    batches: list[Batch]
    labels: np.ndarray
    mask: np.ndarray
    evidence: np.ndarray
    correct: np.ndarray  # (K, B) bool
    split: BagSplit
    batch_size: int
    device: torch.device
    n_classes: int
    index: np.ndarray  # (B,) the split's bags these rows hold

    def subset(self, rows: np.ndarray) -> _TestData:
        """The same data for the bags at `rows` of this one (e.g. a bag budget's subset)."""
        return dataclasses.replace(
            self, batches=padded_batches(self.split, self.batch_size, self.device,
                                         index=self.index[rows]),
            labels=self.labels[rows], mask=self.mask[rows], evidence=self.evidence[rows],
            correct=self.correct[:, rows], index=self.index[rows])


def _assess_method(method: str, members: Sequence[SetModel], data: _TestData,
                   member_bag: list[BagMetrics], ensemble_bag: BagMetrics,
                   random_curves: list[np.ndarray], spec: AssessSpec, timer: StageTimer,
                   budget: np.ndarray | None = None) -> tuple[ExplainerAssessment, np.ndarray]:
    """One explainer over the members: its typed result and the (K, B', N) scores of the bags
    it scored. budget: rows of `data` that expensive explainers and deletion curves score."""
    from attnsets.explain.base import resolve_method

    deletion = data if budget is None else data.subset(budget)
    if resolve_method(method)[1].expensive:
        data = deletion
    with timer(f"explain/{method}"):
        scores = explain_members(members, data.batches, method, spec.options_for(method),
                                 spec.seed)
    # The deletion curves see the budget's bags: a cheap explainer's scores are cut to them.
    deletion_scores = scores if data is deletion else scores[:, budget]
    with timer(f"deletion/{method}"):
        aopcs = [_aopc(m, deletion.batches, s, r, spec.deletion_steps, spec.seed)
                 for m, s, r in zip(members, deletion_scores, random_curves, strict=True)]
    with timer(f"metrics/{method}"):
        result = _score_method(method, members, data, scores, aopcs, member_bag, ensemble_bag,
                               spec)
    if spec.evaluated_classes == "all":
        with timer(f"explain_all_classes/{method}"):
            result = dataclasses.replace(
                result, all_classes=_all_classes(method, members, data, spec, scores))
    return result, scores


def _score_method(method: str, members: Sequence[SetModel], data: _TestData, scores: np.ndarray,
                  aopcs: list[Aopc], member_bag: list[BagMetrics], ensemble_bag: BagMetrics,
                  spec: AssessSpec) -> ExplainerAssessment:
    """The importance metrics of (K, B, N) `scores` per member and for their ensemble."""
    criteria = spec.criteria
    reports = [_table(importance_report(s, data.evidence, data.mask, n_boot=spec.bootstrap,
                                        seed=spec.seed)) for s in scores]
    silent = [is_silent_failure(b.to_dict(), r, criteria)[0]
              for b, r in zip(member_bag, reports, strict=True)]
    misleading = [float(misleading_bags(s, data.evidence, data.mask, c).mean())
                  for s, c in zip(scores, data.correct, strict=True)]
    mean = {k: nanmean([r[k] for r in reports]) for k in reports[0]}
    mean["silent_rate"] = float(np.mean(silent))
    mean["misleading_rate"] = float(np.mean(misleading))
    mean["aopc"] = nanmean([a.aopc for a in aopcs])
    mean["aopc_relative"] = nanmean([a.aopc_relative for a in aopcs])
    combined = combine_scores(scores, data.mask, spec.combine)
    ensemble = _table(importance_report(combined, data.evidence, data.mask,
                                        n_boot=spec.bootstrap, seed=spec.seed))
    curve: list[CurvePoint] = []
    if len(members) > 1:
        curve = [CurvePoint.from_dict(point) for point in ensemble_size_curve(
            scores, data.evidence, data.mask,
            ks=list(spec.ensemble_sizes or range(1, len(members) + 1)),
            n_subsets=spec.curve_subsets, seed=spec.seed, threshold=criteria.max_importance,
            method=spec.combine)]
    return ExplainerAssessment(
        method=method, members=reports, silent=silent, misleading_rate=misleading, aopc=aopcs,
        member_mean=mean, ensemble=ensemble,
        ensemble_silent=is_silent_failure(ensemble_bag.to_dict(), ensemble, criteria)[0],
        curve=curve)


def _all_classes(method: str, members: Sequence[SetModel], data: _TestData, spec: AssessSpec,
                 label_scores: np.ndarray) -> ClassScores:
    """Every bag explained for every class c against c's signed evidence; the importance
    metrics over all (bag, class) pairs, per member and their mean. label_scores: (K, B, N), the
    bags of `data` explained for their own label: reused for that class (a bag's scores do not
    depend on the bags beside it), so only the other classes are explained here."""
    scores, evidence = [], []
    for c in range(data.n_classes):
        own = data.labels == c
        class_scores = np.zeros_like(label_scores)
        class_scores[:, own] = label_scores[:, own]
        class_evidence = data.evidence.copy()  # the label's evidence: right on the own rows
        others = np.flatnonzero(~own)
        if len(others):
            batches = padded_batches(data.split, data.batch_size, data.device, c,
                                     data.index[others])
            class_scores[:, others] = explain_members(members, batches, method,
                                                      spec.options_for(method), spec.seed)
            class_evidence[others] = torch.cat([b.evidence for b in batches]).cpu().numpy()
        scores.append(class_scores)
        evidence.append(class_evidence)
    pairs_scores = np.concatenate(scores, axis=1)  # (K, C * B, N)
    pairs_evidence = np.concatenate(evidence)
    pairs_mask = np.concatenate([data.mask] * data.n_classes)
    reports = [_table(importance_report(s, pairs_evidence, pairs_mask, n_boot=spec.bootstrap,
                                        seed=spec.seed)) for s in pairs_scores]
    return ClassScores(data.n_classes, reports,
                       {k: nanmean([r[k] for r in reports]) for k in reports[0]})


def assess(members: Sequence[SetModel], dataset: SetDataset, spec: AssessSpec | None = None
           ) -> Assessment:
    """Score `members` (an ensemble of K >= 1 trained models) on the test split of `dataset`."""
    spec = spec or AssessSpec()
    if not members:
        raise SpecError("members", 0, "at least one trained model")
    problems = spec.check_members(len(members))
    if problems:
        raise problems[0]
    device = place_members(members, spec.device)
    batches = padded_batches(dataset.test, spec.batch_size, device)
    labels = dataset.test.labels
    mask = torch.cat([b.mask for b in batches]).cpu().numpy()
    evidence = torch.cat([b.evidence for b in batches]).cpu().numpy()
    methods, not_applicable = applicable_methods(members[0], batches[0], spec.explainers)

    timer = StageTimer()
    with timer("predict"):
        probs = predict(members, batches)  # (K, B, C)
    member_bag = [BagMetrics.from_dict(bag_metrics(labels, p)) for p in probs]
    ensemble_bag = BagMetrics.from_dict(bag_metrics(labels, combine_probs(probs)))
    data = _TestData(batches, labels, mask, evidence, probs.argmax(-1) == labels[None, :],
                     dataset.test, spec.batch_size, device, probs.shape[-1],
                     np.arange(len(labels)))
    budget = budget_rows(len(labels), spec.bag_budget, spec.seed)
    arrays: dict[str, np.ndarray] = {
        "mask": mask, "evidence": evidence.astype(np.int8), "labels": labels,
        "probs": probs.astype(np.float32),
        "concepts": torch.cat([b.concepts for b in batches]).cpu().numpy()}
    deletion_batches = batches if budget is None else data.subset(budget).batches
    with timer("deletion/random"):
        random_curves = [_random_curves(m, deletion_batches, spec.deletion_steps, spec.seed,
                                        spec.random_orders) for m in members] if methods else []
    explainers: dict[str, ExplainerAssessment] = {}
    for method in methods:
        explainers[method], scores = _assess_method(method, members, data, member_bag,
                                                    ensemble_bag, random_curves, spec, timer,
                                                    budget)
        if scores.shape[1] != len(labels):  # scored on the budget's bags: 0 elsewhere
            full = np.zeros((scores.shape[0], *mask.shape), dtype=np.float32)
            full[:, budget] = scores
            scores = full
            arrays[f"explained_bags/{method}"] = np.isin(np.arange(len(labels)), budget)
        arrays[f"scores/{method}"] = scores.astype(np.float32)
    unit = None
    if dataset.spec.shifted_test:
        with timer("unit_test"):
            unit = _unit_test(members, dataset, spec, member_bag, ensemble_bag, device)
    return Assessment(n_members=len(members), criteria=spec.criteria, member_bag=member_bag,
                      ensemble_bag=ensemble_bag, explainers=explainers,
                      not_applicable=not_applicable, unit_test=unit, arrays=arrays,
                      seconds=timer.seconds)


class StageTimer:
    """Wall seconds per named stage (``explain/attention``, ``deletion/random``, ...), summed
    over every entry of the same stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def budget_rows(n_bags: int, budget: int | None, seed: int) -> np.ndarray | None:
    """Sorted rows of a seeded random subset of `budget` of `n_bags` test bags, or None when the
    budget covers them all (every bag is scored)."""
    if budget is None or budget >= n_bags:
        return None
    rng = np.random.default_rng([seed, 0xB4D6])  # its own stream: nothing else draws from it
    return np.sort(rng.choice(n_bags, size=budget, replace=False))


def _unit_test(members: Sequence[SetModel], dataset: SetDataset, spec: AssessSpec,
               member_bag: list[BagMetrics], ensemble_bag: BagMetrics,
               device: torch.device) -> UnitTest:
    """Compare the training distribution (val split) with the shifted test split."""
    val_probs = predict(members, padded_batches(dataset.val, spec.batch_size, device))
    metric = spec.criteria.bag_metric
    val_bag = [BagMetrics.from_dict(bag_metrics(dataset.val.labels, p)) for p in val_probs]
    flags = [unit_test_flag(v.value(metric), t.value(metric))
             for v, t in zip(val_bag, member_bag, strict=True)]
    ens_val = BagMetrics.from_dict(bag_metrics(dataset.val.labels, combine_probs(val_probs)))
    return UnitTest(metric, flags, float(np.mean([f.flagged for f in flags])),
                    unit_test_flag(ens_val.value(metric), ensemble_bag.value(metric)))

