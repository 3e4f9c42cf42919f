"""Canonical encoding of the spec dataclasses (RunSpec and every spec inside it).

Three forms of one spec:

- the typed object (a frozen dataclass, validated when built);
- `to_dict(spec)`: the canonical JSON form. Every field is present (defaults filled),
  shorthands expanded (``pool = "gaussian"`` reads as ``{name = "gaussian"}``), tuples as
  lists, mapping keys sorted; a component's parameters as given.
  `from_dict(cls, to_dict(spec))` builds an equal spec;
- `identity_dict(spec)`: what a spec's identity hashes. The canonical form without every value
  equal to its declared default (a registered pool's, rule's, pooling's or encoder's parameter
  defaults included) and without the fields that do not change what is computed
  (declared with ``metadata={"identity": False}``, e.g. the device). A new field added with a
  default therefore keeps every existing id; changing a default's *value* changes what old
  records mean and needs a store schema bump and a migration (docs/records.md).

`stable_hash` is the sha256 of the sorted-key JSON of a value: the same on every machine and
Python version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias, TypeVar

import numpy as np

from attnsets.errors import SpecError

JSONValue: TypeAlias = "None | bool | int | float | str | list[JSONValue] | dict[str, JSONValue]"
JSONDict: TypeAlias = "dict[str, JSONValue]"
T = TypeVar("T")

#: Parameters of a registered factory that the builder passes, never the config.
_INJECTED = frozenset({"info", "out_dim", "in_dim", "n_classes", "self"})
_SCALARS = (type(None), bool, int, float, str)


def _plain(value: object) -> JSONValue:
    """A parameter value as plain JSON: tuples as lists, numpy scalars as numbers, keys sorted."""
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, _SCALARS):
        return value  # type: ignore[return-value]
    if isinstance(value, Mapping):
        return {str(k): _plain(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, Sequence):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    raise SpecError("spec", repr(value), "a JSON value (number, string, list, table)")


def _is_plain(value: object) -> bool:
    if isinstance(value, _SCALARS):
        return True
    if isinstance(value, tuple | list):
        return all(_is_plain(v) for v in value)
    return False


def declared_defaults(factory: object) -> dict[str, JSONValue]:
    """The parameters a registered factory (a dataclass or a function) declares with a plain
    default; the ones the builder injects (info, in_dim, ...) are left out."""
    try:
        parameters = inspect.signature(factory).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return {}
    return {name: _plain(p.default) for name, p in parameters.items()
            if name not in _INJECTED and p.default is not inspect.Parameter.empty
            and _is_plain(p.default)}


def _field_default(f: dataclasses.Field[Any]) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _component_defaults(spec: object) -> dict[str, JSONValue]:
    """The declared defaults of the registered components a spec names (pool, rule, pooling,
    encoder), keyed by the field that holds their parameters."""
    from attnsets.data.pools import POOLS
    from attnsets.data.rules.base import RULES
    from attnsets.data.spec import DatasetSpec
    from attnsets.models import ENCODERS, POOLINGS, ModelSpec

    def of(registry: Any, name: str | None) -> dict[str, JSONValue]:
        return declared_defaults(registry.get(name)) if name and name in registry else {}

    if isinstance(spec, DatasetSpec):
        return {"pool": of(POOLS, spec.pool.name), "rule": of(RULES, spec.rule.name)}
    if isinstance(spec, ModelSpec):
        return {"pooling_params": of(POOLINGS, spec.pooling),
                "encoder_params": of(ENCODERS, spec.encoder)}
    return {}


def to_dict(spec: object) -> JSONDict:
    """The canonical JSON form of a spec dataclass: every field, defaults filled."""
    from attnsets.data.spec import ComponentSpec

    if isinstance(spec, ComponentSpec):
        return {"name": spec.name, **_plain(spec.params)}  # type: ignore[dict-item]
    if not dataclasses.is_dataclass(spec) or isinstance(spec, type):
        raise SpecError("spec", type(spec).__name__, "a spec dataclass (RunSpec, DatasetSpec, ...)")
    out: JSONDict = {}
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if callable(value) and not dataclasses.is_dataclass(value):
            raise SpecError(f.name, repr(value), "a spec (a builder function has no canonical "
                                                 "form and cannot be stored)")
        out[f.name] = _plain(value)
    return out


def _same(value: JSONValue, default: JSONValue) -> bool:
    """Equal as the spec would read them (16 == 16.0), but True is not 1."""
    return isinstance(value, bool) == isinstance(default, bool) and value == default


def _without_defaults(value: JSONDict, defaults: Mapping[str, JSONValue]) -> JSONDict:
    return {k: v for k, v in value.items() if k not in defaults or not _same(v, defaults[k])}


def _default_form(default: object) -> JSONValue:
    """A field default as identity_dict writes it: {} for a nested spec (its identity at its
    defaults), the plain value otherwise."""
    return {} if dataclasses.is_dataclass(default) else _plain(default)


def identity_dict(spec: object) -> JSONDict:
    """What identifies a spec: `to_dict` without values at their declared defaults and without
    fields declared ``metadata={"identity": False}``; floats that are whole written as floats
    where the default is a float (``lr = 1`` and ``lr = 1.0`` are one spec)."""
    from attnsets.data.spec import ComponentSpec

    if isinstance(spec, ComponentSpec):
        return {"name": spec.name, **_plain(spec.params)}  # type: ignore[dict-item]
    components = _component_defaults(spec)
    canonical = to_dict(spec)
    out: JSONDict = {}
    for f in dataclasses.fields(spec):  # type: ignore[arg-type]
        if not f.metadata.get("identity", True):
            continue
        value, default = getattr(spec, f.name), _field_default(f)
        if default is not dataclasses.MISSING and value == default:
            continue
        encoded = canonical[f.name]
        if f.name in components and isinstance(encoded, dict):
            encoded = _without_defaults(encoded, components[f.name])
        elif dataclasses.is_dataclass(value) and not isinstance(value, ComponentSpec):
            encoded = identity_dict(value)
        if isinstance(default, float) and isinstance(encoded, int) \
                and not isinstance(encoded, bool):
            encoded = float(encoded)
        if default is not dataclasses.MISSING and _same(encoded, _default_form(default)):
            continue  # at its default once the parts at their defaults are left out
        out[f.name] = encoded
    return out


def stable_hash(value: JSONValue, length: int = 16) -> str:
    """Hex sha256 of the sorted-key JSON of `value` (first `length` characters)."""
    payload = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


# -- decoding ---------------------------------------------------------------------------------

def _table(data: object, path: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise SpecError(path, data, "a table")
    return dict(data)


def _dataset(data: object, path: str) -> object:
    """The structure only: a stored spec reads back without its pool's data files."""
    from attnsets.data.spec import dataset_spec_from_dict

    return dataset_spec_from_dict(_table(data, path), path, check_data=False)


