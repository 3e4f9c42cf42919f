"""The optional integrations: torchmil models as poolings and audit targets, AnnData in and out of
explain-data, MLflow tracking of study cells. Each group is skipped (with the reason) only when
its extra is not installed; `make test` installs all three."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from attnsets.cli import app
from attnsets.data import DatasetSpec, make_dataset
from attnsets.errors import SpecError, SpecErrors
from attnsets.models import POOLINGS, InputInfo, ModelSpec, build_model
from attnsets.models.user import build_member, probe_model
from study_toml import write_study_toml

ROOT = Path(__file__).resolve().parents[1]
GAUSSIAN = {"name": "gaussian", "num_concepts": 4, "dim": 6, "separation": 6.0}
TINY_DATA = {"pool": GAUSSIAN, "rule": {"name": "presence", "key": 2},
             "bags": {"train": 80, "val": 24, "test": 24},
             "bag_size": {"kind": "uniform", "low": 5, "high": 10}}
#: Small TransMIL: torchmil's att_dim 512 would dominate the file's run time.
SMALL_TRANSMIL = {"att_dim": 16, "n_heads": 2, "n_landmarks": 4, "pinv_iterations": 2}


@pytest.fixture(scope="module")
def torchmil_names() -> Iterator[list[str]]:
    """The torchmil_* poolings, registered for this module and removed again afterwards (other
    test files compare the registry with the built-ins). register_torchmil is called, not just
    the import, because another test may have removed the names of an already imported
    module."""
    pytest.importorskip("torchmil", reason="torchmil not installed (pip install "
                                            "'attnsets[torchmil]')")
    from attnsets.integrations.torchmil import TORCHMIL_MODELS, register_torchmil

    added = register_torchmil()
    yield list(TORCHMIL_MODELS)
    for name in added:
        POOLINGS.unregister(name)


@pytest.fixture(scope="module")
def tiny() -> Any:
    return make_dataset(DatasetSpec.from_dict(TINY_DATA))


def _multiclass_spec() -> DatasetSpec:
    return DatasetSpec.from_dict({"pool": {"name": "digits"},
                                  "rule": {"name": "four_bags", "a": 8, "b": 9},
                                  "bags": {"train": 8, "val": 4, "test": 4},
                                  "bag_size": {"kind": "uniform", "low": 4, "high": 6}})


# --------------------------------------------------------------------------- torchmil


def test_every_torchmil_model_meets_the_pooling_contract(torchmil_names: list[str],
                                                         tiny: Any) -> None:
    info = InputInfo.from_dataset(tiny)
    for name in torchmil_names:
        params = SMALL_TRANSMIL if name == "torchmil_transmil" else {}
        spec = ModelSpec(pooling=name, embed_dim=8, pooling_params=params)
        assert spec.check() == []
        model = build_model(spec, info, seed=0).eval()
        batch = [tiny.test[i] for i in range(4)]
        from attnsets.data import collate

        padded = collate(batch, pad_to=max(len(b) for b in batch) + 3)
        out = model(padded.x, padded.mask)
        assert out.logits.shape == (4, 2)
        # [-z/2, z/2]: the two logits are opposite, so softmax(...)[1] = sigmoid(z).
        torch.testing.assert_close(out.logits[:, 0], -out.logits[:, 1])
        assert out.attention is not None and out.attention.shape == padded.mask.shape
        assert bool((out.attention[~padded.mask] == 0).all()), name
        sums = out.attention.abs().sum(-1)
        torch.testing.assert_close(sums, torch.ones_like(sums), msg=name)
    # torchmil's constructor parameters are validated by name, with the allowed ones listed.
    problems = ModelSpec(pooling="torchmil_abmil", pooling_params={"heads": 2}).check()
    assert [p.field for p in problems] == ["pooling_params.heads"]
    assert "att_dim" in problems[0].allowed


def test_torchmil_poolings_refuse_a_readout_head(torchmil_names: list[str]) -> None:
    from attnsets.models import HeadSpec

    head = HeadSpec(hidden=(8,), dropout=0.15)
    for name in torchmil_names:
        assert [p.field for p in ModelSpec(pooling=name, head=head).check()] == ["head"]
        with pytest.raises(SpecError, match="own bag classifier") as err:
            build_model(ModelSpec(pooling=name, embed_dim=8, head=head),
                        InputInfo("vector", (3,), 2))
        assert err.value.field == "model.head"


def test_torchmil_abmil_is_trained_and_audited_by_name(torchmil_names: list[str]) -> None:
    from attnsets.audit import audit

    entry = {"name": "gaussian-presence", **TINY_DATA,
             "bags": {"train": 120, "val": 30, "test": 30}}
    result = audit("torchmil_abmil", battery=[entry], seeds=(0,), members=2,
                   training={"epochs": 15, "patience": 15, "lr": 0.005})
    row = result.table.iloc[0]
    assert row["members_trained"] == 2
    assert bool(row["respects_padding"]) and row["padding_attention_max"] == 0.0
    assert row["test_balanced_accuracy"] > 0.8, row["notes"]
    assert row["attention_auroc"] > 0.7, row["notes"]


def test_transmil_padding_leak_is_reported_by_the_probe(torchmil_names: list[str],
                                                        tiny: Any) -> None:
    info = InputInfo.from_dataset(tiny)
    leaky = probe_model(build_model(ModelSpec(pooling="torchmil_transmil", embed_dim=8,
                                              pooling_params=SMALL_TRANSMIL), info, 0), tiny)
    # Its attention is zeroed at padding, but its prediction moves with the padding: its
    # forward takes no mask, and the wrapper does not pretend otherwise.
    assert leaky.padding_attention_max == 0.0
    assert leaky.padding_changes_output and not leaky.respects_padding
    assert any("padding changes the prediction" in p for p in leaky.problems())
    for name in ("torchmil_abmil", "torchmil_dsmil", "torchmil_clam_sb"):
        clean = probe_model(build_model(ModelSpec(pooling=name, embed_dim=8), info, 0), tiny)
        assert clean.respects_padding, (name, clean)


def test_a_transmil_study_cell_runs(torchmil_names: list[str], tmp_path: Path) -> None:
    from attnsets.study.config import validate_config
    from attnsets.study.runner import run_study
    from attnsets.study.store import ResultsStore

    raw = {"study": {"name": "tm", "seeds": [0], "members": 2,
                     "explainers": ["attention", "random"], "bootstrap": 0, "curve_subsets": 3},
           "training": {"epochs": 3, "batch_size": 16},
           "thresholds": {"min_bag_score": 0.9, "max_importance": 0.7},
           "datasets": [{"name": "g", **TINY_DATA,
                         "bags": {"train": 32, "val": 12, "test": 12}}],
           "models": [{"name": "transmil", "pooling": "torchmil_transmil", "embed_dim": 8,
                       "pooling_params": SMALL_TRANSMIL}]}
    summary = run_study(validate_config(raw), tmp_path / "out", show_progress=False)
    assert summary.done == 1 and summary.failed == 0, summary.failures
    store = ResultsStore(tmp_path / "out")
    try:
        [record] = list(store.records())
    finally:
        store.close()
    assert record.assessment is not None
    auroc = record.assessment.headline()["attention.auroc"]
    assert 0.0 <= auroc <= 1.0


def test_multiclass_data_with_a_torchmil_pooling_is_refused(torchmil_names: list[str]) -> None:
    from attnsets.config.preflight import dataset_info
    from attnsets.integrations.torchmil import torchmil_builder
    from attnsets.study.config import validate_config

    info = dataset_info(_multiclass_spec())
    assert info.n_classes == 4
    with pytest.raises(SpecError) as err:
        build_model(ModelSpec(pooling="torchmil_dsmil"), info, 0)
    assert err.value.field == "model.pooling" and "binary" in err.value.allowed
    assert "4 classes" in err.value.allowed
    from torchmil.models import ABMIL

    with pytest.raises(SpecError, match="binary") as err:
        build_member(torchmil_builder(ABMIL), info, 0)
    assert err.value.field == "model_builder"
    raw = {"study": {"name": "mc", "seeds": [0], "members": 2, "explainers": ["attention"]},
           "training": {"epochs": 1}, "thresholds": {},
           "datasets": [{"name": "four", "pool": {"name": "digits"},
                         "rule": {"name": "four_bags", "a": 8, "b": 9},
                         "bags": {"train": 8, "val": 4, "test": 4}}],
           "models": [{"name": "abmil", "pooling": "torchmil_abmil"}]}
    with pytest.raises(SpecErrors) as errors:
        validate_config(raw)
    [problem] = errors.value.errors
    assert problem.field == "models[0].pooling" and "binary" in problem.allowed
    assert "'four'" in problem.allowed  # names the dataset it meets


def test_your_own_torchmil_model_in_three_lines(torchmil_names: list[str], tiny: Any) -> None:
    from torchmil.models import ABMIL, DSMIL

    from attnsets.integrations.torchmil import torchmil_builder

    info = InputInfo.from_dataset(tiny)
    # A class: built per member with in_shape=(embed_dim,) and the keyword arguments.
    from_class = torchmil_builder(ABMIL, att_dim=16, embed_dim=8)
    report = probe_model(build_member(from_class, info, 0), tiny)
    assert report.respects_padding and report.has_attention
    # An instance: copied per member and re-initialised with the member's seed.
    from_instance = torchmil_builder(DSMIL(in_shape=(8,), att_dim=16), embed_dim=8)
    first, second = build_member(from_instance, info, 0), build_member(from_instance, info, 1)
    weights = [m.pooling.module.q_nn.weight for m in (first, second)]
    assert not torch.equal(*weights)
    assert first.pooling.attention_kind == "weights"  # DSMIL returns softmax weights
    from attnsets.audit import audit

    result = audit(from_class, battery=[{"name": "g", **TINY_DATA}], seeds=(0,), members=1,
                   training={"epochs": 2})
    assert result.model.endswith("torchmil_builder(ABMIL)")
    assert result.table.iloc[0]["members_trained"] == 1


def test_companion_config_validates(torchmil_names: list[str]) -> None:
    from attnsets.study.config import load_study

    link = ROOT / "configs" / "paper-torchmil.toml"
    assert link.is_symlink() and link.resolve() == (
        ROOT / "src" / "attnsets" / "configs" / "paper-torchmil.toml").resolve()
    study = load_study(link)
    models = {cell.model_name for cell in study.cells}
    assert {"torchmil_transmil", "torchmil_dsmil", "attention"} <= models
    assert len(study.cells) == 5 * 6 * 2


# --------------------------------------------------------------------------- AnnData


def _adata(tmp_path: Path, sparse: bool = True) -> Path:
    """24 patients (bags) of 6-11 cells; responders hold 1-2 cells shifted in feature 0."""
    anndata = pytest.importorskip("anndata", reason="anndata not installed (pip install "
                                                    "'attnsets[anndata]')")
    import scipy.sparse

    rng = np.random.default_rng(0)
    blocks, patients, labels = [], [], []
    for patient in range(24):
        cells = rng.normal(size=(int(rng.integers(6, 12)), 5))
        if patient % 2:
            cells[: int(rng.integers(1, 3)), 0] += 5.0
        blocks.append(cells)
        patients += [f"p{patient}"] * len(cells)
        labels += [("non", "responder")[patient % 2]] * len(cells)
    values = np.concatenate(blocks).astype(np.float32)
    obs = pd.DataFrame({"patient": pd.Categorical(patients), "response": labels},
                       index=[f"cell{i}" for i in range(len(values))])
    adata = anndata.AnnData(X=scipy.sparse.csr_matrix(values) if sparse else values, obs=obs)
    adata.obsm["X_pca"] = values[:, :3]
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    return path


def test_h5ad_round_trips_through_explain_data(tmp_path: Path) -> None:
    path = _adata(tmp_path)
    import anndata

    out = tmp_path / "explained"
    result = CliRunner().invoke(app, ["explain-data", str(path), "--bag-column", "patient",
                                      "--label-column", "response", "--obsm", "X_pca",
                                      "--members", "2", "--epochs", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    annotated = anndata.read_h5ad(out / "cells.attnsets.h5ad")
    original = anndata.read_h5ad(path)
    assert annotated.n_obs == original.n_obs
    obs = annotated.obs
    for column in ("attnsets_consensus", "attnsets_consensus_rank", "attnsets_bag_rank_agreement",
                   "attnsets_split"):
        assert column in obs and obs[column].notna().all(), column
    assert obs["attnsets_consensus"].between(0, 1).all()
    assert set(obs["attnsets_split"]) == {"train", "val", "test"}
    # The obs columns are the instance table, cell by cell (row = obs position).
    instances = pd.read_csv(out / "instances.csv")
    by_row = instances.set_index("row")["consensus"].sort_index().to_numpy()
    np.testing.assert_allclose(obs["attnsets_consensus"].to_numpy(), by_row, rtol=1e-6)
    # One rank-1 cell (or tied ones) per patient; the source file is untouched.
    assert (obs.groupby("patient", observed=True)["attnsets_consensus_rank"].min() == 1).all()
    assert "attnsets_consensus" not in original.obs


def test_load_anndata_reads_dense_or_sparse_x(tmp_path: Path) -> None:
    anndata = pytest.importorskip("anndata", reason="anndata not installed")

    from attnsets.integrations.anndata import load_anndata

    for sparse in (True, False):
        adata = anndata.read_h5ad(_adata(tmp_path, sparse=sparse))
        data = load_anndata(adata, "patient", "response")
        assert data.instances.shape == (adata.n_obs, 5)
        assert data.feature_names == list(adata.var_names)
        assert data.class_names == ["non", "responder"]
        # rows are obs positions: each instance is its cell's row of X.
        dense = adata.X.toarray() if sparse else adata.X
        np.testing.assert_allclose(data.instances, dense[data.rows])
    assert load_anndata(adata, "patient", "response", obsm="X_pca").feature_names == [
        "X_pca_0", "X_pca_1", "X_pca_2"]


@pytest.mark.parametrize(("args", "field"), [
    (["--bag-column", "donor", "--label-column", "response"], "bag_column"),
    (["--bag-column", "patient", "--label-column", "outcome"], "label_column"),
    (["--bag-column", "patient", "--label-column", "response", "--obsm", "X_umap"], "obsm"),
])
def test_bad_h5ad_arguments_are_named_and_nothing_is_written(args: list[str], field: str,
                                                             tmp_path: Path) -> None:
    path = _adata(tmp_path)
    out = tmp_path / "explained"
    result = CliRunner().invoke(app, ["explain-data", str(path), *args, "--out", str(out)])
    assert result.exit_code == 2
    assert f"{field}:" in result.output
    assert field != "obsm" or "X_pca" in result.output  # the keys there are
    assert not out.exists()


def test_non_numeric_features_are_refused(tmp_path: Path) -> None:
    anndata = pytest.importorskip("anndata", reason="anndata not installed")
    from attnsets.integrations.anndata import load_anndata

    obs = pd.DataFrame({"patient": ["a", "a", "b", "b"], "response": [0, 0, 1, 1]},
                       index=[f"c{i}" for i in range(4)])
    text = anndata.AnnData(X=np.array([["x", "y"]] * 4, dtype=object), obs=obs)
    with pytest.raises(SpecError) as err:
        load_anndata(text, "patient", "response")
    assert err.value.field == "X" and "numeric" in err.value.allowed
    numbers = anndata.AnnData(X=np.ones((4, 2)), obs=obs)
    numbers.obsm["meta"] = pd.DataFrame({"kind": list("abab")}, index=obs.index)
    with pytest.raises(SpecError) as err:
        load_anndata(numbers, "patient", "response", obsm="meta")
    assert err.value.field == "obsm"
    numbers.X[1, 1] = np.nan  # a missing value names the gene, not an internal column
    numbers.var_names = ["CD3", "CD8"]
    with pytest.raises(SpecError) as err:
        load_anndata(numbers, "patient", "response")
    assert err.value.field == "X" and err.value.value == "CD8"


def test_obsm_with_a_csv_input_is_refused(tmp_path: Path) -> None:
    table = tmp_path / "cells.csv"
    pd.DataFrame({"bag": [0, 0, 1, 1], "y": [0, 0, 1, 1], "f": [1.0, 2, 3, 4]}).to_csv(table)
    result = CliRunner().invoke(app, ["explain-data", str(table), "--bag-column", "bag",
                                      "--label-column", "y", "--obsm", "X_pca",
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "obsm:" in result.output
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- MLflow


def test_mlflow_store_holds_one_run_per_cell(tmp_path: Path) -> None:
    pytest.importorskip("mlflow", reason="MLflow not installed (pip install 'attnsets[mlflow]')")
    from mlflow.tracking import MlflowClient

    raw = {"study": {"name": "tracked", "seeds": [0], "members": 2,
                     "explainers": ["attention", "random"], "bootstrap": 0, "curve_subsets": 3},
           "training": {"epochs": 2, "batch_size": 16},
           "thresholds": {"min_bag_score": 0.9, "max_importance": 0.7},
           "datasets": [{"name": "g", **TINY_DATA}],
           "models": [{"name": "attention", "pooling": "attention", "embed_dim": 8},
                      {"name": "mean", "pooling": "mean", "embed_dim": 8}]}
    config = write_study_toml(raw, tmp_path / "study.toml")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(out), "--mlflow"])
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    [experiment] = [e for e in client.search_experiments() if e.name == "attnsets-tracked"]
    cells = client.search_runs([experiment.experiment_id], "tags.`attnsets.kind` = 'cell'")
    assert len(cells) == 2
    [parent] = client.search_runs([experiment.experiment_id], "tags.`attnsets.kind` = 'study'")
    for run in cells:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED"
        assert run.data.params["dataset.pool.name"] == "gaussian"
        assert run.data.params["model_name"] in ("attention", "mean")
        assert "headline.bag_accuracy" in run.data.metrics
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
        assert artifacts == ["record.json"]
    attention = next(r for r in cells if r.data.params["model_name"] == "attention")
    assert "headline.attention.auroc" in attention.data.metrics
    assert "headline.csv" in [a.path for a in client.list_artifacts(parent.info.run_id)]
