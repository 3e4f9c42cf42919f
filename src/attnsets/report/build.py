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

import attnsets
from attnsets.errors import SpecError
from attnsets.headline import secondary_metric
from attnsets.report.arrays import StoredArrays
from attnsets.report.assets import FIGURE_DIR, TABLE_DIR, Assets, write_assets
from attnsets.report.collect import StudyView, open_results
from attnsets.report.html import TableBlock, render_page
from attnsets.report.summary import missing_notes, summary_points
from attnsets.report.tables import fmt, study_metric

__all__ = ["FIGURE_DIR", "REPORT_NAME", "TABLE_DIR", "headline_display", "render_report",
           "write_report"]

REPORT_NAME = "report.html"
MANIFEST_NAME = "manifest.json"

#: Joins the parts of one value in a table cell ("0 of 4", "[0.91, 0.98]"): cells break only
#: between values, never inside one.
NBSP = "\u00a0"

#: Rows of the cells table shown in the page (failed cells are always all shown).
MAX_CELL_ROWS = 60

Progress = Callable[[str], None]


def _estimate_text(estimate: float, low: float, high: float) -> str:
    """Estimate over its 95% CI, on two lines so that the column stays narrow."""
    if pd.isna(estimate):
        return fmt(estimate)
    return f"{fmt(estimate)}\n[{fmt(low)},{NBSP}{fmt(high)}]"


def _display_row(r: pd.Series, metric: str) -> dict[str, object]:
    """One headline row as shown in the page (see `headline_display`)."""
    primary, label = f"importance_{metric}", metric.upper()
    silent = fmt(math.nan) if pd.isna(r["silent_rate"]) else \
        (f"{fmt(r['silent_failures'], 'silent_failures')}{NBSP}of{NBSP}"
         f"{fmt(r['members'], 'members')}\nrate{NBSP}{fmt(r['silent_rate'])}")
    p_fail = fmt(math.nan) if pd.isna(r["p_fail_single"]) else \
        f"{fmt(r['p_fail_single'])}{NBSP}→{NBSP}{fmt(r['p_fail_ensemble'])}"
    second = f"importance_{secondary_metric(metric)}"
    other = _estimate_text(r[second], r[f"{second}_ci_low"], r[f"{second}_ci_high"])
    if second == "importance_auprc" and not pd.isna(r[second]):
        other += f"\nchance{NBSP}{fmt(r['auprc_chance'])}"
    ensemble = fmt(math.nan) if pd.isna(r[f"ensemble_{metric}"]) else \
        f"{fmt(r[f'ensemble_{metric}'])}\ngain{NBSP}{fmt(r['ensemble_gain'], 'ensemble_gain')}"
    return {
        "dataset": r["dataset"], "model": r["model"],
        "members (cells)": f"{fmt(r['members'], 'members')} ({fmt(r['cells'], 'cells')})",
        "bag balanced accuracy": r["bag_balanced_accuracy"],
        f"importance {label} [95%{NBSP}CI]": _estimate_text(
            r[primary], r[f"{primary}_ci_low"], r[f"{primary}_ci_high"]),
        f"importance {secondary_metric(metric).upper()} [95%{NBSP}CI]": other,
        "silent failures": silent,
        f"ensemble {label}": ensemble,
        "P(fail) 1 → K members": p_fail,
        "unit test flagged rate": r["unit_test_flagged_rate"],
        "note": r["note"], "_silent": bool(r["silent_failures"] > 0)
        if not pd.isna(r["silent_failures"]) else False,
    }


def headline_display(headline: pd.DataFrame, metric: str = "auroc") -> pd.DataFrame:
    """The headline table (of importance `metric`) as shown in the page: related numbers
    folded into one cell each (counts with rates, estimates with CIs, ensemble with gain) and
    prose headers, so that it fits a 1280 px wide window; every number is also in the CSV."""
    frame = pd.DataFrame([_display_row(r, metric) for _, r in headline.iterrows()])
    # Columns with nothing to say take no width: the unit test runs on shifted-test rules only.
    if not frame.empty and headline["unit_test_flagged_rate"].isna().all():
        frame = frame.drop(columns="unit test flagged rate")
    if not frame.empty and (headline["note"].fillna("") == "").all():
        frame = frame.drop(columns="note")
    return frame


