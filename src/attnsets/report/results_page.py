"""docs/results.md from a results store: the report's figures and tables plus the findings with
confidence intervals and a comparison with the published claims. Every number on the page is
computed here from the store, so the page is regenerated, never edited by hand."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from attnsets.errors import SpecError
from attnsets.metrics.cluster import Estimate, cluster_bootstrap
from attnsets.report.build import FIGURE_DIR, TABLE_DIR, render_report
from attnsets.report.collect import StudyView, open_results
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
from attnsets.report.style import Palette, new_figure, report_style, save_figure
from attnsets.report.tables import to_markdown
from attnsets.study.record import CellRecord
from attnsets.study.results import cost_summary, stage_table, time_by_stage

Progress = Callable[[str], None]
#: Report figures copied next to the page (PNG only: the SVGs double the size of the repo).
REPORT_FIGURES = ("silent_failures", "importance_distribution", "ensemble_size",
                  "deletion_curves", "example_image", "example_sequence", "example_vector")
REPORT_TABLES = ("headline", "explainer_ranking", "ensemble_curve", "cells")
ATTENTION_MODALITIES = ("vector", "image", "sequence", "table")


def _est(frame: pd.DataFrame, row: int, prefix: str) -> Estimate:
    return Estimate(float(frame.iloc[row][prefix]), float(frame.iloc[row][f"{prefix}_ci_low"]),
                    float(frame.iloc[row][f"{prefix}_ci_high"]), 0, 0)


def _with_ci(frame: pd.DataFrame, prefixes: dict[str, str], keep: list[str],
             percent: tuple[str, ...] = ()) -> pd.DataFrame:
    """A display frame: `keep` columns as they are, each prefix as 'value [low, high]'."""
    out = frame[keep].copy()
    for prefix, title in prefixes.items():
        out[title] = [_est(frame, i, prefix).text(percent=prefix in percent)
                      for i in range(len(frame))]
    return out


def _figure_line(name: str, title: str, assets: str) -> str:
    return f"![{title}]({assets}/{FIGURE_DIR}/{name}.png)"


# --------------------------------------------------------------------------- figures


def agreement_figure(bags: pd.DataFrame, models: list[str], palette: Palette):  # type: ignore[no-untyped-def]
    """Left: per cell, mean rank agreement of the members vs the consensus AUROC. Right: per
    bag, consensus AUROC by decile of rank agreement (median and interquartile range)."""
    eligible = bags[np.isfinite(bags["consensus_auroc"]) & np.isfinite(bags["rank_agreement"])]
    if eligible.empty:
        return None
    figure = new_figure(10.0, 4.2)
    left, right = figure.subplots(1, 2)
    runs = eligible.groupby(["cell_id", "model"], sort=False)[
        ["rank_agreement", "consensus_auroc"]].mean().reset_index()
    for model in models:
        part = runs[runs["model"] == model]
        if part.empty:
            continue
        left.scatter(part["rank_agreement"], part["consensus_auroc"], s=18, alpha=0.8,
                     color=palette.model(model), marker=palette.marker(model), label=model)
    left.set_xlabel("member agreement (mean Spearman between members)")
    left.set_ylabel("consensus importance AUROC (truth)")
    left.set_title("per trained ensemble (cell)")
    left.axhline(0.5, color="grey", lw=0.8, ls=":")
    left.legend(fontsize=7, loc="lower right")
    deciles = pd.qcut(eligible["rank_agreement"].rank(method="first"), 10, labels=False)
    grouped = eligible.groupby(deciles)
    centre = grouped["rank_agreement"].median()
    median = grouped["consensus_auroc"].median()
    q1, q3 = grouped["consensus_auroc"].quantile(0.25), grouped["consensus_auroc"].quantile(0.75)
    right.fill_between(centre, q1, q3, color="#88CCEE", alpha=0.5, label="interquartile range")
    right.plot(centre, median, color="#332288", marker="o", label="median")
    right.axhline(0.5, color="grey", lw=0.8, ls=":")
    right.set_xlabel("member agreement of the bag (decile medians)")
    right.set_ylabel("consensus importance AUROC of the bag")
    right.set_title("per bag, by agreement decile")
    right.legend(fontsize=7, loc="lower right")
    return figure


# --------------------------------------------------------------------------- claims


#: Attention counts as "near random" when it recovers less than this share of the room between
#: the random baseline and a perfect score: (ours - random) / (1 - random) < margin. Relative to
#: the baseline, so a task whose random AUPRC-2 is 0.42 and one where it is 0.28 are judged alike.
NEAR_RANDOM_MARGIN = 0.1


def _verdict(agree: bool, disagree: bool, precondition: str | None = None) -> str:
    """agree / disagree / partly; "inconclusive" with the reason when a precondition of the
    claim fails (e.g. the model did not learn the task the claim is about)."""
    if precondition is not None:
        return f"inconclusive ({precondition})"
    return "agree" if agree else ("disagree" if disagree else "partly")


def above_random(value: float, random: float) -> float:
    """(value - random) / (1 - random): the share of the room above the random baseline."""
    return (value - random) / (1.0 - random) if random < 1.0 else math.nan


#: MILLI's perturbation explainers ("Single", "One Removed") under our names.
MILLI_METHODS = ("single", "leave_one_out")


def four_bags_row(dataset: str, four_bags: pd.DataFrame) -> dict[str, str]:
    """The MILLI claim on one four_bags dataset, from `four_bags_check` rows: the better of
    single / leave_one_out (by AUPRC-2) against attention, CI against CI."""
    part = four_bags[four_bags["dataset"] == dataset].reset_index(drop=True)
    where = {str(m): i for i, m in enumerate(part["explainer"])}
    first = part.iloc[where.get("attention", 0)]  # the same members for every explainer
    members, share = int(first["members"]), float(first["learned_share"])
    learned = int(round(share * members))

    def estimate(method: str) -> Estimate | None:
        return _est(part, where[method], "auprc2") if method in where else None

    attention = estimate("attention")
    candidates = [(m, e) for m in MILLI_METHODS if (e := estimate(m)) is not None
                  and not math.isnan(e.value)]
    texts = []
    for method in ("attention", *MILLI_METHODS, "random"):
        found = estimate(method)
        texts.append(f"{method} {found.text() if found is not None else 'not run'}")
    precondition = None
    if share < 0.5:
        precondition = (f"{share:.0%} ({learned}/{members}) of the attention model's members "
                        "learned the task: the claim is about models that learned")
    elif not candidates:
        precondition = "neither single nor leave_one_out was run"
    elif attention is None or math.isnan(attention.value):
        precondition = "no attention scores"
    agree = disagree = False
    best = ""
    if precondition is None and attention is not None:
        best, top = max(candidates, key=lambda item: item[1].value)
        agree = top.low > attention.high
        disagree = attention.low > top.high
    return {
        "claim": "Early et al. (MILLI): on FOUR-MNIST-BAGS and others, model-agnostic "
                 "perturbation explainers (Single, One Removed) identify the key instances up "
                 "to 30% more accurately than the model's inherent interpretability (attention)",
        "our measurement": f"{dataset} (evidence_convention {first['convention']}, AUPRC-2 over "
                           f"{first['classes']} classes of signed evidence; MILLI scores "
                           f"NDCG@n / AOPC), attention model: bag AUROC "
                           f"{float(first['bag_auroc']):.3f}, learned share {share:.0%} "
                           f"({learned}/{members}); AUPRC-2 {', '.join(texts)}"
                           + (f"; better of the two: {best}" if best else ""),
        "rule": "with at least half of the attention model's members learned and single or "
                "leave_one_out run (else inconclusive): agree if the better of single / "
                "leave_one_out has its CI above attention's, disagree if attention's CI lies "
                "above it, partly otherwise; like for like only with evidence_convention milli "
                "and all classes",
        "verdict": _verdict(agree, disagree, precondition)}


def _unit_test_notes(units: pd.DataFrame) -> list[str]:
    """Why a flag means the model, not the test: the oracle check, and the count-free poolings
    that were flagged on false_frequency anyway."""
    lines = ["The tests themselves are checked by oracles (tests/test_oracles.py): hand-set "
             "models run through the same rules, where an instance detector + max (MIL-valid "
             "by construction) passes every test while a counting model fails "
             "`false_frequency` and a model keyed to the poison's absence fails `poison`; bag "
             "sizes carry no information about label or split. A flag therefore says what the "
             "trained members learned."]
    counted = units[(units["rule"] == "false_frequency")
                    & units["model"].isin(["max", "instance_max"]) & (units["flagged"] >= 0.5)]
    if not counted.empty:
        names = ", ".join(f"`{m}`" for m in counted["model"])
        lines[0] += (f" {names} cannot count in principle, yet their trained members are "
                     "flagged on `false_frequency`: the maximum over noisy copies of a concept "
                     "grows with the number of copies (2-3 in training positives, 1 in training "
                     "negatives, 35-44 in test negatives), so a max-pooled feature of the "
                     "frequent concept is a weak count that training rewards.")
    return [lines[0], ""]


def claims_table(quality_all: pd.DataFrame, ensemble: pd.DataFrame, units: pd.DataFrame,
                 pos_neg: pd.DataFrame, members: pd.DataFrame,
                 four_bags: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per published claim of REFERENCES.md that this study can test, with the
    measurement, the decision rule and the verdict. `four_bags` is `four_bags_check`'s frame
    (MILLI's claim, one row per four_bags dataset)."""
    rows = []
    if not quality_all.empty:
        reflects = _est(quality_all, 0, "reflects_if_learned")
        rows.append({
            "claim": "Haab et al.: attention often reflects instance importance",
            "our measurement": f"{reflects.text(percent=True)} of attention members that learned "
                               "the task have importance AUROC above the threshold",
            "rule": "agree if the estimate is >= 50%, disagree if its CI lies below 50% "
                    "(inconclusive if no attention member learned its task)",
            "verdict": _verdict(reflects.value >= 0.5, reflects.high < 0.5,
                                None if int(quality_all.iloc[0]["learned"]) else
                                "no attention member learned its task")})
        silent = _est(quality_all, 0, "silent")
        attention_members = members[members["explainer"] == "attention"]
        n_silent = int(attention_members["silent"].sum())
        n_learned = int(attention_members["learned"].sum())
        rows.append({
            "claim": "Haab et al.: silent failures happen (accurate model, misleading attention)",
            "our measurement": f"{n_silent} silent attention members; rate "
                               f"{silent.text(percent=True)}",
            "rule": "agree if at least one silent failure is observed (inconclusive if no "
                    "attention member learned its task: only those can fail silently)",
            "verdict": _verdict(n_silent > 0, n_silent == 0,
                                None if n_silent or n_learned else
                                "no attention member learned its task")})
    if not ensemble.empty:
        everything = ensemble[ensemble["model"] == "all"]
        reduction = _est(everything, 0, "p_fail_reduction")
        single = _est(everything, 0, "p_fail_single")
        combined = _est(everything, 0, "p_fail_ensemble")
        k_max = int(everything.iloc[0]["k_max"])
        rows.append({
            "claim": "Haab et al.: ensembling seeds makes attention explanations reliable",
            "our measurement": f"P(AUROC at or below threshold) {single.text(percent=True)} for "
                               f"one member vs {combined.text(percent=True)} for {k_max}; "
                               f"reduction {reduction.text(percent=True)}",
            "rule": "agree if the reduction's CI lies above 0, disagree if it lies below 0",
            "verdict": _verdict(reduction.low > 0, reduction.high < 0)})
    attention_pn = pos_neg[pos_neg["explainer"] == "attention"] if not pos_neg.empty else pos_neg
    random_pn = pos_neg[pos_neg["explainer"] == "random"] if not pos_neg.empty else pos_neg
    ig_pn = pos_neg[pos_neg["explainer"] == "integrated_gradients"] if not pos_neg.empty \
        else pos_neg
    for dataset in (attention_pn["dataset"].tolist() if not attention_pn.empty else []):
        att_rows = attention_pn[attention_pn["dataset"] == dataset]
        att, att_auprc2 = att_rows.iloc[0], _est(att_rows, 0, "auprc2")
        rnd = random_pn[random_pn["dataset"] == dataset]
        ig = ig_pn[ig_pn["dataset"] == dataset]
        rnd_value = float(rnd.iloc[0]["auprc2"]) if not rnd.empty else math.nan
        ig_text = f"; integrated gradients {float(ig.iloc[0]['auprc2']):.3f}" if not ig.empty \
            else ""
        gain = above_random(float(att["auprc2"]), rnd_value)
        near_random = abs(gain) < NEAR_RANDOM_MARGIN
        precondition = None if att["bag_auroc"] >= 0.9 else \
            f"bag AUROC {att['bag_auroc']:.3f} < 0.9: the claim is about models that learned"
        if math.isnan(gain):
            precondition = "no random baseline in this study"
        rows.append({
            "claim": "xMIL: on Pos-Neg, attention MIL has high bag AUROC (0.97) but attention "
                     "AUPRC-2 near random (0.45 vs 0.42); IG about 0.9",
            "our measurement": f"{dataset} (construction {att.get('construction', 'attnsets')}, "
                               f"AUPRC-2 over {att.get('classes', 'label')} classes), attention "
                               f"model: bag AUROC {att['bag_auroc']:.3f}; attention AUPRC-2 "
                               f"{att_auprc2.text()} "
                               f"vs random {rnd_value:.3f} "
                               f"({100 * gain:+.0f}% of the room above random){ig_text}",
            "rule": f"with bag AUROC >= 0.9 (else inconclusive): agree if attention recovers less "
                    f"than {NEAR_RANDOM_MARGIN:.0%} of the room between random and perfect AUPRC-2, "
                    "disagree otherwise; like for like only with construction xmil and all classes",
            "verdict": _verdict(near_random, not near_random, precondition)})
    if four_bags is not None and not four_bags.empty:
        for dataset in dict.fromkeys(four_bags["dataset"]):
            rows.append(four_bags_row(dataset, four_bags))
    if not units.empty:
        by_model = units.groupby("model", sort=False)["flagged"].max()
        with_attention = set(members.loc[members["explainer"] == "attention", "model"])
        attention_models = [m for m in by_model.index if m in with_attention]
        failing = [m for m in attention_models if by_model[m] >= 0.5]
        passes_training = units.groupby("model", sort=False)["val_score"].max()
        trained = [m for m in attention_models if passes_training[m] >= 0.9]
        rows.append({
            "claim": "Raff & Holt: well-known deep MIL models each fail at least one algorithmic "
                     "unit test (poison / false frequency)",
            "our measurement": f"{len(failing)} of {len(attention_models)} attention-based models "
                               f"fail (>= half of their members flagged) on at least one test"
                               + (f": {', '.join(failing)}" if failing else ""),
            "rule": "agree if every model fails one, disagree if none does (inconclusive if no "
                    "model passes the training distribution: a test can only flag those)",
            "verdict": _verdict(len(failing) == len(attention_models) and failing != [],
                                not failing, None if trained else
                                "no attention model reaches 0.9 on the training distribution")})
    digits = members[(members["rule"] == "presence") & (members["modality"] == "image")
                     & (members["explainer"] == "attention")
                     & members["model"].isin(["attention", "gated_attention"])]
    digits = digits[digits["learned"]]  # the claim is about models that find the 9s' bags
    if not digits.empty:
        estimate = cluster_bootstrap(digits["importance"], digits["cell_id"])
        rows.append({
            "claim": "Ilse et al.: (gated) attention marks the key digit in MNIST-bags-style data",
            "our measurement": f"attention / gated_attention members that learned image presence "
                               f"bags: mean importance AUROC {estimate.text()}",
            "rule": "agree if the mean AUROC is >= 0.8, disagree if its CI lies below 0.7",
            "verdict": _verdict(estimate.value >= 0.8, estimate.high < 0.7)})
    return pd.DataFrame(rows, columns=["claim", "our measurement", "rule", "verdict"])


