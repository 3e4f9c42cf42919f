"""Labelling rules: generated bags obey each rule's definition, witnesses, balance, sizes, seeds,
split shifts of the unit tests, and bad specs fail with SpecErrors naming the field."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnsets.data import RULES, DatasetSpec, SetDataset, make_dataset
from attnsets.data.bags import BagSplit
from attnsets.data.generate import build_rule
from attnsets.data.spec import WitnessSpec, load_config
from attnsets.errors import SpecError, SpecErrors

#: Classes whose bags must hold at least one +1 instance for their own label (and the others none).
WITNESS_LABELS: dict[str, set[int]] = {
    "presence": {1}, "threshold": {1}, "all_of": {1}, "any_of": {1}, "ratio": {1},
    "four_bags": {1, 2, 3}, "pos_neg": {0, 1}, "poison": {1}, "false_frequency": {1},
    "multi_concept_poison": {1},
}


def witness_labels(name: str, params: dict[str, Any]) -> set[int]:
    """WITNESS_LABELS, except under MILLI's convention every four_bags class 0 bag (background
    only) is all witnesses."""
    if name == "four_bags" and params.get("evidence_convention") == "milli":
        return {0, 1, 2, 3}
    return WITNESS_LABELS[name]
FIELDS = ("instances", "offsets", "labels", "concepts", "evidence")


def ids_of(value: int | list[int]) -> list[int]:
    return [value] if isinstance(value, int) else list(value)


# ---- independent reference definitions (plain Python, per instance) -------------------------

def oracle(name: str, params: dict[str, Any], concepts: list[int]) -> tuple[int, list[list[int]]]:
    """(label, evidence rows) computed instance by instance from the documented definitions."""
    count = Counter(concepts)
    if name == "four_bags":
        a, b = set(ids_of(params["a"])), set(ids_of(params["b"]))
        has_a, has_b = any(c in a for c in concepts), any(c in b for c in concepts)
        table = {"a": [-1, 1, -1, 1], "b": [-1, -1, 1, 1], "-": [0, 0, 0, 0]}
        if params.get("evidence_convention") == "milli":  # class 0: background +1, A, B 0
            table = {"a": [0, 1, -1, 1], "b": [0, -1, 1, 1], "-": [1, 0, 0, 0]}
        rows = [table["a" if c in a else "b" if c in b else "-"] for c in concepts]
        return int(has_a) + 2 * int(has_b), rows
    if name == "pos_neg":
        pos, neg = set(ids_of(params["positive"])), set(ids_of(params["negative"]))
        signs = [1 if c in pos else -1 if c in neg else 0 for c in concepts]
        n_pos, n_neg = signs.count(1), signs.count(-1)
        return int(n_pos > n_neg), [[-s, s] for s in signs]
    listed = name in ("all_of", "any_of", "multi_concept_poison")
    marked = set(ids_of(params["concepts"] if listed else params["key"]))
    n_key = sum(count[c] for c in marked)
    if name in ("presence", "poison", "false_frequency"):
        label = int(n_key >= 1)
    elif name == "threshold":
        label = int(n_key >= params["k"])
    elif name == "ratio":
        label = int(n_key / len(concepts) >= params["r"])
    elif name in ("all_of", "multi_concept_poison"):
        label = int(all(count[c] > 0 for c in marked))
    elif name == "any_of":
        label = int(any(count[c] > 0 for c in marked))
    else:
        raise AssertionError(f"no oracle for {name}")
    return label, [[-1, 1] if c in marked else [0, 0] for c in concepts]


# ---- random valid specs -----------------------------------------------------------------------

@st.composite
def rule_params(draw: st.DrawFn, name: str, ids: list[int]) -> dict[str, Any]:
    one_or_two = draw(st.sampled_from([ids[0], ids[:2]]))
    if name == "presence":
        return {"key": one_or_two}
    if name == "threshold":
        return {"key": one_or_two, "k": draw(st.integers(1, 4))}
    if name in ("all_of", "any_of"):
        return {"concepts": ids[:draw(st.integers(1, 3))]}
    if name == "ratio":
        r = draw(st.one_of(st.just(1.0), st.floats(0.05, 1.0)))
        return {"key": one_or_two, "r": r}
    if name == "four_bags":
        return {"a": ids[0], "b": draw(st.sampled_from([ids[1], ids[1:3]])),
                "evidence_convention": draw(st.sampled_from(["attnsets", "milli"])),
                "construction": draw(st.sampled_from(["attnsets", "milli"]))}
    if name == "pos_neg":
        p = draw(st.integers(1, 2))
        params = {"positive": ids[:p], "negative": ids[p:p + draw(st.integers(1, 2))]}
        construction = draw(st.sampled_from(["attnsets", "xmil"]))
        if construction == "xmil":
            params |= {"construction": "xmil",
                       "balance": draw(st.sampled_from(["exact", "natural"]))}
        return params
    if name == "poison":
        return {"key": ids[0], "poison": ids[1]}
    if name == "multi_concept_poison":
        return {"concepts": ids[:2], "poison": ids[2]}
    if name == "false_frequency":
        low = draw(st.integers(2, 3))
        high = low + draw(st.integers(0, 1))
        test_low = high + draw(st.integers(1, 10))
        return {"key": ids[0], "frequent": ids[1], "positive_copies": [low, high],
                "test_copies": [test_low, test_low + draw(st.integers(0, 5))]}
    raise AssertionError(name)


@st.composite
def dataset_specs(draw: st.DrawFn, name: str) -> dict[str, Any]:
    """A valid spec: smallest bag >= 6 and at most 2 minimum witnesses, so every rule fits."""
    n_concepts = draw(st.integers(5, 12))
    ids = draw(st.permutations(list(range(n_concepts))))
    rule = {"name": name, **draw(rule_params(name, ids))}
    # xMIL's construction draws a fixed number of instances per bag
    kinds = ["fixed"] if rule.get("construction") == "xmil" else ["fixed", "normal", "uniform"]
    kind = draw(st.sampled_from(kinds))
    if kind == "fixed":
        bag_size: dict[str, Any] = {"kind": "fixed", "mean": draw(st.integers(6, 20))}
    elif kind == "normal":
        bag_size = {"kind": "normal", "mean": draw(st.floats(6, 20)), "sd": draw(st.floats(0, 4)),
                    "min": draw(st.integers(6, 8))}
    else:
        low = draw(st.integers(6, 12))
        bag_size = {"kind": "uniform", "low": low, "high": low + draw(st.integers(0, 8))}
    if draw(st.booleans()):
        low = draw(st.integers(1, 2))
        witnesses: dict[str, Any] = {"count": [low, low + draw(st.integers(0, 3))]}
    else:
        witnesses = {"rate": draw(st.floats(0.01, 0.3))}
    return {
        "pool": {"name": "gaussian", "num_concepts": n_concepts, "dim": 3},
        "rule": rule,
        "bags": {"train": draw(st.integers(1, 12)), "val": draw(st.integers(1, 6)),
                 "test": draw(st.integers(1, 6))},
        "bag_size": bag_size,
        "witnesses": witnesses,
        "seed": draw(st.integers(0, 2**20)),
    }


def check_split(ds: SetDataset, split_name: str, split: BagSplit) -> None:
    spec = ds.spec
    rule = build_rule(spec)
    # every parameter, defaults included, as the oracle reads them
    name, params = spec.rule.name, {f.name: getattr(rule, f.name) for f in fields(rule)}
    counts = np.bincount(split.labels, minlength=rule.n_classes)
    if not rule.natural_balance:
        assert counts.max() - counts.min() <= 1, counts
    assert split.evidence.dtype == np.int8
    assert split.evidence.shape == (len(split.concepts), rule.n_classes)
    assert set(np.unique(split.evidence).tolist()) <= {-1, 0, 1}
    size_spec = spec.bag_size
    for bag, size in zip(split, split.sizes.tolist(), strict=True):
        label, rows = oracle(name, params, bag.concepts.tolist())
        assert bag.label == label == rule.label(bag.concepts)
        np.testing.assert_array_equal(bag.evidence, np.array(rows, dtype=np.int8))
        np.testing.assert_array_equal(bag.evidence, rule.evidence(bag.concepts))
        has_witness = bool((bag.evidence[:, bag.label] > 0).any())
        if name == "pos_neg" and params["construction"] == "xmil" and bag.label == 0:
            # xMIL's class 0 includes bags without any evidence concept (a 0 vs 0 tie)
            assert has_witness == bool((bag.evidence != 0).any()), bag.concepts
        else:
            assert has_witness == (bag.label in witness_labels(name, params)), (bag.label,
                                                                                  bag.concepts)
        required = rule.required_size(bag.label, split_name)
        assert size >= required
        if size_spec.kind == "fixed":
            assert size == max(int(round(size_spec.mean)), required)
        elif size_spec.kind == "uniform":
            assert size_spec.low <= size <= max(size_spec.high, required)
        else:
            assert size >= size_spec.min


def same_bytes(a: SetDataset, b: SetDataset) -> bool:
    return all(
        getattr(a.splits[s], f).dtype == getattr(b.splits[s], f).dtype
        and getattr(a.splits[s], f).shape == getattr(b.splits[s], f).shape
        and getattr(a.splits[s], f).tobytes() == getattr(b.splits[s], f).tobytes()
        for s in a.splits for f in FIELDS)


def test_every_registered_rule_has_property_tests() -> None:
    assert set(RULES.names()) == set(WITNESS_LABELS)


@pytest.mark.parametrize("name", sorted(WITNESS_LABELS))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_generated_bags_obey_the_rule(name: str, data: st.DataObject) -> None:
    raw = data.draw(dataset_specs(name))
    spec = DatasetSpec.from_dict(raw)
    ds = make_dataset(spec)
    assert ds.n_classes == build_rule(spec).n_classes
    for split_name, split in ds.splits.items():
        assert len(split) == raw["bags"][split_name]
        check_split(ds, split_name, split)
    assert same_bytes(ds, make_dataset(DatasetSpec.from_dict(raw)))
    other = make_dataset(DatasetSpec.from_dict({**raw, "seed": raw["seed"] + 1}))
    assert not same_bytes(ds, other)
    assert ds.train.instances.tobytes() != other.train.instances.tobytes()


def spec_for(rule: dict[str, Any], n: int = 200, **extra: Any) -> DatasetSpec:
    data: dict[str, Any] = {"pool": {"name": "gaussian", "dim": 2}, "rule": rule,
                            "bags": {"train": n, "val": n // 2, "test": n // 2}}
    return DatasetSpec.from_dict({**data, **extra})


def key_counts(split: BagSplit, keys: list[int]) -> np.ndarray:
    """(B,) number of instances of `keys` per bag."""
    hits = np.isin(split.concepts, keys).astype(np.int64)
    return np.add.reduceat(hits, split.offsets[:-1])


# ---- witness counts ---------------------------------------------------------------------------

def test_witness_rate_sets_the_count_per_bag() -> None:
    spec = spec_for({"name": "presence", "key": 3}, n=6,
                    bag_size={"kind": "fixed", "mean": 1000}, witnesses={"rate": 0.01})
    for split in make_dataset(spec).splits.values():
        np.testing.assert_array_equal(key_counts(split, [3]), np.where(split.labels == 1, 10, 0))


def test_witness_rate_applies_per_listed_concept() -> None:
    spec = spec_for({"name": "all_of", "concepts": [2, 5]}, n=6,
                    bag_size={"kind": "fixed", "mean": 1000}, witnesses={"rate": 0.01})
    train = make_dataset(spec).train
    positive = train.labels == 1
    for concept in (2, 5):
        assert (key_counts(train, [concept])[positive] == 10).all()
        # negatives hold a proper subset: present concepts also get exactly 10 instances
        assert set(key_counts(train, [concept])[~positive].tolist()) <= {0, 10}


def test_witness_count_range_is_respected() -> None:
    spec = spec_for({"name": "four_bags", "a": 1, "b": 2}, witnesses={"count": [2, 4]},
                    bag_size={"kind": "uniform", "low": 8, "high": 12})
    train = make_dataset(spec).train
    a, b = key_counts(train, [1]), key_counts(train, [2])
    has_a, has_b = np.isin(train.labels, [1, 3]), np.isin(train.labels, [2, 3])
    assert ((a >= 2) & (a <= 4))[has_a].all() and (a[~has_a] == 0).all()
    assert ((b >= 2) & (b <= 4))[has_b].all() and (b[~has_b] == 0).all()
    assert set(a[has_a].tolist()) == {2, 3, 4}


# ---- rule-specific constructions ---------------------------------------------------------------

def test_threshold_negatives_span_all_near_misses() -> None:
    spec = spec_for({"name": "threshold", "key": 4, "k": 3}, witnesses={"count": [1, 5]},
                    bag_size={"kind": "uniform", "low": 5, "high": 12})
    train = make_dataset(spec).train
    counts = key_counts(train, [4])
    assert set(counts[train.labels == 0].tolist()) == {0, 1, 2}
    assert set(counts[train.labels == 1].tolist()) == {3, 4, 5}  # max(k, w) for w in 1..5
    assert build_rule(spec).label(np.array([4, 4, 0, 1])) == 0
    assert build_rule(spec).label(np.array([4, 4, 4])) == 1


def test_all_of_negatives_are_every_proper_subset() -> None:
    spec = spec_for({"name": "all_of", "concepts": [1, 2]})
    train = make_dataset(spec).train
    a, b = key_counts(train, [1]) > 0, key_counts(train, [2]) > 0
    assert (a & b)[train.labels == 1].all()
    subsets = Counter(zip(a[train.labels == 0].tolist(), b[train.labels == 0].tolist(),
                          strict=True))
    assert set(subsets) == {(False, False), (True, False), (False, True)}
    assert min(subsets.values()) > 15  # uniform over the 3 proper subsets: ~33 each of 100


def test_any_of_positives_are_every_non_empty_subset() -> None:
    spec = spec_for({"name": "any_of", "concepts": [1, 2]})
    train = make_dataset(spec).train
    a, b = key_counts(train, [1]) > 0, key_counts(train, [2]) > 0
    assert not (a | b)[train.labels == 0].any()
    subsets = set(zip(a[train.labels == 1].tolist(), b[train.labels == 1].tolist(), strict=True))
    assert subsets == {(True, True), (True, False), (False, True)}


def test_ratio_labels_use_the_exact_fraction() -> None:
    rule = RULES.build("ratio", {"key": 9, "r": 0.3})
    assert rule.label(np.array([9, 9, 9, 0, 0, 0, 0, 0, 0, 0])) == 1  # 3/10 == 0.3
    assert rule.label(np.array([9, 9, 0, 0, 0, 0, 0, 0, 0, 0])) == 0
    assert [rule.min_count(n) for n in (1, 3, 10, 11)] == [1, 1, 3, 4]
    spec = spec_for({"name": "ratio", "key": 9, "r": 0.3})
    train = make_dataset(spec).train
    fraction = key_counts(train, [9]) / train.sizes
    assert (fraction[train.labels == 1] >= 0.3).all() and (fraction[train.labels == 0] < 0.3).all()
    at_boundary = [rule.min_count(n) for n in train.sizes[train.labels == 1].tolist()]
    assert (key_counts(train, [9])[train.labels == 1] == at_boundary).any()


def test_four_bags_evidence_table() -> None:
    rule = RULES.build("four_bags", {"a": 8, "b": 9})
    assert rule.n_classes == 4
    evidence = rule.evidence(np.array([8, 9, 0]))
    np.testing.assert_array_equal(evidence, [[-1, 1, -1, 1], [-1, -1, 1, 1], [0, 0, 0, 0]])
    assert [rule.label(np.array(c)) for c in ([0], [8, 0], [9], [9, 8])] == [0, 1, 2, 3]


def test_pos_neg_counts_and_ties() -> None:
    rule = RULES.build("pos_neg", {"positive": [8], "negative": [6]})
    assert rule.label(np.array([8, 6])) == 0  # a tie is class 0
    assert rule.label(np.array([8, 8, 6, 1])) == 1
    np.testing.assert_array_equal(rule.evidence(np.array([8, 6, 1])), [[-1, 1], [1, -1], [0, 0]])
    spec = spec_for({"name": "pos_neg", "positive": [8], "negative": [6]},
                    witnesses={"count": [1, 4]}, bag_size={"kind": "fixed", "mean": 10})
    train = make_dataset(spec).train
    pos, neg = key_counts(train, [8]), key_counts(train, [6])
    assert (pos > neg)[train.labels == 1].all() and (pos <= neg)[train.labels == 0].all()
    assert (pos == neg)[train.labels == 0].any() and (neg > 0)[train.labels == 1].any()


#: xMIL's Pos-Neg (3 positive-, 3 negative-evidence digits of 10, 30 instances a bag), exact:
#: P(label 1) summed over the kept subsets' trinomial laws, evidence share by exchangeability
#: (each kept concept is equally likely to be any of the 10, 6 of which carry evidence).
XMIL_POSITIVE_SHARE = 0.4702
XMIL_EVIDENCE_SHARE = 0.6
XMIL_SPEC = {"pool": {"name": "gaussian", "dim": 2}, "bag_size": {"kind": "fixed", "mean": 30}}


def xmil_split(balance: str, n: int) -> BagSplit:
    rule = {"name": "pos_neg", "construction": "xmil", "balance": balance}
    return make_dataset(DatasetSpec.from_dict({**XMIL_SPEC, "rule": rule,
                                               "bags": {"train": n, "val": 1, "test": 1}})).train


@pytest.fixture(scope="module")
def xmil_natural() -> BagSplit:
    """10,000 bags of xMIL's Pos-Neg with its natural class shares."""
    return xmil_split("natural", 10_000)


