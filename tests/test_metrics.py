"""Metrics stage: cross-checks against scikit-learn, hand-computed cases, undefined cases,
padding invariance, bootstrap, ensembles and silent-failure checks."""

from __future__ import annotations

import math
import pickle
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import rankdata
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    log_loss,
    ndcg_score,
    roc_auc_score,
)

from attnsets.errors import SpecError
from attnsets.metrics import (
    SilentFailureCriteria,
    aopc,
    aopc_per_bag,
    auprc2,
    auroc2,
    average_ranks,
    bag_metrics,
    bootstrap_ci,
    combine_probs,
    combine_scores,
    concentration,
    deletion_order,
    ensemble_size_curve,
    importance_report,
    is_silent_failure,
    misleading_bags,
    ndcg_at_k,
    normalise_per_bag,
    per_bag_auprc,
    per_bag_auroc,
    pooled_auprc,
    pooled_auprc2,
    pooled_auroc,
    pooled_auroc2,
    precision_at_k,
    rank_auroc,
    removal_mask,
    unit_test_flag,
)

PROPERTY = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def random_batch(seed: int, n_bags: int, n_max: int, n_levels: int = 4,
                 signed: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer-valued scores (many ties), random masks (some bags empty or tiny), evidence."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, n_levels, (n_bags, n_max)).astype(np.float64)
    mask = rng.random((n_bags, n_max)) < rng.uniform(0.3, 1.0, (n_bags, 1))
    choices = [-1, 0, 1] if signed else [0, 1]
    evidence = rng.choice(choices, size=(n_bags, n_max))
    return scores, evidence, mask


batches = st.builds(random_batch, seed=st.integers(0, 2**31 - 1), n_bags=st.integers(1, 6),
                    n_max=st.integers(1, 10), n_levels=st.integers(1, 5))


def bag_classes(evidence_row: np.ndarray, mask_row: np.ndarray) -> np.ndarray:
    return evidence_row[mask_row] > 0


def reference_precision_at_k(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Expected precision@k over random tie-breaks, by walking tie groups one at a time."""
    taken, hits = 0, 0.0
    for value in sorted(set(scores.tolist()), reverse=True):
        group = scores == value
        room = min(k - taken, int(group.sum()))
        hits += room * relevant[group].mean()
        taken += room
        if taken == k:
            break
    return hits / k


# --------------------------------------------------------------------------- cross-checks


@PROPERTY
@given(batch=batches)
def test_per_bag_metrics_match_sklearn(batch: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    scores, evidence, mask = batch
    auroc = per_bag_auroc(scores, evidence, mask)
    auprc = per_bag_auprc(scores, evidence, mask)
    ndcg = ndcg_at_k(scores, evidence, mask)
    precision = precision_at_k(scores, evidence, mask)
    eligible_means = []
    for b in range(len(scores)):
        y = bag_classes(evidence[b], mask[b])
        s = scores[b][mask[b]]
        if 0 < y.sum() < len(y):
            k = int(y.sum())
            assert auroc.values[b] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
            assert auprc.values[b] == pytest.approx(average_precision_score(y, s), abs=1e-12)
            expected_ndcg = ndcg_score(y[None].astype(float), s[None], k=k)
            assert ndcg.values[b] == pytest.approx(expected_ndcg, abs=1e-12)
            assert precision.values[b] == pytest.approx(reference_precision_at_k(s, y, k),
                                                        abs=1e-12)
            eligible_means.append(roc_auc_score(y, s))
        else:
            for result in (auroc, auprc, ndcg, precision):
                assert math.isnan(result.values[b])
    assert auroc.n_eligible == len(eligible_means)
    assert auroc.n_eligible + auroc.n_excluded == len(scores)
    if eligible_means:
        assert auroc.mean == pytest.approx(np.mean(eligible_means), abs=1e-12)
        assert auroc.reason is None
    else:
        assert math.isnan(auroc.mean) and auroc.reason


@PROPERTY
@given(batch=batches, k=st.integers(1, 12))
def test_fixed_k_matches_sklearn(batch: tuple[np.ndarray, np.ndarray, np.ndarray],
                                 k: int) -> None:
    scores, evidence, mask = batch
    ndcg = ndcg_at_k(scores, evidence, mask, k=k)
    precision = precision_at_k(scores, evidence, mask, k=k)
    for b in range(len(scores)):
        y = bag_classes(evidence[b], mask[b])
        s = scores[b][mask[b]]
        if 0 < y.sum() < len(y):
            kk = min(k, len(s))
            assert ndcg.values[b] == pytest.approx(
                ndcg_score(y[None].astype(float), s[None], k=kk), abs=1e-12)
            assert precision.values[b] == pytest.approx(reference_precision_at_k(s, y, kk),
                                                        abs=1e-12)


@PROPERTY
@given(batch=batches, normalisation=st.sampled_from(["none", "rank", "minmax"]))
def test_pooled_metrics_match_sklearn(batch: tuple[np.ndarray, np.ndarray, np.ndarray],
                                      normalisation: str) -> None:
    scores, evidence, mask = batch
    transformed = scores.copy()
    for b in range(len(scores)):
        s = scores[b][mask[b]]
        if not len(s):
            continue
        if normalisation == "rank":
            s = (rankdata(s) - 1) / (len(s) - 1) if len(s) > 1 else np.full(1, 0.5)
        elif normalisation == "minmax":
            s = (s - s.min()) / (s.max() - s.min()) if s.max() > s.min() else np.full(len(s), .5)
        transformed[b][mask[b]] = s
    flat_s, flat_e = transformed[mask], evidence[mask]
    auroc = pooled_auroc(scores, evidence, mask, normalisation)
    auprc = pooled_auprc(scores, evidence, mask, normalisation)
    y = flat_e > 0
    if 0 < y.sum() < len(y):
        assert auroc.value == pytest.approx(roc_auc_score(y, flat_s), abs=1e-12)
        assert auprc.value == pytest.approx(average_precision_score(y, flat_s), abs=1e-12)
        assert auprc.chance == pytest.approx(y.mean())
    else:
        assert math.isnan(auroc.value) and auroc.reason
        assert math.isnan(auprc.value) and auprc.reason
    negative = flat_e < 0
    two = pooled_auroc2(scores, evidence, mask, normalisation)
    two_pr = pooled_auprc2(scores, evidence, mask, normalisation)
    if 0 < y.sum() < len(y) and 0 < negative.sum() < len(y):
        expected = (roc_auc_score(y, flat_s) + roc_auc_score(negative, -flat_s)) / 2
        expected_pr = (average_precision_score(y, flat_s)
                       + average_precision_score(negative, -flat_s)) / 2
        assert two.value == pytest.approx(expected, abs=1e-12)
        assert two_pr.value == pytest.approx(expected_pr, abs=1e-12)
    else:
        assert math.isnan(two.value) and two.reason


@PROPERTY
@given(batch=batches)
def test_two_sided_metrics_match_sklearn(batch: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    scores, evidence, mask = batch
    result = auroc2(scores, evidence, mask)
    result_pr = auprc2(scores, evidence, mask)
    strict = auroc2(scores, evidence, mask, require_both_sides=True)
    expected, expected_pr = [], []
    for b in range(len(scores)):
        e, s = evidence[b][mask[b]], scores[b][mask[b]]
        sides, sides_pr = [], []
        if 0 < (e > 0).sum() < len(e):
            sides.append(roc_auc_score(e > 0, s))
            sides_pr.append(average_precision_score(e > 0, s))
        if 0 < (e < 0).sum() < len(e):
            sides.append(roc_auc_score(e < 0, -s))
            sides_pr.append(average_precision_score(e < 0, -s))
        expected.append(sides)
        expected_pr.append(sides_pr)
    any_negative_contrast = any(
        0 < (evidence[b][mask[b]] < 0).sum() < mask[b].sum() for b in range(len(scores)))
    if not any_negative_contrast:
        assert math.isnan(result.mean) and "negative evidence" in result.reason
        return
    for b, (sides, sides_pr) in enumerate(zip(expected, expected_pr, strict=True)):
        if sides:
            assert result.values[b] == pytest.approx(np.mean(sides), abs=1e-12)
            assert result_pr.values[b] == pytest.approx(np.mean(sides_pr), abs=1e-12)
        else:
            assert math.isnan(result.values[b])
        if len(sides) < 2:
            assert math.isnan(strict.values[b])
        else:
            assert strict.values[b] == pytest.approx(np.mean(sides), abs=1e-12)
    one_sided = sum(len(sides) == 1 for sides in expected)
    assert result.counts["positive_side_only"] + result.counts["negative_side_only"] == one_sided
    assert strict.excluded.get("one_sided", 0) == one_sided


@PROPERTY
@given(batch=batches)
def test_average_ranks_match_scipy(batch: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    scores, _, mask = batch
    ranks = average_ranks(scores, mask)
    for b in range(len(scores)):
        np.testing.assert_array_equal(ranks[b][mask[b]], rankdata(scores[b][mask[b]]))
        assert np.isnan(ranks[b][~mask[b]]).all()


def test_rank_auroc_handles_infinite_scores() -> None:
    scores = np.array([[np.inf, 1.0, -np.inf, np.inf, 0.0]])
    positive = np.array([[True, False, False, False, True]])
    mask = np.array([[True, True, True, False, True]])
    expected = roc_auc_score([1, 0, 0, 1], [1e308, 1.0, -1e308, 0.0])
    assert rank_auroc(scores, positive, mask)[0] == pytest.approx(expected)


def make_probs(seed: int, n_bags: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities from small integer counts, so ties between bags are frequent."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 4, (n_bags, n_classes)).astype(np.float64)
    counts[np.arange(n_bags), rng.integers(0, n_classes, n_bags)] += 1
    labels = rng.integers(0, n_classes, n_bags)
    return labels, counts / counts.sum(axis=1, keepdims=True)


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), n_bags=st.integers(1, 40), n_classes=st.integers(2, 5))
def test_bag_metrics_match_sklearn(seed: int, n_bags: int, n_classes: int) -> None:
    labels, probs = make_probs(seed, n_bags, n_classes)
    out = bag_metrics(labels, probs)
    predictions = probs.argmax(axis=1)
    assert out["accuracy"] == pytest.approx(accuracy_score(labels, predictions))
    with warnings.catch_warnings():
        # sklearn warns when a predicted class is absent from the labels, then skips it.
        warnings.simplefilter("ignore")
        expected_bacc = balanced_accuracy_score(labels, predictions)
    assert out["balanced_accuracy"] == pytest.approx(expected_bacc)
    assert out["log_loss"] == pytest.approx(log_loss(labels, probs, labels=range(n_classes)))
    present = np.unique(labels)
    if len(present) == n_classes:
        if n_classes == 2:
            expected = roc_auc_score(labels, probs[:, 1])
        else:
            expected = roc_auc_score(labels, probs, multi_class="ovr", average="macro",
                                     labels=range(n_classes))
        assert out["auroc"] == pytest.approx(expected, abs=1e-12)
        assert "auroc" not in out.reasons
    elif len(present) == 1:
        assert math.isnan(out["auroc"]) and "one class" in out.reasons["auroc"]
    else:
        assert "macro over" in out.reasons["auroc"]


def test_balanced_accuracy_against_sklearn_when_every_class_is_present() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    probs = np.eye(3)[[0, 1, 0, 1, 1, 2, 0, 2, 1]]
    out = bag_metrics(labels, probs)
    assert out["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(labels, probs.argmax(1)))


def test_bag_metrics_binary_vector_and_empty() -> None:
    out = bag_metrics([0, 1, 1, 0], [0.2, 0.7, 0.6, 0.9])
    assert out["auroc"] == pytest.approx(roc_auc_score([0, 1, 1, 0], [0.2, 0.7, 0.6, 0.9]))
    assert out["accuracy"] == pytest.approx(0.75)
    empty = bag_metrics(np.zeros(0, dtype=int), np.zeros((0, 3)))
    for key in ("accuracy", "balanced_accuracy", "auroc", "log_loss"):
        assert math.isnan(empty[key]) and empty.reasons[key] == "no bags"


def test_bag_metrics_reject_bad_input() -> None:
    with pytest.raises(SpecError, match="probs"):
        bag_metrics([0, 1], [[0.5, 0.2], [0.5, 0.5]])
    with pytest.raises(SpecError, match="labels"):
        bag_metrics([0, 3], [[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(SpecError, match="labels"):
        bag_metrics([0, 1, 1], [[0.5, 0.5], [0.5, 0.5]])


# --------------------------------------------------------------------------- hand-computed


def test_hand_computed_ndcg_and_precision() -> None:
    scores = np.array([[0.9, 0.8, 0.1, 0.5]])
    evidence = np.array([[1, 0, 1, 0]])
    expected = 1.0 / (1.0 + 1.0 / math.log2(3))
    assert ndcg_at_k(scores, evidence).mean == pytest.approx(expected)
    assert precision_at_k(scores, evidence).mean == pytest.approx(0.5)
    # Witness tied with a non-witness at the top: each gets half the gain.
    tied = ndcg_at_k([[1.0, 1.0, 0.0]], [[1, 0, 0]])
    assert tied.mean == pytest.approx(0.5)
    assert precision_at_k([[1.0, 1.0, 0.0]], [[1, 0, 0]]).mean == pytest.approx(0.5)
    assert ndcg_at_k([[1.0, 1.0, 0.0]], [[1, 0, 0]]).chance == pytest.approx(1 / 3)


def test_hand_computed_two_sided() -> None:
    scores = np.array([[3.0, 2.0, 1.0, 0.0]])
    evidence = np.array([[1, 0, -1, 0]])
    assert auroc2(scores, evidence).mean == pytest.approx((1.0 + 2.0 / 3.0) / 2.0)
    assert auprc2(scores, evidence).mean == pytest.approx((1.0 + 0.5) / 2.0)
    # Second bag has only positive evidence: it uses that side and is reported as one-sided.
    two = auroc2(np.array([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]]),
                 np.array([[1, 0, -1, 0], [1, 0, 0, 0]]))
    assert two.values[1] == pytest.approx(0.0)
    assert two.counts == {"both_sides": 1, "positive_side_only": 1, "negative_side_only": 0}
    strict = auroc2(np.array([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]]),
                    np.array([[1, 0, -1, 0], [1, 0, 0, 0]]), require_both_sides=True)
    assert strict.n_eligible == 1 and strict.excluded == {"one_sided": 1}


def test_hand_computed_concentration() -> None:
    attention = np.array([[0.5, 0.3, 0.2, 0.0]])
    evidence = np.array([[1, 0, 1, 0]])
    mask = np.array([[True, True, True, False]])
    result = concentration(attention, evidence, mask)
    assert result.mean == pytest.approx(0.7)
    assert result.chance == pytest.approx(2 / 3)
    signed = concentration(np.array([[0.5, -0.3, 0.2]]), np.array([[1, 0, 1]]) * 1)
    assert math.isnan(signed.mean) and "signed" in signed.reason
    zero = concentration(np.zeros((1, 3)), np.array([[1, 0, 0]]))
    assert math.isnan(zero.mean) and zero.excluded == {"zero_score_mass": 1}


def test_hand_computed_aopc() -> None:
    curve = np.array([[0.9, 0.5, 0.2], [0.8, 0.4, np.nan]])
    random_curve = np.array([[[0.9, 0.8, 0.7], [0.8, 0.8, np.nan]],
                             [[0.9, 0.6, 0.5], [0.8, 0.6, np.nan]]])
    per_bag = aopc_per_bag(curve)
    np.testing.assert_allclose(per_bag, [1.1 / 3, 0.2])
    out = aopc(curve, random_curve)
    random_bag = [(0.3 / 3 + 0.7 / 3) / 2, (0.0 + 0.1) / 2]
    assert out["aopc"] == pytest.approx(np.mean([1.1 / 3, 0.2]))
    assert out["aopc_random"] == pytest.approx(np.mean(random_bag))
    assert out["aopc_relative"] == pytest.approx(np.mean([1.1 / 3, 0.2]) - np.mean(random_bag))
    alone = aopc(curve)
    assert math.isnan(alone["aopc_relative"]) and "random_curve" in alone.reasons["aopc_relative"]


def test_deletion_order_and_removal_mask() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.9, 7.0], [3.0, 1.0, 2.0, 0.0, 0.0]])
    mask = np.array([[True, True, True, True, False], [True, True, True, True, True]])
    order = deletion_order(scores, mask, seed=3)
    assert set(order[0, :2].tolist()) == {1, 3}
    assert order[0, 2:].tolist() == [2, 0, 4]
    assert order[1, :3].tolist() == [0, 2, 1]
    np.testing.assert_array_equal(order, deletion_order(scores, mask, seed=3))
    firsts = {tuple(deletion_order(scores, mask, seed=s)[0, :2]) for s in range(20)}
    assert firsts == {(1, 3), (3, 1)}
    keep = removal_mask(order, mask, [2, 0])
    assert keep[0].tolist() == [True, False, True, False, False]
    assert keep[1].all()
    with pytest.raises(SpecError, match="n_removed"):
        removal_mask(order, mask, -1)
    with pytest.raises(SpecError, match="order"):
        removal_mask(np.zeros((2, 5), dtype=int), mask, 1)


# --------------------------------------------------------------------------- undefined cases


def test_all_one_class_bags_are_nan_with_reason() -> None:
    scores = np.array([[0.2, 0.8], [0.4, 0.6], [0.1, 0.3]])
    evidence = np.array([[0, 0], [1, 1], [1, 0]])
    mask = np.array([[True, True], [True, True], [False, False]])
    result = per_bag_auroc(scores, evidence, mask)
    assert math.isnan(result.mean) and result.n_eligible == 0
    assert result.excluded == {"empty_bag": 1, "no_witness": 1, "all_witness": 1}
    assert "no eligible bag" in result.reason
    report = importance_report(scores, evidence, mask)
    nan_keys = [key for key, value in report.items() if math.isnan(value)]
    assert "auroc" in nan_keys and "auroc_ci_low" in nan_keys
    assert all(key in report.reasons for key in nan_keys)


def test_empty_input_gives_nan_with_reasons() -> None:
    report = importance_report(np.zeros((0, 4)), np.zeros((0, 4)), np.zeros((0, 4), bool))
    assert report["n_bags"] == 0
    for key in ("auroc", "auprc", "ndcg_at_k", "auroc_pooled", "concentration"):
        assert math.isnan(report[key]) and report.reasons[key]
    assert per_bag_auroc(np.zeros((0, 4)), np.zeros((0, 4))).reason == "no bags"
    assert pooled_auroc(np.zeros((0, 4)), np.zeros((0, 4))).reason == "no instances"


@PROPERTY
@given(batch=batches)
def test_every_nan_in_report_has_a_reason(batch: tuple[np.ndarray, np.ndarray, np.ndarray],
                                          ) -> None:
    report = importance_report(*batch, n_boot=50)
    for key, value in report.items():
        assert isinstance(value, float)
        if math.isnan(value):
            assert report.reasons.get(key), key
    assert report["auroc_n_eligible"] + report["auroc_n_excluded"] == report["n_bags"]


def test_input_errors_name_the_field() -> None:
    with pytest.raises(SpecError, match="evidence"):
        per_bag_auroc([[0.1, 0.2]], [[2, 0]])
    with pytest.raises(SpecError, match="scores"):
        per_bag_auroc([[np.nan, 0.2]], [[1, 0]])
    with pytest.raises(SpecError, match="mask"):
        per_bag_auroc([[0.1, 0.2]], [[1, 0]], [[True]])
    with pytest.raises(SpecError, match="scores"):
        per_bag_auroc([0.1, 0.2], [1, 0])
    with pytest.raises(SpecError, match="normalisation"):
        pooled_auroc([[0.1, 0.2]], [[1, 0]], normalisation="zscore")
    with pytest.raises(SpecError, match="k"):
        ndcg_at_k([[0.1, 0.2]], [[1, 0]], k=0)
    with pytest.raises(SpecError, match="scores"):
        normalise_per_bag([[0.1, -0.2]], method="sum")


# --------------------------------------------------------------------------- padding invariance


@PROPERTY
@given(batch=batches, seed=st.integers(0, 1000), n_extra=st.integers(1, 4))
def test_padding_never_changes_any_metric(batch: tuple[np.ndarray, np.ndarray, np.ndarray],
                                          seed: int, n_extra: int) -> None:
    scores, evidence, mask = batch
    rng = np.random.default_rng(seed)
    n_bags, n_max = scores.shape
    # Insert padded columns at random places, holding extreme values and witness evidence.
    positions = np.sort(rng.integers(0, n_max + 1, n_extra))
    extreme = np.array([1e300, -np.inf, np.inf, np.nan])
    pad_scores = extreme[rng.integers(0, 4, (n_bags, n_extra))]
    padded_scores = np.insert(scores, positions, pad_scores, axis=1)
    padded_evidence = np.insert(evidence, positions, 1, axis=1)
    padded_mask = np.insert(mask, positions, False, axis=1)
    # Garbage in already-padded cells too.
    padded_scores[~padded_mask] = pad_scores.ravel()[0]
    base = importance_report(scores, evidence, mask, n_boot=100, seed=seed)
    padded = importance_report(padded_scores, padded_evidence, padded_mask, n_boot=100,
                               seed=seed)
    assert base.keys() == padded.keys()
    for key in base:
        np.testing.assert_allclose(padded[key], base[key], rtol=1e-12, atol=1e-12,
                                   equal_nan=True, err_msg=key)
    for method in ("rank", "minmax"):
        np.testing.assert_allclose(
            normalise_per_bag(padded_scores, padded_mask, method)[padded_mask],
            normalise_per_bag(scores, mask, method)[mask])


# --------------------------------------------------------------------------- bootstrap


@PROPERTY
@given(values=st.lists(st.floats(0, 1), min_size=1, max_size=40), seed=st.integers(0, 99))
def test_bootstrap_contains_estimate_and_is_reproducible(values: list[float], seed: int) -> None:
    arr = np.array(values + [np.nan])
    first = bootstrap_ci(arr, n_boot=300, seed=seed)
    again = bootstrap_ci(arr, n_boot=300, seed=seed)
    assert (first.low, first.high) == (again.low, again.high)
    assert first.estimate == pytest.approx(np.mean(values))
    assert first.low - 1e-12 <= first.estimate <= first.high + 1e-12
    assert first.n == len(values)


def test_bootstrap_seed_matters_and_undefined() -> None:
    values = np.random.default_rng(0).random(30)
    a, b = bootstrap_ci(values, seed=1), bootstrap_ci(values, seed=2)
    assert (a.low, a.high) != (b.low, b.high)
    assert a.high - a.low < bootstrap_ci(values, level=0.99, seed=1).high - a.low + 1e-12
    empty = bootstrap_ci(np.array([np.nan]))
    assert math.isnan(empty.low) and empty.reason
    with pytest.raises(SpecError, match="n_boot"):
        bootstrap_ci(values, n_boot=0)


# --------------------------------------------------------------------------- ensembles


def test_combine_scores_invariances() -> None:
    rng = np.random.default_rng(1)
    member = rng.random((4, 6))
    mask = rng.random((4, 6)) < 0.8
    mask[:, 0] = True
    normalised = normalise_per_bag(member, mask, "minmax")
    identical = np.stack([member] * 3)
    np.testing.assert_allclose(combine_scores(identical, mask), normalised)
    np.testing.assert_allclose(combine_scores(identical, mask, "median"), normalised)
    np.testing.assert_allclose(combine_scores(identical, mask, "mean_rank"),
                               normalise_per_bag(member, mask, "rank"))
    # Members that differ only in scale and shift count as identical.
    rescaled = np.stack([member, 10 * member + 3, 0.5 * member - 1])
    np.testing.assert_allclose(combine_scores(rescaled, mask), normalised)
    assert (combine_scores(rescaled, mask)[~mask] == 0).all()
    attention = normalise_per_bag(member, mask, "sum")
    np.testing.assert_allclose(combine_scores(np.stack([member, 2 * member]), mask,
                                              normalisation="sum"), attention)


def test_combine_scores_median_of_three_and_mean_rank() -> None:
    members = np.array([[[0.0, 0.5, 1.0]], [[0.0, 0.2, 1.0]], [[0.0, 0.9, 1.0]]])
    np.testing.assert_allclose(combine_scores(members, method="median"), [[0.0, 0.5, 1.0]])
    np.testing.assert_allclose(combine_scores(members), [[0.0, 1.6 / 3, 1.0]])
    disagree = np.array([[[3.0, 2.0, 1.0]], [[1.0, 2.0, 3.0]], [[3.0, 1.0, 2.0]]])
    np.testing.assert_allclose(combine_scores(disagree, method="mean_rank"),
                               [[(1.0 + 0.0 + 1.0) / 3, (0.5 + 0.5 + 0.0) / 3,
                                 (0.0 + 1.0 + 0.5) / 3]])
    with pytest.raises(SpecError, match="method"):
        combine_scores(members, method="max")


def test_combine_probs_is_mean_and_checks_input() -> None:
    probs = np.array([[[0.2, 0.8]], [[0.6, 0.4]]])
    np.testing.assert_allclose(combine_probs(probs), [[0.4, 0.6]])
    with pytest.raises(SpecError, match="probs"):
        combine_probs(np.array([[0.2, 0.8]]))


def perfect_batch(n_bags: int = 30, n_max: int = 12, seed: int = 0,
                  ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    evidence = (rng.random((n_bags, n_max)) < 0.3).astype(int)
    evidence[:, 0], evidence[:, 1] = 1, 0
    mask = rng.random((n_bags, n_max)) < 0.9
    mask[:, :2] = True
    return evidence, mask


def test_ensemble_curve_perfect_members_never_fail() -> None:
    evidence, mask = perfect_batch()
    members = np.stack([evidence * 2.0 + 0.1 * m for m in range(5)])
    rows = ensemble_size_curve(members, evidence, mask, n_subsets=20, seed=0)
    assert [row["k"] for row in rows] == [1, 2, 3, 4, 5]
    for row in rows:
        assert row["auroc_mean"] == pytest.approx(1.0)
        assert row["p_fail"] == 0.0 and row["bag_fail_rate"] == 0.0
        assert row["auroc_q05"] == pytest.approx(1.0) and row["reason"] is None
    assert rows[-1]["exhaustive"] and rows[-1]["n_subsets"] == 1


def test_ensemble_curve_random_members_fail_and_matches_direct_computation() -> None:
    evidence, mask = perfect_batch(seed=1)
    members = np.random.default_rng(2).random((6, *evidence.shape))
    rows = ensemble_size_curve(members, evidence, mask, ks=[1, 3, 6], n_subsets=15, seed=4)
    assert all(row["p_fail"] >= 0.9 for row in rows)
    assert all(0.3 < row["auroc_mean"] < 0.7 for row in rows)
    assert rows[0]["exhaustive"] and rows[0]["n_subsets"] == 6
    assert not rows[1]["exhaustive"] and rows[1]["n_subsets"] == 15
    assert rows == ensemble_size_curve(members, evidence, mask, ks=[1, 3, 6], n_subsets=15,
                                       seed=4)
    direct = per_bag_auroc(combine_scores(members, mask), evidence, mask).mean
    assert rows[-1]["auroc_mean"] == pytest.approx(direct)
    singles = [per_bag_auroc(m, evidence, mask).mean for m in members]
    assert rows[0]["auroc_mean"] == pytest.approx(np.mean(singles))
    assert rows[0]["auroc_sd"] == pytest.approx(np.std(singles))
    for method in ("mean_rank", "median"):
        row = ensemble_size_curve(members, evidence, mask, ks=[6], method=method)[0]
        expected = per_bag_auroc(combine_scores(members, mask, method), evidence, mask).mean
        assert row["auroc_mean"] == pytest.approx(expected)


def test_ensemble_curve_undefined_and_bad_input() -> None:
    members = np.random.default_rng(0).random((3, 2, 4))
    rows = ensemble_size_curve(members, np.zeros((2, 4)), None)
    assert all(math.isnan(row["auroc_mean"]) and row["reason"] for row in rows)
    with pytest.raises(SpecError, match="ks"):
        ensemble_size_curve(members, np.zeros((2, 4)), ks=[4])
    with pytest.raises(SpecError, match="member_scores"):
        ensemble_size_curve(members[0], np.zeros((2, 4)))


# --------------------------------------------------------------------------- silent failures


def test_is_silent_failure() -> None:
    good_bags = {"balanced_accuracy": 0.95}
    flagged, reason = is_silent_failure(good_bags, {"auroc": 0.55})
    assert flagged and "silent failure" in reason
    assert is_silent_failure(good_bags, {"auroc": 0.9}) == (
        False, is_silent_failure(good_bags, {"auroc": 0.9})[1])
    assert not is_silent_failure({"balanced_accuracy": 0.7}, {"auroc": 0.5})[0]
    criteria = SilentFailureCriteria(min_bag_score=0.8, max_importance=0.95,
                                     bag_metric="auroc", importance_metric="auprc2")
    assert is_silent_failure({"auroc": 0.97}, {"auprc2": 0.45}, criteria)[0]
    report = importance_report(np.zeros((1, 2)), np.zeros((1, 2)))
    undecided, why = is_silent_failure(good_bags, report)
    assert not undecided and "NaN" in why and "no eligible bag" in why
    with pytest.raises(SpecError, match="importance_metric"):
        is_silent_failure(good_bags, {"ndcg": 0.4})
    with pytest.raises(SpecError, match="min_bag_score"):
        SilentFailureCriteria(min_bag_score=1.5)


def test_misleading_bags() -> None:
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.5, 0.5, 0.0],
                       [0.3, 0.9, 5.0], [0.2, 0.7, 0.1]])
    evidence = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 1], [0, 0, 0]])
    mask = np.array([[True] * 3, [True] * 3, [True] * 3, [True, True, False], [True] * 3])
    correct = np.array([True, True, True, True, True])
    flags = misleading_bags(scores, evidence, mask, correct)
    assert flags.tolist() == [False, True, True, True, False]
    assert not misleading_bags(scores, evidence, mask, ~correct).any()


def test_unit_test_flag() -> None:
    failed = unit_test_flag(0.95, 0.5)
    assert failed.flagged and "0.6" in failed.reason
    assert failed.to_dict()["fail_threshold"] == 0.6
    dropped = unit_test_flag(0.99, 0.7, max_drop=0.2)
    assert dropped.flagged and "drop" in dropped.reason
    assert not unit_test_flag(0.99, 0.7, max_drop=None).flagged
    assert not unit_test_flag(0.8, 0.3).flagged
    assert not unit_test_flag(0.93, 0.9).flagged
    assert not unit_test_flag(math.nan, 0.9).flagged
    with pytest.raises(SpecError, match="pass_threshold"):
        unit_test_flag(0.9, 0.5, pass_threshold=2.0)


def test_metric_dict_is_plain_dict_and_pickles() -> None:
    report = importance_report(*random_batch(0, 5, 8), n_boot=10)
    clone = pickle.loads(pickle.dumps(report))
    assert isinstance(clone, dict) and list(clone) == list(report)
    np.testing.assert_equal(dict(clone), dict(report))
    assert clone.reasons == report.reasons


def brute_signed_ndcg(scores: np.ndarray, gains: np.ndarray) -> float:
    """MILLI's NDCG@n from its definition, averaged over every order of tied scores: gains in
    {+1, 0, -1}, n = number of +1, ideal = the n witnesses first."""
    import itertools

    n = int((gains > 0).sum())
    ideal = sum(1 / math.log2(r + 2) for r in range(n))
    values = []
    for order in itertools.permutations(range(len(scores))):
        ranked = [i for i in order]
        ranked.sort(key=lambda i: -scores[i])  # stable: ties keep this permutation's order
        values.append(sum(gains[i] / math.log2(r + 2) for r, i in enumerate(ranked[:n])))
    return float(np.mean(values)) / ideal


def test_signed_ndcg_matches_brute_force_and_milli_bag_rules() -> None:
    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=(40, 6)), 1)  # rounding makes ties
    evidence = rng.choice([-1, 0, 1], size=(40, 6), p=[0.3, 0.4, 0.3])
    evidence[0] = 1  # an all-witness bag: kept by MILLI's rule, dropped by ours
    mask = np.ones((40, 6), dtype=bool)
    mask[1, 2:] = False  # a bag of 2: MILLI skips it
    signed = ndcg_at_k(scores, evidence, mask, gains="signed", bags="milli")
    for b in range(40):
        real = mask[b]
        if real.sum() <= 2 or not (evidence[b][real] > 0).any():
            assert np.isnan(signed.values[b])
            continue
        expected = brute_signed_ndcg(scores[b][real], evidence[b][real])
        assert signed.values[b] == pytest.approx(expected, abs=1e-9)
    assert signed.values[0] == pytest.approx(1.0)
    assert signed.excluded.get("small_bag") == 1
    assert (signed.values[~np.isnan(signed.values)] < 0).any()  # refuters ranked first cost
    binary = ndcg_at_k(scores, evidence, mask)
    assert np.isnan(binary.values[0])  # all-witness bag excluded by default
    assert ndcg_at_k(scores, np.maximum(evidence, 0), mask, gains="signed").values[2:] \
        == pytest.approx(binary.values[2:], nan_ok=True)
    with pytest.raises(SpecError, match="gains"):
        ndcg_at_k(scores, evidence, mask, gains="graded")
    with pytest.raises(SpecError, match="bags"):
        ndcg_at_k(scores, evidence, mask, bags="all")
