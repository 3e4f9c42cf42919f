"""Training stage: fit, ensembles trained in one vectorised pass, checkpoints."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

from attnsets.data import BagSplit, ComponentSpec, DatasetSpec, SetDataset, collate, make_dataset
from attnsets.errors import DataFormatError, SpecError, TrainingDivergedError
from attnsets.models import POOLINGS, HeadSpec, InputInfo, ModelSpec, build_model
from attnsets.training import (
    Ensemble,
    EpochStats,
    PaddedSplit,
    TrainSpec,
    class_weight_vector,
    evaluate,
    fit,
    fit_ensemble,
    load_ensemble,
    load_model,
    read_checkpoint_meta,
    save_ensemble,
    save_model,
    weighted_cross_entropy,
)
from attnsets.training.fit import eval_chunks

MODEL = ModelSpec(embed_dim=16, encoder_params={"hidden": 32})
QUICK = TrainSpec(epochs=12, batch_size=16, lr=1e-2, patience=4, seed=0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def gaussian() -> SetDataset:
    """Presence of concept 0 among 10 well-separated Gaussian clouds in R^8."""
    spec = DatasetSpec(ComponentSpec("gaussian", {"dim": 8, "separation": 8.0}),
                       ComponentSpec("presence", {"key": 0}),
                       bags={"train": 200, "val": 100, "test": 200}, seed=1)
    return make_dataset(spec)


def accuracy(model: torch.nn.Module, split: BagSplit) -> float:
    batch = collate(list(split))
    with torch.no_grad():
        logits = model(batch.x, batch.mask).logits
    return float((logits.argmax(-1) == batch.labels).float().mean())


def logits_on(model: torch.nn.Module, split: BagSplit) -> torch.Tensor:
    batch = collate(list(split))
    with torch.no_grad():
        return model(batch.x, batch.mask).logits


def with_train(dataset: SetDataset, train: BagSplit) -> SetDataset:
    return dataclasses.replace(dataset, splits={**dataset.splits, "train": train})


# --- TrainSpec -------------------------------------------------------------------------------

@pytest.mark.parametrize(("field", "value"), [
    ("epochs", 0), ("epochs", 2.5), ("batch_size", 0), ("lr", 0.0), ("lr", math.nan),
    ("weight_decay", -1.0), ("patience", 0), ("class_weights", "inverse"),
    ("class_weights", [1.0, -2.0]), ("class_weights", []), ("seed", -1),
    ("max_grad_norm", 0.0), ("divergence_threshold", 0.0), ("eval_batch_size", 0),
])
def test_train_spec_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(SpecError) as info:
        TrainSpec(**{field: value})  # type: ignore[arg-type]
    assert info.value.field == field
    assert repr(value) in str(info.value) or str(value) in str(info.value)


def test_train_spec_dict_round_trip_and_unknown_key() -> None:
    spec = TrainSpec(epochs=3, class_weights=[1.0, 2.0], patience=None, max_grad_norm=1.5)
    assert spec.class_weights == (1.0, 2.0)
    data = json.loads(json.dumps(spec.to_dict()))
    assert TrainSpec.from_dict(data) == spec
    with pytest.raises(SpecError) as info:
        TrainSpec.from_dict({"epochs": 3, "learning_rate": 0.1})
    assert info.value.field == "train.learning_rate"


# --- batching and loss -----------------------------------------------------------------------

def test_padded_split_batches_match_collate(gaussian: SetDataset) -> None:
    padded = PaddedSplit.from_split(gaussian.train)
    index = np.array([17, 3, 150, 42, 3])
    x, mask, labels = padded.batch(index)
    reference = collate([gaussian.train[int(i)] for i in index])
    assert torch.equal(x, reference.x)
    assert torch.equal(mask, reference.mask)
    assert torch.equal(labels, reference.labels)
    # A (K, b) index gives each row its bags, padded to the largest bag over all rows.
    stacked_x, stacked_mask, stacked_labels = padded.batch(np.stack([index, index[::-1]]))
    n = int(gaussian.train.sizes[index].max())
    assert stacked_x.shape == (2, 5, n, 8)
    assert torch.equal(stacked_x[1], reference.x.flip(0))
    assert torch.equal(stacked_labels[0], reference.labels)
    assert torch.equal(stacked_mask.sum(-1)[0], torch.from_numpy(gaussian.train.sizes[index]))


def test_weighted_cross_entropy_by_hand() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5], [-1.0, 3.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 1])
    weights = torch.tensor([1.0, 3.0])
    nll = [math.log(1 + math.exp(-3.0)), math.log(2.0), math.log(1 + math.exp(-4.0)),
           math.log(1 + math.exp(1.0))]
    w = [1.0, 3.0, 3.0, 3.0]
    expected = sum(a * b for a, b in zip(w, nll, strict=True)) / sum(w)
    assert float(weighted_cross_entropy(logits, labels, weights)) == pytest.approx(expected,
                                                                                 rel=1e-6)
    assert float(weighted_cross_entropy(logits, labels, weights)) == pytest.approx(
        float(F.cross_entropy(logits, labels, weight=weights)), rel=1e-6)
    unweighted = float(weighted_cross_entropy(logits, labels, torch.ones(2)))
    assert unweighted == pytest.approx(sum(nll) / 4, rel=1e-6)
    assert unweighted != pytest.approx(expected, rel=1e-3)
    # Leading axes are independent rows (the ensemble's member axis).
    stacked = weighted_cross_entropy(torch.stack([logits, -logits]), labels.expand(2, -1),
                                     weights)
    assert float(stacked[0]) == pytest.approx(expected, rel=1e-6)
    assert float(stacked[1]) == pytest.approx(
        float(F.cross_entropy(-logits, labels, weight=weights)), rel=1e-6)


def test_balanced_class_weights_match_scikit_learn() -> None:
    labels = np.array([0] * 30 + [1] * 10 + [2] * 5)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    got = class_weight_vector("balanced", labels, 3).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert class_weight_vector(None, labels, 3).tolist() == [1.0, 1.0, 1.0]
    assert class_weight_vector((1.0, 2.0, 4.0), labels, 3).tolist() == [1.0, 2.0, 4.0]
    with pytest.raises(SpecError, match="3 positive weights"):
        class_weight_vector((1.0, 2.0), labels, 3)


def test_class_weights_change_the_recorded_loss(gaussian: SetDataset) -> None:
    one_epoch = TrainSpec(epochs=1, lr=1e-2, patience=None, seed=0)
    weighted = fit(MODEL, gaussian, dataclasses.replace(one_epoch, class_weights=[1.0, 4.0]))
    # After one epoch the model holds that epoch's state: recompute its val loss by hand.
    batch = collate(list(gaussian.val))
    with torch.no_grad():
        logits = weighted.model(batch.x, batch.mask).logits.double().numpy()
    log_p = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    y = batch.labels.numpy()
    w = np.array([1.0, 4.0])[y]
    by_hand = float((w * -log_p[np.arange(len(y)), y]).sum() / w.sum())
    assert weighted.history.val_loss[0] == pytest.approx(by_hand, rel=1e-5)
    plain = fit(MODEL, gaussian, dataclasses.replace(one_epoch, class_weights=None))
    assert plain.history.train_loss[0] != pytest.approx(weighted.history.train_loss[0], rel=1e-3)
    with pytest.raises(SpecError, match="class_weights"):
        fit(MODEL, gaussian, dataclasses.replace(one_epoch, class_weights=[1.0, 2.0, 3.0]))


# --- fit ---------------------------------------------------------------------------------------

def test_fit_learns_gaussian_presence(gaussian: SetDataset) -> None:
    seen: list[EpochStats] = []
    result = fit(MODEL, gaussian, TrainSpec(epochs=30, lr=1e-2, patience=6, seed=0),
                 progress=seen.append)
    history = result.history
    assert accuracy(result.model, gaussian.test) > 0.9
    assert not result.model.training
    n_epochs = history.stopped_epoch + 1
    assert len(history.train_loss) == len(history.val_loss) == len(history.val_accuracy) \
        == len(history.epoch_seconds) == len(seen) == n_epochs
    assert [s.epoch for s in seen] == list(range(n_epochs))
    assert [s.val_loss for s in seen] == history.val_loss
    assert history.train_loss[-1] < history.train_loss[0]
    assert history.best_epoch == int(np.argmin(history.val_loss))
    assert history.wall_time >= sum(history.epoch_seconds) > 0
    assert json.loads(json.dumps(history.to_dict()))["best_epoch"] == history.best_epoch


def test_fit_is_deterministic_for_a_seed(gaussian: SetDataset) -> None:
    rng_state = torch.get_rng_state()
    first = fit(MODEL, gaussian, QUICK)
    assert torch.equal(torch.get_rng_state(), rng_state)  # the caller's generator is untouched
    second = fit(MODEL, gaussian, QUICK)
    other = fit(MODEL, gaussian, dataclasses.replace(QUICK, seed=1))
    state, again, different = (r.model.state_dict() for r in (first, second, other))
    assert all(torch.equal(state[name], again[name]) for name in state)
    assert first.history.val_loss == second.history.val_loss
    assert not all(torch.equal(state[name], different[name]) for name in state)


def test_fit_trains_a_given_model_in_place(gaussian: SetDataset) -> None:
    model = build_model(MODEL, InputInfo.from_dataset(gaussian), seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fit(model, gaussian, dataclasses.replace(QUICK, epochs=2, patience=None))
    assert result.model is model
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # Same init seed and data order as fit(spec): the same weights.
    from_spec = fit(MODEL, gaussian, dataclasses.replace(QUICK, epochs=2, patience=None))
    assert all(torch.equal(v, from_spec.model.state_dict()[k])
               for k, v in model.state_dict().items())
    with pytest.raises(SpecError, match="ModelSpec or a SetModel"):
        fit("attention", gaussian, QUICK)  # type: ignore[arg-type]
    with pytest.raises(SpecError) as info:
        fit(MODEL, gaussian, {"epochs": 1})  # type: ignore[arg-type]
    assert info.value.field == "train_spec"


def test_early_stopping_restores_the_best_state(gaussian: SetDataset) -> None:
    spec = TrainSpec(epochs=80, batch_size=8, lr=3e-2, weight_decay=0.0, patience=2, seed=3,
                     class_weights=None)
    result = fit(MODEL, gaussian, spec)
    history = result.history
    assert history.stopped_early
    assert history.stopped_epoch == history.best_epoch + spec.patience
    assert history.best_epoch == int(np.argmin(history.val_loss))
    # Later epochs were worse, so the returned model must be the restored best one.
    assert min(history.val_loss[history.best_epoch + 1:]) > history.best_val_loss
    val_loss, val_accuracy = evaluate(result.model, eval_chunks(gaussian.val, 256),
                                      torch.ones(2))
    assert val_loss == pytest.approx(history.best_val_loss, rel=1e-6, abs=1e-7)
    assert val_accuracy == pytest.approx(history.best_val_accuracy)


def test_exploding_learning_rate_raises(gaussian: SetDataset) -> None:
    with pytest.raises(TrainingDivergedError, match=r"epoch 0, batch \d+ .*lower learning rate"):
        fit(MODEL, gaussian, TrainSpec(epochs=3, lr=1e6, seed=0))


def test_nan_features_raise_and_name_the_data(gaussian: SetDataset) -> None:
    train = gaussian.train
    instances = train.instances.copy()
    instances[int(train.offsets[7]) + 1, 3] = np.nan
    broken = with_train(gaussian, dataclasses.replace(train, instances=instances))
    with pytest.raises(TrainingDivergedError, match="1 non-finite feature values"):
        fit(MODEL, broken, QUICK)


def test_divergence_names_the_batch_that_diverged(gaussian: SetDataset) -> None:
    # Losses are read once per epoch (no per-step device sync), so the error must still name the
    # first bad batch, not the last one of the epoch: NaN features in one bag poison exactly the
    # batch that draws it in epoch 0 (batch 3 of 13 for seed 0).
    train = gaussian.train
    order = np.random.default_rng(QUICK.seed).permutation(len(train))
    bag = int(order[50])
    instances = train.instances.copy()
    instances[int(train.offsets[bag]), 0] = np.nan
    broken = with_train(gaussian, dataclasses.replace(train, instances=instances))
    with pytest.raises(TrainingDivergedError, match=r"epoch 0, batch 3 "):
        fit(MODEL, broken, QUICK)
    batches = [int(np.flatnonzero(np.random.default_rng(seed).permutation(len(train)) == bag)[0])
               // QUICK.batch_size for seed in (0, 1)]
    member = int(np.argmin(batches))  # the member whose batch comes first (ties: member 0)
    with pytest.raises(TrainingDivergedError,
                       match=rf"member {member} \(seed {member}\).*epoch 0, batch {min(batches)} "):
        fit_ensemble(MODEL, broken, QUICK, seeds=[0, 1])


# --- ensembles ---------------------------------------------------------------------------------

def test_ensemble_member_equals_member_trained_alone(gaussian: SetDataset) -> None:
    seeds = [3, 4, 5]
    # Clipping is active at this norm, so per-member clipping is checked as well.
    spec = TrainSpec(epochs=16, batch_size=16, lr=1e-2, patience=3, max_grad_norm=0.5)
    result = fit_ensemble(MODEL, gaussian, spec, seeds=seeds)
    ensemble = result.ensemble
    assert len(ensemble) == 3 and ensemble.seeds == seeds
    stopped = [h.stopped_epoch for h in result.histories]
    # Members stop at different epochs, which exercises dropping them from the stacked pass.
    assert len(set(stopped)) > 1
    for k, seed in enumerate(seeds):
        alone = fit(MODEL, gaussian, dataclasses.replace(spec, seed=seed))
        member = ensemble.members()[k]
        assert alone.history.best_epoch == result.histories[k].best_epoch
        assert alone.history.stopped_epoch == result.histories[k].stopped_epoch
        np.testing.assert_allclose(result.histories[k].val_loss, alone.history.val_loss,
                                   rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(logits_on(member, gaussian.test),
                                   logits_on(alone.model, gaussian.test), rtol=0, atol=1e-4)


def test_ensemble_forward_stacks_members(gaussian: SetDataset) -> None:
    result = fit_ensemble(MODEL, gaussian, dataclasses.replace(QUICK, epochs=3), n_members=3)
    ensemble = result.ensemble
    assert ensemble.seeds == [0, 1, 2]  # default: train seed + k
    batch = collate([gaussian.test[i] for i in range(6)])
    with torch.no_grad():
        out = ensemble(batch.x, batch.mask)
        singles = [m(batch.x, batch.mask) for m in ensemble.members()]
        proba = ensemble.predict_proba(batch.x, batch.mask)
    n = batch.x.shape[1]
    assert out.logits.shape == (3, 6, 2) and out.attention is not None
    assert out.attention.shape == (3, 6, n)
    assert out.instance_scores is None  # None fields of the pooling stay None
    for k, single in enumerate(singles):
        torch.testing.assert_close(out.logits[k], single.logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(out.attention[k], single.attention, rtol=0, atol=1e-6)
    members_proba = torch.stack([torch.softmax(s.logits, -1) for s in singles]).mean(0)
    torch.testing.assert_close(proba, members_proba, rtol=0, atol=1e-6)
    # Different seeds -> different members.
    logits = [logits_on(m, gaussian.test) for m in ensemble.members()]
    assert not torch.allclose(logits[0], logits[1], atol=1e-3)
    assert not torch.allclose(logits[1], logits[2], atol=1e-3)


@pytest.mark.parametrize("pooling", POOLINGS.names())
def test_every_pooling_trains_as_an_ensemble(pooling: str, gaussian: SetDataset) -> None:
    spec = ModelSpec(pooling=pooling, embed_dim=16)
    small = dataclasses.replace(gaussian, splits={
        "train": gaussian.train.subset(range(48)), "val": gaussian.val.subset(range(24)),
        "test": gaussian.test.subset(range(8))})
    train_spec = TrainSpec(epochs=2, lr=1e-2, patience=None)
    ensemble = fit_ensemble(spec, small, train_spec, seeds=[0, 1]).ensemble
    alone = fit(spec, small, dataclasses.replace(train_spec, seed=1)).model
    batch = collate(list(small.test))
    with torch.no_grad():
        stacked = ensemble(batch.x, batch.mask)
        single = alone(batch.x, batch.mask)
    for name, value in single._asdict().items():
        together = getattr(stacked, name)
        if value is None:
            assert together is None, name
        elif isinstance(value, tuple):  # layer_attention: one map per layer
            assert len(together) == len(value)
            for stacked_map, single_map in zip(together, value, strict=True):
                torch.testing.assert_close(stacked_map[1], single_map, rtol=0, atol=1e-4)
        else:
            torch.testing.assert_close(together[1], value, rtol=0, atol=1e-4)


@pytest.mark.parametrize(("n_members", "seeds", "field"), [
    (None, [1, 1, 2], "seeds"), (2, [1, 2, 3], "n_members"), (0, None, "n_members"),
    (None, [-1, 2], "seeds"),
])
def test_ensemble_rejects_bad_seeds(gaussian: SetDataset, n_members: int | None,
                                    seeds: list[int] | None, field: str) -> None:
    with pytest.raises(SpecError) as info:
        fit_ensemble(MODEL, gaussian, QUICK, n_members=n_members, seeds=seeds)
    assert info.value.field == field


def test_diverging_ensemble_member_is_named(gaussian: SetDataset) -> None:
    with pytest.raises(TrainingDivergedError, match=r"ensemble member \d \(seed \d\).*epoch 0"):
        fit_ensemble(MODEL, gaussian, TrainSpec(epochs=2, lr=1e6), n_members=2)


# --- checkpoints -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(gaussian: SetDataset) -> Ensemble:
    return fit_ensemble(MODEL, gaussian, dataclasses.replace(QUICK, epochs=2), n_members=2,
                        seeds=[7, 9]).ensemble


def test_model_checkpoint_round_trip(trained: Ensemble, gaussian: SetDataset,
                                     tmp_path: Path) -> None:
    model = trained.members()[0]
    path = save_model(model, tmp_path / "sub" / "model.pt", metadata={"note": "x"})
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left over
    loaded = load_model(path, expected_spec=MODEL, expected_info=InputInfo.from_dataset(gaussian))
    assert loaded.spec == MODEL and not loaded.training
    assert torch.equal(logits_on(loaded, gaussian.test), logits_on(model, gaussian.test))
    meta = read_checkpoint_meta(path)
    assert meta["kind"] == "model" and meta["metadata"] == {"note": "x"}
    save_model(trained.members()[1], path)  # overwriting replaces the file
    assert torch.equal(logits_on(load_model(path), gaussian.test),
                       logits_on(trained.members()[1], gaussian.test))


def test_ensemble_checkpoint_round_trip(trained: Ensemble, gaussian: SetDataset,
                                        tmp_path: Path) -> None:
    path = save_ensemble(trained, tmp_path / "ensemble.pt")
    loaded = load_ensemble(path)
    assert len(loaded) == 2 and loaded.seeds == [7, 9] and loaded.spec == MODEL
    batch = collate(list(gaussian.test))
    with torch.no_grad():
        assert torch.equal(loaded(batch.x, batch.mask).logits,
                           trained(batch.x, batch.mask).logits)
    with pytest.raises(DataFormatError, match="not a single model; use load_ensemble"):
        load_model(path)
    with pytest.raises(DataFormatError, match="not an ensemble; use load_model"):
        load_ensemble(save_model(trained.members()[0], tmp_path / "one.pt"))


def test_checkpoint_errors(trained: Ensemble, tmp_path: Path) -> None:
    path = save_model(trained.members()[0], tmp_path / "model.pt")
    other = ModelSpec(pooling="attention", embed_dim=32, encoder_params={"hidden": 32})
    with pytest.raises(DataFormatError, match="expected"):
        load_model(path, expected_spec=other)
    # A file whose weights belong to another architecture than its spec says.
    payload = torch.load(path, weights_only=True)
    meta = json.loads(payload["meta"])
    meta["model_spec"]["embed_dim"] = 32
    payload["meta"] = json.dumps(meta)
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(DataFormatError, match="do not match the saved model spec.*shape"):
        load_model(tmp_path / "mismatch.pt")
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataFormatError, match="damaged or foreign"):
        load_model(damaged)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(3)}, foreign)
    with pytest.raises(DataFormatError, match="not an attnsets checkpoint"):
        load_model(foreign)
    with pytest.raises(SpecError, match="an existing checkpoint file"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(SpecError, match="build_model"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "linear.pt")  # type: ignore[arg-type]


# --- every pooling learns digits presence --------------------------------------------------------

@pytest.fixture(scope="module")
def digits() -> SetDataset:
    spec = DatasetSpec(ComponentSpec("digits"), ComponentSpec("presence", {"key": 9}),
                       bags={"train": 150, "val": 60, "test": 200}, seed=0)
    return make_dataset(spec)


#: Set Transformer on a CNN trained from scratch sits at chance (loss 0.693) for ~20 epochs on
#: digits presence before it takes off, so patience 5 would stop it on the plateau; with a lower
#: lr and more patience it reaches ~0.97 (measured). Documented, not hidden.
TRAINING_OVERRIDES = {"set_transformer": {"epochs": 40, "lr": 1e-3, "patience": 12}}


@pytest.mark.slow
@pytest.mark.parametrize("pooling", POOLINGS.names())
def test_each_pooling_learns_digits_presence(pooling: str, digits: SetDataset) -> None:
    spec = ModelSpec(pooling=pooling, embed_dim=32,
                     encoder_params={"channels": [8, 16], "kernel_size": 3})
    settings = {"epochs": 30, "batch_size": 16, "lr": 3e-3, "patience": 5,
                **TRAINING_OVERRIDES.get(pooling, {})}
    result = fit(spec, digits, TrainSpec(**settings))
    assert accuracy(result.model, digits.test) >= 0.85


# --- ensemble strategy -------------------------------------------------------------------------

def test_sequential_members_are_exactly_lone_fits(gaussian: SetDataset) -> None:
    seeds = [3, 4]
    spec = TrainSpec(epochs=10, batch_size=16, lr=1e-2, patience=3, ensemble="sequential")
    seen: list[EpochStats] = []
    result = fit_ensemble(MODEL, gaussian, spec, seeds=seeds, progress=seen.append)
    assert result.ensemble.seeds == seeds
    assert sorted({s.member for s in seen}) == [0, 1]
    for k, seed in enumerate(seeds):
        alone = fit(MODEL, gaussian, dataclasses.replace(spec, seed=seed))
        assert result.histories[k].val_loss == alone.history.val_loss
        assert result.histories[k].best_epoch == alone.history.best_epoch
        assert torch.equal(logits_on(result.ensemble.members()[k], gaussian.test),
                           logits_on(alone.model, gaussian.test))
    # Forcing the other strategy (the argument overrides the spec) gives the same members
    # within the tolerance of the vectorised pass.
    vectorised = fit_ensemble(MODEL, gaussian, spec, seeds=seeds, strategy="vectorised")
    for ours, theirs in zip(vectorised.ensemble.members(), result.ensemble.members(),
                            strict=True):
        torch.testing.assert_close(logits_on(ours, gaussian.test),
                                   logits_on(theirs, gaussian.test), rtol=0, atol=1e-4)


def test_auto_strategy_vectorises_only_small_steps(gaussian: SetDataset,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from attnsets.models.encoders import MLPEncoder
    from attnsets.training.ensemble import VECTORISE_MAX_MACS, resolve_strategy, step_macs

    small = step_macs(MODEL, gaussian, 16)
    # d = 8 -> hidden 32 -> 16: 768 MACs per instance, 16 bags of the mean training size.
    assert small == pytest.approx(16 * float(np.mean(gaussian.train.sizes)) * 768)
    assert resolve_strategy(MODEL, gaussian, QUICK) == "vectorised"
    wide = ModelSpec(embed_dim=16, encoder_params={"hidden": 512})
    wide_spec = dataclasses.replace(QUICK, batch_size=64)
    assert step_macs(wide, gaussian, 64) > VECTORISE_MAX_MACS
    assert resolve_strategy(wide, gaussian, wide_spec) == "sequential"
    assert resolve_strategy(wide, gaussian, wide_spec, "vectorised") == "vectorised"
    # An encoder class may declare its strategy; "auto" then follows it.
    monkeypatch.setattr(MLPEncoder, "ensemble_strategy", "sequential", raising=False)
    assert resolve_strategy(MODEL, gaussian, QUICK) == "sequential"
    monkeypatch.setattr(MLPEncoder, "ensemble_strategy", "sideways", raising=False)
    with pytest.raises(SpecError, match="ensemble_strategy"):
        resolve_strategy(MODEL, gaussian, QUICK)


def test_ensemble_strategy_is_validated(gaussian: SetDataset) -> None:
    with pytest.raises(SpecError, match="ensemble"):
        TrainSpec(ensemble="parallel")
    assert TrainSpec.from_dict({"ensemble": "sequential"}).ensemble == "sequential"
    with pytest.raises(SpecError, match="strategy"):
        fit_ensemble(MODEL, gaussian, QUICK, n_members=2, strategy="parallel")


def test_diverging_sequential_member_is_named(gaussian: SetDataset) -> None:
    with pytest.raises(TrainingDivergedError, match=r"ensemble member 0 \(seed 0\).*epoch 0"):
        fit_ensemble(MODEL, gaussian, TrainSpec(epochs=2, lr=1e6, ensemble="sequential"),
                     n_members=2)


# --- readout heads -----------------------------------------------------------------------------

HEAD_MODEL = ModelSpec(embed_dim=16, encoder_params={"hidden": 32},
                       head=HeadSpec(hidden=(32,), dropout=0.15))


@pytest.fixture(scope="module")
def gaussian_all_of() -> SetDataset:
    """all_of(1, 2) among 4 Gaussian clouds: positive only when both concepts are in the bag."""
    spec = DatasetSpec.from_dict({
        "pool": {"name": "gaussian", "num_concepts": 4, "dim": 8, "separation": 8.0},
        "rule": {"name": "all_of", "concepts": [1, 2]},
        "bags": {"train": 200, "val": 100, "test": 200}, "seed": 0,
        "bag_size": {"kind": "normal", "mean": 20, "sd": 4, "min": 6}})
    return make_dataset(spec)


def balanced_accuracy(model: torch.nn.Module, split: BagSplit) -> float:
    predicted = logits_on(model, split).argmax(-1).numpy()
    labels = np.asarray(split.labels)
    return float(np.mean([np.mean(predicted[labels == c] == c) for c in np.unique(labels)]))


def test_mlp_head_learns_all_of_where_the_linear_head_cannot(gaussian_all_of: SetDataset
                                                              ) -> None:
    """With one attention head and a linear readout the bag logit is an attention-weighted
    average of instance logits (a count), so "1 and 2" stays out of reach; a hidden layer after
    pooling represents the conjunction. Measured (docs/benchmarks.md, "Readout head"): linear
    members stay at 0.73-0.85 for every seed tried; MLP members reach 0.97-1.0, except about one
    in three that stays on the linear head's plateau (0.79-0.84) within this budget."""
    spec = TrainSpec(epochs=40, batch_size=16, lr=5e-3, patience=None)
    seeds = [0, 1, 2]
    linear = fit_ensemble(dataclasses.replace(HEAD_MODEL, head=HeadSpec()), gaussian_all_of,
                          spec, seeds=seeds).ensemble
    mlp = fit_ensemble(HEAD_MODEL, gaussian_all_of, spec, seeds=seeds).ensemble
    linear_scores = [balanced_accuracy(m, gaussian_all_of.test) for m in linear.members()]
    mlp_scores = [balanced_accuracy(m, gaussian_all_of.test) for m in mlp.members()]
    assert max(linear_scores) <= 0.85, linear_scores
    assert sum(score >= 0.95 for score in mlp_scores) >= 2, mlp_scores
    assert np.mean(mlp_scores) >= np.mean(linear_scores) + 0.1, (linear_scores, mlp_scores)