def test_xmil_pos_neg_reproduces_xmil_shares_on_10000_bags(xmil_natural: BagSplit) -> None:
    train = xmil_natural
    assert (train.sizes == 30).all()
    # binomial sd of the share is 0.005 on 10,000 bags
    assert abs(train.labels.mean() - XMIL_POSITIVE_SHARE) < 0.02
    carries = (train.evidence != 0).any(axis=1)
    assert abs(carries.mean() - XMIL_EVIDENCE_SHARE) < 0.01
    # xMIL's digits by default; the label follows instance counts
    pos, neg = key_counts(train, [4, 6, 8]), key_counts(train, [5, 7, 9])
    np.testing.assert_array_equal(train.labels, (pos > neg).astype(np.int64))
    assert ((pos == neg) & (train.labels == 0)).any()  # ties occur and are class 0
    np.testing.assert_array_equal(carries, np.isin(train.concepts, [4, 5, 6, 7, 8, 9]))
    # hierarchical sampling: some bags keep a single concept, others most of them
    distinct = np.array([len(np.unique(bag.concepts)) for bag in train])
    assert distinct.min() == 1 and distinct.max() >= 9


def bag_statistics(split: BagSplit, label: int) -> np.ndarray:
    """(B_label, 3) per bag of `label`: #positive-, #negative-evidence instances, #concepts."""
    chosen = [bag for bag in split if bag.label == label]
    return np.array([[np.isin(b.concepts, [4, 6, 8]).sum(), np.isin(b.concepts, [5, 7, 9]).sum(),
                      len(np.unique(b.concepts))] for b in chosen], dtype=np.float64)


