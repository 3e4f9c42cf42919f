"""The results page (docs/results*.md) as Markdown: the findings with confidence intervals,
the comparison with the published claims and the report's figures and tables, every number
computed from a loaded study. `render_markdown` returns the page's text and writes the
findings' tables; attnsets.report.results_page publishes it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from attnsets.report.arrays import StoredArrays
from attnsets.report.assets import FIGURE_DIR, TABLE_DIR
from attnsets.report.claims import claims_table, estimate_at, unit_test_notes
from attnsets.report.collect import StudyView
from attnsets.report.figures import agreement_figure
from attnsets.report.findings import (
    agreement_correlations,
    agreement_frame,
    ensembling,
    explainer_comparison,
    explanation_quality,
    four_bags_check,
    learned_by_rule_and_model,
    member_frame,
    mixed_ensemble_summary,
    mixed_ensembles,
    pos_neg_check,
    silent_cells,
    unit_tests,
)
from attnsets.report.roles import ATTENTION, model_poolings
from attnsets.report.style import Palette, report_style, save_figure
from attnsets.report.tables import to_markdown
from attnsets.study.record import CellRecord
from attnsets.study.results import cost_summary, stage_table, stage_times

Progress = Callable[[str], None]
ATTENTION_MODALITIES = ("vector", "image", "sequence", "table")
#: Report figures the page shows, in its sections.
EXAMPLE_FIGURES = ("example_image", "example_sequence", "example_vector")


def ci_display_frame(frame: pd.DataFrame, prefixes: dict[str, str], keep: list[str],
                     percent: tuple[str, ...] = ()) -> pd.DataFrame:
    """A display frame: `keep` columns as they are, each prefix as 'value [low, high]'."""
    out = frame[keep].copy()
    for prefix, title in prefixes.items():
        out[title] = [estimate_at(frame, i, prefix).text(percent=prefix in percent)
                      for i in range(len(frame))]
    return out


def glance(members: pd.DataFrame, quality_all: pd.DataFrame, silent: pd.DataFrame,
           ensemble: pd.DataFrame, comparison: pd.DataFrame, units: pd.DataFrame,
           correlations: pd.DataFrame) -> list[str]:
    """The findings in a few sentences, every number taken from the tables below."""
    points = []
    if not quality_all.empty:
        points.append(f"Attention reflects the witnesses (AUROC above the threshold) for "
                      f"{estimate_at(quality_all, 0, 'reflects').text(percent=True)} of trained members "
                      f"with attention, {estimate_at(quality_all, 0, 'reflects_if_learned').text(True)} of "
                      "those that learned the task.")
    if not silent.empty:
        total = int(silent["silent"].sum())
        by_model = silent.groupby("model")["silent"].sum().sort_values(ascending=False)
        top = by_model.index[0]
        points.append(f"{total} silent failures (accurate model, misleading attention); "
                      f"{int(by_model.iloc[0])} of them are `{top}`, worst on "
                      f"{silent.iloc[0]['dataset']} ({int(silent.iloc[0]['silent'])} of "
                      f"{int(silent.iloc[0]['members'])} members; mean AUROC "
                      f"{silent.iloc[0]['auroc']:.3f} at bag score {silent.iloc[0]['bag_score']:.3f}).")
    elif not quality_all.empty:
        points.append("No silent failure was observed.")
    if not ensemble.empty:
        everything = ensemble[ensemble["model"] == "all"]
        points.append(f"Ensembling {int(everything.iloc[0]['k_max'])} members raises the mean "
                      f"AUROC by {estimate_at(everything, 0, 'auroc_gain').text()} and lowers P(fail) "
                      f"by {estimate_at(everything, 0, 'p_fail_reduction').text(percent=True)}.")
    if not comparison.empty:
        ranked = comparison[~comparison["explainer"].isin(["random"])].sort_values(
            "auroc", ascending=False)
        best = ranked.iloc[0]
        table = comparison.set_index("explainer")
        line = (f"Best explainer by mean AUROC: `{best['explainer']}` ({best['auroc']:.3f} over "
                f"{int(best['cells'])} cells)")
        if "attention" in table.index:
            line += (f"; attention {float(table.loc['attention', 'auroc']):.3f} over "
                     f"{int(table.loc['attention', 'cells'])} cells (explainers run on different "
                     "models, so compare the paired columns of section 4).")
        points.append(line if line.endswith(".") else line + ".")
    if not units.empty:
        for rule, part in units.groupby("rule", sort=False):
            failing = part[part["flagged"] >= 0.5]["model"].tolist()
            points.append(f"`{rule}` unit test: {len(failing)} of {len(part)} models have at "
                          "least half of their members flagged"
                          + (f" ({', '.join(failing)})." if failing else "."))
    if not correlations.empty:
        cell = correlations[correlations["level"] == "cell"].sort_values("spearman",
                                                                          ascending=False)
        if not cell.empty:
            row = cell.iloc[0]
            points.append(f"Label-free member agreement tracks explanation quality: per trained "
                          f"ensemble, `{row['signal']}` has Spearman {row['spearman']:.2f} "
                          f"[{row['spearman_ci_low']:.2f}, {row['spearman_ci_high']:.2f}] with the "
                          "true consensus AUROC.")
    return [f"- {p}" for p in points]


def _section_helps_or_hurts(ensemble: pd.DataFrame, mixed: pd.DataFrame) -> list[str]:
    """When ensembling helps and when it hurts: models whose gain CI lies above / below 0, and
    the heterogeneous ensembles of `[study] mixed_ensembles`."""
    lines = ["### When does ensembling help, and when does it hurt?", ""]
    per_model = ensemble[ensemble["model"] != "all"] if not ensemble.empty else ensemble
    if not per_model.empty:
        helps = per_model.loc[per_model["auroc_gain_ci_low"] > 0, "model"].tolist()
        hurts = per_model.loc[per_model["auroc_gain_ci_high"] < 0, "model"].tolist()
        lines += [f"Averaging members of one model raises the importance AUROC (gain CI above 0) "
                  f"for {', '.join(helps) or 'no model'} and lowers it (CI below 0) for "
                  f"{', '.join(hurts) or 'no model'}. Averaging removes the noise members do not "
                  "share; members that share a bias (the same wrong instances ranked first) are "
                  "not fixed by it, and their consensus is as wrong as each of them.", ""]
    if mixed.empty:
        lines += ["No heterogeneous ensembles in this study (`[study] mixed_ensembles = "
                  "{name = [models]}` combines members of different poolings).", ""]
        return lines
    lines += ["Heterogeneous ensembles (`[study] mixed_ensembles`): all members of the listed "
              "models combined on the same test bags, against the members' mean and the best "
              "of the models' own ensembles (CIs over dataset x replicate).", "",
              to_markdown(ci_display_frame(mixed, {"auroc_members": "members", "auroc_best_homogeneous":
                                           "best homogeneous", "auroc_mixed": "mixed",
                                           "gain_vs_members": "gain vs members",
                                           "gain_vs_best": "gain vs best"},
                                   ["ensemble", "models", "datasets"], ())).rstrip(), ""]
    return lines


def learned_share_grid(learned: pd.DataFrame, order: list[str] | None = None) -> pd.DataFrame:
    """`learned_by_rule_and_model` as a display table: rows rules, columns models (in `order`,
    then any other), entries "share (learned/members)", "–" where a model has no member."""
    present = set(learned["model"])
    models = [m for m in order or [] if m in present]
    models += [m for m in dict.fromkeys(learned["model"]) if m not in models]
    rules = list(dict.fromkeys(learned["rule"]))
    cells = {(r.rule, r.model): f"{r.learned_share:.0%} ({r.learned}/{r.members})"
             for r in learned.itertuples()}
    return pd.DataFrame([{"rule": rule, **{m: cells.get((rule, m), "–") for m in models}}
                         for rule in rules], columns=["rule", *models])


def _learned_by_rule_and_model(members: pd.DataFrame, models: list[str],
                               tables: dict[str, pd.DataFrame]) -> list[str]:
    learned = learned_by_rule_and_model(members, order=models)
    tables["learned_by_rule_and_model"] = learned
    if learned.empty:
        return []
    return ["**Learned, by rule and model.** A silent failure can only be observed on a member "
            "that learned its task. A rule that one architecture never learns while others do "
            "says something about the architecture, not about its attention (e.g. `all_of` for "
            "single-head attention pooling with a linear classifier: the bag's logit is an "
            "attention-weighted average of its instances' logits, so a bag with both concepts "
            "scores between its A and its B instances and is told from a bag with only one of "
            "them only by how much weight the background takes, a count rather than a "
            "conjunction). Share of each model's members that learned the task:", "",
            to_markdown(learned_share_grid(learned, models)).rstrip(), ""]


def _section_quality(study: StudyView, members: pd.DataFrame) -> tuple[list[str], dict[str, pd.DataFrame]]:
    tables: dict[str, pd.DataFrame] = {}
    lines = ["## 1. How often does attention reflect the witnesses?", "",
             "Per trained member with attention weights (models `mean` and `max` have none): "
             "mean importance AUROC, the share of members whose AUROC is above the threshold "
             "(all members, and members that learned the task), and the silent-failure rate; "
             "`learned_share` is the share of members that learned the task (a silent failure "
             "can only be observed on those). Brackets: 95% cluster-bootstrap CIs over cells.",
             ""]
    prefixes = {"auroc": "AUROC", "reflects": "above threshold",
                "reflects_if_learned": "above threshold if learned", "silent": "silent"}
    percent = ("reflects", "reflects_if_learned", "silent")
    attention_rows = members[members["explainer"] == ATTENTION].assign(scope="all")
    everything = explanation_quality(attention_rows, "scope")
    tables["quality_all"] = everything
    for by, title, order in (("modality", "modality", list(ATTENTION_MODALITIES)),
                             ("rule", "rule", None), ("model", "model", study.models)):
        frame = explanation_quality(members, by, order=order)
        tables[f"quality_by_{by}"] = frame
        if frame.empty:
            continue
        lines += [f"**By {title}.**", "",
                  to_markdown(ci_display_frame(frame, prefixes, [by, "cells", "members", "learned",
                                                         "learned_share"], percent)).rstrip(), ""]
        if by == "rule":
            lines += _learned_by_rule_and_model(members, study.models, tables)
    if not everything.empty:
        lines += ["**Overall.**", "", to_markdown(ci_display_frame(
            everything, prefixes, ["scope", "cells", "members", "learned"], percent)).rstrip(), ""]
    return lines, tables


def _section_cost(stages: pd.DataFrame, totals: dict[str, float]) -> list[str]:
    """Where the worker time of the study went, by stage (from the timings in each cell)."""
    if stages.empty:
        return []
    return ["## Cost of this study", "",
            f"{cost_summary(totals)} (pauses between resumed runs left out). Worker time by "
            "stage, summed over cells; cells written before the assessment's stages were timed "
            "count it as one `assessment` entry:", "", to_markdown(stage_table(stages)).rstrip(),
            ""]


def run_facts(records: list[CellRecord]) -> str:
    """One sentence on how the store was produced, from its finished records: summed cell
    time, first start, last finish and the package versions of the cells."""
    if not records:
        return ""
    first = min(r.started for r in records)
    last = max(r.finished for r in records)
    total = sum(r.wall_seconds for r in records)
    stamp = "%Y-%m-%d %H:%M UTC"
    versions = sorted({json.dumps(r.versions, sort_keys=True) for r in records})
    shown = "; ".join(", ".join(f"{k} {v}" for k, v in sorted(json.loads(p).items()))
                      for p in versions)
    return (f"The cells took {total / 3600:.1f} h of worker time in total; the first started "
            f"{time.strftime(stamp, time.gmtime(first))} and the last finished "
            f"{time.strftime(stamp, time.gmtime(last))} (wall-clock span, including any "
            f"interruption before a `--resume`). Versions: {shown}.")


@dataclass
class Findings:
    """The findings' tables of one study (CSV files of the page, by name) and what the
    sections need beside them."""

    members: pd.DataFrame
    quality_lines: list[str]
    tables: dict[str, pd.DataFrame]
    bags: pd.DataFrame
    poolings: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.tables[name]


def compute_findings(study: StudyView, arrays: StoredArrays, tell: Progress) -> Findings:
    """Every table of the page's findings, in the order their CSV files are written."""
    tell("findings")
    members = member_frame(study)
    quality_lines, tables = _section_quality(study, members)
    poolings = model_poolings(study)
    ensemble = ensembling(study, order=study.models)
    units = unit_tests(study, order=study.models)
    pos_neg = pos_neg_check(members, study)
    four_bags = four_bags_check(members, study)
    tables.update({
        "silent_cells": silent_cells(study), "ensembling": ensemble,
        "mixed_ensembles": mixed_ensemble_summary(mixed_ensembles(study, arrays=arrays)),
        "explainer_comparison": explainer_comparison(members, order=study.explainers),
        "unit_tests": units, "pos_neg": pos_neg, "four_bags": four_bags})
    tell("agreement vs truth")
    bags = agreement_frame(study, arrays=arrays)
    tables["agreement_correlations"] = agreement_correlations(bags) if not bags.empty \
        else pd.DataFrame()
    tables["claims"] = claims_table(tables["quality_all"], ensemble, units, pos_neg, members,
                                    four_bags, poolings)
    return Findings(members, quality_lines, tables, bags, poolings)


