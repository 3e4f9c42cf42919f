"""Real-instance pools: `anndata` (.h5ad cells, scanpy's pbmc68k_reduced) and `tcr` (MIRA
receptors from tcrdist3), concept names in rules, and source_index through the .npz."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from attnsets.data import DatasetSpec, load_dataset, make_dataset, save_dataset
from attnsets.errors import SpecError, SpecErrors

anndata = pytest.importorskip("anndata", reason="the anndata extra is not installed "
                                                "(pip install 'attnsets[anndata]')")
pd = pytest.importorskip("pandas")

HAS_PBMC = importlib.util.find_spec("scanpy") is not None
HAS_MIRA = importlib.util.find_spec("tcrdist") is not None
needs_pbmc = pytest.mark.skipif(not HAS_PBMC, reason="scanpy's wheel (pbmc68k_reduced) is not "
                                "installed: pip install --no-deps scanpy (make test does it)")
needs_mira = pytest.mark.skipif(not HAS_MIRA, reason="tcrdist3's wheel (MIRA sets) is not "
                                "installed: pip install --no-deps tcrdist3 (make test does it)")


def pbmc_spec(rule: dict, bags: int = 12, **pool: object) -> DatasetSpec:
    return DatasetSpec.from_dict({
        "pool": {"name": "anndata", "source": "pbmc68k_reduced", "obs": "bulk_labels", **pool},
        "rule": rule, "bags": {"train": bags, "val": bags, "test": bags},
        "bag_size": {"mean": 20, "sd": 0}, "witnesses": {"count": [1, 3]}, "seed": 3})


@needs_pbmc
def test_pbmc_witnesses_are_exactly_the_named_cell_type(tmp_path: Path) -> None:
    from attnsets.data.pools.h5ad import bundled_path

    path = save_dataset(make_dataset(pbmc_spec({"name": "presence", "key": "CD56+ NK"})),
                        tmp_path / "nk.npz")
    loaded = load_dataset(path)
    adata = anndata.read_h5ad(bundled_path("pbmc68k_reduced"))
    cell_types = adata.obs["bulk_labels"].astype(str).to_numpy()
    with np.load(path, allow_pickle=False) as npz:
        for split in ("train", "val", "test"):
            rows = npz[f"{split}.source_index"]
            data = loaded.splits[split]
            assert np.array_equal(rows, data.source_index)
            witness = data.evidence[np.arange(len(rows)), data.labels[data.bag_index]] > 0
            assert witness.any() and not witness.all()
            assert np.array_equal(witness, cell_types[rows] == "CD56+ NK")
            assert np.array_equal(data.instances, adata.obsm["X_pca"][rows].astype(np.float32))
    # Splits hold disjoint cells.
    cells = {s: set(loaded.splits[s].source_index.tolist()) for s in ("train", "val", "test")}
    assert not (cells["train"] & cells["test"]) and not (cells["val"] & cells["test"])


@needs_pbmc
def test_pbmc_pool_concepts_features_and_map() -> None:
    from attnsets.data.pools import POOLS

    pool = POOLS.build("anndata", {"n_components": 10}, "pool")
    assert pool.n_concepts == 10 and pool.instance_shape == (10,)
    assert "CD34+" in pool.concept_names
    cd34 = pool.concept_names.index("CD34+")
    assert [len(pool.partition[(s, cd34)]) for s in ("train", "val", "test")] == [8, 2, 3]
    coordinates, axes = pool.embedding_2d(np.array([0, 5]))
    assert coordinates.shape == (2, 2) and axes == ("UMAP 1", "UMAP 2")
    assert pool.source_names(np.array([0]))[0] == "AAAGCCTGGCTAAC-1"


@needs_pbmc
def test_named_and_indexed_keys_give_the_same_bags() -> None:
    from attnsets.data.pools import POOLS

    names = POOLS.build("anndata", {}, "pool").concept_names
    for rule, indexed in (
            ({"name": "threshold", "key": "CD19+ B", "k": 2},
             {"name": "threshold", "key": names.index("CD19+ B"), "k": 2}),
            ({"name": "all_of", "concepts": ["CD19+ B", "CD56+ NK"]},
             {"name": "all_of", "concepts": [names.index("CD19+ B"), names.index("CD56+ NK")]})):
        by_name, by_index = make_dataset(pbmc_spec(rule, 6)), make_dataset(pbmc_spec(indexed, 6))
        assert np.array_equal(by_name.test.concepts, by_index.test.concepts)
        assert np.array_equal(by_name.test.evidence, by_index.test.evidence)


@needs_pbmc
def test_unknown_cell_type_lists_the_pool_names() -> None:
    with pytest.raises(SpecErrors) as caught:
        pbmc_spec({"name": "presence", "key": "CD56 NK"})
    message = str(caught.value)
    assert "rule.key" in message and "'CD56 NK'" in message and "CD56+ NK" in message


# ---------------------------------------------------------------- bad .h5ad files
def write_h5ad(path: Path, n: int = 6, types: list[str] | None = None,
               pca: np.ndarray | None = None) -> Path:
    rng = np.random.default_rng(0)
    types = types if types is not None else ["a", "b"] * (n // 2)
    obs = pd.DataFrame({"cell_type": pd.Categorical(types)}, index=[f"c{i}" for i in range(n)])
    adata = anndata.AnnData(X=rng.normal(size=(n, 4)).astype(np.float32), obs=obs)
    adata.obsm["X_pca"] = pca if pca is not None else rng.normal(size=(n, 3))
    adata.write_h5ad(path)
    return path


def bad_spec_error(path: Path, out: Path, **pool: object) -> str:
    """The CLI's make-dataset on this file: fails, and writes nothing."""
    from typer.testing import CliRunner

    from attnsets.cli import app

    config = out.parent / "spec.toml"
    extra = "".join(f'{k} = "{v}"\n' if isinstance(v, str) else f"{k} = {v}\n"
                    for k, v in pool.items())
    config.write_text(f'[pool]\nname = "anndata"\nsource = "{path}"\n{extra}'
                      '[rule]\nname = "presence"\nkey = 0\n[bags]\ntrain = 4\nval = 4\ntest = 4\n'
                      '[bag_size]\nmean = 4\nsd = 0\n')
    result = CliRunner().invoke(app, ["make-dataset", str(config), "--out", str(out)])
    assert result.exit_code != 0 and not out.exists()
    return " ".join(result.output.split())


