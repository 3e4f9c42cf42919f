"""write_report: results store -> report directory (report.html, figures/, tables/).

Everything is first written into a private staging directory inside the output directory and
then moved into place file by file with os.replace (atomic on one file system), report.html
last; a crash leaves the previous report intact and no half-written file behind. Files a
previous report wrote (listed in its manifest) that the new one does not are removed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

import attnsets
from attnsets.errors import SpecError
from attnsets.metrics import SilentFailureCriteria
from attnsets.report.collect import StudyView, open_results
from attnsets.report.examples import example_figures
from attnsets.report.figures import (
    deletion_figure,
    distribution_figure,
    ensemble_figure,
    silent_failure_figure,
)
from attnsets.report.html import TableBlock, render_page
from attnsets.report.style import Palette, SavedFigure, report_style, save_figure
from attnsets.report.summary import missing_notes, summary_points
from attnsets.report.tables import (
    cells_table,
    curve_table,
    explainer_ranking,
    fmt,
    headline_table,
    to_markdown,
)

REPORT_NAME = "report.html"
MANIFEST_NAME = "manifest.json"
FIGURE_DIR = "figures"
TABLE_DIR = "tables"

#: Joins the parts of one value in a table cell ("0 of 4", "[0.91, 0.98]"): cells break only
#: between values, never inside one.
NBSP = "\u00a0"

#: Rows of the cells table shown in the page (failed cells are always all shown).
MAX_CELL_ROWS = 60

Progress = Callable[[str], None]


def _write_table(frame: pd.DataFrame, staging: Path, name: str, title: str) -> list[str]:
    directory = staging / TABLE_DIR
    directory.mkdir(parents=True, exist_ok=True)
    frame.to_csv(directory / f"{name}.csv", index=False)
    (directory / f"{name}.md").write_text(to_markdown(frame, title))
    return [f"{TABLE_DIR}/{name}.csv", f"{TABLE_DIR}/{name}.md"]


def _with_ci(estimate: float, low: float, high: float) -> str:
    """Estimate over its 95% CI, on two lines so that the column stays narrow."""
    if pd.isna(estimate):
        return fmt(estimate)
    return f"{fmt(estimate)}\n[{fmt(low)},{NBSP}{fmt(high)}]"


def headline_display(headline: pd.DataFrame) -> pd.DataFrame:
    """The headline table as shown in the page: related numbers folded into one cell each
    (counts with rates, estimates with CIs, ensemble with gain) and prose headers, so that it
    fits a 1280 px wide window; every number is also in the CSV."""
    rows = []
    for r in headline.itertuples(index=False):
        silent = fmt(math.nan) if pd.isna(r.silent_rate) else \
            (f"{fmt(r.silent_failures, 'silent_failures')}{NBSP}of{NBSP}"
             f"{fmt(r.members, 'members')}\nrate{NBSP}{fmt(r.silent_rate)}")
        p_fail = fmt(math.nan) if pd.isna(r.p_fail_single) else \
            f"{fmt(r.p_fail_single)}{NBSP}→{NBSP}{fmt(r.p_fail_ensemble)}"
        auprc = _with_ci(r.importance_auprc, r.importance_auprc_ci_low,
                         r.importance_auprc_ci_high)
        if not pd.isna(r.importance_auprc):
            auprc += f"\nchance{NBSP}{fmt(r.auprc_chance)}"
        ensemble = fmt(math.nan) if pd.isna(r.ensemble_auroc) else \
            f"{fmt(r.ensemble_auroc)}\ngain{NBSP}{fmt(r.ensemble_gain, 'ensemble_gain')}"
        rows.append({
            "dataset": r.dataset, "model": r.model,
            "members (cells)": f"{fmt(r.members, 'members')} ({fmt(r.cells, 'cells')})",
            "bag balanced accuracy": r.bag_balanced_accuracy,
            "importance AUROC [95%\u00a0CI]": _with_ci(r.importance_auroc, r.importance_auroc_ci_low,
                                                  r.importance_auroc_ci_high),
            "importance AUPRC [95%\u00a0CI]": auprc,
            "silent failures": silent,
            "ensemble AUROC": ensemble,
            "P(fail) 1 → K members": p_fail,
            "unit test flagged rate": r.unit_test_flagged_rate,
            "note": r.note, "_silent": bool(r.silent_failures > 0)
            if not pd.isna(r.silent_failures) else False,
        })
    frame = pd.DataFrame(rows)
    # Columns with nothing to say take no width: the unit test runs on shifted-test rules only.
    if not frame.empty and headline["unit_test_flagged_rate"].isna().all():
        frame = frame.drop(columns="unit test flagged rate")
    if not frame.empty and (headline["note"].fillna("") == "").all():
        frame = frame.drop(columns="note")
    return frame


def _figure_specs(study: StudyView, curves: pd.DataFrame, palette: Palette
                  ) -> list[tuple[str, str, str, Callable[[], Figure | None]]]:
    method = study.method or "importance"
    criteria = study.done[0].criteria if study.done else SilentFailureCriteria()
    n_members = int((study.members["explainer"] == study.method).sum())
    combine = study.done[0].combine if study.done else ""
    region = (f"bag {criteria.bag_metric.replace('_', ' ')} ≥ {fmt(criteria.min_bag_score)} "
              f"and {method} {criteria.importance_metric.upper()} ≤ "
              f"{fmt(criteria.max_importance)}")
    return [
        ("silent_failures", f"Bag performance vs {method} importance, per trained member",
         f"Each point is one trained member ({n_members} in all), coloured by model. The shaded "
         f"corner is the silent-failure region ({region}); the number written on it counts "
         "the members inside. Dotted: chance AUROC 0.5.",
         lambda: silent_failure_figure(study, palette)),
        ("importance_distribution", "Importance AUROC per explainer, model and rule",
         "Boxes: quartiles of the members' mean per-bag AUROC; whiskers: 1.5 IQR; points: the "
         "members. Dotted: chance 0.5. 'n/a': the explainer does not apply to that model.",
         lambda: distribution_figure(study, palette)),
        ("ensemble_size", f"Ensemble size: {method} AUROC and failure probability against K",
         f"Left: mean importance AUROC of K-member ensembles (scores combined by {combine}), "
         "averaged over replicate cells, with the q05–q95 band over member subsets. Right: "
         "share of K-member subsets whose AUROC is at or below the silent-failure threshold.",
         lambda: ensemble_figure(study, curves, palette)),
        ("deletion_curves", "Deletion curves per explainer",
         "Probability of the true class after removing the k highest-scored instances, "
         "averaged over members and replicates; dashed black: random removal order. The "
         "further a curve falls below the dashed one, the more faithful the explainer.",
         lambda: deletion_figure(study, palette)),
    ]


FIGURE_MISSING = {
    "silent_failures": "Figure 'bag performance vs importance': no member has both a bag "
                       "score and an importance score.",
    "importance_distribution": "Figure 'importance distribution': no member has an importance "
                               "AUROC.",
    "ensemble_size": "Figure 'ensemble size': no ensemble-size curves (they need at least 2 "
                     "members per cell and the headline explainer).",
    "deletion_curves": "Figure 'deletion curves': no deletion curves were stored.",
}

GUIDE = ("How to read: a trustworthy explainer has importance AUROC well above 0.5 (chance) "
         "whenever the bag classifier is accurate. Points in the shaded corner of the first "
         "figure are silent failures: accurate models whose explanation misses the witnesses. "
         "Colours are fixed per model (Okabe–Ito) in every figure; explainers use a separate "
         "palette. See docs/report.md for details.")


def render_report(study: StudyView, staging: Path, progress: Progress) -> None:
    """Write report.html, figures/ and tables/ of an already loaded study into `staging`."""
    notes = missing_notes(study)
    progress("tables")
    headline = headline_table(study)
    ranking = explainer_ranking(study)
    curves = curve_table(study)
    cells = cells_table(study)
    files = {
        "headline": _write_table(headline, staging, "headline", "Headline: rule × model"),
        "ranking": _write_table(ranking, staging, "explainer_ranking", "Explainer ranking"),
        "curves": _write_table(curves, staging, "ensemble_curve", "Ensemble-size curve"),
        "members": _write_table(study.members, staging, "members", "Per-member metrics"),
        "cells": _write_table(cells, staging, "cells", "Cells"),
    }
    palette = Palette.for_names(study.models, study.explainers)
    saved: list[tuple[SavedFigure, list[str]]] = []
    figure_dir = staging / FIGURE_DIR

    def keep(figure: Figure, label: str, name: str, title: str, caption: str) -> None:
        result = save_figure(figure, figure_dir, label, name, title, caption)
        saved.append((result, [f"{FIGURE_DIR}/{name}.png", f"{FIGURE_DIR}/{name}.svg"]))

    if study.done:
        with report_style():
            specs = _figure_specs(study, curves, palette)
            for number, (name, title, caption, draw) in enumerate(specs[:3], start=1):
                progress(f"figure: {name}")
                figure = draw()
                if figure is None:
                    notes.append(FIGURE_MISSING[name])
                else:
                    keep(figure, str(number), name, title, caption)
            progress("figure: example bags")
            examples = example_figures(study, notes)
            for letter, example in zip("abcdefghij", examples, strict=False):
                keep(example.figure, f"4{letter}" if len(examples) > 1 else "4",
                     f"example_{example.kind}",
                     f"Example {example.kind} bag: good vs bad explanation", example.caption)
            name, title, caption, draw = specs[3]
            progress(f"figure: {name}")
            figure = draw()
            if figure is None:
                notes.append(FIGURE_MISSING[name])
            else:
                keep(figure, "5", name, title, caption)
    method = study.method or "–"
    failed_first = cells.sort_values("status", key=lambda s: s != "failed", kind="stable")
    cells_shown = failed_first.head(max(MAX_CELL_ROWS, int((cells["status"] != "done").sum())))
    cells_caption = "Every cell in the store with its status." if len(cells_shown) == len(cells) \
        else (f"Failed cells first; showing {len(cells_shown)} of {len(cells)} cells (all of "
              "them are in the CSV).")
    tables = [
        TableBlock("headline", "Headline: rule × model",
                   f"Means over replicate cells; importance columns refer to {method} and "
                   "pool every trained member; 95% CIs are cluster bootstraps that resample "
                   "whole cells, as on the results page (column ci_source in the CSV). "
                   "Silent failures: members in the silent-failure region; P(fail): share "
                   "of member subsets with AUROC at or below the threshold, single members "
                   "→ the largest ensemble. Every column is in the CSV; the page leaves out "
                   "columns without values (the unit-test rate exists for shifted-test rules "
                   "only).",
                   headline_display(headline), files["headline"],
                   warn={"silent failures": "_silent"}, wrap={"note"},
                   text={"dataset", "model", "note"}),
        TableBlock("ranking", "Explainer ranking",
                   "Per explainer over the cells where it ran: mean (sd) of the members' mean "
                   "importance AUROC, ranked; mean rank within a cell compares explainers on "
                   "the same models and data.", ranking, files["ranking"]),
        TableBlock("cells", "Cells", cells_caption, cells_shown, files["cells"]),
    ]
    progress("report.html")
    downloads = [("ensemble-size curve data", files["curves"]),
                 ("per-member metrics", files["members"])]
    guide = GUIDE + " Data behind the figures: " + "; ".join(
        f"{label} ({', '.join(paths)})" for label, paths in downloads) + "."
    page = render_page(
        title=f"attnsets report: {study.name}",
        meta=(f"Results: {study.directory.resolve()} · {study.n_cells} cells · generated "
              f"{time.strftime('%Y-%m-%d %H:%M')} by attnsets {attnsets.__version__}"),
        summary=summary_points(study, headline, ranking), missing=notes, tables=tables,
        figures=saved, guide=guide)
    (staging / REPORT_NAME).write_text(page, encoding="utf-8")


def _publish(staging: Path, out: Path) -> None:
    """Move every staged file into `out` (report.html last) and drop stale files of the
    previous report listed in its manifest."""
    new_files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    old_manifest = out / MANIFEST_NAME
    try:
        old_files = set(json.loads(old_manifest.read_text()).get("files", []))
    except (OSError, ValueError, AttributeError):
        old_files = set()
    manifest = {"files": new_files + [MANIFEST_NAME], "generated": time.time()}
    (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    ordered = [f for f in new_files if f != REPORT_NAME] + [MANIFEST_NAME, REPORT_NAME]
    for relative in ordered:
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / relative, target)
    for stale in old_files - set(manifest["files"]):
        path = out / stale
        # Only plain relative paths inside `out` that a previous report wrote are removed.
        if ".." not in Path(stale).parts and path.is_file():
            path.unlink()


def write_report(results_dir: str | Path, out_dir: str | Path | None = None, *,
                 progress: Progress | None = None) -> Path:
    """Write the report of the study in `results_dir` into `out_dir` (default
    `results_dir/report`) and return the path of report.html.

    Works on partial stores (no cells, only failed cells, explainers that do not apply): what
    cannot be shown is listed in the report's "Missing" section. Raises SpecError when
    `results_dir` is not a study directory.
    """
    tell = progress or (lambda _message: None)
    tell("reading results")
    study = open_results(results_dir)
    out = Path(out_dir) if out_dir is not None else study.directory / "report"
    if out.exists() and not out.is_dir():
        raise SpecError("out", str(out), "a directory (it is a file)")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".report-staging-", dir=out))
    try:
        render_report(study, staging, tell)
        _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    tell("done")
    return out / REPORT_NAME