def test_xmil_exact_balance_keeps_xmils_bags_given_their_label(xmil_natural: BagSplit) -> None:
    natural, exact = xmil_natural, xmil_split("exact", 2_000)
    assert abs(exact.labels.mean() - 0.5) < 1e-3 and (exact.sizes == 30).all()
    for label in (0, 1):
        a, b = bag_statistics(natural, label), bag_statistics(exact, label)
        standard_error = np.sqrt(a.var(axis=0) / len(a) + b.var(axis=0) / len(b))
        assert (np.abs(a.mean(axis=0) - b.mean(axis=0)) < 4 * standard_error).all(), label


def test_xmil_construction_checks_its_size_and_balance() -> None:
    with pytest.raises(SpecErrors) as info:
        DatasetSpec.from_dict({"pool": {"name": "gaussian"},
                               "rule": {"name": "pos_neg", "construction": "xmil"}})
    assert [e.field for e in info.value.errors] == ["bag_size"]
    assert "fixed" in str(info.value) and "30" in str(info.value)
    # the default construction is untouched: ours, with its own defaults
    rule = RULES.build("pos_neg", {})
    assert (rule.construction, rule.pos_ids, rule.neg_ids) == ("attnsets", [8, 9], [6, 7])
    assert not rule.natural_balance
    xmil = RULES.build("pos_neg", {"construction": "xmil", "balance": "natural"})
    assert (xmil.pos_ids, xmil.neg_ids) == ([4, 6, 8], [5, 7, 9]) and xmil.natural_balance


