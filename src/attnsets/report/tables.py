"""The report's tables, computed from a StudyView: headline, explainer ranking, ensemble-size
curve, cells. Plus the one number format shared by the Markdown, the HTML and the summary text."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from attnsets.metrics.cluster import cluster_bootstrap
from attnsets.report.collect import CellView, StudyView, dataset_label, nanmean

HEADLINE_COLUMNS = [
    "dataset", "model", "pool", "rule", "cells", "members", "explainer",
    "bag_accuracy", "bag_balanced_accuracy", "ensemble_bag_accuracy",
    "importance_auroc", "importance_auroc_ci_low", "importance_auroc_ci_high",
    "importance_auprc", "importance_auprc_ci_low", "importance_auprc_ci_high", "auprc_chance",
    "ci_source", "min_bag_score", "max_importance", "members_accurate", "silent_failures",
    "silent_rate",
    "ensemble_auroc", "ensemble_gain", "ensemble_k", "p_fail_single", "p_fail_ensemble",
    "unit_test_flagged_rate", "note",
]
RANKING_COLUMNS = [
    "rank", "explainer", "cells", "mean_auroc", "sd_auroc", "mean_auprc", "mean_rank_in_cell",
    "silent_rate", "ensemble_auroc", "mean_aopc_relative",
]
CURVE_COLUMNS = ["dataset", "model", "explainer", "k", "cells", "auroc_mean", "auroc_q05",
                 "auroc_q95", "auroc_sd", "p_fail", "threshold"]
CELL_COLUMNS = ["dataset", "model", "replicate", "status", "members", "seconds",
                "not_applicable", "error", "cell_id"]
#: Integer-valued columns (shown without decimals).
INTEGER_COLUMNS = {"cells", "members", "members_accurate", "silent_failures", "ensemble_k", "k",
                   "rank", "replicate"}
#: Signed differences (shown with an explicit sign).
SIGNED_COLUMNS = {"ensemble_gain"}


def fmt(value: Any, column: str = "") -> str:
    """The single display format of the report: 3 decimals, signs on gains, '–' for missing."""
    if isinstance(value, str):
        return value
    if value is None or pd.isna(value):
        return "–"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    number = float(value)
    if column in INTEGER_COLUMNS and number.is_integer():
        return str(int(number))
    number = round(number, 3) + 0.0  # + 0.0 turns -0.0 into 0.0: no "-0.000"
    return f"{number:+.3f}" if column in SIGNED_COLUMNS else f"{number:.3f}"


def _curve_rows(cells: list[CellView], method: str) -> list[dict[str, Any]]:
    return [p.to_dict() for c in cells if method in c.assessment.explainers
            for p in c.assessment.explainers[method].curve]


def _headline_row(study: StudyView, dataset: str, model: str, method: str | None) -> dict[str, Any]:
    cells = study.cells(dataset, model)
    first = cells[0]
    bag = [c.assessment.member_mean_bag for c in cells]
    ens_bag = [c.assessment.ensemble_bag for c in cells]
    row: dict[str, Any] = {
        "dataset": dataset, "model": model, "pool": first.pool, "rule": first.rule,
        "cells": len(cells), "members": sum(c.n_members for c in cells), "explainer": method or "",
        "bag_accuracy": nanmean([b.accuracy for b in bag]),
        "bag_balanced_accuracy": nanmean([b.balanced_accuracy for b in bag]),
        "ensemble_bag_accuracy": nanmean([b.accuracy for b in ens_bag]),
        "note": "",
    }
    for column in HEADLINE_COLUMNS:
        row.setdefault(column, math.nan)
    flagged = [c.assessment.unit_test.flagged_rate for c in cells
               if c.assessment.unit_test is not None]
    row["unit_test_flagged_rate"] = nanmean(flagged) if flagged else math.nan
    with_method = [c for c in cells if method in c.methods]
    if method is None or not with_method:
        reasons = sorted({c.assessment.not_applicable.get(method, "") for c in cells} - {""})
        row["note"] = f"{method}: {'; '.join(reasons) or 'not computed'}" if method else \
            "no explainer results"
        return row
    data = study.members[(study.members["dataset"] == dataset) & (study.members["model"] == model)
                         & (study.members["explainer"] == method)]
    auroc, auprc = data["auroc"].to_numpy(float), data["auprc"].to_numpy(float)
    row["importance_auroc"], row["importance_auprc"] = nanmean(auroc), nanmean(auprc)
    row["auprc_chance"] = nanmean(data["auprc_chance"].to_numpy(float))
    cells_with_values = data.loc[~np.isnan(auroc), "cell_id"].nunique()
    if cells_with_values >= 2:  # members of a cell are not independent: resample whole cells
        row["ci_source"] = "cells"
        for metric, values in (("auroc", auroc), ("auprc", auprc)):
            estimate = cluster_bootstrap(values, data["cell_id"].to_numpy())
            row[f"importance_{metric}_ci_low"] = estimate.low
            row[f"importance_{metric}_ci_high"] = estimate.high
    else:  # one cell: only the bag-level bootstraps stored with its members are available
        row["ci_source"] = "bags"
        result = with_method[0].assessment.explainers[method]
        for metric in ("auroc", "auprc"):
            row[f"importance_{metric}_ci_low"] = result.mean(f"{metric}_ci_low")
            row[f"importance_{metric}_ci_high"] = result.mean(f"{metric}_ci_high")
    row["min_bag_score"] = float(data["min_bag_score"].iloc[0])
    row["max_importance"] = float(data["max_importance"].iloc[0])
    row["members_accurate"] = int((data["bag_score"] >= data["min_bag_score"]).sum())
    row["silent_failures"] = int(data["silent"].sum())
    row["silent_rate"] = float(data["silent"].mean()) if len(data) else math.nan
    ensemble_auroc = nanmean([c.assessment.explainers[method].ensemble_value("auroc")
                              for c in with_method])
    row["ensemble_auroc"] = ensemble_auroc
    row["ensemble_gain"] = ensemble_auroc - row["importance_auroc"]
    curve = pd.DataFrame(_curve_rows(with_method, method))
    if not curve.empty and "k" in curve:
        k_max = int(curve["k"].max())
        row["ensemble_k"] = k_max
        row["p_fail_single"] = nanmean(curve.loc[curve["k"] == curve["k"].min(), "p_fail"]
                                       .to_numpy(float))
        row["p_fail_ensemble"] = nanmean(curve.loc[curve["k"] == k_max, "p_fail"].to_numpy(float))
    missing = [c for c in cells if c not in with_method]
    if missing:
        row["note"] = f"{method} missing in {len(missing)} of {len(cells)} cells"
    return row


def headline_table(study: StudyView) -> pd.DataFrame:
    """One row per dataset x model (replicates pooled). Importance columns refer to
    `study.method`; CIs are cluster bootstraps of the mean over all trained members that
    resample whole cells (ci_source "cells", the same method as the results page), or the
    members' mean of their stored bag-bootstrap bounds when a group has a single cell
    (ci_source "bags")."""
    rows = [_headline_row(study, d, m, study.method) for d in study.datasets for m in study.models
            if study.cells(d, m)]
    return pd.DataFrame(rows, columns=HEADLINE_COLUMNS)


def explainer_ranking(study: StudyView) -> pd.DataFrame:
    """Per explainer, over the cells where it ran: mean and sd of the members' mean AUROC,
    mean AUPRC, the mean rank among the explainers of the same cell (1 = best), the share of
    silently failing members, the ensemble AUROC and the relative AOPC. rank: by mean AUROC."""
    per_cell = [{"cell": c.cell_id, "explainer": m, "auroc": r.mean("auroc"),
                 "auprc": r.mean("auprc"), "silent_rate": r.silent_rate,
                 "aopc_relative": r.mean("aopc_relative"),
                 "ensemble_auroc": r.ensemble_value("auroc")}
                for c in study.done for m, r in c.assessment.explainers.items()]
    if not per_cell:
        return pd.DataFrame(columns=RANKING_COLUMNS)
    frame = pd.DataFrame(per_cell)
    frame["rank_in_cell"] = frame.groupby("cell")["auroc"].rank(ascending=False, method="average")
    grouped = frame.groupby("explainer", sort=False)
    table = pd.DataFrame({
        "cells": grouped.size(),
        "mean_auroc": grouped["auroc"].mean(),
        "sd_auroc": grouped["auroc"].std(ddof=1),
        "mean_auprc": grouped["auprc"].mean(),
        "mean_rank_in_cell": grouped["rank_in_cell"].mean(),
        "silent_rate": grouped["silent_rate"].mean(),
        "ensemble_auroc": grouped["ensemble_auroc"].mean(),
        "mean_aopc_relative": grouped["aopc_relative"].mean(),
    }).reset_index()
    table = table.sort_values(["mean_auroc", "explainer"], ascending=[False, True],
                              na_position="last", kind="stable")
    table["rank"] = table["mean_auroc"].rank(ascending=False, method="min")
    table["rank"] = table["rank"].astype("Int64")
    return table[RANKING_COLUMNS].reset_index(drop=True)


def curve_table(study: StudyView) -> pd.DataFrame:
    """Ensemble-size curves averaged over replicate cells: one row per dataset x model x
    explainer x K. The band columns are the means of the cells' q05 / q95."""
    rows = []
    for cell in study.done:
        for method, result in cell.assessment.explainers.items():
            for point in result.curve:
                values = point.to_dict()
                rows.append({"dataset": cell.dataset, "model": cell.model, "explainer": method,
                             **{k: values.get(k, math.nan) for k in CURVE_COLUMNS[3:]
                                if k != "cells"}})
    if not rows:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    frame = pd.DataFrame(rows)
    for column in CURVE_COLUMNS[5:]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    keys = ["dataset", "model", "explainer", "k"]
    grouped = frame.groupby(keys, sort=False)
    table = grouped[CURVE_COLUMNS[5:]].mean()
    table.insert(0, "cells", grouped.size())
    table = table.reset_index()
    order = {name: i for i, name in enumerate(study.datasets)}
    model_order = {name: i for i, name in enumerate(study.models)}
    table = table.sort_values(["dataset", "model", "explainer", "k"], key=lambda s: s.map(
        order) if s.name == "dataset" else (s.map(model_order) if s.name == "model" else s))
    return table[CURVE_COLUMNS].reset_index(drop=True)


