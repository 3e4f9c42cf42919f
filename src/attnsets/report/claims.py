"""The published claims a study can test (REFERENCES.md), each with its measurement, its
decision rule and its verdict. A claim is about a kind of model, so the models it concerns are
chosen by their pooling's role (attnsets.report.roles), never by the names a user gave them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import astuple, dataclass

import pandas as pd

from attnsets.metrics.cluster import Estimate, cluster_bootstrap
from attnsets.report.roles import ATTENTION, COUNT_FREE, SOFTMAX_ATTENTION, models_in_role

CLAIM_COLUMNS = ["claim", "our measurement", "rule", "verdict"]

#: Attention counts as "near random" when it recovers less than this share of the room between
#: the random baseline and a perfect score: (ours - random) / (1 - random) < margin. Relative to
#: the baseline, so a task whose random AUPRC-2 is 0.42 and one where it is 0.28 are judged alike.
NEAR_RANDOM_MARGIN = 0.1
#: MILLI's perturbation explainers ("Single", "One Removed") under our names.
MILLI_METHODS = ("single", "leave_one_out")


@dataclass(frozen=True)
class Claim:
    """One row of the claims table."""

    claim: str
    measurement: str
    rule: str
    verdict: str


def estimate_at(frame: pd.DataFrame, row: int, prefix: str) -> Estimate:
    """The estimate stored in `frame`'s row `row` as `prefix`, `prefix`_ci_low / _ci_high."""
    return Estimate(float(frame.iloc[row][prefix]), float(frame.iloc[row][f"{prefix}_ci_low"]),
                    float(frame.iloc[row][f"{prefix}_ci_high"]), 0, 0)


def claim_verdict(agree: bool, disagree: bool, precondition: str | None = None) -> str:
    """agree / disagree / partly; "inconclusive" with the reason when a precondition of the
    claim fails (e.g. the model did not learn the task the claim is about)."""
    if precondition is not None:
        return f"inconclusive ({precondition})"
    return "agree" if agree else ("disagree" if disagree else "partly")


def above_random(value: float, random: float) -> float:
    """(value - random) / (1 - random): the share of the room above the random baseline."""
    return (value - random) / (1.0 - random) if random < 1.0 else math.nan


def _four_bags_precondition(share: float, learned: int, members: int, candidates: list,
                            attention: Estimate | None) -> str | None:
    if share < 0.5:
        return (f"{share:.0%} ({learned}/{members}) of the attention model's members "
                "learned the task: the claim is about models that learned")
    if not candidates:
        return "neither single nor leave_one_out was run"
    if attention is None or math.isnan(attention.value):
        return "no attention scores"
    return None


def four_bags_row(dataset: str, four_bags: pd.DataFrame) -> Claim:
    """The MILLI claim on one four_bags dataset, from `four_bags_check` rows: the better of
    single / leave_one_out (by AUPRC-2) against attention, CI against CI."""
    part = four_bags[four_bags["dataset"] == dataset].reset_index(drop=True)
    where = {str(m): i for i, m in enumerate(part["explainer"])}
    first = part.iloc[where.get(ATTENTION, 0)]  # the same members for every explainer
    members, share = int(first["members"]), float(first["learned_share"])
    learned = int(round(share * members))

    def estimate(method: str) -> Estimate | None:
        return estimate_at(part, where[method], "auprc2") if method in where else None

    attention = estimate(ATTENTION)
    candidates = [(m, e) for m in MILLI_METHODS if (e := estimate(m)) is not None
                  and not math.isnan(e.value)]
    texts = [f"{m} {found.text() if (found := estimate(m)) is not None else 'not run'}"
             for m in (ATTENTION, *MILLI_METHODS, "random")]
    precondition = _four_bags_precondition(share, learned, members, candidates, attention)
    agree = disagree = False
    best = ""
    if precondition is None and attention is not None:
        best, top = max(candidates, key=lambda item: item[1].value)
        agree, disagree = top.low > attention.high, attention.low > top.high
    return Claim(
        "Early et al. (MILLI): on FOUR-MNIST-BAGS and others, model-agnostic perturbation "
        "explainers (Single, One Removed) identify the key instances up to 30% more "
        "accurately than the model's inherent interpretability (attention)",
        f"{dataset} (evidence_convention {first['convention']}, AUPRC-2 over "
        f"{first['classes']} classes of signed evidence; MILLI scores NDCG@n / AOPC), "
        f"attention model: bag AUROC {float(first['bag_auroc']):.3f}, learned share "
        f"{share:.0%} ({learned}/{members}); AUPRC-2 {', '.join(texts)}"
        + (f"; better of the two: {best}" if best else ""),
        "with at least half of the attention model's members learned and single or "
        "leave_one_out run (else inconclusive): agree if the better of single / "
        "leave_one_out has its CI above attention's, disagree if attention's CI lies above "
        "it, partly otherwise; like for like only with evidence_convention milli and all "
        "classes",
        claim_verdict(agree, disagree, precondition))