def test_ensemble_member_with_mlp_head_equals_member_trained_alone(gaussian: SetDataset) -> None:
    """Dropout in the head is seeded per member: the vectorised pass drops, for each member,
    exactly the units the same seed drops when trained alone."""
    seeds = [3, 4]
    spec = TrainSpec(epochs=8, batch_size=16, lr=1e-2, patience=3)
    result = fit_ensemble(HEAD_MODEL, gaussian, spec, seeds=seeds, strategy="vectorised")
    for k, seed in enumerate(seeds):
        alone = fit(HEAD_MODEL, gaussian, dataclasses.replace(spec, seed=seed))
        assert alone.history.best_epoch == result.histories[k].best_epoch
        np.testing.assert_allclose(result.histories[k].train_loss, alone.history.train_loss,
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(result.histories[k].val_loss, alone.history.val_loss,
                                   rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(logits_on(result.ensemble.members()[k], gaussian.test),
                                   logits_on(alone.model, gaussian.test), rtol=0, atol=1e-4)


@pytest.mark.parametrize("pooling", [n for n in POOLINGS.names()
                                     if getattr(POOLINGS.get(n), "accepts_head", False)])
def test_every_head_pooling_trains_as_an_ensemble(pooling: str, gaussian: SetDataset) -> None:
    spec = dataclasses.replace(HEAD_MODEL, pooling=pooling, encoder_params={})
    small = dataclasses.replace(gaussian, splits={
        "train": gaussian.train.subset(range(48)), "val": gaussian.val.subset(range(24)),
        "test": gaussian.test.subset(range(8))})
    train_spec = TrainSpec(epochs=2, lr=1e-2, patience=None)
    ensemble = fit_ensemble(spec, small, train_spec, seeds=[0, 1],
                            strategy="vectorised").ensemble
    alone = fit(spec, small, dataclasses.replace(train_spec, seed=1)).model
    torch.testing.assert_close(logits_on(ensemble.members()[1], small.test),
                               logits_on(alone, small.test), rtol=0, atol=1e-4)


def test_checkpoint_keeps_the_head(gaussian: SetDataset, tmp_path: Path) -> None:
    model = fit(HEAD_MODEL, gaussian, dataclasses.replace(QUICK, epochs=1)).model
    save_model(model, tmp_path / "head.pt")
    loaded = load_model(tmp_path / "head.pt", expected_spec=HEAD_MODEL)
    assert loaded.spec == HEAD_MODEL
    torch.testing.assert_close(logits_on(loaded, gaussian.test), logits_on(model, gaussian.test))