GUIDE = ("How to read: a trustworthy explainer has importance AUROC well above 0.5 (chance) "
         "whenever the bag classifier is accurate. Points in the shaded corner of the first "
         "figure are silent failures: accurate models whose explanation misses the witnesses. "
         "Colours are fixed per model (Okabe–Ito) in every figure; explainers use a separate "
         "palette. See docs/report.md for details.")


def _cells_block(cells: pd.DataFrame, files: list[str]) -> TableBlock:
    """The cells table, failed cells first, cut to MAX_CELL_ROWS (and every failed cell)."""
    failed_first = cells.sort_values("status", key=lambda s: s != "failed", kind="stable")
    shown = failed_first.head(max(MAX_CELL_ROWS, int((cells["status"] != "done").sum())))
    caption = "Every cell in the store with its status." if len(shown) == len(cells) \
        else (f"Failed cells first; showing {len(shown)} of {len(cells)} cells (all of "
              "them are in the CSV).")
    return TableBlock("cells", "Cells", caption, shown, files)


def _table_blocks(study: StudyView, assets: Assets) -> list[TableBlock]:
    tables, files = assets.tables, assets.table_files
    method = study.method or "–"
    return [
        TableBlock("headline", "Headline: rule × model",
                   f"Means over replicate cells; importance columns refer to {method} and "
                   "pool every trained member; 95% CIs are cluster bootstraps that resample "
                   "whole cells, as on the results page (column ci_source in the CSV). "
                   "Silent failures: members in the silent-failure region; P(fail): share "
                   "of member subsets with AUROC at or below the threshold, single members "
                   "→ the largest ensemble. Every column is in the CSV; the page leaves out "
                   "columns without values (the unit-test rate exists for shifted-test rules "
                   "only).",
                   headline_display(tables.headline, study_metric(study)), files["headline"],
                   warn={"silent failures": "_silent"}, wrap={"note"},
                   text={"dataset", "model", "note"}),
        TableBlock("ranking", "Explainer ranking",
                   "Per explainer over the cells where it ran: mean (sd) of the members' mean "
                   "importance AUROC, ranked; mean rank within a cell compares explainers on "
                   "the same models and data.", tables.ranking, files["ranking"]),
        _cells_block(tables.cells, files["cells"]),
    ]


def render_report(study: StudyView, staging: Path, progress: Progress,
                  arrays: StoredArrays) -> None:
    """Write report.html, figures/ and tables/ of an already loaded study into `staging`;
    `arrays` reads the cells' score arrays (the study's store, opened once)."""
    assets = write_assets(study, staging, arrays, progress, notes=missing_notes(study))
    progress("report.html")
    downloads = [("ensemble-size curve data", assets.table_files["curves"]),
                 ("per-member metrics", assets.table_files["members"])]
    guide = GUIDE + " Data behind the figures: " + "; ".join(
        f"{label} ({', '.join(paths)})" for label, paths in downloads) + "."
    page = render_page(
        title=f"attnsets report: {study.name}",
        meta=(f"Results: {study.directory.resolve()} · {study.n_cells} cells · generated "
              f"{time.strftime('%Y-%m-%d %H:%M')} by attnsets {attnsets.__version__}"),
        summary=summary_points(study, assets.tables.headline, assets.tables.ranking),
        missing=assets.notes, tables=_table_blocks(study, assets), figures=assets.figures,
        guide=guide)
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
        with StoredArrays(study.directory) as arrays:
            render_report(study, staging, tell, arrays)
        _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    tell("done")
    return out / REPORT_NAME
