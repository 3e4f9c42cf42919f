"""The report's figures and tables, computed from a loaded study and written once into a
directory (figures/, tables/): report.html embeds them, the results page links their PNG and
CSV files. `write_assets` is the one writer of both."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from attnsets.metrics import SilentFailureCriteria
from attnsets.report.arrays import StoredArrays
from attnsets.report.collect import StudyView
from attnsets.report.examples import example_figures
from attnsets.report.figures import (
    deletion_figure,
    distribution_figure,
    ensemble_figure,
    silent_failure_figure,
)
from attnsets.report.style import Palette, SavedFigure, report_style, save_figure
from attnsets.report.tables import (
    cells_table,
    curve_table,
    explainer_ranking,
    fmt,
    headline_table,
    to_markdown,
)

FIGURE_DIR = "figures"
TABLE_DIR = "tables"

Progress = Callable[[str], None]
#: name, title, caption, drawer (None: nothing to draw).
FigureSpec = tuple[str, str, str, Callable[[], Figure | None]]

FIGURE_MISSING = {
    "silent_failures": "Figure 'bag performance vs importance': no member has both a bag "
                       "score and an importance score.",
    "importance_distribution": "Figure 'importance distribution': no member has an importance "
                               "AUROC.",
    "ensemble_size": "Figure 'ensemble size': no ensemble-size curves (they need at least 2 "
                     "members per cell and the headline explainer).",
    "deletion_curves": "Figure 'deletion curves': no deletion curves were stored.",
}


@dataclass(frozen=True)
class AssetFormats:
    """What to write: SVG beside each PNG, a Markdown copy beside each CSV, the per-member
    table. The results page keeps PNG and CSV only (SVGs would double the size of a repo)."""

    svg: bool = True
    markdown: bool = True
    members: bool = True


PAGE_FORMATS = AssetFormats(svg=False, markdown=False, members=False)


@dataclass(frozen=True)
class ReportTables:
    """The report's four tables (see attnsets.report.tables)."""

    headline: pd.DataFrame
    ranking: pd.DataFrame
    curves: pd.DataFrame
    cells: pd.DataFrame

    @staticmethod
    def of(study: StudyView) -> ReportTables:
        return ReportTables(headline_table(study), explainer_ranking(study), curve_table(study),
                            cells_table(study))


@dataclass
class Assets:
    """What `write_assets` wrote: the tables, each table's files (relative paths), the saved
    figures in report order with their files, and why a figure is absent (`notes`)."""

    tables: ReportTables
    table_files: dict[str, list[str]]
    figures: list[tuple[SavedFigure, list[str]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def figure_names(self) -> set[str]:
        return {saved.name for saved, _ in self.figures}


def _write_table(frame: pd.DataFrame, directory: Path, name: str, title: str,
                 formats: AssetFormats) -> list[str]:
    (directory / TABLE_DIR).mkdir(parents=True, exist_ok=True)
    frame.to_csv(directory / TABLE_DIR / f"{name}.csv", index=False)
    files = [f"{TABLE_DIR}/{name}.csv"]
    if formats.markdown:
        (directory / TABLE_DIR / f"{name}.md").write_text(to_markdown(frame, title))
        files.append(f"{TABLE_DIR}/{name}.md")
    return files


def write_tables(study: StudyView, tables: ReportTables, directory: Path,
                 formats: AssetFormats) -> dict[str, list[str]]:
    """Each table as CSV (and Markdown) under `directory`/tables; its files by table."""
    named = [("headline", tables.headline, "headline", "Headline: rule × model"),
             ("ranking", tables.ranking, "explainer_ranking", "Explainer ranking"),
             ("curves", tables.curves, "ensemble_curve", "Ensemble-size curve"),
             ("cells", tables.cells, "cells", "Cells")]
    if formats.members:
        named.insert(3, ("members", study.members, "members", "Per-member metrics"))
    return {key: _write_table(frame, directory, name, title, formats)
            for key, frame, name, title in named}


def figure_specs(study: StudyView, curves: pd.DataFrame, palette: Palette) -> list[FigureSpec]:
    """Figures 1, 2, 3 and 5 (the example bags are figure 4)."""
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


class _FigureWriter:
    """Saves figures under `directory`/figures in report order, noting the absent ones."""

    def __init__(self, assets: Assets, directory: Path, formats: AssetFormats,
                 progress: Progress) -> None:
        self.assets, self.directory, self.formats = assets, directory / FIGURE_DIR, formats
        self.progress = progress

    def keep(self, figure: Figure, label: str, name: str, title: str, caption: str) -> None:
        saved = save_figure(figure, self.directory, label, name, title, caption,
                            svg=self.formats.svg)
        files = [f"{FIGURE_DIR}/{name}.png"] + ([f"{FIGURE_DIR}/{name}.svg"]
                                                if self.formats.svg else [])
        self.assets.figures.append((saved, files))

    def draw(self, label: str, spec: FigureSpec) -> None:
        name, title, caption, draw = spec
        self.progress(f"figure: {name}")
        figure = draw()
        if figure is None:
            self.assets.notes.append(FIGURE_MISSING[name])
        else:
            self.keep(figure, label, name, title, caption)


def write_figures(study: StudyView, assets: Assets, directory: Path, arrays: StoredArrays,
                  formats: AssetFormats, progress: Progress) -> None:
    """Figures 1-5 into `assets` (nothing without a finished cell)."""
    if not study.done:
        return
    writer = _FigureWriter(assets, directory, formats, progress)
    palette = Palette.for_names(study.models, study.explainers)
    with report_style():
        specs = figure_specs(study, assets.tables.curves, palette)
        for number, spec in enumerate(specs[:3], start=1):
            writer.draw(str(number), spec)
        progress("figure: example bags")
        examples = example_figures(study, assets.notes, arrays)
        for letter, example in zip("abcdefghij", examples, strict=False):
            writer.keep(example.figure, f"4{letter}" if len(examples) > 1 else "4",
                        f"example_{example.kind}",
                        f"Example {example.kind} bag: good vs bad explanation", example.caption)
        writer.draw("5", specs[3])


def write_assets(study: StudyView, directory: Path, arrays: StoredArrays, progress: Progress,
                 formats: AssetFormats = AssetFormats(), notes: list[str] | None = None
                 ) -> Assets:
    """Compute the report's tables and write them and its figures under `directory`.
    `notes` (what the report cannot show) is extended with the absent figures."""
    progress("tables")
    tables = ReportTables.of(study)
    assets = Assets(tables, write_tables(study, tables, directory, formats),
                    notes=notes if notes is not None else [])
    write_figures(study, assets, directory, arrays, formats, progress)
    return assets