def _model(data: object, path: str) -> object:
    from attnsets.models import ModelSpec
    from attnsets.registry import build_dataclass

    return build_dataclass(ModelSpec, _table(data, path), path)


def _training(data: object, path: str) -> object:
    from attnsets.training import TrainSpec

    return TrainSpec.from_dict(_table(data, path), path)


def _criteria(data: object, path: str) -> object:
    from attnsets.metrics import SilentFailureCriteria
    from attnsets.registry import build_dataclass

    return build_dataclass(SilentFailureCriteria, _table(data, path), path)


def _assess(data: object, path: str) -> object:
    from attnsets.assess import AssessSpec

    table = _table(data, path)
    criteria = _criteria(table.pop("criteria", {}), f"{path}.criteria")
    return AssessSpec.from_dict(table, path, criteria)  # type: ignore[arg-type]


def _outputs(data: object, path: str) -> object:
    from attnsets.registry import build_dataclass
    from attnsets.run import OutputSpec

    return build_dataclass(OutputSpec, _table(data, path), path)


def _run(data: object, path: str) -> object:
    from attnsets.run import RunSpec

    table = _table(data, path)
    nested = {"dataset": _dataset, "model": _model, "training": _training, "assess": _assess,
              "outputs": _outputs}
    known = {"seeds", *nested}
    unknown = sorted(set(table) - known)
    if unknown:
        raise SpecError(f"{path}.{unknown[0]}", table[unknown[0]], f"keys {sorted(known)}")
    parts = {name: None if table.get(name) is None else decode(table[name], f"{path}.{name}")
             for name, decode in nested.items() if name in table}
    if "model" not in parts:
        raise SpecError(f"{path}.model", None, "a model table")
    return RunSpec(dataset=parts.get("dataset"), model=parts["model"],  # type: ignore[arg-type]
                   training=parts.get("training") or _training({}, f"{path}.training"),
                   seeds=tuple(table.get("seeds", (0,))),
                   assess=parts.get("assess"), outputs=parts.get("outputs"))  # type: ignore[arg-type]


def _decoders() -> dict[type, Callable[[object, str], object]]:
    from attnsets.assess import AssessSpec
    from attnsets.data.spec import DatasetSpec
    from attnsets.metrics import SilentFailureCriteria
    from attnsets.models import ModelSpec
    from attnsets.run import OutputSpec, RunSpec
    from attnsets.training import TrainSpec

    return {RunSpec: _run, DatasetSpec: _dataset, ModelSpec: _model, TrainSpec: _training,
            AssessSpec: _assess, SilentFailureCriteria: _criteria, OutputSpec: _outputs}


def from_dict(cls: type[T], data: Mapping[str, JSONValue], path: str = "") -> T:
    """The spec of type `cls` from its canonical form (or any spelling its config table
    accepts); bad values raise SpecError at `path.field`."""
    decoders = _decoders()
    if cls not in decoders:
        raise SpecError("spec", cls.__name__, f"one of {sorted(c.__name__ for c in decoders)}")
    return decoders[cls](data, path or cls.__name__.removesuffix("Spec").lower())  # type: ignore[return-value]
