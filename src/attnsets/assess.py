"""Trained members + a dataset -> every number attnsets reports about them.

For each member and for the ensemble: bag metrics on the test split; for each explainer the
instance-importance metrics against the ground-truth evidence of the true label, the
silent-failure flag, the share of misleading bags and the deletion AOPC; the ensemble-size curve;
and, for the shifted-test rules (poison, false_frequency), the algorithmic unit-test flag.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from attnsets.data.bags import BagSplit, Batch, collate
from attnsets.data.generate import SetDataset
from attnsets.errors import SpecError
from attnsets.explain import available_methods, deletion_curve, explain, random_deletion_curve
from attnsets.metrics import (
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
from attnsets.models.base import SetModel


@dataclass(frozen=True)
class AssessSpec:
    """What to compute. ensemble_sizes: K values of the ensemble-size curve (default 1..M)."""

    explainers: tuple[str, ...] = ("attention", "random")
    criteria: SilentFailureCriteria = field(default_factory=SilentFailureCriteria)
    combine: str = "mean_normalised"
    ensemble_sizes: tuple[int, ...] | None = None
    curve_subsets: int = 50
    bootstrap: int = 200
    deletion_steps: int = 10
    batch_size: int = 128
    seed: int = 0


@dataclass
class Assessment:
    """metrics: JSON-ready nested dict (see `assess`); arrays: per-instance data for later use
    (scores/<method>: (K, B, N) float32, mask (B, N), evidence (B, N), labels (B,),
    probs (K, B, C), concepts (B, N))."""

    metrics: dict[str, Any]
    arrays: dict[str, np.ndarray]


def padded_batches(split: BagSplit, batch_size: int) -> list[Batch]:
    """The split in order as batches of `batch_size` bags, all padded to the split's largest bag
    so that their (B, N) outputs concatenate."""
    width = int(split.sizes.max())
    return [collate([split[i] for i in range(start, min(start + batch_size, len(split)))],
                    pad_to=width) for start in range(0, len(split), batch_size)]


def _numpy(metrics: Any) -> dict[str, Any]:
    return {k: float(v) for k, v in dict(metrics).items()}


def _mean_dicts(dicts: list[dict[str, float]]) -> dict[str, float]:
    keys = dicts[0].keys()
    with np.errstate(all="ignore"):
        return {k: float(np.nanmean([d[k] for d in dicts])) if any(
            not np.isnan(d[k]) for d in dicts) else float("nan") for k in keys}


@torch.no_grad()
def _probs(model: SetModel, batches: list[Batch]) -> np.ndarray:
    model.eval()
    return np.concatenate([torch.softmax(model(b.x, b.mask).logits.double(), -1).numpy()
                           for b in batches])


def _scores(model: SetModel, batches: list[Batch], method: str, seed: int) -> np.ndarray:
    options = {"seed": seed} if method in ("random", "shapley") else {}
    return np.concatenate([explain(model, b, method, **options).detach().numpy() for b in batches])


def _random_curves(model: SetModel, batches: list[Batch], steps: int, seed: int) -> np.ndarray:
    """(B, steps + 1) mean random-order deletion curve: the same for every explainer of a model,
    so it is computed once per member (on self-attention heads it is most of the AOPC cost)."""
    return np.concatenate([random_deletion_curve(model, b, steps=min(steps, b.x.shape[1]),
                                                 seed=seed).numpy() for b in batches])


def _aopc(model: SetModel, batches: list[Batch], scores: np.ndarray, random_curves: np.ndarray,
          steps: int, seed: int) -> dict[str, Any]:
    ranked = []
    start = 0
    for b in batches:
        s = scores[start:start + len(b)]
        start += len(b)
        ranked.append(deletion_curve(model, b, s, steps=min(steps, b.x.shape[1]),
                                     seed=seed).numpy())
    ranked_curves = np.concatenate(ranked)
    result: dict[str, Any] = _numpy(aopc(ranked_curves, random_curves))
    with warnings.catch_warnings():  # steps past every bag's size are all-NaN columns
        warnings.simplefilter("ignore", RuntimeWarning)
        result["curve"] = np.nanmean(ranked_curves, axis=0).tolist()
        result["random_curve"] = np.nanmean(random_curves, axis=0).tolist()
    return result


def applicable_methods(model: SetModel, batch: Batch, requested: tuple[str, ...]
                       ) -> tuple[list[str], dict[str, str]]:
    """(methods to run, {method: why it does not apply})."""
    available = set(available_methods(model, batch))
    run = [m for m in requested if m in available]
    skipped = {m: f"does not apply to pooling {getattr(model.spec, 'pooling', '?')!r}"
               for m in requested if m not in available}
    return run, skipped


def assess(members: list[SetModel], dataset: SetDataset, spec: AssessSpec | None = None
           ) -> Assessment:
    """Score `members` (an ensemble of K >= 1 trained models) on the test split of `dataset`.

    metrics = {"n_members", "not_applicable": {method: reason},
               "members": {"bag": [..K], "importance": {m: [..K]}, "silent": {m: [..K]},
                           "misleading_rate": {m: [..K]}, "aopc": {m: [..K]}},
               "member_mean": {"bag": {...}, m: {...importance, silent_rate, ...}},
               "ensemble": {"bag": {...}, m: {...importance, "silent": bool}},
               "curve": {m: [{"k": .., "auroc_mean": .., "p_fail": ..}, ...]},
               "unit_test": {...} (shifted-test rules only),
               "headline": flat summary}
    """
    spec = spec or AssessSpec()
    if not members:
        raise SpecError("members", 0, "at least one trained model")
    test = padded_batches(dataset.test, spec.batch_size)
    labels = dataset.test.labels
    mask = torch.cat([b.mask for b in test]).numpy()
    evidence = torch.cat([b.evidence for b in test]).numpy()
    concepts = torch.cat([b.concepts for b in test]).numpy()
    methods, not_applicable = applicable_methods(members[0], test[0], spec.explainers)

    probs = np.stack([_probs(m, test) for m in members])  # (K, B, C)
    member_bag = [_numpy(bag_metrics(labels, p)) for p in probs]
    correct = probs.argmax(-1) == labels[None, :]
    arrays: dict[str, np.ndarray] = {"mask": mask, "evidence": evidence.astype(np.int8),
                                     "labels": labels, "probs": probs.astype(np.float32),
                                     "concepts": concepts}
    members_out: dict[str, Any] = {"bag": member_bag, "importance": {}, "silent": {},
                                   "misleading_rate": {}, "aopc": {}}
    member_mean: dict[str, Any] = {"bag": _mean_dicts(member_bag)}
    ens_probs = combine_probs(probs)
    ens_bag = _numpy(bag_metrics(labels, ens_probs))
    ensemble: dict[str, Any] = {"bag": ens_bag}
    curves: dict[str, Any] = {}
    criteria = spec.criteria
    random_curves = [_random_curves(m, test, spec.deletion_steps, spec.seed) for m in members] \
        if methods else []
    for method in methods:
        scores = np.stack([_scores(m, test, method, spec.seed + i) for i, m in enumerate(members)])
        arrays[f"scores/{method}"] = scores.astype(np.float32)
        reports = [_numpy(importance_report(s, evidence, mask, n_boot=spec.bootstrap,
                                            seed=spec.seed)) for s in scores]
        silent = [is_silent_failure(b, r, criteria)[0] for b, r in zip(member_bag, reports, strict=True)]
        misleading = [float(misleading_bags(s, evidence, mask, c).mean())
                      for s, c in zip(scores, correct, strict=True)]
        aopcs = [_aopc(m, test, s, r, spec.deletion_steps, spec.seed)
                 for m, s, r in zip(members, scores, random_curves, strict=True)]
        members_out["importance"][method] = reports
        members_out["silent"][method] = silent
        members_out["misleading_rate"][method] = misleading
        members_out["aopc"][method] = aopcs
        mean = _mean_dicts(reports)
        mean["silent_rate"] = float(np.mean(silent))
        mean["misleading_rate"] = float(np.mean(misleading))
        mean["aopc"] = float(np.nanmean([a["aopc"] for a in aopcs]))
        mean["aopc_relative"] = float(np.nanmean([a.get("aopc_relative", np.nan) for a in aopcs]))
        member_mean[method] = mean
        combined = combine_scores(scores, mask, spec.combine)
        ens_report = _numpy(importance_report(combined, evidence, mask, n_boot=spec.bootstrap,
                                              seed=spec.seed))
        ens_report["silent"] = float(is_silent_failure(ens_bag, ens_report, criteria)[0])
        ensemble[method] = ens_report
        if len(members) > 1:
            curves[method] = ensemble_size_curve(
                scores, evidence, mask, ks=list(spec.ensemble_sizes or range(1, len(members) + 1)),
                n_subsets=spec.curve_subsets, seed=spec.seed,
                threshold=criteria.max_importance, method=spec.combine)
    metrics: dict[str, Any] = {
        "n_members": len(members), "not_applicable": not_applicable, "members": members_out,
        "member_mean": member_mean, "ensemble": ensemble, "curve": curves,
        "criteria": {"min_bag_score": criteria.min_bag_score,
                     "max_importance": criteria.max_importance,
                     "bag_metric": criteria.bag_metric,
                     "importance_metric": criteria.importance_metric},
    }
    if dataset.spec.shifted_test:
        metrics["unit_test"] = _unit_test(members, dataset, spec, probs, member_bag, ens_bag)
    metrics["headline"] = headline(metrics, criteria)
    return Assessment(metrics, arrays)


def _unit_test(members: list[SetModel], dataset: SetDataset, spec: AssessSpec,
               test_probs: np.ndarray, member_bag: list[dict[str, float]],
               ens_bag: dict[str, float]) -> dict[str, Any]:
    """Compare the training distribution (val split) with the shifted test split."""
    val = padded_batches(dataset.val, spec.batch_size)
    val_probs = np.stack([_probs(m, val) for m in members])
    metric = spec.criteria.bag_metric
    val_bag = [_numpy(bag_metrics(dataset.val.labels, p)) for p in val_probs]
    flags = [unit_test_flag(v[metric], t[metric]).to_dict() for v, t in zip(val_bag, member_bag, strict=True)]
    ens_val = _numpy(bag_metrics(dataset.val.labels, combine_probs(val_probs)))
    return {"metric": metric, "members": flags,
            "flagged_rate": float(np.mean([f["flagged"] for f in flags])),
            "ensemble": unit_test_flag(ens_val[metric], ens_bag[metric]).to_dict()}


def headline(metrics: dict[str, Any], criteria: SilentFailureCriteria) -> dict[str, float]:
    """The few numbers a reader wants first (flat; NaN where undefined)."""
    out: dict[str, float] = {
        "bag_accuracy": metrics["member_mean"]["bag"]["accuracy"],
        "bag_balanced_accuracy": metrics["member_mean"]["bag"]["balanced_accuracy"],
        "ensemble_bag_accuracy": metrics["ensemble"]["bag"]["accuracy"],
    }
    key = criteria.importance_metric
    for method, mean in metrics["member_mean"].items():
        if method == "bag":
            continue
        ens = metrics["ensemble"][method]
        out[f"{method}.{key}"] = mean.get(key, float("nan"))
        out[f"{method}.silent_rate"] = mean["silent_rate"]
        out[f"{method}.ensemble_{key}"] = ens.get(key, float("nan"))
        out[f"{method}.ensemble_gain"] = ens.get(key, float("nan")) - mean.get(key, float("nan"))
        out[f"{method}.ensemble_silent"] = ens["silent"]
    if "unit_test" in metrics:
        out["unit_test_flagged_rate"] = metrics["unit_test"]["flagged_rate"]
    return out
