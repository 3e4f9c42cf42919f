"""The report's text: a summary written from the tables (every number in it is a table value in
the table's own format, or a count of table rows) and the list of what is missing."""

from __future__ import annotations

from collections import defaultdict

import pandas as pd

from attnsets.report.collect import StudyView
from attnsets.report.tables import first_line, fmt

#: Failed cells listed one by one in "missing" before the rest are counted.
MAX_LISTED_FAILURES = 20


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _defined(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    return frame[frame[column].notna()] if column in frame else frame.iloc[0:0]


def _scope(study: StudyView) -> str:
    members = sorted({c.n_members for c in study.done})
    text = (f"{len(study.done)} of {study.n_cells} cells finished"
            + (f" ({len(study.failed)} failed)" if study.failed else "") + ": "
            f"{len(study.datasets)} dataset(s) ({', '.join(study.datasets)}) × "
            f"{len(study.models)} model(s) ({', '.join(study.models)})")
    if members:
        text += f", {'/'.join(map(str, members))} trained member(s) per cell"
    if study.explainers:
        text += f"; explainers: {', '.join(study.explainers)}"
    return text + "."


def _bag_range(headline: pd.DataFrame) -> str | None:
    rows = _defined(headline, "bag_balanced_accuracy")
    if rows.empty:
        return None
    low = rows.loc[rows["bag_balanced_accuracy"].idxmin()]
    high = rows.loc[rows["bag_balanced_accuracy"].idxmax()]
    if len(rows) == 1:
        return (f"Bag balanced accuracy is {fmt(high['bag_balanced_accuracy'])} "
                f"({high['model']} on {high['dataset']}).")
    return (f"Bag balanced accuracy ranges from {fmt(low['bag_balanced_accuracy'])} "
            f"({low['model']} on {low['dataset']}) to {fmt(high['bag_balanced_accuracy'])} "
            f"({high['model']} on {high['dataset']}).")


def _silent(study: StudyView, headline: pd.DataFrame) -> list[str]:
    method = study.method
    rows = _defined(headline, "silent_rate")
    if method is None or rows.empty:
        return []
    criteria = study.done[0].criteria
    first = rows.iloc[0]
    rule = (f"bag {criteria.bag_metric.replace('_', ' ')} ≥ {fmt(first['min_bag_score'])} "
            f"while {method} importance {criteria.importance_metric.upper()} ≤ "
            f"{fmt(first['max_importance'])}")
    lines = []
    failing = rows[rows["silent_failures"] > 0]
    if failing.empty:
        accurate = int(rows["members_accurate"].sum())
        total = int(rows["members"].sum())
        if accurate == 0:
            lines.append(f"No trained member failed silently ({rule}), but none of the {total} "
                         "members reached the bag threshold either, so silent failure could "
                         "not occur; train longer or on more bags to test it.")
        else:
            lines.append(f"No trained member failed silently ({rule}); {accurate} of {total} "
                         "members reached the bag threshold, and none of those had an "
                         "importance at or below the threshold.")
    else:
        for model in [m for m in study.models if m in set(failing["model"])]:
            mine = failing[failing["model"] == model]
            where = [f"{r.dataset} ({fmt(r.silent_failures, 'silent_failures')} of "
                     f"{fmt(r.members, 'members')} members, rate {fmt(r.silent_rate)})"
                     for r in mine.itertuples()]
            lines.append(f"{model} fails silently on {_join(where)}: {rule}.")
        quiet = [m for m in study.models if m in set(rows["model"]) and
                 m not in set(failing["model"])]
        for model in quiet:
            mine = rows[rows["model"] == model]
            accurate = int(mine["members_accurate"].sum())
            lines.append(f"{model}: no silent failure ({accurate} of "
                         f"{int(mine['members'].sum())} members reached the bag threshold).")
    return lines


def _ensemble(headline: pd.DataFrame, method: str | None) -> list[str]:
    rows = _defined(headline, "ensemble_gain")
    if rows.empty or method is None:
        return []
    up = rows[rows["ensemble_gain"] > 0]
    best = rows.loc[rows["ensemble_gain"].idxmax()]
    worst = rows.loc[rows["ensemble_gain"].idxmin()]
    k = _defined(rows, "ensemble_k")
    size = f"{fmt(k['ensemble_k'].max(), 'ensemble_k')}-member " if not k.empty else ""
    text = (f"Ensembling: the {size}ensemble's {method} AUROC beats the mean single member in "
            f"{len(up)} of {len(rows)} dataset × model rows; largest gain "
            f"{fmt(best['ensemble_gain'], 'ensemble_gain')} ({best['model']} on "
            f"{best['dataset']}: {fmt(best['importance_auroc'])} → "
            f"{fmt(best['ensemble_auroc'])})")
    if len(rows) > 1:
        text += (f", smallest {fmt(worst['ensemble_gain'], 'ensemble_gain')} "
                 f"({worst['model']} on {worst['dataset']})")
    lines = [text + "."]
    fails = rows[rows["p_fail_single"].notna() & rows["p_fail_ensemble"].notna()]
    if not fails.empty:
        drop = fails["p_fail_single"] - fails["p_fail_ensemble"]
        text = (f"P(explanation fails) fell with ensemble size in {int((drop > 0).sum())} of "
                f"{len(fails)} rows and rose in {int((drop < 0).sum())}")
        if (drop != 0).any():
            top = fails.loc[drop.abs().idxmax()]
            text += (f"; the largest change: {top['model']} on {top['dataset']}, "
                     f"{fmt(top['p_fail_single'])} with one member → "
                     f"{fmt(top['p_fail_ensemble'])} with "
                     f"{fmt(top['ensemble_k'], 'ensemble_k')}")
        lines.append(text + ".")
    return lines


def _ranking(ranking: pd.DataFrame, method: str | None) -> list[str]:
    rows = _defined(ranking, "mean_auroc")
    if rows.empty:
        return []
    top = rows.iloc[0]
    text = (f"Best explainer by mean importance AUROC: {top['explainer']} "
            f"({fmt(top['mean_auroc'])} over {fmt(top['cells'], 'cells')} cells, mean rank "
            f"within a cell {fmt(top['mean_rank_in_cell'])})")
    others = []
    if method and method != top["explainer"] and method in set(rows["explainer"]):
        mine = rows[rows["explainer"] == method].iloc[0]
        others.append(f"{method} ranks {fmt(mine['rank'], 'rank')} of {len(rows)} "
                      f"({fmt(mine['mean_auroc'])})")
    if "random" in set(rows["explainer"]) and top["explainer"] != "random":
        baseline = rows[rows["explainer"] == "random"].iloc[0]
        others.append(f"the random baseline scores {fmt(baseline['mean_auroc'])}")
    lines = [text + ("; " + "; ".join(others) if others else "") + "."]
    silent = _defined(rows, "silent_rate")
    if (silent["silent_rate"] > 0).any():
        parts = [f"{r.explainer} {fmt(r.silent_rate)}" for r in silent.itertuples()]
        lines.append("Mean share of silently failing members per explainer (ranking table): "
                     + ", ".join(parts)
                     + (" (random scores show what an uninformative explanation gives)."
                        if "random" in set(silent["explainer"]) else "."))
    return lines


def _unit_tests(headline: pd.DataFrame) -> list[str]:
    rows = _defined(headline, "unit_test_flagged_rate")
    if rows.empty:
        return []
    parts = [f"{r.model} on {r.dataset} {fmt(r.unit_test_flagged_rate)}" for r in rows.itertuples()]
    return [f"Algorithmic unit tests (shifted test split): share of members flagged — "
            f"{_join(parts)}."]


def summary_points(study: StudyView, headline: pd.DataFrame, ranking: pd.DataFrame) -> list[str]:
    """The summary, one sentence group per point, generated from the tables."""
    if study.n_cells == 0:
        return ["The results store holds no cells yet: run `attnsets study` first (or wait for "
                "a running study to finish its first cell)."]
    points = [_scope(study)]
    if not study.done:
        points.append("No cell finished, so there is nothing to measure; see Missing for the "
                      "errors.")
        return points
    bag = _bag_range(headline)
    if bag:
        points.append(bag)
    points += _silent(study, headline)
    points += _ensemble(headline, study.method)
    points += _ranking(ranking, study.method)
    points += _unit_tests(headline)
    return points


def missing_notes(study: StudyView) -> list[str]:
    """What the report cannot show and why (figure-specific notes are added by the builder)."""
    if study.n_cells == 0:
        return ["No cells: the store is empty, so there are no tables rows and no figures."]
    notes = []
    for rec in study.failed[:MAX_LISTED_FAILURES]:
        cell = rec.cell
        notes.append(f"Failed cell: {cell.dataset_name} × {cell.model_name} "
                     f"replicate {cell.replicate}: "
                     f"{first_line(rec.error) or 'no error recorded'}")
    if len(study.failed) > MAX_LISTED_FAILURES:
        notes.append(f"... and {len(study.failed) - MAX_LISTED_FAILURES} more failed cells "
                     "(see the cells table).")
    if not study.done:
        notes.append("No finished cell: no figures and no metric tables can be drawn.")
        return notes
    for dataset in study.datasets:
        if not study.cells(dataset):
            notes.append(f"Dataset {dataset}: no finished cell.")
    for model in study.models:
        if not study.cells(model=model):
            notes.append(f"Model {model}: no finished cell.")
    reasons: dict[tuple[str, str], set[str]] = defaultdict(set)
    for cell in study.done:
        for method, why in cell.assessment.not_applicable.items():
            reasons[(method, why)].add(cell.model)
    for (method, why), models in sorted(reasons.items()):
        listed = [m for m in study.models if m in models]
        where = " (figures 1 and 3, headline table)" if method == study.method else ""
        notes.append(f"No {method} scores for model(s) {', '.join(listed)}: {why}{where}.")
    if study.method is None:
        notes.append("No explainer results in any finished cell: importance figures are absent.")
    elif study.method != "attention":
        notes.append(f"No cell has attention scores; the headline explainer is {study.method}.")
    if all(c.n_members < 2 for c in study.done):
        notes.append("Every cell has a single member: ensemble-size curves and ensemble gains "
                     "need at least 2 members per cell.")
    return notes

