"""Devices: device strings, training on the resolved device, data moved with the model.

This machine has no GPU, so CUDA availability is simulated with monkeypatch where a test needs
it, and the `meta` device (shapes and devices, no data) stands in for "not the CPU": a forward
pass that created a tensor on the CPU would fail there with a device mismatch.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from attnsets.data import ComponentSpec, DatasetSpec, SetDataset, collate, make_dataset
from attnsets.device import (
    CUBLAS_WORKSPACE,
    check_device_string,
    deterministic,
    device_of,
    resolve_device,
    seeded,
    to_device,
)
from attnsets.errors import SpecError
from attnsets.models import POOLINGS, InputInfo, ModelSpec, attention_pool_large, build_model
from attnsets.training import (
    Ensemble,
    PaddedSplit,
    TrainSpec,
    fit,
    fit_ensemble,
    load_ensemble,
    load_model,
    save_ensemble,
    save_model,
)
from attnsets.training.fit import eval_chunks

MODEL = ModelSpec(embed_dim=16, encoder_params={"hidden": 32})
QUICK = TrainSpec(epochs=4, batch_size=16, lr=1e-2, patience=2, seed=0)
META = torch.device("meta")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def gaussian() -> SetDataset:
    spec = DatasetSpec(ComponentSpec("gaussian", {"dim": 8, "separation": 8.0}),
                       ComponentSpec("presence", {"key": 0}),
                       bags={"train": 96, "val": 48, "test": 32}, seed=1)
    return make_dataset(spec)


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine on which torch sees no CUDA device (whatever this one has)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine on which torch reports two CUDA devices, the current one being 0."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def probabilities(model: torch.nn.Module, dataset: SetDataset) -> torch.Tensor:
    batch = collate(list(dataset.test)).to(device_of(model))
    with torch.no_grad():
        return torch.softmax(model(batch.x, batch.mask).logits, dim=-1)


# --- device strings ----------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["auto", "cpu", "cuda", "cuda:0", "cuda:1", "cuda:12"])
def test_check_device_string_accepts_every_form(value: str) -> None:
    assert check_device_string(value, "train.device") == value


@pytest.mark.parametrize("value", ["gpu", "CPU", "cuda:", "cuda:-1", "cuda:01", "cuda:x",
                                   "cuda 0", " cpu", "mps", "meta", "", 0, None, ["cpu"]])
def test_check_device_string_rejects_other_values(value: object) -> None:
    with pytest.raises(SpecError) as info:
        check_device_string(value, "study.device")
    assert info.value.field == "study.device"
    assert '"cuda:N"' in str(info.value) and "auto" in str(info.value)


@pytest.mark.usefixtures("no_cuda")
def test_resolve_device_without_cuda() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    for value in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(SpecError) as info:
            resolve_device(value, "train.device")
        assert info.value.field == "train.device" and info.value.value == value
        assert "no CUDA device is visible" in str(info.value)
    with pytest.raises(SpecError) as bad:
        resolve_device("gpu", "train.device")
    assert bad.value.field == "train.device" and "no CUDA" not in str(bad.value)


@pytest.mark.usefixtures("two_gpus")
def test_resolve_device_with_two_gpus() -> None:
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)  # indexed: equals tensor.device
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(SpecError) as info:
        resolve_device("cuda:2", "assess.device")
    assert info.value.field == "assess.device"
    assert "2 visible CUDA device(s): cuda:0 .. cuda:1" in str(info.value)


def test_resolve_device_on_this_machine() -> None:
    expected = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
        else torch.device("cpu")
    assert resolve_device("auto") == expected


# --- RNG and determinism helpers ---------------------------------------------------------------

def test_seeded_is_reproducible_and_restores_the_callers_generator() -> None:
    cpu = torch.device("cpu")
    state = torch.get_rng_state()
    with seeded(5, cpu):
        first = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), state)
    with seeded(5, cpu):
        again = torch.rand(4)
    with seeded(6, cpu):
        other = torch.rand(4)
    assert torch.equal(first, again) and not torch.equal(first, other)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(4), first)  # the same stream as torch.manual_seed
    torch.set_rng_state(state)


def test_deterministic_sets_and_restores_cuda_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)

    def settings() -> tuple[bool, ...]:
        return (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
                torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)

    before = settings()
    with deterministic(torch.device("cpu")):
        assert settings() == before  # CPU kernels are deterministic already
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    with deterministic(torch.device("cuda", 0)):
        assert settings() == (True, True, True, False, False, False)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
    assert settings() == before
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with deterministic(torch.device("cuda", 0)):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"  # the user's choice is kept


def test_to_device_and_device_of() -> None:
    tensor = torch.arange(6.0)
    assert to_device(tensor, torch.device("cpu")) is tensor
    moved = to_device(tensor, META)
    assert moved.device == META and moved.shape == tensor.shape
    model = torch.nn.Linear(2, 3)
    assert device_of(model) == torch.device("cpu")
    assert device_of(model.to(META)) == META
    assert device_of(torch.nn.ReLU()) == torch.device("cpu")


# --- TrainSpec.device --------------------------------------------------------------------------

def test_train_spec_device_field() -> None:
    assert TrainSpec().device == "auto"
    with pytest.raises(SpecError) as info:
        TrainSpec(device="gpu")
    assert info.value.field == "device"
    with pytest.raises(SpecError) as nested:
        TrainSpec.from_dict({"epochs": 3, "device": "cuda:one"})
    assert nested.value.field == "train.device"
    spec = TrainSpec(epochs=3, device="cuda:1")  # syntax only: no GPU needed to write a config
    assert spec.to_dict()["device"] == "cuda:1"
    assert TrainSpec.from_dict(spec.to_dict()) == spec
    # A record written before the field existed reads as the default.
    old = {k: v for k, v in TrainSpec(epochs=3).to_dict().items() if k != "device"}
    assert TrainSpec.from_dict(old) == TrainSpec(epochs=3, device="auto")


@pytest.mark.usefixtures("no_cuda")
def test_training_on_missing_cuda_is_refused_before_it_starts(gaussian: SetDataset) -> None:
    for train in (fit, fit_ensemble):
        with pytest.raises(SpecError) as info:
            train(MODEL, gaussian, dataclasses.replace(QUICK, device="cuda"))
        assert info.value.field == "train.device"
        assert "no CUDA device is visible" in str(info.value)


@pytest.mark.usefixtures("no_cuda")
def test_auto_and_cpu_train_identically_without_cuda(gaussian: SetDataset) -> None:
    results = {device: fit(MODEL, gaussian, dataclasses.replace(QUICK, device=device))
               for device in ("cpu", "auto")}
    cpu, auto = (parameters(results[d].model) for d in ("cpu", "auto"))
    assert all(torch.equal(cpu[name], auto[name]) for name in cpu)
    assert results["cpu"].history.val_loss == results["auto"].history.val_loss
    assert results["cpu"].history.train_loss == results["auto"].history.train_loss
    assert torch.equal(probabilities(results["cpu"].model, gaussian),
                       probabilities(results["auto"].model, gaussian))
    ensembles = {device: fit_ensemble(MODEL, gaussian, dataclasses.replace(QUICK, device=device),
                                      n_members=2) for device in ("cpu", "auto")}
    for one, other in zip(ensembles["cpu"].ensemble.members(),
                          ensembles["auto"].ensemble.members(), strict=True):
        one_state, other_state = parameters(one), parameters(other)
        assert all(torch.equal(one_state[name], other_state[name]) for name in one_state)
        assert torch.equal(probabilities(one, gaussian), probabilities(other, gaussian))
    assert [h.val_loss for h in ensembles["cpu"].histories] == \
        [h.val_loss for h in ensembles["auto"].histories]


def test_trained_models_live_on_the_resolved_device(gaussian: SetDataset) -> None:
    device = resolve_device(QUICK.device)
    model = fit(MODEL, gaussian, QUICK).model
    assert {p.device for p in model.parameters()} == {device}
    assert probabilities(model, gaussian).device == device
    ensemble = fit_ensemble(MODEL, gaussian, QUICK, n_members=2).ensemble
    assert {p.device for p in ensemble.parameters()} == {device}
    batch = collate(list(gaussian.test)).to(device)
    with torch.no_grad():
        assert ensemble.predict_proba(batch.x, batch.mask).device == device


# --- data moved with the model -----------------------------------------------------------------

def test_batch_to_moves_every_tensor(gaussian: SetDataset) -> None:
    batch = collate(list(gaussian.test), pad_to=40)
    moved = batch.to(META, non_blocking=True)
    assert len(moved.tensors()) == len(dataclasses.fields(batch))
    for field, before, after in zip(dataclasses.fields(batch), batch.tensors(), moved.tensors(),
                                    strict=True):
        assert after.device == META, field.name
        assert (after.shape, after.dtype) == (before.shape, before.dtype), field.name
    back = batch.to("cpu")
    assert all(torch.equal(a, b) for a, b in zip(batch.tensors(), back.tensors(), strict=True))


@pytest.mark.parametrize("pooling", POOLINGS.names())
def test_model_and_batch_on_another_device_give_outputs_there(pooling: str,
                                                              gaussian: SetDataset) -> None:
    info = InputInfo.from_dataset(gaussian)
    batch = collate(list(gaussian.test))
    model = build_model(ModelSpec(pooling=pooling, embed_dim=16), info, seed=0).eval()
    with torch.no_grad():
        on_cpu = model(batch.x, batch.mask)
        on_meta = model.to(META)(*batch.to(META).tensors()[:2])
        ensemble = Ensemble([build_model(ModelSpec(pooling=pooling, embed_dim=16), info, seed=s)
                             for s in (0, 1)]).eval().to(META)
        stacked = ensemble(batch.to(META).x, batch.to(META).mask)
    for name, reference in on_cpu._asdict().items():
        value, together = getattr(on_meta, name), getattr(stacked, name)
        if reference is None:
            assert value is None and together is None, name
            continue
        pairs = zip(reference, value, together, strict=True) if isinstance(reference, tuple) \
            else [(reference, value, together)]
        for ref, single, member_stack in pairs:
            assert single.device == META and single.shape == ref.shape, name
            assert member_stack.device == META and member_stack.shape == (2, *ref.shape), name


def test_padded_split_and_eval_chunks_move_once(gaussian: SetDataset) -> None:
    padded = PaddedSplit.from_split(gaussian.train)
    moved = padded.to(META)
    assert moved.device == META and moved.sizes is padded.sizes  # sizes stay on the host
    index = np.array([[3, 17, 42], [8, 1, 60]])
    x, mask, labels = moved.batch(index, to_device(torch.from_numpy(index), META))
    n = int(gaussian.train.sizes[index].max())
    assert x.device == mask.device == labels.device == META
    assert x.shape == (2, 3, n, 8) and mask.shape == (2, 3, n) and labels.shape == (2, 3)
    x_cpu, _, _ = padded.batch(index)  # rows built from the index when not given
    assert x_cpu.shape == x.shape and x_cpu.device == torch.device("cpu")
    chunks = eval_chunks(gaussian.val, 16, META)
    assert len(chunks) == 3
    assert all(t.device == META for chunk in chunks for t in chunk)
    assert sum(len(labels) for _, _, labels in chunks) == len(gaussian.val)


def test_chunked_pooling_runs_on_the_models_device(gaussian: SetDataset) -> None:
    model = build_model(MODEL, InputInfo.from_dataset(gaussian), seed=0).eval()
    bag = gaussian.test[0].instances.astype(np.float32)
    on_cpu = attention_pool_large(model, bag, chunk_size=4)
    on_meta = attention_pool_large(model.to(META), bag, chunk_size=4)  # host bag, meta model
    for name, reference in on_cpu._asdict().items():
        if reference is not None:
            value = getattr(on_meta, name)
            assert value.device == META and value.shape == reference.shape, name


def test_checkpoints_load_onto_a_device(gaussian: SetDataset, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    ensemble = Ensemble([build_model(MODEL, InputInfo.from_dataset(gaussian), seed=s)
                         for s in (0, 1)], seeds=[0, 1]).eval()
    model_path = save_model(ensemble.members()[0], tmp_path / "model.pt")
    ensemble_path = save_ensemble(ensemble, tmp_path / "ensemble.pt")
    assert device_of(load_model(model_path)) == torch.device("cpu")
    assert device_of(load_model(model_path, map_location="cpu")) == torch.device("cpu")
    assert {p.device for p in load_model(model_path, map_location=META).parameters()} == {META}
    loaded = load_ensemble(ensemble_path, map_location=META)
    assert {p.device for m in loaded.members() for p in m.parameters()} == {META}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SpecError) as info:
        load_model(model_path, map_location="cuda")
    assert info.value.field == "map_location"
    with pytest.raises(SpecError):
        load_ensemble(ensemble_path, map_location=3)  # type: ignore[arg-type]