@pytest.mark.parametrize(("pool", "expected"), [
    ({"obs": "celltype"}, ["pool.obs", "celltype", "cell_type"]),
    ({"obs": "cell_type", "matrix": "obsm/X_umap"}, ["pool.matrix", "obsm/X_umap", "obsm/X_pca"]),
    ({"obs": "cell_type", "matrix": "layers/counts"}, ["pool.matrix", "layers/counts"]),
    ({"obs": "cell_type", "n_components": 7}, ["pool.n_components", "3 columns"]),
])
def test_missing_keys_name_what_the_file_has(tmp_path: Path, pool: dict,
                                             expected: list[str]) -> None:
    message = bad_spec_error(write_h5ad(tmp_path / "c.h5ad"), tmp_path / "out.npz", **pool)
    for text in expected:
        assert text in message


def test_nan_features_name_the_cell(tmp_path: Path) -> None:
    pca = np.ones((6, 3))
    pca[4, 1] = np.nan
    path = write_h5ad(tmp_path / "c.h5ad", pca=pca)
    message = bad_spec_error(path, tmp_path / "out.npz", obs="cell_type")
    assert "pool.matrix" in message and "finite" in message and "'c4'" in message


def test_non_numeric_features_are_refused(tmp_path: Path) -> None:
    path = write_h5ad(tmp_path / "c.h5ad")
    adata = anndata.read_h5ad(path)
    adata.obsm["X_text"] = pd.DataFrame({"p": ["x"] * 6}, index=adata.obs_names)
    adata.write_h5ad(path)
    message = bad_spec_error(path, tmp_path / "out.npz", obs="cell_type", matrix="obsm/X_text")
    assert "pool.matrix" in message and "numeric" in message


def test_one_cell_type_and_empty_files_are_refused(tmp_path: Path) -> None:
    one = write_h5ad(tmp_path / "one.h5ad", types=["a"] * 6)
    message = bad_spec_error(one, tmp_path / "out.npz", obs="cell_type")
    assert "pool.obs" in message and "at least two cell types" in message
    empty = write_h5ad(tmp_path / "empty.h5ad", n=0, types=[], pca=np.zeros((0, 3)))
    message = bad_spec_error(empty, tmp_path / "out.npz", obs="cell_type")
    assert "pool.source" in message and "at least one cell" in message