class _Page:
    """The page's lines, with its figures linked from the assets directory."""

    def __init__(self, assets_name: str, figures: set[str]) -> None:
        self.assets_name, self.figures = assets_name, figures
        self.lines: list[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def table(self, frame: pd.DataFrame) -> None:
        self.add(to_markdown(frame).rstrip(), "")

    def figure(self, name: str, title: str) -> None:
        if name in self.figures:
            self.add(f"![{title}]({self.assets_name}/{FIGURE_DIR}/{name}.png)", "")


def _introduction(page: _Page, study: StudyView, found: Findings, command: str,
                  facts: str) -> None:
    criteria = study.done[0].criteria
    n_members = int(study.members.drop_duplicates(["cell_id", "member"]).shape[0])
    name = page.assets_name
    page.add(
        f"# Results: the `{study.name}` study", "",
        f"Generated by `{command}` from the results store `{study.directory}/results.sqlite`: "
        f"{len(study.done)} finished cells ({len(study.failed)} failed), {len(study.datasets)} "
        f"datasets x {len(study.models)} models, {n_members} trained members, explainers "
        f"{', '.join(study.explainers)}. Do not edit this page by hand: rerun the command. "
        f"The tables behind every number are in [{name}/{TABLE_DIR}]({name}/{TABLE_DIR}/). "
        f"{facts}", "",
        f"Thresholds: a member *learned* the task when its bag {criteria.bag_metric} is at least "
        f"{criteria.min_bag_score}; its explanation *reflects the witnesses* when the importance "
        f"{criteria.importance_metric} (per bag, averaged over bags with witnesses and "
        f"non-witnesses) is above {criteria.max_importance}; a *silent failure* is a member "
        "that learned the task and does not reflect the witnesses. Intervals are 95% percentile "
        "bootstraps that resample whole cells (the members of a cell share their data).", "",
        "## Findings at a glance", "",
        *glance(found.members, found["quality_all"], found["silent_cells"],
                found["ensembling"], found["explainer_comparison"], found["unit_tests"],
                found["agreement_correlations"]),
        "",
        "## Comparison with the published claims", "")
    page.table(found["claims"])


def _sections_silent_and_ensembles(page: _Page, found: Findings) -> None:
    silent, ensemble = found["silent_cells"], found["ensembling"]
    page.add("## 2. Where and how often do silent failures happen?", "",
             f"{int(silent['silent'].sum()) if not silent.empty else 0} silent attention "
             f"members in {len(silent)} dataset x model pairs (worst first; all pairs with at "
             "least one silent member).", "")
    if not silent.empty:
        page.table(silent.head(25))
    page.figure("silent_failures", "Bag score vs importance AUROC per member")
    page.add("## 3. How much does ensembling reduce the risk?", "",
             "Per model, from each cell's ensemble-size curve (random member subsets of size k, "
             "combined by the study's rule): mean AUROC and the probability that the "
             "explanation is at or below the threshold (P(fail)) for one member and for the "
             "whole ensemble, the paired gain, and the silent-failure rate of single members "
             "vs the combined ensemble.", "")
    if not ensemble.empty:
        page.table(ci_display_frame(
            ensemble, {"auroc_single": "AUROC k=1", "auroc_ensemble": "AUROC k=max",
                       "auroc_gain": "gain", "p_fail_single": "P(fail) k=1",
                       "p_fail_ensemble": "P(fail) k=max", "p_fail_reduction": "reduction",
                       "silent_single": "silent k=1", "silent_ensemble": "silent ensemble"},
            ["model", "cells", "k_max"],
            ("p_fail_single", "p_fail_ensemble", "p_fail_reduction", "silent_single",
             "silent_ensemble")))
    page.figure("ensemble_size", "Ensemble-size curves")
    page.add(*_section_helps_or_hurts(ensemble, found["mixed_ensembles"]))


def _sections_explainers_and_units(page: _Page, found: Findings) -> None:
    comparison, units = found["explainer_comparison"], found["unit_tests"]
    page.add("## 4. How do the other explainers compare with attention?", "",
             "Per explainer over every member it ran on (all models); the paired columns use "
             "only members of models with attention weights and compare on the same member.", "")
    if not comparison.empty:
        page.table(ci_display_frame(
            comparison, {"auroc": "AUROC", "silent": "silent", "minus_reference":
                         "AUROC - attention", "beats_reference": "beats attention"},
            ["explainer", "cells", "members", "paired_members"], ("silent", "beats_reference")))
    page.figure("deletion_curves", "Deletion curves")
    page.add("## 5. Which models fail the algorithmic unit tests?", "",
             "Rules `poison` and `false_frequency` shift the test split on purpose (Raff & "
             "Holt). A member is flagged when it passes the training distribution (validation "
             "bag score >= 0.9) and then fails (< 0.6) or drops by more than 0.2 on the shifted "
             "test.", "")
    if not units.empty:
        page.table(ci_display_frame(units, {"flagged": "members flagged"},
                                    ["rule", "model", "cells", "members", "val_score",
                                     "test_score", "ensemble_flagged"], ("flagged",)))
        page.add(*unit_test_notes(units, found.poolings))


def _sections_agreement_and_examples(page: _Page, found: Findings) -> None:
    page.add("## 6. Is member agreement a usable reliability signal without labels?", "",
             "For every cell with attention, the members' attention is compared without any "
             "label (mean pairwise Spearman correlation per bag; top-10% overlap) and set "
             "against the true importance AUROC of their consensus. This is what "
             "`attnsets explain-data` reports on a user's own data (docs/own_data.md).", "")
    if not found["agreement_correlations"].empty:
        page.table(found["agreement_correlations"])
    page.figure("agreement_vs_truth", "Member agreement vs true explanation quality")
    examples = [n for n in EXAMPLE_FIGURES if n in page.figures]
    if examples:
        page.add("## 7. Example bags", "")
        for name in examples:
            page.figure(name, name.replace("_", " "))


def _limitations(study: StudyView) -> list[str]:
    return ["## Limitations", "",
            "- Synthetic data only: the witnesses are known because we made them. The numbers "
            "say how these models behave on these rules, sizes and training budgets.",
            f"- {len({c.replicate for c in study.done})} replicate dataset seed(s) per "
            "dataset x model; intervals over cells are wide where a group has few cells.",
            "- The thresholds above decide what counts as learned, reflecting and silent; the "
            "per-member tables (CSV) allow other choices.", ""]


def _agreement_figure(study: StudyView, bags: pd.DataFrame, directory: Path) -> bool:
    """Figure A (agreement vs truth) as PNG under `directory`/figures; False without data."""
    if bags.empty:
        return False
    palette = Palette.for_names(study.models, study.explainers)
    with report_style():
        figure = agreement_figure(bags, study.models, palette)
        if figure is None:
            return False
        save_figure(figure, directory / FIGURE_DIR, "A", "agreement_vs_truth",
                    "Member agreement vs true explanation quality", "", svg=False)
    return True


def render_markdown(study: StudyView, directory: Path, assets_name: str, figures: set[str],
                    arrays: StoredArrays, command: str, tell: Progress) -> str:
    """The page's text; the findings' tables (and the stage times) as CSV and figure A as PNG
    under `directory` (the assets directory, which holds the report's `figures` already)."""
    found = compute_findings(study, arrays, tell)
    for name, frame in found.tables.items():
        frame.to_csv(directory / TABLE_DIR / f"{name}.csv", index=False)
    if _agreement_figure(study, found.bags, directory):
        figures = figures | {"agreement_vs_truth"}
    records = [r for r in study.records if r.done]
    stages, totals = stage_times(records)
    stages.to_csv(directory / TABLE_DIR / "stage_times.csv", index=False)
    page = _Page(assets_name, figures)
    _introduction(page, study, found, command, run_facts(records))
    page.add(*found.quality_lines)
    page.figure("importance_distribution", "Importance AUROC per dataset and model")
    _sections_silent_and_ensembles(page, found)
    _sections_explainers_and_units(page, found)
    _sections_agreement_and_examples(page, found)
    page.add(*_section_cost(stages, totals), *_limitations(study))
    return "\n".join(page.lines)
