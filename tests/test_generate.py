"""The generator (balance, label-independent sizes, shuffled order), the .npz format (round trip,
damaged / foreign / wrong-version files, numpy-only reading) and padded collation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnsets.data import (
    DatasetSpec,
    SetDataset,
    collate,
    iterate_batches,
    load_dataset,
    make_dataset,
    save_dataset,
)
from attnsets.data.generate import balanced_labels
from attnsets.data.io import FIELDS, FORMAT_NAME, FORMAT_VERSION
from attnsets.data.spec import SPLITS
from attnsets.errors import DataFormatError, SpecError


def spec_for(rule: Any = "presence", n: int = 40, **extra: Any) -> DatasetSpec:
    data: dict[str, Any] = {"pool": {"name": "gaussian", "dim": 3}, "rule": rule,
                            "bags": {"train": n, "val": n // 2, "test": n // 2}, "seed": 7}
    return DatasetSpec.from_dict({**data, **extra})


@pytest.fixture(scope="module")
def dataset() -> SetDataset:
    return make_dataset(spec_for({"name": "four_bags", "a": 1, "b": 2}))


@pytest.fixture(scope="module")
def saved(dataset: SetDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_dataset(dataset, tmp_path_factory.mktemp("data") / "four_bags.npz")


# ---- generator ---------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), n_classes=st.integers(2, 6), seed=st.integers(0, 2**32 - 1))
def test_balanced_labels_are_exactly_balanced(n: int, n_classes: int, seed: int) -> None:
    labels = balanced_labels(n, n_classes, np.random.default_rng(seed))
    assert labels.shape == (n,) and labels.dtype == np.int64
    counts = np.bincount(labels, minlength=n_classes)
    assert counts.sum() == n and counts.max() - counts.min() <= 1
    assert labels.min() >= 0 and labels.max() < n_classes


def test_balanced_labels_come_in_random_order() -> None:
    orders = {tuple(balanced_labels(60, 2, np.random.default_rng(s))) for s in range(5)}
    assert len(orders) == 5
    assert all(list(o) != sorted(o) for o in orders)


def test_sizes_are_drawn_from_the_size_spec_before_any_label_is_used() -> None:
    spec = spec_for(bag_size={"kind": "normal", "mean": 9, "sd": 3, "min": 2})
    ds = make_dataset(spec)
    for index, split in enumerate(SPLITS):
        rng = np.random.default_rng([spec.seed, index])
        balanced_labels(spec.bags[split], 2, rng)
        np.testing.assert_array_equal(ds.splits[split].sizes,
                                      spec.bag_size.sample(spec.bags[split], rng))


def test_sizes_do_not_depend_on_the_labels() -> None:
    size = {"kind": "uniform", "low": 4, "high": 30}
    two = make_dataset(spec_for("presence", n=80, bag_size=size))
    four = make_dataset(spec_for({"name": "four_bags"}, n=80, bag_size=size))
    for split in SPLITS:
        assert not np.array_equal(two.splits[split].labels, four.splits[split].labels)
        np.testing.assert_array_equal(two.splits[split].sizes, four.splits[split].sizes)
    labels, sizes = four.train.labels, four.train.sizes
    means = [sizes[labels == c].mean() for c in range(4)]
    assert max(means) - min(means) < 6  # same law for every class (uniform 4..30, sd ~7.8)


def test_instances_are_shuffled_within_bags() -> None:
    spec = spec_for({"name": "presence", "key": 9}, n=400, witnesses={"count": [1, 1]},
                    bag_size={"kind": "fixed", "mean": 8})
    train = make_dataset(spec).train
    positions = np.flatnonzero(train.concepts == 9) - train.offsets[:-1][train.labels == 1]
    counts = np.bincount(positions, minlength=8)
    assert counts.sum() == 200 and counts.min() >= 8  # uniform: ~25 per position
    assert counts[0] < 60
    # background is not grouped by concept either
    unsorted = [list(train[i].concepts) != sorted(train[i].concepts) for i in range(40)]
    assert sum(unsorted) > 30


def test_generation_reports_progress_per_split() -> None:
    seen: list[str] = []
    make_dataset(spec_for(n=4), progress=seen.append)
    assert seen == list(SPLITS)


# ---- file format -------------------------------------------------------------------------------

def assert_same(a: SetDataset, b: SetDataset) -> None:
    assert a.spec.to_json() == b.spec.to_json()
    assert (a.n_classes, a.kind, a.instance_shape, a.concept_names, a.vocab_size) == \
        (b.n_classes, b.kind, b.instance_shape, b.concept_names, b.vocab_size)
    assert a.metadata == b.metadata
    for split in SPLITS:
        for name in FIELDS:
            x, y = getattr(a.splits[split], name), getattr(b.splits[split], name)
            assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def test_round_trip_is_bit_identical(dataset: SetDataset, saved: Path) -> None:
    assert saved.suffix == ".npz"
    assert_same(dataset, load_dataset(saved))


def test_save_adds_the_npz_suffix(dataset: SetDataset, tmp_path: Path) -> None:
    path = save_dataset(dataset, tmp_path / "nested" / "bags")
    assert path == tmp_path / "nested" / "bags.npz" and path.is_file()
    assert not list(path.parent.glob("*.tmp"))


def test_file_is_readable_with_numpy_alone(dataset: SetDataset, saved: Path) -> None:
    with np.load(saved, allow_pickle=False) as npz:
        members = set(npz.files)
        assert members == {"format", "format_version", "spec", "meta"} | {
            f"{s}.{f}" for s in SPLITS for f in FIELDS}
        assert str(npz["format"]) == FORMAT_NAME and int(npz["format_version"]) == FORMAT_VERSION
        assert json.loads(str(npz["spec"]))["rule"]["name"] == "four_bags"
        assert json.loads(str(npz["meta"]))["n_classes"] == 4
        offsets, concepts = npz["test.offsets"], npz["test.concepts"]
        evidence, labels = npz["test.evidence"], npz["test.labels"]
    assert evidence.dtype == np.int8 and evidence.shape == (offsets[-1], 4)
    bag = dataset.test[3]
    np.testing.assert_array_equal(concepts[offsets[3]:offsets[4]], bag.concepts)
    assert labels[3] == bag.label


def load_error(path: Path) -> str:
    with pytest.raises(DataFormatError) as info:
        load_dataset(path)
    assert str(path) in str(info.value)
    return str(info.value)


def test_truncated_files_are_rejected(saved: Path, tmp_path: Path) -> None:
    raw = saved.read_bytes()
    for n in (0, 10, len(raw) // 3, len(raw) - 30, len(raw) - 1):
        path = tmp_path / f"cut{n}.npz"
        path.write_bytes(raw[:n])
        load_error(path)


def test_flipped_bytes_never_load_silently_changed(dataset: SetDataset, saved: Path,
                                                  tmp_path: Path) -> None:
    raw = saved.read_bytes()
    path = tmp_path / "flipped.npz"
    for position in range(0, len(raw), max(1, len(raw) // 150)):
        damaged = bytearray(raw)
        damaged[position] ^= 0xFF
        path.write_bytes(bytes(damaged))
        try:
            loaded = load_dataset(path)
        except DataFormatError:
            continue
        assert_same(dataset, loaded)  # only metadata such as zip timestamps may be hit


def test_foreign_files_are_rejected(tmp_path: Path) -> None:
    npz = tmp_path / "random.npz"
    np.savez(npz, a=np.random.default_rng(0).normal(size=(4, 3)), b=np.arange(5))
    assert "not an attnsets dataset" in load_error(npz)
    text = tmp_path / "notes.npz"
    text.write_text("hello, this is not a dataset\n")
    assert "not a readable attnsets dataset" in load_error(text)
    assert "no such file" in load_error(tmp_path / "missing.npz")


def rewrite(saved: Path, target: Path, **changes: np.ndarray | None) -> Path:
    """Copy `saved` with members replaced (or dropped when the value is None)."""
    with np.load(saved, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    for name, value in changes.items():
        if value is None:
            arrays.pop(name)
        else:
            arrays[name] = value
    np.savez(target, **arrays)  # type: ignore[arg-type]
    return target


def test_wrong_version_is_rejected(saved: Path, tmp_path: Path) -> None:
    path = rewrite(saved, tmp_path / "v99.npz", format_version=np.array(99))
    message = load_error(path)
    assert "version 99" in message and str(FORMAT_VERSION) in message


def test_missing_or_inconsistent_arrays_are_rejected(saved: Path, tmp_path: Path) -> None:
    missing = rewrite(saved, tmp_path / "missing.npz", **{"val.evidence": None})
    assert "val.evidence" in load_error(missing)
    with np.load(saved, allow_pickle=False) as npz:
        evidence = npz["train.evidence"]
    narrow = rewrite(saved, tmp_path / "narrow.npz", **{"train.evidence": evidence[:, :2]})
    assert "train.evidence" in load_error(narrow)
    bad_spec = rewrite(saved, tmp_path / "spec.npz", spec=np.array("{not json"))
    assert "damaged" in load_error(bad_spec)


# ---- collate -----------------------------------------------------------------------------------

def test_collate_pads_with_mask_zero_evidence_and_minus_one_concepts(dataset: SetDataset) -> None:
    bags = [dataset.train[i] for i in range(6)]
    sizes = [len(b) for b in bags]
    batch = collate(bags)
    n = max(sizes)
    assert batch.x.shape == (6, n, 3) and batch.mask.shape == (6, n)
    assert batch.mask.dtype == torch.bool and batch.evidence.dtype == torch.float32
    assert batch.mask.sum(1).tolist() == sizes
    for i, bag in enumerate(bags):
        k = sizes[i]
        np.testing.assert_array_equal(batch.x[i, :k].numpy(), bag.instances)
        np.testing.assert_array_equal(batch.concepts[i, :k].numpy(), bag.concepts)
        np.testing.assert_array_equal(batch.evidence[i, :k].numpy(), bag.evidence[:, bag.label])
        assert (batch.x[i, k:] == 0).all() and (batch.evidence[i, k:] == 0).all()
        assert (batch.concepts[i, k:] == -1).all() and not batch.mask[i, k:].any()
    assert batch.labels.tolist() == [b.label for b in bags] == batch.target.tolist()
    assert collate(bags, pad_to=n + 5).x.shape[1] == n + 5


def test_collate_selects_the_target_class(dataset: SetDataset) -> None:
    bags = [dataset.val[i] for i in range(4)]
    for target in range(4):
        batch = collate(bags, target=target)
        assert batch.target.tolist() == [target] * 4
        for i, bag in enumerate(bags):
            np.testing.assert_array_equal(batch.evidence[i, : len(bag)].numpy(),
                                          bag.evidence[:, target])
    per_bag = collate(bags, target=[3, 0, 2, 1])
    assert per_bag.target.tolist() == [3, 0, 2, 1]
    np.testing.assert_array_equal(per_bag.evidence[0, : len(bags[0])].numpy(),
                                  bags[0].evidence[:, 3])
    with pytest.raises(SpecError, match="target"):
        collate(bags, target=4)
    with pytest.raises(SpecError, match="one class per bag"):
        collate(bags, target=[0, 1])


def test_iterate_batches_covers_every_bag_once(dataset: SetDataset) -> None:
    batches = list(iterate_batches(dataset.test, 3))
    assert sum(len(b) for b in batches) == len(dataset.test)
    labels = torch.cat([b.labels for b in batches]).numpy()
    np.testing.assert_array_equal(labels, dataset.test.labels)
    shuffled = list(iterate_batches(dataset.test, 3, shuffle=True, rng=np.random.default_rng(1)))
    assert sorted(torch.cat([b.labels for b in shuffled]).tolist()) == sorted(labels.tolist())


def test_a_rule_whose_sampler_contradicts_its_label_is_refused() -> None:
    """The generator checks every drawn bag against rule.label(): a buggy plugin rule fails
    loudly instead of producing mislabelled bags."""
    from dataclasses import dataclass

    from attnsets.data.rules.base import RULES
    from attnsets.data.rules.presence import Presence
    from attnsets.errors import SpecError

    @dataclass
    class AlwaysNegative(Presence):
        def label(self, concepts: np.ndarray) -> int:
            return 0

    RULES.register("always_negative_test")(AlwaysNegative)
    try:
        spec = DatasetSpec.from_dict({"pool": {"name": "gaussian"},
                                      "rule": {"name": "always_negative_test", "key": 1},
                                      "bags": {"train": 4, "val": 4, "test": 4}})
        with pytest.raises(SpecError, match="rule.*always_negative_test.*labelled 0"):
            make_dataset(spec)
    finally:
        RULES.unregister("always_negative_test")