def test_a_small_file_generates_and_traces_rows(tmp_path: Path) -> None:
    path = write_h5ad(tmp_path / "c.h5ad", n=30)
    spec = DatasetSpec.from_dict({
        "pool": {"name": "anndata", "source": str(path), "obs": "cell_type", "matrix": "X"},
        "rule": {"name": "presence", "key": "b"}, "bags": {"train": 4, "val": 4, "test": 4},
        "bag_size": {"mean": 5, "sd": 0}})
    data = make_dataset(spec)
    adata = anndata.read_h5ad(path)
    rows = data.test.source_index
    assert np.array_equal(data.test.instances, np.asarray(adata.X)[rows])
    assert data.concept_names == ["a", "b"]
    with pytest.raises(SpecError, match="existing .h5ad file"):
        from attnsets.data.pools.h5ad import AnnDataPool
        AnnDataPool(source=str(tmp_path / "missing.h5ad"))


def test_generated_pools_carry_no_source_index(tmp_path: Path) -> None:
    spec = DatasetSpec.from_dict({"pool": {"name": "gaussian"}, "rule": {"name": "presence",
                                  "key": 1}, "bags": {"train": 4, "val": 4, "test": 4}})
    path = save_dataset(make_dataset(spec), tmp_path / "g.npz")
    with np.load(path, allow_pickle=False) as npz:
        assert "test.source_index" not in npz.files
    assert load_dataset(path).test.source_index is None


# ----------------------------------------------------------------------------- tcr
@needs_mira
def test_mira_receptors_feed_the_seq_cnn_encoder() -> None:
    import torch

    from attnsets.config.preflight import dataset_info
    from attnsets.data.bags import collate
    from attnsets.models import ModelSpec, build_model

    spec = DatasetSpec.from_dict({
        "pool": {"name": "tcr"}, "rule": {"name": "presence", "key": "YLQPRTFL"},
        "bags": {"train": 6, "val": 6, "test": 6}, "bag_size": {"mean": 40, "sd": 0},
        "witnesses": {"count": 1}})
    data = make_dataset(spec)
    assert data.kind == "sequence" and data.vocab_size == 21 and len(data.concept_names) == 29
    key = data.concept_names.index("YLQPRTFL")
    test = data.test
    witness = test.evidence[np.arange(len(test.concepts)), test.labels[test.bag_index]] > 0
    positive = test.labels[test.bag_index] == 1
    assert np.array_equal(witness[positive], test.concepts[positive] == key)
    assert data.metadata["kept_per_set"][key] > 100
    model = build_model(ModelSpec(encoder="seq_cnn", pooling="attention"), dataset_info(spec),
                        seed=0)
    out = model(collate(list(test)[:3]).x, collate(list(test)[:3]).mask)
    assert torch.isfinite(out.logits).all()


@needs_mira
def test_mira_sets_are_cleaned_and_disjoint() -> None:
    from attnsets.data.pools import POOLS

    pool = POOLS.build("tcr", {}, "pool")
    meta = pool.metadata()
    assert sum(meta["distinct_cdr3s_per_set"]) == 22491  # 24,892 rows, repeats within a set
    cdr3s, concepts = pool.receptors
    assert len(set(cdr3s)) == len(cdr3s) == sum(meta["kept_per_set"])
    train = np.concatenate([pool.partition[("train", c)] for c in range(pool.n_concepts)])
    test = np.concatenate([pool.partition[("test", c)] for c in range(pool.n_concepts)])
    assert not set(train.tolist()) & set(test.tolist())
    assert pool.source_names(np.array([0]))[0] == cdr3s[0]
    with pytest.raises(SpecError, match="source"):
        POOLS.build("tcr", {"source": "vdjdb"}, "pool")


@needs_pbmc
def test_instance_map_uses_the_files_own_umap() -> None:
    from attnsets.data.generate import build_pool
    from attnsets.data.pools.h5ad import bundled_path
    from attnsets.report.examples import _instance_map

    spec = pbmc_spec({"name": "presence", "key": "CD19+ B"}, 4)
    test = make_dataset(spec).test
    coordinates, axes, name = _instance_map(test, build_pool(spec))
    umap = anndata.read_h5ad(bundled_path("pbmc68k_reduced")).obsm["X_umap"]
    assert axes == ("UMAP 1", "UMAP 2") and "UMAP" in name
    assert np.allclose(coordinates, umap[test.source_index])
    gaussian = DatasetSpec.from_dict({"pool": {"name": "gaussian"}, "rule": {
        "name": "presence", "key": 1}, "bags": {"train": 4, "val": 4, "test": 4}})
    _, axes, name = _instance_map(make_dataset(gaussian).test, build_pool(gaussian))
    assert axes[0].startswith("PC 1") and name == "PCA of the test instances"
