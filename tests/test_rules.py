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
from attnsets.data.spec import load_config
from attnsets.errors import SpecErrors

#: Classes whose bags must hold at least one +1 instance for their own label (and the others none).
WITNESS_LABELS: dict[str, set[int]] = {
    "presence": {1}, "threshold": {1}, "all_of": {1}, "any_of": {1}, "ratio": {1},
    "four_bags": {1, 2, 3}, "pos_neg": {0, 1}, "poison": {1}, "false_frequency": {1},
}
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
        rows = [table["a" if c in a else "b" if c in b else "-"] for c in concepts]
        return int(has_a) + 2 * int(has_b), rows
    if name == "pos_neg":
        pos, neg = set(ids_of(params["positive"])), set(ids_of(params["negative"]))
        signs = [1 if c in pos else -1 if c in neg else 0 for c in concepts]
        n_pos, n_neg = signs.count(1), signs.count(-1)
        return int(n_pos > n_neg), [[-s, s] for s in signs]
    marked = set(ids_of(params["concepts"] if name in ("all_of", "any_of") else params["key"]))
    n_key = sum(count[c] for c in marked)
    if name in ("presence", "poison", "false_frequency"):
        label = int(n_key >= 1)
    elif name == "threshold":
        label = int(n_key >= params["k"])
    elif name == "ratio":
        label = int(n_key / len(concepts) >= params["r"])
    elif name == "all_of":
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
        return {"a": ids[0], "b": draw(st.sampled_from([ids[1], ids[1:3]]))}
    if name == "pos_neg":
        p = draw(st.integers(1, 2))
        return {"positive": ids[:p], "negative": ids[p:p + draw(st.integers(1, 2))]}
    if name == "poison":
        return {"key": ids[0], "poison": ids[1]}
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
    kind = draw(st.sampled_from(["fixed", "normal", "uniform"]))
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
        "rule": {"name": name, **draw(rule_params(name, ids))},
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
        assert has_witness == (bag.label in WITNESS_LABELS[name]), (bag.label, bag.concepts)
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


def test_unit_test_sizes_stay_label_independent_in_training() -> None:
    for rule in ({"name": "poison"}, {"name": "false_frequency"}):
        spec = spec_for(rule, bag_size={"kind": "fixed", "mean": 2})
        ds = make_dataset(spec)
        assert len(set(ds.train.sizes.tolist())) == 1 and len(set(ds.val.sizes.tolist())) == 1


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
    assert sorted(s["rule"]["name"] for s in snippets) == sorted(WITNESS_LABELS)
    text = DOCS.read_text()
    for name in WITNESS_LABELS:
        assert f"## `{name}`" in text
    for raw in snippets:
        ds = make_dataset(DatasetSpec.from_dict({**raw, "bags": {"train": 6, "val": 3,
                                                                 "test": 3}}))
        for split_name, split in ds.splits.items():
            check_split(ds, split_name, split)
