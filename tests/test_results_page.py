"""docs/results.md generation: cluster-bootstrap intervals, findings cross-checked against the
store, the page's links, atomic writes and the CLI, on a small real study."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from attnsets.cli import app
from attnsets.errors import SpecError
from attnsets.report.collect import open_results as load_study
from attnsets.report.findings import (
    agreement_frame,
    cluster_bootstrap,
    ensembling,
    explanation_quality,
    member_frame,
    unit_tests,
)
from attnsets.report.results_page import write_results_page
from attnsets.study.config import validate_config
from attnsets.study.runner import run_study
from attnsets.study.store import ResultsStore

SMALL_BAGS = {"kind": "normal", "mean": 8, "sd": 1, "min": 5}
SPLITS = {"train": 32, "val": 16, "test": 16}
RAW = {
    "study": {"name": "page-test", "seeds": [0, 1], "members": 3,
              "explainers": ["attention", "integrated_gradients", "random"], "bootstrap": 10,
              "curve_subsets": 4, "mixed_ensembles": {"attention+gated": ["attention", "gated"]}},
    "training": {"epochs": 3, "batch_size": 16},
    "thresholds": {"min_bag_score": 0.5, "max_importance": 0.7},
    "datasets": [
        {"name": "vectors-pos_neg", "pool": {"name": "gaussian", "dim": 4, "num_concepts": 5,
                                              "separation": 6.0},
         "rule": {"name": "pos_neg", "positive": [1], "negative": [2]},
         "witnesses": {"count": [1, 3]}, "bag_size": SMALL_BAGS, "bags": SPLITS},
        {"name": "vectors-poison", "pool": {"name": "gaussian", "dim": 4, "num_concepts": 5,
                                             "separation": 6.0},
         "rule": {"name": "poison", "key": 2, "poison": 4}, "bag_size": SMALL_BAGS,
         "bags": SPLITS},
    ],
    "models": [{"name": "attention", "pooling": "attention", "embed_dim": 8},
               {"name": "mean", "pooling": "mean", "embed_dim": 8},
               {"name": "gated", "pooling": "gated_attention", "embed_dim": 8}],
}


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("page_study")
    summary = run_study(validate_config(RAW), out, workers=1, show_progress=False)
    assert summary.done == 12 and summary.failed == 0, summary.failures
    return out


@pytest.fixture(scope="module")
def page(study_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_results_page(study_dir, tmp_path_factory.mktemp("docs") / "results.md",
                              command="pytest")


# --------------------------------------------------------------------------- cluster bootstrap


def test_cluster_bootstrap_with_singleton_clusters_is_the_plain_bootstrap() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(0.7, 0.1, 300)
    estimate = cluster_bootstrap(values, np.arange(300), n_boot=4000, seed=1)
    plain = values[rng.integers(0, 300, (4000, 300))].mean(axis=1)
    low, high = np.quantile(plain, [0.025, 0.975])
    assert estimate.value == pytest.approx(values.mean())
    assert estimate.low == pytest.approx(low, abs=0.004)
    assert estimate.high == pytest.approx(high, abs=0.004)
    assert estimate.n == 300 and estimate.clusters == 300


def test_cluster_bootstrap_widens_for_correlated_members_and_skips_nan() -> None:
    rng = np.random.default_rng(2)
    cell_effect = np.repeat(rng.normal(0, 0.2, 20), 5)  # 20 cells x 5 members sharing data
    values = 0.7 + cell_effect + rng.normal(0, 0.01, 100)
    clustered = cluster_bootstrap(values, np.repeat(np.arange(20), 5), seed=0)
    naive = cluster_bootstrap(values, np.arange(100), seed=0)
    assert clustered.high - clustered.low > 1.8 * (naive.high - naive.low)
    with_nan = cluster_bootstrap(np.r_[values, np.nan], np.r_[np.repeat(np.arange(20), 5), 99])
    assert with_nan.value == pytest.approx(values.mean()) and with_nan.clusters == 20


def test_cluster_bootstrap_degenerate_cases() -> None:
    one = cluster_bootstrap([0.2, 0.4], ["a", "a"])
    assert one.value == pytest.approx(0.3) and math.isnan(one.low) and one.text() == "0.300 (1 cell)"
    empty = cluster_bootstrap([np.nan], ["a"])
    assert math.isnan(empty.value) and empty.text() == "–"
    rate = cluster_bootstrap([1.0, 0.0, 1.0, 1.0], ["a", "b", "c", "d"], seed=0)
    assert rate.text(percent=True).startswith("75% [")


# --------------------------------------------------------------------------- findings vs store


def test_quality_table_matches_the_member_rows(study_dir: Path) -> None:
    study = load_study(study_dir)
    members = member_frame(study)
    attention = members[members["explainer"] == "attention"]
    assert set(attention["model"]) == {"attention", "gated"}  # mean pooling has no attention
    table = explanation_quality(members, "rule")
    for _, row in table.iterrows():
        part = attention[attention["rule"] == row["rule"]]
        assert row["members"] == len(part) == 2 * 2 * 3  # models x replicates x members
        assert row["auroc"] == pytest.approx(part["importance"].mean())
        assert row["reflects"] == pytest.approx((part["importance"] > 0.7).mean())
        assert row["silent"] == pytest.approx(part["silent"].mean())
        assert row["auroc_ci_low"] <= row["auroc"] <= row["auroc_ci_high"]


def test_agreement_truth_is_the_stored_ensemble_auroc(study_dir: Path) -> None:
    """The consensus AUROC per bag, averaged, must equal the ensemble importance AUROC that
    assess stored for the same cell (both combine members by mean_normalised)."""
    study = load_study(study_dir)
    bags = agreement_frame(study)
    assert set(bags["model"]) == {"attention", "gated"}
    for cell in study.cells(model="attention"):
        part = bags[bags["cell_id"] == cell.cell_id]
        stored = cell.assessment.explainers["attention"].ensemble_value("auroc")
        assert part["consensus_auroc"].mean() == pytest.approx(stored, abs=1e-6)
        defined = part["rank_agreement"].dropna()
        assert ((defined >= -1 - 1e-9) & (defined <= 1 + 1e-9)).all()


def test_ensembling_and_unit_test_tables(study_dir: Path) -> None:
    study = load_study(study_dir)
    table = ensembling(study)
    assert list(table["model"]) == ["attention", "gated", "all"]
    row = table.iloc[0]
    assert row["cells"] == 4 and row["k_max"] == 3
    assert row["auroc_gain"] == pytest.approx(row["auroc_ensemble"] - row["auroc_single"])
    units = unit_tests(study)
    assert set(units["rule"]) == {"poison"}
    assert set(units["model"]) == {"attention", "mean", "gated"}
    flags = [f.flagged for c in study.cells("vectors-poison", "mean")
             if c.assessment.unit_test is not None for f in c.assessment.unit_test.members]
    assert units.set_index("model").loc["mean", "flagged"] == pytest.approx(np.mean(flags))


def test_unit_test_notes_explain_a_flagged_count_free_pooling() -> None:
    from attnsets.report.claims import unit_test_notes

    def units(max_flagged: float) -> pd.DataFrame:
        return pd.DataFrame([{"rule": "false_frequency", "model": "max", "flagged": max_flagged},
                             {"rule": "false_frequency", "model": "attention", "flagged": 1.0},
                             {"rule": "poison", "model": "instance_max", "flagged": 1.0}])

    poolings = {"max": "max", "attention": "attention", "instance_max": "instance_max"}
    flagged = " ".join(unit_test_notes(units(0.6), poolings))
    assert "tests/test_oracles.py" in flagged and "`max` cannot count" in flagged
    assert "instance_max" not in flagged  # flagged on poison only: not a counting question
    passed = " ".join(unit_test_notes(units(0.2), poolings))
    renamed = " ".join(unit_test_notes(units(0.6), {"max": "attention"}))  # by pooling, not name
    assert "cannot count" not in renamed
    assert "tests/test_oracles.py" in passed and "cannot count" not in passed


# --------------------------------------------------------------------------- the page


def test_page_links_resolve_and_every_section_is_there(page: Path) -> None:
    text = page.read_text()
    assets = page.with_suffix("")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert "results/figures/agreement_vs_truth.png" in links
    for link in links:
        assert (page.parent / link).is_file(), link
    for heading in ("Findings at a glance", "Comparison with the published claims", "## 1.",
                    "## 2.", "## 3.", "## 4.", "## 5.", "## 6.", "Limitations"):
        assert heading in text
    assert "Generated by `pytest`" in text and "nan" not in text.lower().replace("nanmean", "")
    for name in ("claims", "quality_by_model", "ensembling", "explainer_comparison",
                 "unit_tests", "agreement_correlations", "headline", "four_bags"):
        assert (assets / "tables" / f"{name}.csv").is_file(), name
    claims = pd.read_csv(assets / "tables" / "claims.csv")
    assert (claims["verdict"].isin(["agree", "disagree", "partly"])
            | claims["verdict"].str.startswith("inconclusive (")).all()
    assert any("xMIL" in c for c in claims["claim"]) and any("Raff" in c for c in claims["claim"])
    # attention members of the fixture learned (min_bag_score 0.5): Haab et al.'s first claim
    # is decided, not "inconclusive (no attention member learned ...)"
    haab = claims[claims["claim"].str.startswith("Haab et al.: attention often")]["verdict"]
    assert haab.iloc[0] in ("agree", "disagree", "partly")
    assert not list(page.parent.glob(".results-staging-*"))


def test_page_numbers_come_from_the_store(page: Path, study_dir: Path) -> None:
    members = member_frame(load_study(study_dir))
    att = members[(members["explainer"] == "attention")]
    overall = pd.read_csv(page.with_suffix("") / "tables" / "quality_all.csv").iloc[0]
    assert overall["auroc"] == pytest.approx(att["importance"].mean())
    assert f"{overall['auroc']:.3f} [{overall['auroc_ci_low']:.3f}" in page.read_text()


def test_a_failure_leaves_the_old_page(study_dir: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "results.md"
    out.write_text("old page")
    import attnsets.report.markdown as markdown

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(markdown, "agreement_frame", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_results_page(study_dir, out)
    assert out.read_text() == "old page"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.md"]


def test_bad_inputs_name_the_field(study_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="out"):
        write_results_page(study_dir, tmp_path / "results.html")
    with pytest.raises(SpecError, match="results_dir"):
        write_results_page(tmp_path / "missing", tmp_path / "results.md")
    assert not list(tmp_path.iterdir())


def test_cli_writes_the_page(study_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "docs" / "page.md"
    result = CliRunner().invoke(app, ["results-page", str(study_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and (tmp_path / "docs" / "page" / "figures").is_dir()
    missing = CliRunner().invoke(app, ["results-page", str(tmp_path / "nope")])
    assert missing.exit_code != 0 and "results_dir" in missing.output


def test_a_claim_whose_precondition_fails_is_inconclusive() -> None:
    """xMIL's Pos-Neg claim is about models with bag AUROC >= 0.9; the margin to random is
    relative to the random baseline (share of the room between random and perfect)."""
    from attnsets.report.claims import above_random, claims_table

    def pos_neg(bag_auroc: float, attention: float, random: float) -> pd.DataFrame:
        rows = [{"dataset": "pn", "explainer": m, "members": 5, "construction": "xmil",
                 "classes": "all", "bag_auroc": bag_auroc, "auprc2": v,
                 "auprc2_ci_low": v - 0.01, "auprc2_ci_high": v + 0.01}
                for m, v in (("attention", attention), ("random", random))]
        return pd.DataFrame(rows)

    empty = pd.DataFrame()
    members = pd.DataFrame(columns=["explainer", "rule", "modality", "model", "silent",
                                    "learned", "importance", "cell_id"])
    verdict = claims_table(empty, empty, empty, pos_neg(0.803, 0.30, 0.275), members)
    assert verdict["verdict"].iloc[0].startswith("inconclusive (bag AUROC 0.803 < 0.9")
    assert "construction xmil" in verdict["our measurement"].iloc[0]
    near = claims_table(empty, empty, empty, pos_neg(0.97, 0.45, 0.42), members)
    assert near["verdict"].iloc[0] == "agree"  # (0.45 - 0.42) / 0.58 = 5% of the room
    far = claims_table(empty, empty, empty, pos_neg(0.97, 0.60, 0.42), members)
    assert far["verdict"].iloc[0] == "disagree"  # 31% of the room above random
    assert above_random(0.45, 0.42) == pytest.approx(0.03 / 0.58)
    one_cell = pos_neg(0.97, 0.45, 0.42).assign(auprc2_ci_low=math.nan, auprc2_ci_high=math.nan)
    text = claims_table(empty, empty, empty, one_cell, members)["our measurement"].iloc[0]
    assert "0.450 (1 cell)" in text and "nan" not in text  # one cell: no interval to print


def test_mixed_ensembles_combine_members_of_different_models(study_dir: Path) -> None:
    from attnsets.metrics import combine_scores, importance_report
    from attnsets.report.findings import mixed_ensembles

    study = load_study(study_dir)
    frame = mixed_ensembles(study)
    assert len(frame) == 4  # 2 datasets x 2 replicates
    assert (frame["members"] == 6).all() and set(frame["best_homogeneous"]) <= {"attention",
                                                                                 "gated"}
    # one row by hand: the six members' mean-normalised scores against the stored evidence
    row = frame.iloc[0]
    store = ResultsStore(study_dir)
    cells = [c for c in study.done if c.dataset == row["dataset"]
             and c.replicate == row["replicate"] and c.model in ("attention", "gated")]
    arrays = [store.arrays(c.cell_id) for c in sorted(cells, key=lambda c: c.model)]
    store.close()
    scores = np.concatenate([a["scores/attention"] for a in arrays])
    mask = arrays[0]["mask"].astype(bool)
    expected = importance_report(combine_scores(scores, mask), arrays[0]["evidence"], mask,
                                 n_boot=0)["auroc"]
    assert row["auroc_mixed"] == pytest.approx(expected)
    assert row["gain_vs_best"] == pytest.approx(row["auroc_mixed"]
                                                - row["auroc_best_homogeneous"])


# --------------------------------------------------------------------------- MILLI (four_bags)


def _four_bags(values: dict[str, tuple[float, float, float]], learned_share: float = 1.0,
               dataset: str = "fb") -> pd.DataFrame:
    """four_bags_check rows: explainer -> (AUPRC-2, CI low, CI high)."""
    return pd.DataFrame([{"dataset": dataset, "explainer": m, "members": 10,
                          "convention": "milli", "classes": "all", "bag_auroc": 0.95,
                          "learned_share": learned_share, "auprc2": v, "auprc2_ci_low": lo,
                          "auprc2_ci_high": hi} for m, (v, lo, hi) in values.items()])


def _milli_verdicts(four_bags: pd.DataFrame) -> pd.DataFrame:
    from attnsets.report.claims import claims_table

    empty = pd.DataFrame()
    members = pd.DataFrame(columns=["explainer", "rule", "modality", "model", "silent",
                                    "learned", "importance", "cell_id"])
    claims = claims_table(empty, empty, empty, empty, members, four_bags)
    return claims[claims["claim"].str.contains("MILLI")].reset_index(drop=True)


def test_milli_claim_compares_the_better_perturbation_explainer_with_attention() -> None:
    """MILLI: Single / One Removed beat attention on FOUR-MNIST-BAGS. The better of single and
    leave_one_out (by AUPRC-2) is compared CI against CI with attention."""
    attention, random = (0.50, 0.45, 0.55), (0.30, 0.28, 0.32)
    # leave_one_out is the better one and its CI lies above attention's; single overlaps
    agree = _milli_verdicts(_four_bags({"attention": attention, "single": (0.52, 0.47, 0.57),
                                        "leave_one_out": (0.70, 0.60, 0.80),
                                        "random": random}))
    assert len(agree) == 1 and agree["verdict"].iloc[0] == "agree"
    text = agree["our measurement"].iloc[0]
    assert "fb (evidence_convention milli, AUPRC-2 over all classes" in text
    assert "attention 0.500 [0.450, 0.550]" in text and "random 0.300 [0.280, 0.320]" in text
    assert "leave_one_out 0.700 [0.600, 0.800]" in text and "learned share 100% (10/10)" in text
    assert "NDCG" in text
    assert "like for like only with evidence_convention milli and all classes" in \
        agree["rule"].iloc[0]
    # attention's CI lies above the better one (single; leave_one_out not run)
    disagree = _milli_verdicts(_four_bags({"attention": (0.80, 0.75, 0.85),
                                           "single": (0.60, 0.55, 0.70), "random": random}))
    assert disagree["verdict"].iloc[0] == "disagree"
    assert "leave_one_out not run" in disagree["our measurement"].iloc[0]
    # overlapping CIs
    partly = _milli_verdicts(_four_bags({"attention": attention, "single": (0.58, 0.50, 0.66),
                                         "leave_one_out": (0.40, 0.35, 0.45)}))
    assert partly["verdict"].iloc[0] == "partly"
    # the better one decides: single is worse than attention, leave_one_out overlaps it
    best = _milli_verdicts(_four_bags({"attention": attention, "single": (0.20, 0.15, 0.25),
                                       "leave_one_out": (0.56, 0.50, 0.62)}))
    assert best["verdict"].iloc[0] == "partly"


def test_milli_claim_is_inconclusive_without_a_learned_model_or_a_perturbation_explainer(
        ) -> None:
    clear = {"attention": (0.50, 0.45, 0.55), "single": (0.90, 0.85, 0.95),
             "random": (0.30, 0.28, 0.32)}
    few = _milli_verdicts(_four_bags(clear, learned_share=0.4))
    assert few["verdict"].iloc[0] == ("inconclusive (40% (4/10) of the attention model's "
                                      "members learned the task: the claim is about models that "
                                      "learned)")
    half = _milli_verdicts(_four_bags(clear, learned_share=0.5))
    assert half["verdict"].iloc[0] == "agree"  # half is enough
    missing = _milli_verdicts(_four_bags({"attention": (0.50, 0.45, 0.55),
                                          "random": (0.30, 0.28, 0.32)}))
    assert missing["verdict"].iloc[0] == ("inconclusive (neither single nor leave_one_out "
                                          "was run)")
    two = _milli_verdicts(pd.concat([_four_bags(clear), _four_bags(clear, 0.1, "other")]))
    assert list(two["verdict"].str[:5]) == ["agree", "incon"]  # one row per dataset


def test_four_bags_check_reads_the_convention_and_the_classes() -> None:
    from types import SimpleNamespace

    from attnsets.report.findings import four_bags_check

    rows = []
    for cell in ("c0", "c1"):
        for member in range(2):
            for method in ("attention", "single", "integrated_gradients"):
                rows.append({"cell_id": cell, "member": member, "dataset": "fb",
                             "rule": "four_bags", "model": "attention", "explainer": method,
                             "learned": member == 0 or cell == "c0",
                             "bag_auroc": 0.9 if cell == "c0" else 0.7,
                             "auprc2": 0.1 * (member + 1), "auprc2_all_classes": 0.5})
    rows.append({**rows[0], "rule": "pos_neg", "dataset": "pn"})  # another rule: left out
    rows.append({**rows[0], "model": "gated"})  # another model: left out
    members = pd.DataFrame(rows)
    options = {"evidence_convention": "milli"}
    study = SimpleNamespace(done=[SimpleNamespace(  # the attention MIL model is found by pooling
        cell_id=c, rule_options=options, model="attention",
        cell=SimpleNamespace(pooling="attention")) for c in ("c0", "c1")])
    table = four_bags_check(members, study)  # type: ignore[arg-type]
    assert list(table["explainer"]) == ["attention", "single"]  # integrated_gradients not asked
    row = table.iloc[0]
    assert (row["dataset"], row["members"], row["convention"], row["classes"]) == (
        "fb", 4, "milli", "all")
    assert row["learned_share"] == pytest.approx(0.75)
    assert row["bag_auroc"] == pytest.approx(0.8) and row["auprc2"] == pytest.approx(0.5)
    # one member without the all-classes score: per label, and the default convention
    members.loc[0, "auprc2_all_classes"] = np.nan
    label = four_bags_check(members, model="attention").iloc[0]
    assert (label["convention"], label["classes"]) == ("attnsets", "label")
    assert label["auprc2"] == pytest.approx(0.15)


# --------------------------------------------------------------------------- learned share


def test_learned_share_by_rule_and_model_counts_the_members(page: Path, study_dir: Path) -> None:
    from attnsets.report.markdown import learned_share_grid

    study = load_study(study_dir)
    members = member_frame(study)
    one = members[members["explainer"] == "attention"]  # one row per member with attention
    grid = learned_share_grid(pd.read_csv(page.with_suffix("") / "tables"
                                          / "learned_by_rule_and_model.csv"), study.models)
    assert list(grid.columns) == ["rule", "attention", "gated"]  # mean pooling has none
    assert list(grid["rule"]) == sorted(set(one["rule"]))
    text = page.read_text()
    assert "a count rather than a conjunction" in text
    table_lines = [line for line in text.splitlines() if line.startswith("| ")]
    for _, row in grid.iterrows():
        for model in ("attention", "gated"):
            part = one[(one["rule"] == row["rule"]) & (one["model"] == model)]
            k, n = int(part["learned"].sum()), len(part)
            assert n == 2 * 3  # replicates x members
            assert row[model] == f"{100 * k / n:.0f}% ({k}/{n})"
        assert f"| {row['rule']} | {row['attention']} | {row['gated']} |" in table_lines


def test_cost_section_accounts_for_every_worker_second(page: Path, study_dir: Path) -> None:
    from attnsets.study.results import time_by_stage

    stages, totals = time_by_stage(study_dir)
    assert totals["cells"] == 12
    # every stage of every cell is counted once: the shares add up to the whole worker time
    assert stages["seconds"].sum() == pytest.approx(totals["worker_seconds"], rel=1e-9)
    assert 0 < totals["busy_seconds"] <= totals["worker_seconds"] + 1e-6
    names = set(stages["stage"])
    assert {"training", "predict", "deletion curves", "metrics", "unit test",
            "explain: attention", "explain: integrated_gradients"} <= names
    assert "assessment" not in names  # every cell of this store timed its stages
    text = page.read_text()
    assert "## Cost of this study" in text and "| explain: attention |" in text
    assert "| training |" in text and "12 cells, " in text and "of worker time" in text
    assert (page.with_suffix("") / "tables" / "stage_times.csv").is_file()


def test_stage_seconds_reads_timed_and_older_records() -> None:
    from attnsets.run import TrainingSummary
    from attnsets.study.record import CellRecord
    from attnsets.study.results import stage_seconds
    from test_store import tiny_cell

    training = TrainingSummary(10.0, [1], [0], [0.5])
    timed = CellRecord(tiny_cell(), "done", training=training, started=0.0, finished=20.0,
                       stage_seconds={"generate": 1.0, "predict": 0.5, "deletion/random": 2.0,
                                      "explain/attention": 0.25, "deletion/attention": 1.0,
                                      "metrics/attention": 0.75,
                                      "explain_all_classes/attention": 0.5, "unit_test": 1.0})
    assert stage_seconds(timed) == {
        "generate": 1.0, "training": 10.0, "predict": 0.5, "deletion curves": 3.0,
        "explain: attention": 0.75, "metrics": 0.75, "unit test": 1.0, "other": 3.0}
    # written before the stages were timed
    older = CellRecord(tiny_cell(), "done", training=training, started=0.0, finished=16.0)
    assert stage_seconds(older) == {"training": 10.0, "assessment": 6.0}


def test_cost_summary_and_stage_table_read_as_text() -> None:
    from attnsets.study.results import cost_summary, stage_table

    assert cost_summary({"cells": 3, "worker_seconds": 7200.0, "busy_seconds": 90.0}) == \
        "3 cells, 2.0 h of worker time, 1.5 min of wall time while at least one cell ran"
    stages = pd.DataFrame({"stage": ["training", "predict"], "seconds": [90.0, 6.0],
                           "share": [0.9, 0.06], "cells": [2, 2]})
    assert stage_table(stages).values.tolist() == [["training", "1.5", "90.0%", "2"],
                                                   ["predict", "0.1", "6.0%", "2"]]


def test_busy_seconds_is_the_length_of_the_union() -> None:
    from attnsets.study.results import busy_seconds

    rng = np.random.default_rng(0)
    for _ in range(50):
        starts = rng.integers(0, 100, size=6)
        intervals = [(float(s), float(s + rng.integers(0, 30))) for s in starts]
        covered = np.zeros(200, dtype=bool)  # brute force on a unit grid
        for start, end in intervals:
            covered[int(start):int(end)] = True
        assert busy_seconds(intervals) == covered.sum()
    assert busy_seconds([]) == 0.0