def _haab_claims(quality_all: pd.DataFrame, members: pd.DataFrame) -> list[Claim]:
    """Haab et al.: attention reflects importance often; silent failures happen."""
    if quality_all.empty:
        return []
    reflects = estimate_at(quality_all, 0, "reflects_if_learned")
    silent = estimate_at(quality_all, 0, "silent")
    attention_members = members[members["explainer"] == ATTENTION]
    n_silent = int(attention_members["silent"].sum())
    n_learned = int(attention_members["learned"].sum())
    nobody = "no attention member learned its task"
    return [
        Claim("Haab et al.: attention often reflects instance importance",
              f"{reflects.text(percent=True)} of attention members that learned the task have "
              "importance AUROC above the threshold",
              "agree if the estimate is >= 50%, disagree if its CI lies below 50% "
              "(inconclusive if no attention member learned its task)",
              claim_verdict(reflects.value >= 0.5, reflects.high < 0.5,
                            None if int(quality_all.iloc[0]["learned"]) else nobody)),
        Claim("Haab et al.: silent failures happen (accurate model, misleading attention)",
              f"{n_silent} silent attention members; rate {silent.text(percent=True)}",
              "agree if at least one silent failure is observed (inconclusive if no "
              "attention member learned its task: only those can fail silently)",
              claim_verdict(n_silent > 0, n_silent == 0,
                            None if n_silent or n_learned else nobody)),
    ]


def _ensembling_claim(ensemble: pd.DataFrame) -> list[Claim]:
    """Haab et al.: ensembling seeds makes attention reliable."""
    if ensemble.empty:
        return []
    everything = ensemble[ensemble["model"] == "all"]
    reduction = estimate_at(everything, 0, "p_fail_reduction")
    single = estimate_at(everything, 0, "p_fail_single")
    combined = estimate_at(everything, 0, "p_fail_ensemble")
    k_max = int(everything.iloc[0]["k_max"])
    return [Claim("Haab et al.: ensembling seeds makes attention explanations reliable",
                  f"P(AUROC at or below threshold) {single.text(percent=True)} for one member "
                  f"vs {combined.text(percent=True)} for {k_max}; reduction "
                  f"{reduction.text(percent=True)}",
                  "agree if the reduction's CI lies above 0, disagree if it lies below 0",
                  claim_verdict(reduction.low > 0, reduction.high < 0))]


def _explainer_rows(pos_neg: pd.DataFrame, method: str, dataset: str) -> pd.DataFrame:
    return pos_neg[(pos_neg["explainer"] == method) & (pos_neg["dataset"] == dataset)]


def _pos_neg_claim(pos_neg: pd.DataFrame, dataset: str) -> Claim:
    """xMIL's Pos-Neg claim on one pos_neg dataset, from `pos_neg_check` rows."""
    att_rows = _explainer_rows(pos_neg, ATTENTION, dataset)
    att, att_auprc2 = att_rows.iloc[0], estimate_at(att_rows, 0, "auprc2")
    rnd = _explainer_rows(pos_neg, "random", dataset)
    ig = _explainer_rows(pos_neg, "integrated_gradients", dataset)
    rnd_value = float(rnd.iloc[0]["auprc2"]) if not rnd.empty else math.nan
    ig_text = f"; integrated gradients {float(ig.iloc[0]['auprc2']):.3f}" if not ig.empty else ""
    gain = above_random(float(att["auprc2"]), rnd_value)
    near_random = abs(gain) < NEAR_RANDOM_MARGIN
    precondition = None if att["bag_auroc"] >= 0.9 else \
        f"bag AUROC {att['bag_auroc']:.3f} < 0.9: the claim is about models that learned"
    if math.isnan(gain):
        precondition = "no random baseline in this study"
    return Claim(
        "xMIL: on Pos-Neg, attention MIL has high bag AUROC (0.97) but attention AUPRC-2 near "
        "random (0.45 vs 0.42); IG about 0.9",
        f"{dataset} (construction {att.get('construction', 'attnsets')}, AUPRC-2 over "
        f"{att.get('classes', 'label')} classes), attention model: bag AUROC "
        f"{att['bag_auroc']:.3f}; attention AUPRC-2 {att_auprc2.text()} vs random "
        f"{rnd_value:.3f} ({100 * gain:+.0f}% of the room above random){ig_text}",
        f"with bag AUROC >= 0.9 (else inconclusive): agree if attention recovers less than "
        f"{NEAR_RANDOM_MARGIN:.0%} of the room between random and perfect AUPRC-2, disagree "
        "otherwise; like for like only with construction xmil and all classes",
        claim_verdict(near_random, not near_random, precondition))