def test_xmil_exact_balance_gives_up_with_a_spec_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rejection is capped: a label that the xMIL draws (almost) never produce names the way
    out (balance = "natural") instead of looping."""
    from attnsets.data.rules import pos_neg

    monkeypatch.setattr(pos_neg, "MAX_TRIES", 1)
    rule = {"name": "pos_neg", "construction": "xmil", "positive": [0],
            "negative": list(range(1, 9))}  # 1 vs 8 of 10 concepts: label 1 is rare
    with pytest.raises(SpecError) as info:
        make_dataset(DatasetSpec.from_dict({**XMIL_SPEC, "rule": rule,
                                            "bags": {"train": 20, "val": 2, "test": 2}}))
    assert info.value.field == "rule.balance" and "'natural'" in str(info.value)


def test_four_bags_milli_convention_supports_class_0_with_the_background() -> None:
    rule = RULES.build("four_bags", {"a": 8, "b": 9, "evidence_convention": "milli"})
    evidence = rule.evidence(np.array([8, 9, 0]))
    np.testing.assert_array_equal(evidence, [[0, 1, -1, 1], [0, -1, 1, 1], [1, 0, 0, 0]])
    ours = RULES.build("four_bags", {"a": 8, "b": 9}).evidence(np.array([8, 9, 0]))
    np.testing.assert_array_equal(evidence[:, 1:], ours[:, 1:])  # classes 1-3 agree
    spec = spec_for({"name": "four_bags", "a": 1, "b": 2, "evidence_convention": "milli"})
    train = make_dataset(spec).train
    column_0 = train.evidence[:, 0]
    np.testing.assert_array_equal(column_0, np.where(np.isin(train.concepts, [1, 2]), 0, 1))
    for bag in train:  # a class 0 bag is background only: every instance is a witness
        if bag.label == 0:
            assert (bag.evidence[:, 0] == 1).all()


def test_four_bags_milli_construction_is_a_sliding_window_of_draws() -> None:
    rule = RULES.build("four_bags", {"a": 8, "b": 9, "construction": "milli"})
    rng = np.random.default_rng(0)
    counts = {1: [], 3: []}
    for label in (0, 1, 2, 3):
        for _ in range(600 if label in counts else 50):
            concepts = rule.sample_concepts(label, 30, 10, WitnessSpec(count=(1, 1)), "train",
                                            rng)
            assert len(concepts) == 30 and rule.label(concepts) == label
            if label in counts:
                counts[label].append(int(np.isin(concepts, [8, 9]).sum()))
    # class 1: the first window of 30 holds >= 1 eight with probability 1 - 0.9^30; then its
    # count is Binomial(30, 0.1) given >= 1, else the window slides until one 8 enters:
    # E = 30 * 0.1 + 0.9^30 * 1 = 3.042
    assert np.mean(counts[1]) == pytest.approx(3.0 + 0.9**30, abs=0.2)
    # class 3 needs an 8 and a 9: at least 2 marked draws, more than class 1 on average
    assert min(counts[3]) >= 2 and np.mean(counts[3]) > np.mean(counts[1])
    spec = spec_for({"name": "four_bags", "a": 8, "b": 9, "construction": "milli",
                     "evidence_convention": "milli"},
                    bag_size={"kind": "normal", "mean": 30, "sd": 2, "min": 2},
                    pool={"name": "gaussian", "dim": 2, "num_concepts": 10})
    data = make_dataset(spec)
    for bag in data.train:
        assert bag.label == int((bag.concepts == 8).any()) + 2 * int((bag.concepts == 9).any())
    with pytest.raises(SpecError, match="discriminative_probability"):
        RULES.build("four_bags", {"construction": "milli", "discriminative_probability": 0})
    with pytest.raises(SpecError, match="construction"):
        RULES.build("four_bags", {"construction": "ilse"})


def test_multi_concept_poison_needs_both_and_moves_the_poison() -> None:
    spec = spec_for({"name": "multi_concept_poison", "concepts": [1, 2], "poison": 0},
                    bag_size={"kind": "uniform", "low": 4, "high": 10})
    ds = make_dataset(spec)
    rule = build_rule(spec)
    assert rule.shifted_test and spec.shifted_test
    for split_name, split in ds.splits.items():
        poison = key_counts(split, [0])
        expected = split.labels if split_name == "test" else 1 - split.labels
        np.testing.assert_array_equal(poison, expected)
        a, b = key_counts(split, [1]) > 0, key_counts(split, [2]) > 0
        np.testing.assert_array_equal(a & b, split.labels == 1)
        negatives = split.labels == 0
        assert set(zip(a[negatives].tolist(), b[negatives].tolist(), strict=True)) == \
            {(False, False), (True, False), (False, True)}
        listed = np.isin(split.concepts, [1, 2])
        np.testing.assert_array_equal(split.evidence[listed], np.tile([-1, 1], (listed.sum(), 1)))
        assert (split.evidence[~listed] == 0).all()  # poison and background are neutral
        # "poison absent => positive" is perfect in training and always wrong in test
        shortcut = (poison == 0).astype(np.int64)
        assert float((shortcut == split.labels).mean()) == (0.0 if split_name == "test" else 1.0)
    bag = ds.test[int(np.flatnonzero(ds.test.labels == 1)[0])]
    assert rule.label(bag.concepts[bag.concepts != 0]) == 1


def test_false_frequency_bag_size_carries_no_information() -> None:
    # Sizes below max(test_copies): every bag of every split and label is exactly 44.
    spec = spec_for({"name": "false_frequency", "key": 9, "frequent": 8},
                    bag_size={"kind": "uniform", "low": 6, "high": 14})
    ds = make_dataset(spec)
    assert {s for split in ds.splits.values() for s in split.sizes.tolist()} == {44}
    # A wider law: max(drawn size, 44), the same for every split and label.
    spec = spec_for({"name": "false_frequency", "key": 9, "frequent": 8}, n=800,
                    bag_size={"kind": "normal", "mean": 50, "sd": 8, "min": 5})
    ds = make_dataset(spec)
    groups = {(name, label): split.sizes[split.labels == label].astype(np.float64)
              for name, split in ds.splits.items() for label in (0, 1)}
    everything = np.concatenate(list(groups.values()))
    for key, sizes in groups.items():
        assert sizes.min() == 44, key
        # 200+ bags a group: the mean's standard error is ~0.4
        assert abs(sizes.mean() - everything.mean()) < 2.0, key
        assert abs(sizes.std() - everything.std()) < 1.5, key
        assert sizes.max() > 60, key


def test_poison_moves_from_negatives_to_positives_in_test() -> None:
    spec = spec_for({"name": "poison", "key": 9, "poison": 0})
    ds = make_dataset(spec)
    rule = build_rule(spec)
    for split_name, split in ds.splits.items():
        poison = key_counts(split, [0])
        expected = split.labels if split_name == "test" else 1 - split.labels
        np.testing.assert_array_equal(poison, expected)
        assert (split.evidence[split.concepts == 0] == 0).all()
        witnesses = key_counts(split, [9])[split.labels == 1]
        assert witnesses.min() >= 1 and witnesses.max() <= 3
    # the label ignores the poison: a test positive without its poison is still positive
    bag = ds.test[int(np.flatnonzero(ds.test.labels == 1)[0])]
    assert rule.label(bag.concepts[bag.concepts != 0]) == 1


def test_false_frequency_rewards_counting_in_training_only() -> None:
    spec = spec_for({"name": "false_frequency", "key": 9, "frequent": 8})
    ds = make_dataset(spec)
    for split_name, split in ds.splits.items():
        frequent, key = key_counts(split, [8]), key_counts(split, [9])
        negative = split.labels == 0
        assert ((frequent >= 2) & (frequent <= 3))[~negative].all()
        if split_name == "test":
            assert ((frequent >= 35) & (frequent <= 44))[negative].all()
            assert (split.sizes[negative] >= 44).all()
            assert len(set(frequent[negative].tolist())) > 3
        else:
            assert (frequent[negative] == 1).all()
        assert (split.evidence[split.concepts == 8] == 0).all()
        counting_model = (frequent >= 2).astype(np.int64)
        key_model = (key >= 1).astype(np.int64)
        np.testing.assert_array_equal(key_model, split.labels)
        accuracy = float((counting_model == split.labels).mean())
        assert accuracy == (0.5 if split_name == "test" else 1.0)


def test_unit_test_sizes_stay_label_and_split_independent() -> None:
    for rule in ({"name": "poison"}, {"name": "false_frequency"},
                 {"name": "multi_concept_poison"}):
        spec = spec_for(rule, bag_size={"kind": "fixed", "mean": 2})
        ds = make_dataset(spec)
        assert len({s for split in ds.splits.values() for s in split.sizes.tolist()}) == 1


# ---- bad specs ---------------------------------------------------------------------------------

BAD_SPECS = [
    ({"name": "nope"}, {}, "rule.name", ["'nope'", "presence"]),
    ({"name": "presence", "key": 10}, {}, "rule.key", ["10", "0..9"]),
    ({"name": "presence", "key": list(range(10))}, {}, "rule.key", ["background"]),
    ({"name": "presence", "kee": 3}, {}, "rule.kee", ["parameters", "key"]),
    ({"name": "presence"}, {"bag_size": {"kind": "fixed", "mean": 4},
                            "witnesses": {"count": [5, 6]}}, "witnesses.count", ["[5, 6]", "4"]),
    ({"name": "threshold", "k": 5}, {"bag_size": {"kind": "fixed", "mean": 4}},
     "rule.k", ["5", "1..4"]),
    ({"name": "threshold", "k": 0}, {}, "rule.k", [">= 1"]),
    ({"name": "presence"}, {"witnesses": {"rate": 1.5}}, "witnesses.rate", ["1.5", "(0, 1]"]),
    ({"name": "presence"}, {"witnesses": {"rate": 0.0}}, "witnesses.rate", ["(0, 1]"]),
    ({"name": "presence"}, {"witnesses": {"rate": -0.1}}, "witnesses.rate", ["-0.1"]),
    ({"name": "ratio", "r": 0}, {}, "rule.r", ["(0, 1]"]),
    ({"name": "ratio", "r": 1.5}, {}, "rule.r", ["1.5", "(0, 1]"]),
    ({"name": "ratio", "key": -1}, {}, "rule.key", ["-1"]),
    ({"name": "all_of", "concepts": [3, 3]}, {}, "rule.concepts", ["distinct"]),
    ({"name": "all_of", "concepts": []}, {}, "rule.concepts", ["at least one"]),
    ({"name": "all_of", "concepts": [1, 2, 3]}, {"bag_size": {"kind": "fixed", "mean": 4},
                                                 "witnesses": {"count": [2, 3]}},
     "witnesses.count", ["at most 1"]),
    ({"name": "any_of", "concepts": [1, 2, 3]}, {"bag_size": {"kind": "fixed", "mean": 2},
                                                 "witnesses": {"rate": 0.1}}, "bag_size", ["3"]),
    ({"name": "four_bags", "a": 4, "b": 4}, {}, "rule.b", ["distinct"]),
    ({"name": "four_bags", "a": 4, "b": 12}, {}, "rule.b", ["12"]),
    ({"name": "pos_neg", "positive": [1, 2], "negative": [2]}, {}, "rule.negative", ["2"]),
    ({"name": "poison", "key": 0, "poison": 0}, {}, "rule.poison", ["distinct"]),
    ({"name": "pos_neg", "construction": "xmill"}, {}, "rule.construction",
     ["'xmill'", "xmil"]),
    ({"name": "pos_neg", "balance": "natural"}, {}, "rule.balance", ["'exact'", "attnsets"]),
    ({"name": "pos_neg", "construction": "xmil"}, {"bag_size": {"kind": "uniform"}},
     "bag_size", ["fixed", "xmil"]),
    ({"name": "four_bags", "evidence_convention": "MILLI"}, {}, "rule.evidence_convention",
     ["'MILLI'", "milli"]),
    ({"name": "multi_concept_poison", "concepts": [3]}, {}, "rule.concepts", ["at least two"]),
    ({"name": "multi_concept_poison", "concepts": [3, 4], "poison": 4}, {}, "rule.poison",
     ["distinct"]),
    ({"name": "multi_concept_poison", "concepts": [1, 2, 3]},
     {"bag_size": {"kind": "fixed", "mean": 6}, "witnesses": {"count": [2, 3]}},
     "witnesses.count", ["at most 1"]),
    ({"name": "false_frequency", "test_copies": [3, 5]}, {}, "rule.test_copies", ["[3, 5]"]),
    ({"name": "false_frequency", "positive_copies": [1, 2]}, {}, "rule.positive_copies",
     ["2 <= low"]),
    ({"name": "false_frequency", "positive_copies": "many"}, {}, "rule.positive_copies",
     ["'many'"]),
]


@pytest.mark.parametrize(("rule", "extra", "field", "fragments"), BAD_SPECS)
def test_bad_specs_name_the_field(rule: dict[str, Any], extra: dict[str, Any], field: str,
                                  fragments: list[str]) -> None:
    with pytest.raises(SpecErrors) as info:
        DatasetSpec.from_dict({"pool": {"name": "gaussian"}, "rule": rule, **extra})
    matching = [e for e in info.value.errors if e.field == field]
    assert matching, [str(e) for e in info.value.errors]
    message = str(matching[0])
    assert message.startswith(f"{field}: got ")
    for fragment in fragments:
        assert fragment in message, message
    assert f"{field}: got" in str(info.value)


def test_all_problems_are_reported_together() -> None:
    with pytest.raises(SpecErrors) as info:
        DatasetSpec.from_dict({"pool": {"name": "gaussian"},
                               "rule": {"name": "four_bags", "a": 10, "b": 11},
                               "witnesses": {"rate": 2.0}})
    assert {e.field for e in info.value.errors} >= {"rule.a", "rule.b", "witnesses.rate"}


@pytest.mark.parametrize("name", sorted(WITNESS_LABELS))
def test_defaults_are_valid_for_the_default_spec(name: str) -> None:
    ds = make_dataset(DatasetSpec.from_dict({"pool": {"name": "gaussian"}, "rule": name,
                                             "bags": {"train": 8, "val": 4, "test": 4}}))
    for split_name, split in ds.splits.items():
        check_split(ds, split_name, split)


# ---- documentation ------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs" / "rules.md"


def doc_snippets(folder: Path) -> list[dict[str, Any]]:
    """The [dataset] table of every TOML block in docs/rules.md, read by the config loader."""
    blocks = re.findall(r"```toml\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    tables = []
    for index, block in enumerate(blocks):
        path = folder / f"snippet{index}.toml"
        path.write_text(block)
        tables.append(load_config(path)["dataset"])
    return tables


def test_docs_have_a_working_toml_snippet_per_rule(tmp_path: Path) -> None:
    snippets = doc_snippets(tmp_path)
    assert {s["rule"]["name"] for s in snippets} == set(WITNESS_LABELS)
    text = DOCS.read_text()
    for name in WITNESS_LABELS:
        assert f"## `{name}`" in text
    for raw in snippets:
        ds = make_dataset(DatasetSpec.from_dict({**raw, "bags": {"train": 6, "val": 3,
                                                                 "test": 3}}))
        for split_name, split in ds.splits.items():
            check_split(ds, split_name, split)
