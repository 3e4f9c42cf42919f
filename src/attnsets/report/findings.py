"""The findings of a study as numbers with confidence intervals: the computations behind
docs/results.md (`attnsets results-page`). Everything is read from the results store.

Members of one cell share their data and training set-up, so they are not independent; every
interval here is a *cluster* bootstrap that resamples whole cells."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from attnsets.assessment import ArrayKey, explained_bags
from attnsets.metrics import combine_scores, importance_report, per_bag_auroc
from attnsets.metrics.agreement import agreement, correlation
from attnsets.metrics.cluster import LEVEL, Estimate, cluster_bootstrap
from attnsets.report.arrays import StoredArrays
from attnsets.report.collect import StudyView
from attnsets.report.roles import SINGLE_HEAD_ATTENTION, model_poolings, models_in_role

#: One row of a findings table.
Row = dict[str, float | int | str]

# --------------------------------------------------------------------------- per-member frame


def member_frame(study: StudyView) -> pd.DataFrame:
    """study.members with the modality, rule, learned flag and the xMIL metrics added:
    one row per cell x member x explainer."""
    frame = study.members.copy()
    cells = {c.cell_id: c for c in study.done}
    frame["modality"] = frame["cell_id"].map(lambda i: cells[i].kind)
    frame["rule"] = frame["cell_id"].map(lambda i: cells[i].rule)
    frame["learned"] = frame["bag_score"] >= frame["min_bag_score"]
    frame["reflects"] = (frame["importance"] > frame["max_importance"]).where(
        frame["importance"].notna())
    extra: dict[str, list[float]] = {"auprc2": [], "auroc2": [], "bag_auroc": [],
                                     "auprc2_all_classes": []}
    for cell_id, member, method in zip(frame["cell_id"], frame["member"], frame["explainer"],
                                       strict=True):
        assessment = cells[cell_id].assessment
        report = assessment.explainers[method].members[member]
        bags = assessment.member_bag
        extra["auprc2"].append(_num(report.get("auprc2")))
        extra["auroc2"].append(_num(report.get("auroc2")))
        extra["bag_auroc"].append(bags[member].auroc if member < len(bags) else math.nan)
        every = assessment.explainers[method].all_classes  # scored for every class, if asked
        extra["auprc2_all_classes"].append(
            _num(every.members[member].get("auprc2")) if every is not None else math.nan)
    for key, column in extra.items():
        frame[key] = column
    return frame


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _rows(frame: pd.DataFrame, by: str, order: list[str] | None,
          make: Callable[[pd.DataFrame], Row]) -> pd.DataFrame:
    groups = [(name, part) for name, part in frame.groupby(by, sort=False)]
    rank = {name: i for i, name in enumerate(order or [])}
    groups.sort(key=lambda item: (rank.get(item[0], len(rank)), str(item[0])))
    return pd.DataFrame([{by: name, **make(part)} for name, part in groups])


def _estimate_columns(prefix: str, estimate: Estimate) -> dict[str, float]:
    return {prefix: estimate.value, f"{prefix}_ci_low": estimate.low,
            f"{prefix}_ci_high": estimate.high}


# --------------------------------------------------------------------------- findings


def explanation_quality(members: pd.DataFrame, by: str, method: str = "attention",
                        order: list[str] | None = None) -> pd.DataFrame:
    """How often `method` reflects the witnesses, per value of `by` (modality, rule, model ...):
    mean importance AUROC, the share of members above the threshold (all, and among members that
    learned the task), and the silent-failure rate, each with a 95% cluster-bootstrap CI."""
    rows = members[members["explainer"] == method]

    def make(part: pd.DataFrame) -> Row:
        learned = part[part["learned"]]
        out: Row = {"cells": part["cell_id"].nunique(), "members": len(part),
                               "learned": int(part["learned"].sum()),
                               "learned_share": float(part["learned"].mean())}
        out.update(_estimate_columns("auroc", cluster_bootstrap(part["importance"],
                                                                part["cell_id"])))
        out.update(_estimate_columns("reflects", cluster_bootstrap(part["reflects"],
                                                                   part["cell_id"])))
        out.update(_estimate_columns("reflects_if_learned", cluster_bootstrap(
            learned["reflects"], learned["cell_id"])))
        out.update(_estimate_columns("silent", cluster_bootstrap(part["silent"].astype(float),
                                                                 part["cell_id"])))
        return out

    return _rows(rows, by, order, make)


def silent_cells(study: StudyView, method: str = "attention") -> pd.DataFrame:
    """Every (dataset, model) with at least one silent member, worst first."""
    rows = study.members[study.members["explainer"] == method]
    grouped = rows.groupby(["dataset", "model"], sort=False).agg(
        members=("silent", "size"), silent=("silent", "sum"),
        bag_score=("bag_score", "mean"), auroc=("importance", "mean")).reset_index()
    grouped = grouped[grouped["silent"] > 0].copy()
    grouped["silent_rate"] = grouped["silent"] / grouped["members"]
    return grouped.sort_values(["silent_rate", "auroc"], ascending=[False, True]).reset_index(
        drop=True)


def ensembling(study: StudyView, method: str = "attention",
               order: list[str] | None = None) -> pd.DataFrame:
    """Per model: single member vs the full ensemble, from each cell's ensemble-size curve and
    its ensemble metrics. p_fail = share of member subsets of size k with AUROC at or below the
    threshold; silent = the silent-failure verdict of single members vs of the combined ensemble."""
    records = []
    for cell in study.done:
        result = cell.assessment.explainers.get(method)
        if result is None or not result.curve or not result.silent:
            continue
        first, last = result.curve[0], result.curve[-1]
        records.append({
            "model": cell.model, "cell_id": cell.cell_id, "k_max": last.k,
            "auroc_single": first.auroc_mean, "auroc_ensemble": last.auroc_mean,
            "p_fail_single": first.p_fail, "p_fail_ensemble": last.p_fail,
            "silent_single": float(np.mean(result.silent)),
            "silent_ensemble": float(result.ensemble_silent)})
    frame = pd.DataFrame(records)
    if frame.empty:
        return frame

    def make(part: pd.DataFrame) -> Row:
        out: Row = {"cells": len(part), "k_max": int(part["k_max"].max())}
        for column in ("auroc_single", "auroc_ensemble", "p_fail_single", "p_fail_ensemble",
                       "silent_single", "silent_ensemble"):
            out.update(_estimate_columns(column, cluster_bootstrap(part[column],
                                                                   part["cell_id"])))
        # Paired within a cell: the same members, alone vs combined.
        out.update(_estimate_columns("auroc_gain", cluster_bootstrap(
            part["auroc_ensemble"] - part["auroc_single"], part["cell_id"])))
        out.update(_estimate_columns("p_fail_reduction", cluster_bootstrap(
            part["p_fail_single"] - part["p_fail_ensemble"], part["cell_id"])))
        return out

    everything = make(frame)
    table = _rows(frame, "model", order, make)
    return pd.concat([table, pd.DataFrame([{"model": "all", **everything}])], ignore_index=True)


def explainer_comparison(members: pd.DataFrame, reference: str = "attention",
                         order: list[str] | None = None) -> pd.DataFrame:
    """Per explainer: mean AUROC over every member it ran on, and, on the members of models
    that have `reference` (attention), the paired difference to it and the share of members
    where it beats the reference, with cluster-bootstrap CIs."""
    keyed = members.set_index(["cell_id", "member", "explainer"])["importance"]
    ref = keyed.xs(reference, level="explainer") if reference in members["explainer"].values \
        else pd.Series(dtype=float)

    def make(part: pd.DataFrame) -> Row:
        out: Row = {"cells": part["cell_id"].nunique(), "members": len(part)}
        out.update(_estimate_columns("auroc", cluster_bootstrap(part["importance"],
                                                                part["cell_id"])))
        out.update(_estimate_columns("silent", cluster_bootstrap(part["silent"].astype(float),
                                                                 part["cell_id"])))
        paired = part.set_index(["cell_id", "member"])["importance"]
        both = pd.concat([paired, ref], axis=1, keys=["method", "reference"],
                         join="inner").dropna()
        cells = both.index.get_level_values("cell_id")
        out["paired_members"] = len(both)
        out.update(_estimate_columns("minus_reference", cluster_bootstrap(
            both["method"] - both["reference"], cells)))
        out.update(_estimate_columns("beats_reference", cluster_bootstrap(
            (both["method"] > both["reference"]).astype(float), cells)))
        return out

    return _rows(members, "explainer", order, make)


def unit_tests(study: StudyView, order: list[str] | None = None) -> pd.DataFrame:
    """Per rule with a shifted test (poison, false_frequency) x model: the share of members
    flagged (pass on the training distribution, fail or drop on the shifted test), mean val and
    test bag scores, and the share of ensembles flagged."""
    records = []
    for cell in study.done:
        unit = cell.assessment.unit_test
        if unit is None:  # recorded only for rules whose test split is shifted
            continue
        for k, flag in enumerate(unit.members):
            records.append({"rule": cell.rule, "model": cell.model, "cell_id": cell.cell_id,
                            "member": k, "flagged": float(flag.flagged),
                            "val": flag.train_metric, "test": flag.test_metric,
                            "ensemble_flagged": float(unit.ensemble.flagged)})
    frame = pd.DataFrame(records)
    if frame.empty:
        return frame
    tables = []
    for rule in dict.fromkeys(frame["rule"]):
        part_rule = frame[frame["rule"] == rule]
        if part_rule.empty:
            continue

        def make(part: pd.DataFrame) -> Row:
            per_cell = part.drop_duplicates("cell_id")
            out: Row = {"cells": len(per_cell), "members": len(part),
                                   "val_score": float(part["val"].mean()),
                                   "test_score": float(part["test"].mean())}
            out.update(_estimate_columns("flagged", cluster_bootstrap(part["flagged"],
                                                                      part["cell_id"])))
            out["ensemble_flagged"] = float(per_cell["ensemble_flagged"].mean())
            return out

        table = _rows(part_rule, "model", order, make)
        table.insert(0, "rule", rule)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


# --------------------------------------------------------------------------- mixed ensembles


def mixed_ensembles(study: StudyView, method: str = "attention",
                    arrays: StoredArrays | None = None) -> pd.DataFrame:
    """Heterogeneous ensembles of `[study] mixed_ensembles` ({name: [model names]}), scored from
    the stored member scores: for each dataset x replicate where every listed model has `method`
    scores on the same test bags, all their members are combined (the study's combine rule) and
    the importance AUROC of the combination is compared with the members' mean and with the best
    of the listed models' own (homogeneous) ensembles. One row per group x dataset x replicate.
    `arrays` reads the stored scores (default: the study's store, opened for this call)."""
    groups = study.config.get("study", {}).get("mixed_ensembles", {})
    if not groups:
        return pd.DataFrame()
    by_key = {(c.dataset, c.replicate, c.model): c for c in study.done if method in c.methods}
    records = []
    store = arrays or StoredArrays(study.directory)
    loaded: dict[str, dict[str, np.ndarray]] = {}  # a cell can sit in several groups

    def arrays_of(cell_id: str) -> dict[str, np.ndarray]:
        if cell_id not in loaded:
            loaded[cell_id] = store.of(cell_id)
        return loaded[cell_id]

    try:
        for group, models in groups.items():
            for dataset, replicate in dict.fromkeys((d, r) for d, r, _ in by_key):
                found = [by_key.get((dataset, replicate, m)) for m in models]
                cells = [c for c in found if c is not None]
                if len(cells) < len(found):
                    continue
                stored = [arrays_of(c.cell_id) for c in cells]
                if any(a["evidence"].shape != stored[0]["evidence"].shape
                       or not np.array_equal(a["evidence"], stored[0]["evidence"])
                       for a in stored):
                    continue  # not the same test bags
                # The bags every cell's members scored (a bag budget skips the others).
                rows = np.logical_and.reduce([explained_bags(a, method) for a in stored])
                scores = np.concatenate([a[ArrayKey.scores(method)][:, rows]
                                         for a in stored])  # (K, B', N)
                mask = stored[0][ArrayKey.MASK][rows].astype(bool)
                rule = cells[0].combine
                mixed = importance_report(combine_scores(scores, mask, rule),
                                          stored[0][ArrayKey.EVIDENCE][rows], mask,
                                          n_boot=0)["auroc"]
                own = [c.assessment.explainers[method] for c in cells]
                homogeneous = np.array([r.ensemble_value("auroc") for r in own])
                best = int(np.argmax(np.nan_to_num(homogeneous, nan=-1.0)))
                records.append({
                    "ensemble": group, "models": "+".join(models), "dataset": dataset,
                    "replicate": replicate, "cell_id": f"{dataset}/{replicate}",
                    "members": int(scores.shape[0]),
                    "auroc_members": float(np.nanmean([v["auroc"] for r in own
                                                       for v in r.members])),
                    "auroc_best_homogeneous": float(homogeneous[best]),
                    "best_homogeneous": cells[best].model, "auroc_mixed": float(mixed)})
    finally:
        if arrays is None:
            store.close()
    frame = pd.DataFrame(records)
    if not frame.empty:
        frame["gain_vs_members"] = frame["auroc_mixed"] - frame["auroc_members"]
        frame["gain_vs_best"] = frame["auroc_mixed"] - frame["auroc_best_homogeneous"]
    return frame


def mixed_ensemble_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per mixed ensemble: mean AUROCs and gains with cluster-bootstrap CIs over (dataset,
    replicate) clusters."""
    if frame.empty:
        return frame

    def make(part: pd.DataFrame) -> Row:
        out: Row = {"models": part["models"].iloc[0], "datasets": len(part)}
        for column in ("auroc_members", "auroc_best_homogeneous", "auroc_mixed",
                       "gain_vs_members", "gain_vs_best"):
            out.update(_estimate_columns(column, cluster_bootstrap(part[column],
                                                                   part["cell_id"])))
        return out

    return _rows(frame, "ensemble", None, make)


# --------------------------------------------------------------------------- agreement


def agreement_frame(study: StudyView, method: str = "attention", top_fraction: float = 0.1,
                    arrays: StoredArrays | None = None) -> pd.DataFrame:
    """Label-free member agreement vs the true importance AUROC of the consensus, one row per
    test bag of every cell whose members have `method` scores (K >= 2): cell_id, dataset,
    model, bag, rank_agreement, top_k_overlap, consensus_auroc (NaN for bags without both
    witnesses and non-witnesses). `arrays` reads the stored scores (default: the study's
    store, opened for this call)."""
    frames = []
    store = arrays or StoredArrays(study.directory)
    try:
        for cell in study.done:
            if method not in cell.methods or cell.n_members < 2:
                continue
            stored = store.of(cell.cell_id)
            key = ArrayKey.scores(method)
            if key not in stored:
                continue
            rows = explained_bags(stored, method)  # the bags a budget skipped hold no scores
            scores, mask = stored[key][:, rows], stored[ArrayKey.MASK][rows].astype(bool)
            signals = agreement(scores, mask, top_fraction=top_fraction)
            truth = per_bag_auroc(signals.consensus, stored[ArrayKey.EVIDENCE][rows], mask).values
            frames.append(pd.DataFrame({
                "cell_id": cell.cell_id, "dataset": cell.dataset, "model": cell.model,
                "bag": np.flatnonzero(rows), "rank_agreement": signals.rank_agreement,
                "top_k_overlap": signals.top_k_overlap, "consensus_auroc": truth}))
    finally:
        if arrays is None:
            store.close()
    columns = ["cell_id", "dataset", "model", "bag", "rank_agreement", "top_k_overlap",
               "consensus_auroc"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def agreement_correlations(bags: pd.DataFrame) -> pd.DataFrame:
    """Spearman / Pearson correlation of each signal with the consensus AUROC, per bag (pooled)
    and per cell (means over its bags), with a cluster-bootstrap CI of the Spearman value."""
    eligible = bags[np.isfinite(bags["consensus_auroc"])]
    runs = eligible.groupby("cell_id", sort=False)[
        ["rank_agreement", "top_k_overlap", "consensus_auroc"]].mean().reset_index()
    rows = []
    for level, part in (("bag", eligible), ("cell", runs)):
        for signal in ("rank_agreement", "top_k_overlap"):
            corr = correlation(part[signal], part["consensus_auroc"])
            low, high = _spearman_ci(part, signal, level == "bag")
            rows.append({"level": level, "signal": signal, "n": int(corr["n"]),
                         "spearman": corr["spearman"], "spearman_ci_low": low,
                         "spearman_ci_high": high, "pearson": corr["pearson"]})
    return pd.DataFrame(rows)


def _spearman_ci(part: pd.DataFrame, signal: str, by_cell: bool, n_boot: int = 400,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile CI of the Spearman correlation, resampling cells (bag level) or rows."""
    if len(part) < 3:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    values = []
    if by_cell:
        groups = [g.index.to_numpy() for _, g in part.groupby("cell_id", sort=False)]
        for _ in range(n_boot):
            picked = rng.integers(0, len(groups), len(groups))
            index = np.concatenate([groups[i] for i in picked])
            sample = part.loc[index]
            values.append(correlation(sample[signal], sample["consensus_auroc"])["spearman"])
    else:
        for _ in range(n_boot):
            sample = part.iloc[rng.integers(0, len(part), len(part))]
            values.append(correlation(sample[signal], sample["consensus_auroc"])["spearman"])
    arr = np.asarray(values)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return math.nan, math.nan
    tail = (1 - LEVEL) / 2
    low, high = np.quantile(arr, [tail, 1 - tail])
    return float(low), float(high)


# --------------------------------------------------------------------------- pos-neg (xMIL)


def role_models(study: StudyView | None, model: str | None) -> list[str]:
    """`model` when given, else the study's models with single-head softmax attention pooling
    (the attention MIL of the xMIL and MILLI claims)."""
    if model is not None:
        return [model]
    return models_in_role(model_poolings(study), SINGLE_HEAD_ATTENTION) if study else []


def _signed_evidence_check(members: pd.DataFrame, study: StudyView | None, rule: str,
                           models: list[str], methods: tuple[str, ...], option: str,
                           default: str, column: str | None = None) -> pd.DataFrame:
    """Per (dataset of `rule`, method): AUPRC-2 of the members of `models` (over every class where
    every member was scored for every class, else over each bag's label), their bag AUROC and
    learned share, CIs over cells; `column` (default `option`) names the rule option `option`
    of the cells (`default` where absent)."""
    rows = members[(members["rule"] == rule) & members["model"].isin(models)
                   & members["explainer"].isin(methods)]
    chosen = {c.cell_id: str(c.rule_options.get(option, default))
              for c in study.done} if study is not None else {}
    column = column or option
    records = []
    for (dataset, method), part in rows.groupby(["dataset", "explainer"], sort=False):
        every = part["auprc2_all_classes"].notna().all() if "auprc2_all_classes" in part \
            else False
        estimate = cluster_bootstrap(part["auprc2_all_classes" if every else "auprc2"],
                                     part["cell_id"])
        bag = cluster_bootstrap(part["bag_auroc"], part["cell_id"])
        records.append({"dataset": dataset, "explainer": method, "members": len(part),
                        column: "/".join(sorted({chosen.get(c, default)
                                                 for c in part["cell_id"]})),
                        "classes": "all" if every else "label", "bag_auroc": bag.value,
                        "learned_share": float(part["learned"].astype(float).mean()),
                        **_estimate_columns("auprc2", estimate)})
    return pd.DataFrame(records, columns=["dataset", "explainer", "members", column, "classes",
                                          "bag_auroc", "learned_share", "auprc2",
                                          "auprc2_ci_low", "auprc2_ci_high"])


def pos_neg_check(members: pd.DataFrame, study: StudyView | None = None,
                  model: str | None = None,
                  methods: tuple[str, ...] = ("attention", "integrated_gradients", "random")
                  ) -> pd.DataFrame:
    """xMIL's Pos-Neg silent failure, on our pos_neg datasets: bag AUROC of `model` and the
    AUPRC-2 of each of `methods` (CI over cells). Like xMIL, AUPRC-2 is taken over every class
    where the cells scored every class (``evaluated_classes = "all"``), else over each bag's
    label (column `classes`); `construction` names the rule's construction ("xmil" reproduces
    xMIL's sampling, "attnsets" is ours). `model` (default: every model with single-head
    softmax attention pooling) is the attention MIL model."""
    return _signed_evidence_check(members, study, "pos_neg", role_models(study, model), methods,
                                  "construction", "attnsets")


# --------------------------------------------------------------------------- four-bags (MILLI)


def four_bags_check(members: pd.DataFrame, study: StudyView | None = None,
                    model: str | None = None,
                    methods: tuple[str, ...] = ("attention", "single", "leave_one_out", "random")
                    ) -> pd.DataFrame:
    """MILLI's FOUR-MNIST-BAGS comparison, on our four_bags datasets: for `model`, its bag
    AUROC and the share of its members that learned the task, and the AUPRC-2 over the signed,
    class-specific evidence of each of `methods` (CI over cells). MILLI's "Single" and "One
    Removed" are our `single` and `leave_one_out`. AUPRC-2 is taken over every class where the
    cells scored every class (``evaluated_classes = "all"``), else over each bag's label
    (column `classes`); `convention` is the rule's evidence_convention ("milli" gives class 0
    MILLI's signs, "attnsets" is ours). `model`: as for `pos_neg_check`."""
    return _signed_evidence_check(members, study, "four_bags", role_models(study, model),
                                  methods,
                                  "evidence_convention", "attnsets", column="convention")


# --------------------------------------------------------------------------- learned share


def learned_by_rule_and_model(members: pd.DataFrame, method: str = "attention",
                              order: list[str] | None = None) -> pd.DataFrame:
    """Per rule x model with `method` (attention) scores: how many of the model's members
    learned the task (bag metric at or above the threshold). One row per pair, rules in name
    order (as in the quality tables), models in `order`; columns rule, model, members, learned,
    learned_share."""
    rows = members[members["explainer"] == method].drop_duplicates(["cell_id", "member"])
    rank = {name: i for i, name in enumerate(order or [])}
    records = []
    for (rule, model), part in rows.groupby(["rule", "model"], sort=False):
        learned = int(part["learned"].sum())
        records.append({"rule": rule, "model": model, "members": len(part), "learned": learned,
                        "learned_share": learned / len(part)})
    frame = pd.DataFrame(records, columns=["rule", "model", "members", "learned",
                                           "learned_share"])
    if frame.empty:
        return frame
    frame["_rank"] = frame["model"].map(lambda m: rank.get(m, len(rank)))
    frame = frame.sort_values(["rule", "_rank", "model"], kind="stable")
    return frame.drop(columns="_rank").reset_index(drop=True)