def glance(members: pd.DataFrame, quality_all: pd.DataFrame, silent: pd.DataFrame,
           ensemble: pd.DataFrame, comparison: pd.DataFrame, units: pd.DataFrame,
           correlations: pd.DataFrame) -> list[str]:
    """The findings in a few sentences, every number taken from the tables below."""
    points = []
    if not quality_all.empty:
        points.append(f"Attention reflects the witnesses (AUROC above the threshold) for "
                      f"{_est(quality_all, 0, 'reflects').text(percent=True)} of trained members "
                      f"with attention, {_est(quality_all, 0, 'reflects_if_learned').text(True)} of "
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
                      f"AUROC by {_est(everything, 0, 'auroc_gain').text()} and lowers P(fail) "
                      f"by {_est(everything, 0, 'p_fail_reduction').text(percent=True)}.")
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


# --------------------------------------------------------------------------- the page


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
              to_markdown(_with_ci(mixed, {"auroc_members": "members", "auroc_best_homogeneous":
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
    attention_rows = members[members["explainer"] == "attention"].assign(scope="all")
    everything = explanation_quality(attention_rows, "scope")
    tables["quality_all"] = everything
    for by, title, order in (("modality", "modality", list(ATTENTION_MODALITIES)),
                             ("rule", "rule", None), ("model", "model", study.models)):
        frame = explanation_quality(members, by, order=order)
        tables[f"quality_by_{by}"] = frame
        if frame.empty:
            continue
        lines += [f"**By {title}.**", "",
                  to_markdown(_with_ci(frame, prefixes, [by, "cells", "members", "learned",
                                                         "learned_share"], percent)).rstrip(), ""]
        if by == "rule":
            lines += _learned_by_rule_and_model(members, study.models, tables)
    if not everything.empty:
        lines += ["**Overall.**", "", to_markdown(_with_ci(
            everything, prefixes, ["scope", "cells", "members", "learned"], percent)).rstrip(), ""]
    return lines, tables


def run_facts(records: list[CellRecord]) -> str:
    """One sentence on how the store was produced: summed cell time, first start, last finish
    and the package versions of the cells."""
    import time

    done = [r for r in records if r.done]
    if not done:
        return ""
    first = min(r.started for r in done)
    last = max(r.finished for r in done)
    total = sum(r.wall_seconds for r in done)
    distinct = {tuple(sorted(r.versions.items())) for r in done}
    parsed = [dict(items) for items in sorted(distinct)]
    stamp = "%Y-%m-%d %H:%M UTC"
    shown = "; ".join(", ".join(f"{k} {v}" for k, v in sorted(p.items())) for p in parsed)
    return (f"The cells took {total / 3600:.1f} h of worker time in total; the first started "
            f"{time.strftime(stamp, time.gmtime(first))} and the last finished "
            f"{time.strftime(stamp, time.gmtime(last))} (wall-clock span, including any "
            f"interruption before a `--resume`). Versions: {shown}.")


def _section_cost(stages: pd.DataFrame, totals: dict[str, float]) -> list[str]:
    """Where the worker time of the study went, by stage (from the timings in each cell)."""
    if stages.empty:
        return []
    return ["## Cost of this study", "",
            f"{cost_summary(totals)} (pauses between resumed runs left out). Worker time by "
            "stage, summed over cells; cells written before the assessment's stages were timed "
            "count it as one `assessment` entry:", "", to_markdown(stage_table(stages)).rstrip(),
            ""]


def write_results_page(results_dir: str | Path, out: str | Path, *,
                       command: str = "make results", progress: Progress | None = None) -> Path:
    """Write `out` (Markdown) and its assets directory (`out` without suffix: figures/ and
    tables/) from the study in `results_dir`. Atomic: a failure leaves the old page in place.
    Raises SpecError when the store holds no finished cell."""
    tell = progress or (lambda _message: None)
    study = open_results(results_dir)
    if not study.done:
        raise SpecError("results_dir", str(results_dir), "a study with at least one finished cell")
    page = Path(out)
    if page.suffix != ".md":
        raise SpecError("out", str(page), "a Markdown file path ending in .md")
    assets = page.with_suffix("")
    page.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".results-staging-", dir=page.parent))
    try:
        text = _render(study, staging, assets.name, command, tell)
        (staging / "page.md").write_text(text, encoding="utf-8")
        if assets.exists():
            shutil.rmtree(assets)
        os.replace(staging / "assets", assets)
        os.replace(staging / "page.md", page)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    tell("done")
    return page


def _render(study: StudyView, staging: Path, assets_name: str, command: str,
            tell: Progress) -> str:
    assets = staging / "assets"
    (assets / FIGURE_DIR).mkdir(parents=True)
    (assets / TABLE_DIR).mkdir(parents=True)
    tell("report figures and tables")
    report_dir = staging / "report"
    report_dir.mkdir()
    render_report(study, report_dir, lambda step: tell(f"report: {step}"))
    figures = {name for name in REPORT_FIGURES
               if (report_dir / FIGURE_DIR / f"{name}.png").is_file()}
    for name in figures:
        shutil.copy2(report_dir / FIGURE_DIR / f"{name}.png", assets / FIGURE_DIR / f"{name}.png")
    for name in REPORT_TABLES:
        shutil.copy2(report_dir / TABLE_DIR / f"{name}.csv", assets / TABLE_DIR / f"{name}.csv")

    tell("findings")
    members = member_frame(study)
    quality_lines, tables = _section_quality(study, members)
    silent = silent_cells(study)
    ensemble = ensembling(study, order=study.models)
    mixed = mixed_ensemble_summary(mixed_ensembles(study))
    comparison = explainer_comparison(members, order=study.explainers)
    units = unit_tests(study, order=study.models)
    pos_neg = pos_neg_check(members, study)
    four_bags = four_bags_check(members, study)
    tell("agreement vs truth")
    bags = agreement_frame(study)
    correlations = agreement_correlations(bags) if not bags.empty else pd.DataFrame()
    claims = claims_table(tables["quality_all"], ensemble, units, pos_neg, members, four_bags)
    tables.update({"silent_cells": silent, "ensembling": ensemble, "mixed_ensembles": mixed,
                   "explainer_comparison": comparison, "unit_tests": units, "pos_neg": pos_neg,
                   "four_bags": four_bags,
                   "agreement_correlations": correlations, "claims": claims})
    for name, frame in tables.items():
        frame.to_csv(assets / TABLE_DIR / f"{name}.csv", index=False)
    palette = Palette.for_names(study.models, study.explainers)
    with report_style():
        figure = agreement_figure(bags, study.models, palette) if not bags.empty else None
        if figure is not None:
            save_figure(figure, assets / FIGURE_DIR, "A", "agreement_vs_truth",
                        "Member agreement vs true explanation quality", "")
            (assets / FIGURE_DIR / "agreement_vs_truth.svg").unlink()
            figures.add("agreement_vs_truth")

    def fig(name: str, title: str) -> list[str]:
        return [_figure_line(name, title, assets_name), ""] if name in figures else []

    criteria = study.done[0].criteria
    n_members = int(study.members.drop_duplicates(["cell_id", "member"]).shape[0])
    lines = [
        f"# Results: the `{study.name}` study", "",
        f"Generated by `{command}` from the results store `{study.directory}/results.sqlite`: "
        f"{len(study.done)} finished cells ({len(study.failed)} failed), {len(study.datasets)} "
        f"datasets x {len(study.models)} models, {n_members} trained members, explainers "
        f"{', '.join(study.explainers)}. Do not edit this page by hand: rerun the command. "
        f"The tables behind every number are in [{assets_name}/{TABLE_DIR}]"
        f"({assets_name}/{TABLE_DIR}/). {run_facts(study.records)}", "",
        f"Thresholds: a member *learned* the task when its bag {criteria.bag_metric} is at least "
        f"{criteria.min_bag_score}; its explanation *reflects the witnesses* when the importance "
        f"{criteria.importance_metric} (per bag, averaged over bags with witnesses and "
        f"non-witnesses) is above {criteria.max_importance}; a *silent failure* is a member "
        "that learned the task and does not reflect the witnesses. Intervals are 95% percentile "
        "bootstraps that resample whole cells (the members of a cell share their data).", "",
        "## Findings at a glance", "",
        *glance(members, tables["quality_all"], silent, ensemble, comparison, units, correlations),
        "",
        "## Comparison with the published claims", "",
        to_markdown(claims).rstrip(), "",
    ]
    lines += quality_lines
    lines += fig("importance_distribution", "Importance AUROC per dataset and model")
    lines += ["## 2. Where and how often do silent failures happen?", "",
              f"{int(silent['silent'].sum()) if not silent.empty else 0} silent attention "
              f"members in {len(silent)} dataset x model pairs (worst first; all pairs with at "
              "least one silent member).", ""]
    if not silent.empty:
        lines += [to_markdown(silent.head(25)).rstrip(), ""]
    lines += fig("silent_failures", "Bag score vs importance AUROC per member")
    lines += ["## 3. How much does ensembling reduce the risk?", "",
              "Per model, from each cell's ensemble-size curve (random member subsets of size k, "
              "combined by the study's rule): mean AUROC and the probability that the "
              "explanation is at or below the threshold (P(fail)) for one member and for the "
              "whole ensemble, the paired gain, and the silent-failure rate of single members "
              "vs the combined ensemble.", ""]
    if not ensemble.empty:
        lines += [to_markdown(_with_ci(
            ensemble, {"auroc_single": "AUROC k=1", "auroc_ensemble": "AUROC k=max",
                       "auroc_gain": "gain", "p_fail_single": "P(fail) k=1",
                       "p_fail_ensemble": "P(fail) k=max", "p_fail_reduction": "reduction",
                       "silent_single": "silent k=1", "silent_ensemble": "silent ensemble"},
            ["model", "cells", "k_max"],
            ("p_fail_single", "p_fail_ensemble", "p_fail_reduction", "silent_single",
             "silent_ensemble"))).rstrip(), ""]
    lines += fig("ensemble_size", "Ensemble-size curves")
    lines += _section_helps_or_hurts(ensemble, mixed)
    lines += ["## 4. How do the other explainers compare with attention?", "",
              "Per explainer over every member it ran on (all models); the paired columns use "
              "only members of models with attention weights and compare on the same member.", ""]
    if not comparison.empty:
        lines += [to_markdown(_with_ci(
            comparison, {"auroc": "AUROC", "silent": "silent", "minus_reference":
                         "AUROC - attention", "beats_reference": "beats attention"},
            ["explainer", "cells", "members", "paired_members"],
            ("silent", "beats_reference"))).rstrip(), ""]
    lines += fig("deletion_curves", "Deletion curves")
    lines += ["## 5. Which models fail the algorithmic unit tests?", "",
              "Rules `poison` and `false_frequency` shift the test split on purpose (Raff & Holt). "
              "A member is flagged when it passes the training distribution (validation bag "
              "score >= 0.9) and then fails (< 0.6) or drops by more than 0.2 on the shifted "
              "test.", ""]
    if not units.empty:
        lines += [to_markdown(_with_ci(units, {"flagged": "members flagged"},
                                       ["rule", "model", "cells", "members", "val_score",
                                        "test_score", "ensemble_flagged"],
                                       ("flagged",))).rstrip(), ""]
        lines += _unit_test_notes(units)
    lines += ["## 6. Is member agreement a usable reliability signal without labels?", "",
              "For every cell with attention, the members' attention is compared without any "
              "label (mean pairwise Spearman correlation per bag; top-10% overlap) and set "
              "against the true importance AUROC of their consensus. This is what "
              "`attnsets explain-data` reports on a user's own data (docs/own_data.md).", ""]
    if not correlations.empty:
        lines += [to_markdown(correlations).rstrip(), ""]
    lines += fig("agreement_vs_truth", "Member agreement vs true explanation quality")
    examples = [n for n in ("example_image", "example_sequence", "example_vector")
                if n in figures]
    if examples:
        lines += ["## 7. Example bags", ""]
        for name in examples:
            lines += fig(name, name.replace("_", " "))
    stages, totals = time_by_stage(study.directory, study.records)
    stages.to_csv(assets / TABLE_DIR / "stage_times.csv", index=False)
    lines += _section_cost(stages, totals)
    lines += ["## Limitations", "",
              "- Synthetic data only: the witnesses are known because we made them. The numbers "
              "say how these models behave on these rules, sizes and training budgets.",
              f"- {len({c.replicate for c in study.done})} replicate dataset seed(s) per "
              "dataset x model; intervals over cells are wide where a group has few cells.",
              "- The thresholds above decide what counts as learned, reflecting and silent; the "
              "per-member tables (CSV) allow other choices.", ""]
    return "\n".join(lines)
