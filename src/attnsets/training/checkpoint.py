"""Checkpoints: one file holding the weights and, as a JSON string, the ModelSpec + InputInfo.

The file is a torch.save'd dict of plain values and tensors, so it loads with
``torch.load(weights_only=True)`` (no pickled code runs). Loading rebuilds the model from the
saved spec and checks every weight's name and shape before copying. Writes are atomic: a temp
file in the same directory, then os.replace. Weights are stored on the CPU whatever device the
model trained on; `map_location` places a loaded model on a device.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from attnsets.device import resolve_device
from attnsets.errors import DataFormatError, SpecError
from attnsets.models.base import InputInfo, ModelSpec, SetModel, build_model
from attnsets.registry import build_dataclass
from attnsets.training.ensemble import Ensemble

FORMAT = "attnsets-checkpoint"
VERSION = 1
KINDS = ("model", "ensemble")


def save_model(model: SetModel, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write `model` (built by build_model, so it carries its spec and info) to `path`.
    metadata: optional JSON-serialisable facts (e.g. a TrainSpec dict, the history)."""
    spec, info = _spec_and_info(model, "model")
    state = {name: value.detach().cpu().clone() for name, value in model.state_dict().items()}
    return _write(path, "model", spec, info, state, {"metadata": metadata or {}})


def save_ensemble(ensemble: Ensemble, path: str | Path,
                  metadata: dict[str, Any] | None = None) -> Path:
    """Write an Ensemble; weights are stored stacked, name -> (K, ...)."""
    if not isinstance(ensemble, Ensemble):
        raise SpecError("ensemble", type(ensemble).__name__, "an Ensemble")
    spec, info = _spec_and_info(ensemble.members()[0], "ensemble")
    states = [m.state_dict() for m in ensemble.members()]
    state = {name: torch.stack([s[name].detach().cpu() for s in states]) for name in states[0]}
    extra = {"metadata": metadata or {}, "n_members": len(ensemble), "seeds": ensemble.seeds}
    return _write(path, "ensemble", spec, info, state, extra)


MapLocation = str | torch.device


def load_model(path: str | Path, expected_spec: ModelSpec | None = None,
               expected_info: InputInfo | None = None,
               map_location: MapLocation = "cpu") -> SetModel:
    """Rebuild a SetModel from a checkpoint written by save_model, in eval mode.
    expected_*: raise DataFormatError unless the file holds this spec / input info.
    map_location: the device the model is placed on, a torch.device or a device string
    ("auto", "cpu", "cuda", "cuda:N"; SpecError if this machine lacks it)."""
    device = _map_location(map_location)
    kind, meta, state = _read(path)
    if kind != "model":
        raise DataFormatError(f"{path}: holds an {kind}, not a single model; use load_ensemble")
    spec, info = _check_expected(path, meta, expected_spec, expected_info)
    model = _rebuild(path, spec, info)
    _check_state(path, spec, {n: tuple(t.shape) for n, t in model.state_dict().items()}, state)
    model.load_state_dict(state)
    model.eval()
    return model.to(device)


