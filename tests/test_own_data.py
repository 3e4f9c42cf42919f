"""Explaining a user's own bags: loading tables and arrays, splitting, the label-free agreement
signal (checked against scipy and by hand) and its correlation with the truth."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr, spearmanr

from attnsets.data import DatasetSpec, make_dataset
from attnsets.data.own import bags_from_arrays, load_bags, split_assignment, split_bags
from attnsets.errors import SpecError
from attnsets.metrics.agreement import agreement, correlation, descending_rank
from attnsets.models import ModelSpec
from attnsets.own_data import agreement_vs_truth, explain_own_data
from attnsets.tables import write_table

FEATURES = ["f0", "f1", "f2", "f3"]
SMALL_MODEL = ModelSpec(embed_dim=16, encoder_params={"hidden": 16})
FAST = {"epochs": 8, "patience": 3, "lr": 0.01}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def synthetic_table(n_bags: int = 40, seed: int = 0) -> pd.DataFrame:
    """One row per instance; "sick" bags hold 1-2 instances shifted along f0. Rows are shuffled,
    so the rows of a bag are not contiguous; `note` is text, `batch` an extra numeric column."""
    rng = np.random.default_rng(seed)
    rows = []
    for b in range(n_bags):
        sick = b % 2 == 1
        size = int(rng.integers(4, 9))
        x = rng.normal(size=(size, len(FEATURES)))
        if sick:
            x[: int(rng.integers(1, 3)), 0] += 6.0
        for i in range(size):
            rows.append({"patient": f"p{b:02d}", "diagnosis": "sick" if sick else "healthy",
                         **dict(zip(FEATURES, x[i], strict=True)), "note": "n/a",
                         "batch": b % 3})
    frame = pd.DataFrame(rows)
    return frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_load_bags_reads_a_table_written_to_disk(tmp_path: Path, suffix: str) -> None:
    frame = synthetic_table()
    path = write_table(frame, tmp_path / f"cells{suffix}")
    bags = load_bags(path, "patient", "diagnosis")
    assert len(bags) == 40 and bags.class_names == ["healthy", "sick"]
    assert bags.feature_names == [*FEATURES, "batch"] and bags.ignored_columns == ["note"]
    # bags in order of their first row, sizes as counted by pandas
    assert list(bags.bag_ids) == list(pd.unique(frame["patient"]))
    assert np.array_equal(bags.sizes, frame["patient"].value_counts()[bags.bag_ids].to_numpy())
    # every instance points back to its source row, of the right bag, with its features
    bag_of_instance = np.repeat(bags.bag_ids, bags.sizes)
    assert np.array_equal(frame["patient"].to_numpy()[bags.rows], bag_of_instance)
    assert np.allclose(bags.instances, frame.loc[bags.rows, bags.feature_names].to_numpy(),
                       atol=1e-6)
    sick = frame.groupby("patient")["diagnosis"].first()[bags.bag_ids] == "sick"
    assert np.array_equal(bags.labels, sick.to_numpy().astype(int))
    chosen = load_bags(frame, "patient", "diagnosis", feature_columns=["f1", "f0"])
    assert chosen.feature_names == ["f1", "f0"] and chosen.instances.shape[1] == 2


def test_load_bags_errors_name_the_column_and_what_is_there(tmp_path: Path) -> None:
    frame = synthetic_table(10)
    with pytest.raises(SpecError) as caught:
        load_bags(frame, "sample", "diagnosis")
    assert caught.value.field == "bag_column" and "patient" in str(caught.value)
    with pytest.raises(SpecError, match="feature_columns.*'note'.*numeric"):
        load_bags(frame, "patient", "diagnosis", feature_columns=["f0", "note"])
    with pytest.raises(SpecError, match=r"feature_columns.*\['zz'\]"):
        load_bags(frame, "patient", "diagnosis", feature_columns=["f0", "zz"])
    mixed = frame.copy()
    in_p03 = mixed["patient"] == "p03"
    mixed.loc[in_p03, "diagnosis"] = np.resize(["sick", "healthy"], int(in_p03.sum()))
    with pytest.raises(SpecError, match="one label per bag.*'p03' has labels"):
        load_bags(mixed, "patient", "diagnosis")
    with pytest.raises(SpecError, match="at least two classes"):
        load_bags(frame.assign(diagnosis="sick"), "patient", "diagnosis")
    holes = frame.copy()
    holes.loc[3, "f2"] = np.nan
    with pytest.raises(SpecError, match="'f2' has 1 missing"):
        load_bags(holes, "patient", "diagnosis")
    with pytest.raises(SpecError, match="missing values"):
        load_bags(frame.assign(diagnosis=frame["diagnosis"].where(frame.index != 0)),
                  "patient", "diagnosis")
    with pytest.raises(SpecError, match="existing file"):
        load_bags(tmp_path / "cells.xlsx", "patient", "diagnosis")
    with pytest.raises(SpecError, match="no numeric"):
        load_bags(frame[["patient", "diagnosis", "note"]], "patient", "diagnosis")


def test_bags_from_arrays_matches_the_table_route() -> None:
    frame = synthetic_table(12)
    from_table = load_bags(frame, "patient", "diagnosis", feature_columns=FEATURES)
    arrays = [from_table.instances[a:b] for a, b in zip(from_table.offsets[:-1],
                                                        from_table.offsets[1:], strict=True)]
    labels = np.asarray(from_table.class_names)[from_table.labels]
    from_arrays = bags_from_arrays(arrays, labels, bag_ids=from_table.bag_ids,
                                   feature_names=FEATURES)
    assert np.array_equal(from_arrays.instances, from_table.instances)
    assert np.array_equal(from_arrays.labels, from_table.labels)
    assert np.array_equal(from_arrays.offsets, from_table.offsets)
    assert from_arrays.rows[:from_arrays.sizes[0]].tolist() == list(range(from_arrays.sizes[0]))
    with pytest.raises(SpecError, match="same d"):
        bags_from_arrays([np.zeros((2, 3)), np.zeros((2, 4))], [0, 1])
    with pytest.raises(SpecError, match=r"bags\[1\]"):
        bags_from_arrays([np.zeros((2, 3)), np.zeros((0, 3))], [0, 1])
    with pytest.raises(SpecError, match="one label per bag"):
        bags_from_arrays([np.zeros((2, 3))] * 3, [0, 1])
    with pytest.raises(SpecError, match="distinct ids"):
        bags_from_arrays([np.zeros((2, 3))] * 2, [0, 1], bag_ids=["a", "a"])


def test_split_is_seeded_stratified_and_leaves_no_split_empty() -> None:
    labels = np.array([0] * 30 + [1] * 10)
    first = split_assignment(labels, seed=3)
    assert np.array_equal(first, split_assignment(labels, seed=3))
    assert not np.array_equal(first, split_assignment(labels, seed=4))
    for c, n in ((0, 30), (1, 10)):
        counts = np.bincount(first[labels == c], minlength=3)
        assert counts.tolist() == [round(0.6 * n), round(0.2 * n), round(0.2 * n)]
    tiny_labels = np.array([0, 0, 0, 1])
    tiny = split_assignment(tiny_labels, seed=0)
    assert sorted(set(tiny.tolist())) == [0, 1, 2]
    assert set(tiny_labels[tiny == 0].tolist()) == {0, 1}  # every class keeps a training bag
    with pytest.raises(SpecError, match="every class keeps a training bag"):
        split_assignment(np.array([0, 0, 1]))
    with pytest.raises(SpecError, match="fractions"):
        split_assignment(labels, fractions=(0.5, 0.5, 0.5))
    with pytest.raises(SpecError, match="at least 3 bags"):
        split_assignment(np.array([0, 1]))


def test_split_bags_standardizes_with_training_instances_only() -> None:
    data = load_bags(synthetic_table(), "patient", "diagnosis", feature_columns=FEATURES)
    dataset = split_bags(data, seed=1)
    train = dataset.train.instances
    assert np.allclose(train.mean(axis=0), 0.0, atol=1e-5)
    assert np.allclose(train.std(axis=0), 1.0, atol=1e-4)
    index = dataset.metadata["bag_index"]
    assert sorted(sum(index.values(), [])) == list(range(len(data)))
    for name, split in dataset.splits.items():
        assert np.array_equal(split.labels, data.labels[index[name]])
        assert np.array_equal(split.sizes, data.sizes[index[name]])
        assert not split.evidence.any()  # instance labels are unknown, not "neutral"


# --------------------------------------------------------------------------- agreement


def padded_scores(n_members: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = np.array([7, 3, 12, 5, 10, 2])
    mask = np.arange(12)[None, :] < sizes[:, None]
    # integer scores: plenty of ties, as for saturated attention
    scores = rng.integers(0, 6, size=(n_members, len(sizes), 12)).astype(float)
    return np.where(mask, scores, rng.normal(size=scores.shape) * 1e6), mask


def test_identical_members_agree_perfectly() -> None:
    scores, mask = padded_scores(1)
    scores[0] += 10.0 * np.arange(12)  # no bag constant
    result = agreement(np.repeat(scores, 4, axis=0), mask)
    assert np.allclose(result.rank_agreement, 1.0)
    assert np.allclose(result.top_k_overlap, 1.0)
    assert np.all(result.rank_spread == 0.0)
    assert set(np.unique(result.top_k_votes[mask])) <= {0.0, 1.0}
    assert np.array_equal(result.k, [1, 1, 2, 1, 1, 1])  # ceil(10% of the size), at least 1


def test_rank_agreement_is_the_mean_pairwise_spearman_of_scipy() -> None:
    scores, mask = padded_scores(3, seed=1)
    result = agreement(scores, mask)
    for b in range(mask.shape[0]):
        real = scores[:, b, mask[b]]
        if any(np.ptp(r) == 0 for r in real):
            assert math.isnan(result.rank_agreement[b])
            continue
        pairs = [spearmanr(real[i], real[j]).statistic for i in range(3) for j in range(i + 1, 3)]
        assert result.rank_agreement[b] == pytest.approx(np.mean(pairs))
    reversed_pair = agreement(np.stack([scores[0], -scores[0]]), mask).rank_agreement
    defined = ~np.isnan(reversed_pair)
    assert defined.any() and np.allclose(reversed_pair[defined], -1.0)


def test_top_k_overlap_by_hand() -> None:
    scores, mask = padded_scores(4, seed=2)
    result = agreement(scores, mask, top_fraction=0.3)
    for b in range(mask.shape[0]):
        n = int(mask[b].sum())
        k = max(1, math.ceil(0.3 * n))
        tops = []
        for member in scores[:, b, :n]:
            order = sorted(range(n), key=lambda i, m=member: (-m[i], i))  # ties: bag order
            tops.append(set(order[:k]))
        overlaps = [len(tops[i] & tops[j]) / k for i in range(4) for j in range(i + 1, 4)]
        assert result.k[b] == k
        assert result.top_k_overlap[b] == pytest.approx(np.mean(overlaps))
        votes = [sum(i in t for t in tops) / 4 for i in range(n)]
        assert np.allclose(result.top_k_votes[b, :n], votes)


def test_descending_rank_shares_the_best_rank_among_ties() -> None:
    scores = np.array([[0.2, 0.9, 0.9, 0.9, 0.1, 5.0], [3.0, 1.0, 3.0, 0.0, 0.0, 0.0]])
    mask = np.array([[True] * 5 + [False], [True, True, True, False, False, False]])
    assert descending_rank(scores, mask).tolist() == [[4, 1, 1, 1, 5, 0], [1, 3, 1, 0, 0, 0]]


def test_agreement_ignores_padding_and_checks_inputs() -> None:
    scores, mask = padded_scores(3, seed=4)
    junk = np.where(mask, scores, -scores * 7 + 3)
    a, b = agreement(scores, mask), agreement(junk, mask)
    assert np.allclose(a.rank_agreement, b.rank_agreement, equal_nan=True)
    assert np.allclose(a.consensus, b.consensus) and np.all(a.consensus[~mask] == 0)
    with pytest.raises(SpecError, match="K >= 2"):
        agreement(scores[:1], mask)
    with pytest.raises(SpecError, match="top_fraction"):
        agreement(scores, mask, top_fraction=0.0)
    with pytest.raises(SpecError, match="mask"):
        agreement(scores, mask[:, :5])


def test_correlation_matches_scipy_and_is_nan_when_undefined() -> None:
    rng = np.random.default_rng(5)
    x, y = rng.integers(0, 5, 40).astype(float), rng.normal(size=40)
    y[:3] = np.nan
    out = correlation(x, y)
    keep = ~np.isnan(y)
    assert out["n"] == 37
    assert out["spearman"] == pytest.approx(spearmanr(x[keep], y[keep]).statistic)
    assert out["pearson"] == pytest.approx(pearsonr(x[keep], y[keep]).statistic)
    assert math.isnan(correlation(np.ones(10), np.arange(10.0))["spearman"])
    assert math.isnan(correlation([1.0, 2.0], [2.0, 1.0])["pearson"])


# --------------------------------------------------------------------------- end to end


def test_explain_own_data_from_a_csv_end_to_end(tmp_path: Path) -> None:
    frame = synthetic_table(40)
    path = write_table(frame, tmp_path / "cells.csv")
    data = load_bags(path, "patient", "diagnosis", feature_columns=FEATURES)
    result = explain_own_data(data, model=SMALL_MODEL, members=3, training=FAST, seed=1)
    instances, bags = result.instances, result.bags
    assert len(bags) == 40 and sorted(bags["bag_id"]) == sorted(frame["patient"].unique())
    assert set(bags["split"]) == {"train", "val", "test"}
    assert len(instances) == len(frame)
    # rows point back into the user's table, to the right bag
    assert np.array_equal(frame.loc[instances["row"], "patient"].to_numpy(),
                          instances["bag_id"].to_numpy())
    assert instances["consensus"].between(0, 1).all()
    assert instances["rank_spread"].between(0, 1).all()
    assert instances["top_k_votes"].between(0, 1).all()
    for _, bag in instances.groupby("bag_id"):  # 1 + number of strictly higher scores
        higher = (bag["consensus"].to_numpy()[None, :] > bag["consensus"].to_numpy()[:, None])
        assert np.array_equal(bag["consensus_rank"].to_numpy(), 1 + higher.sum(axis=1))
    by_bag = instances.groupby("bag_id").size()
    assert np.array_equal(by_bag[bags["bag_id"]].to_numpy(), bags["n_instances"].to_numpy())
    assert bags["top_k_overlap"].between(0, 1).all()
    assert bags["label_name"].isin(["healthy", "sick"]).all()
    assert set(result.metrics) == {"train", "val", "test"}
    written = result.write(tmp_path / "out", fmt="parquet")
    back = [pd.read_parquet(p) for p in written]
    assert len(back[0]) == len(instances) and list(back[1].columns) == list(bags.columns)
    with pytest.raises(SpecError, match="members"):
        explain_own_data(data, members=1)
    with pytest.raises(SpecError, match="method"):
        explain_own_data(data, method="telepathy")


def test_agreement_vs_truth_on_gaussian_presence() -> None:
    entry = {"name": "gaussian-presence",
             "pool": {"name": "gaussian", "num_concepts": 6, "dim": 8, "separation": 2.5},
             "rule": {"name": "presence", "key": 2},
             "bags": {"train": 100, "val": 40, "test": 60},
             "bag_size": {"kind": "uniform", "low": 6, "high": 14}}
    study = agreement_vs_truth([entry], model=SMALL_MODEL, members=3, training={"epochs": 10})
    row = study.correlations.set_index(["level", "group", "signal"]).loc[
        ("bag", "all", "rank_agreement")]
    assert math.isfinite(row["spearman"]) and math.isfinite(row["pearson"])
    assert -1 <= row["spearman"] <= 1 and row["n"] == len(study.bags) >= 10
    # only bags with witnesses and non-witnesses carry a true AUROC
    assert study.bags["consensus_auroc"].between(0, 1).all()
    assert (study.bags["label"] == 1).all()
    spec = DatasetSpec.from_dict({k: v for k, v in entry.items() if k != "name"})
    assert len(study.bags) <= make_dataset(spec).test.labels.sum()
    assert study.runs["n_bags"].sum() == len(study.bags)