def _pos_neg_claims(pos_neg: pd.DataFrame) -> list[Claim]:
    if pos_neg.empty:
        return []
    datasets = pos_neg.loc[pos_neg["explainer"] == ATTENTION, "dataset"].tolist()
    return [_pos_neg_claim(pos_neg, dataset) for dataset in datasets]


def _unit_test_claim(units: pd.DataFrame, members: pd.DataFrame) -> list[Claim]:
    """Raff & Holt: well-known deep MIL models each fail an algorithmic unit test."""
    if units.empty:
        return []
    by_model = units.groupby("model", sort=False)["flagged"].max()
    with_attention = set(members.loc[members["explainer"] == ATTENTION, "model"])
    attention_models = [m for m in by_model.index if m in with_attention]
    failing = [m for m in attention_models if by_model[m] >= 0.5]
    passes_training = units.groupby("model", sort=False)["val_score"].max()
    trained = [m for m in attention_models if passes_training[m] >= 0.9]
    return [Claim(
        "Raff & Holt: well-known deep MIL models each fail at least one algorithmic unit test "
        "(poison / false frequency)",
        f"{len(failing)} of {len(attention_models)} attention-based models fail (>= half of "
        "their members flagged) on at least one test"
        + (f": {', '.join(failing)}" if failing else ""),
        "agree if every model fails one, disagree if none does (inconclusive if no model "
        "passes the training distribution: a test can only flag those)",
        claim_verdict(len(failing) == len(attention_models) and failing != [], not failing,
                      None if trained else
                      "no attention model reaches 0.9 on the training distribution"))]


def _ilse_claim(members: pd.DataFrame, poolings: Mapping[str, str]) -> list[Claim]:
    """Ilse et al.: (gated) attention marks the key instance of image presence bags, for the
    models with softmax attention pooling (plain or gated) that learned the task."""
    models = models_in_role(poolings, SOFTMAX_ATTENTION)
    digits = members[(members["rule"] == "presence") & (members["modality"] == "image")
                     & (members["explainer"] == ATTENTION) & members["model"].isin(models)]
    digits = digits[digits["learned"]]  # the claim is about models that find the 9s' bags
    if digits.empty:
        return []
    estimate = cluster_bootstrap(digits["importance"], digits["cell_id"])
    return [Claim("Ilse et al.: (gated) attention marks the key digit in MNIST-bags-style data",
                  "attention / gated_attention members that learned image presence bags: "
                  f"mean importance AUROC {estimate.text()}",
                  "agree if the mean AUROC is >= 0.8, disagree if its CI lies below 0.7",
                  claim_verdict(estimate.value >= 0.8, estimate.high < 0.7))]


def claims_table(quality_all: pd.DataFrame, ensemble: pd.DataFrame, units: pd.DataFrame,
                 pos_neg: pd.DataFrame, members: pd.DataFrame,
                 four_bags: pd.DataFrame | None = None,
                 poolings: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per published claim of REFERENCES.md that this study can test, with the
    measurement, the decision rule and the verdict. `four_bags` is `four_bags_check`'s frame
    (MILLI's claim, one row per four_bags dataset); `poolings` maps each model to its pooling
    (`roles.model_poolings`), which picks the models of Ilse et al.'s claim."""
    claims = [*_haab_claims(quality_all, members), *_ensembling_claim(ensemble),
              *_pos_neg_claims(pos_neg)]
    if four_bags is not None and not four_bags.empty:
        claims += [four_bags_row(d, four_bags) for d in dict.fromkeys(four_bags["dataset"])]
    claims += _unit_test_claim(units, members) + _ilse_claim(members, poolings or {})
    return pd.DataFrame([astuple(c) for c in claims], columns=CLAIM_COLUMNS)


def unit_test_notes(units: pd.DataFrame, poolings: Mapping[str, str]) -> list[str]:
    """Why a flag means the model, not the test: the oracle check, and the count-free poolings
    (`poolings`: model -> pooling) that were flagged on false_frequency anyway."""
    lines = ["The tests themselves are checked by oracles (tests/test_oracles.py): hand-set "
             "models run through the same rules, where an instance detector + max (MIL-valid "
             "by construction) passes every test while a counting model fails "
             "`false_frequency` and a model keyed to the poison's absence fails `poison`; bag "
             "sizes carry no information about label or split. A flag therefore says what the "
             "trained members learned."]
    counted = units[(units["rule"] == "false_frequency")
                    & units["model"].isin(models_in_role(poolings, COUNT_FREE))
                    & (units["flagged"] >= 0.5)]
    if not counted.empty:
        names = ", ".join(f"`{m}`" for m in counted["model"])
        lines[0] += (f" {names} cannot count in principle, yet their trained members are "
                     "flagged on `false_frequency`: the maximum over noisy copies of a concept "
                     "grows with the number of copies (2-3 in training positives, 1 in training "
                     "negatives, 35-44 in test negatives), so a max-pooled feature of the "
                     "frequent concept is a weak count that training rewards.")
    return [lines[0], ""]