def load_ensemble(path: str | Path, expected_spec: ModelSpec | None = None,
                  expected_info: InputInfo | None = None,
                  map_location: MapLocation = "cpu") -> Ensemble:
    """Rebuild an Ensemble from a checkpoint written by save_ensemble, in eval mode, with every
    member on `map_location` (as for load_model)."""
    device = _map_location(map_location)
    kind, meta, state = _read(path)
    if kind != "ensemble":
        raise DataFormatError(f"{path}: holds a single {kind}, not an ensemble; use load_model")
    spec, info = _check_expected(path, meta, expected_spec, expected_info)
    n_members = meta.get("n_members")
    if not isinstance(n_members, int) or n_members < 1:
        raise DataFormatError(f"{path}: damaged ensemble checkpoint (n_members={n_members!r})")
    members = [_rebuild(path, spec, info) for _ in range(n_members)]
    expected = {n: (n_members, *t.shape) for n, t in members[0].state_dict().items()}
    _check_state(path, spec, expected, state)
    for k, member in enumerate(members):
        member.load_state_dict({name: value[k] for name, value in state.items()})
    seeds = meta.get("seeds")
    ensemble = Ensemble(members, seeds if isinstance(seeds, list) else None)
    ensemble.eval()
    return ensemble.to(device)


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The JSON part of a checkpoint: kind, model_spec, input_info, metadata (and for an
    ensemble n_members, seeds)."""
    kind, meta, _ = _read(path)
    return {"kind": kind, **meta}


def _map_location(value: MapLocation) -> torch.device:
    if isinstance(value, torch.device):
        return value
    if not isinstance(value, str):
        raise SpecError("map_location", value, "a torch.device or a device string")
    return resolve_device(value, "map_location")


def _spec_and_info(model: Any, field: str) -> tuple[ModelSpec, InputInfo]:
    spec, info = getattr(model, "spec", None), getattr(model, "info", None)
    if not isinstance(model, SetModel) or not isinstance(spec, ModelSpec) \
            or not isinstance(info, InputInfo):
        raise SpecError(field, type(model).__name__,
                        "a SetModel made by build_model (it carries its ModelSpec and InputInfo)")
    return spec, info


def _write(path: str | Path, kind: str, spec: ModelSpec, info: InputInfo,
           state: dict[str, torch.Tensor], extra: dict[str, Any]) -> Path:
    path = Path(path)
    meta = {"model_spec": spec.to_dict(), "input_info": asdict(info), **extra}
    try:
        meta_json = json.dumps(meta, sort_keys=True)
    except TypeError as err:
        raise SpecError("metadata", extra.get("metadata"), f"JSON-serialisable values ({err})") \
            from None
    payload = {"format": FORMAT, "version": VERSION, "kind": kind, "meta": meta_json,
               "state": state}
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    return path


def _read(path: str | Path) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    path = Path(path)
    if not path.is_file():
        raise SpecError("checkpoint", str(path), "an existing checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise DataFormatError(f"{path}: not a readable attnsets checkpoint (damaged or foreign "
                              f"file): {type(err).__name__}: {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DataFormatError(f"{path}: not an attnsets checkpoint (no {FORMAT!r} marker)")
    if payload.get("version") != VERSION:
        raise DataFormatError(f"{path}: checkpoint format version {payload.get('version')!r} is "
                              f"not supported (this attnsets reads version {VERSION})")
    kind, meta_json, state = payload.get("kind"), payload.get("meta"), payload.get("state")
    if kind not in KINDS or not isinstance(meta_json, str) or not isinstance(state, dict) \
            or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise DataFormatError(f"{path}: damaged checkpoint (kind, meta or state missing)")
    try:
        meta = json.loads(meta_json)
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}: damaged checkpoint metadata ({err})") from None
    if not isinstance(meta, dict):
        raise DataFormatError(f"{path}: damaged checkpoint metadata (not a JSON object)")
    return kind, meta, state


def _parse_spec(path: str | Path, meta: dict[str, Any]) -> tuple[ModelSpec, InputInfo]:
    raw_spec, raw_info = meta.get("model_spec"), meta.get("input_info")
    if not isinstance(raw_spec, dict) or not isinstance(raw_info, dict):
        raise DataFormatError(f"{path}: damaged checkpoint (model_spec / input_info missing)")
    try:
        spec = build_dataclass(ModelSpec, raw_spec, "model")
        info = InputInfo(kind=str(raw_info["kind"]),
                         instance_shape=tuple(int(d) for d in raw_info["instance_shape"]),
                         n_classes=int(raw_info["n_classes"]),
                         vocab_size=int(raw_info.get("vocab_size", 0)))
    except (SpecError, KeyError, TypeError, ValueError) as err:
        raise DataFormatError(f"{path}: damaged checkpoint spec ({err})") from None
    return spec, info


def _check_expected(path: str | Path, meta: dict[str, Any], expected_spec: ModelSpec | None,
                    expected_info: InputInfo | None) -> tuple[ModelSpec, InputInfo]:
    spec, info = _parse_spec(path, meta)
    if expected_spec is not None and _normalised(expected_spec.to_dict()) != \
            _normalised(spec.to_dict()):
        raise DataFormatError(f"{path}: holds model {spec.to_dict()}, "
                              f"expected {expected_spec.to_dict()}")
    if expected_info is not None and expected_info != info:
        raise DataFormatError(f"{path}: holds a model for input {info}, expected {expected_info}")
    return spec, info


def _normalised(value: Any) -> Any:
    """Tuples and lists compare equal once a spec has been through JSON."""
    return json.loads(json.dumps(value, sort_keys=True))


def _rebuild(path: str | Path, spec: ModelSpec, info: InputInfo) -> SetModel:
    try:
        return build_model(spec, info)
    except SpecError as err:
        raise DataFormatError(f"{path}: cannot rebuild the saved model ({err})") from None


def _check_state(path: str | Path, spec: ModelSpec, expected: dict[str, tuple[int, ...]],
                 state: dict[str, torch.Tensor]) -> None:
    """Every weight the rebuilt model has must be in the file with the same shape, and no more."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{name} {tuple(state[name].shape)} != {shape}" for name, shape in expected.items()
             if name in state and tuple(state[name].shape) != shape]
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:5]}" if missing else "",
                 f"unexpected {unexpected[:5]}" if unexpected else "",
                 f"shape mismatch {wrong[:5]}" if wrong else ""]
        detail = "; ".join(p for p in parts if p)
        raise DataFormatError(f"{path}: weights do not match the saved model spec "
                              f"(pooling={spec.pooling!r}, encoder={spec.encoder!r}, "
                              f"embed_dim={spec.embed_dim}): {detail}")