def cells_table(study: StudyView) -> pd.DataFrame:
    """Every cell of the store (finished and failed) with its status and first error line."""
    rows = []
    for cell in study.done:
        rows.append({"dataset": cell.dataset, "model": cell.model, "replicate": cell.replicate,
                     "status": "done", "members": cell.n_members,
                     "seconds": cell.training.seconds if cell.training else math.nan,
                     "not_applicable": "; ".join(f"{m}: {why}" for m, why in
                                                 cell.assessment.not_applicable.items()),
                     "error": "", "cell_id": cell.cell_id})
    for rec in study.failed:
        rows.append({"dataset": dataset_label(rec.cell), "model": rec.cell.model_name,
                     "replicate": rec.cell.replicate, "status": rec.status,
                     "members": len(rec.cell.seeds), "seconds": rec.wall_seconds,
                     "not_applicable": "", "error": first_line(rec.error),
                     "cell_id": rec.cell_id})
    frame = pd.DataFrame(rows, columns=CELL_COLUMNS)
    order = {name: i for i, name in enumerate(study.datasets)}
    model_order = {name: i for i, name in enumerate(study.models)}
    frame["_d"] = frame["dataset"].map(order)
    frame["_m"] = frame["model"].map(model_order)
    frame = frame.sort_values(["_d", "_m", "replicate"], kind="stable")
    return frame.drop(columns=["_d", "_m"]).reset_index(drop=True)


def first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def to_markdown(frame: pd.DataFrame, title: str = "") -> str:
    """A GitHub-flavoured Markdown table with the report's number format."""
    header = [str(c) for c in frame.columns]
    lines = [f"# {title}", ""] if title else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for record in frame.itertuples(index=False):
        cells = [fmt(v, c).replace("|", "\\|").replace("\n", " ")
                 for v, c in zip(record, header, strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    if frame.empty:
        lines.append("")
        lines.append("(no rows)")
    return "\n".join(lines) + "\n"
