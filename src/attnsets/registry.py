"""Name -> factory registries: users add datasets, models and explainers without editing ours."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from attnsets.errors import SpecError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of factories (usually dataclasses whose fields are their parameters).

    >>> POOLS = Registry("modality")
    >>> @POOLS.register("gaussian")
    ... class GaussianPool: ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, *, overwrite: bool = False) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items and not overwrite:
                raise ValueError(f"{self.kind} {name!r} is already registered; pass overwrite=True")
            self._items[name] = obj
            return obj

        return decorator

    def unregister(self, name: str) -> None:
        """Remove `name` (e.g. a plugin registered only for a test)."""
        self.get(name)
        del self._items[name]

    def get(self, name: str, field: str | None = None) -> T:
        if name not in self._items:
            raise SpecError(field or self.kind, name, f"one of {sorted(self._items)}")
        return self._items[name]

    def build(self, name: str, params: Mapping[str, object] | None = None,
              field: str | None = None) -> Any:
        """Instantiate `name` with `params`, turning bad parameters into a SpecError."""
        field = field or self.kind
        factory: Any = self.get(name, f"{field}.name")
        return build_dataclass(factory, params or {}, field)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._items[n]) for n in self.names()]


def build_dataclass(factory: Any, params: Mapping[str, object], field: str) -> Any:
    """Call a dataclass factory; bad names or values raise SpecError at `field.param`."""
    if dataclasses.is_dataclass(factory):
        allowed = [f.name for f in dataclasses.fields(factory) if f.init]
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise SpecError(f"{field}.{unknown[0]}" if field else unknown[0], params[unknown[0]],
                            f"parameters {allowed}")
    try:
        return factory(**params)
    except SpecError as err:
        raise err.with_prefix(field) from None
    except TypeError as err:
        raise SpecError(field, params, f"valid parameters ({err})") from None


def describe_parameters(factory: Any) -> list[tuple[str, str, str]]:
    """(name, type, default) for each parameter of a dataclass factory, for `attnsets datasets`."""
    rows = []
    for f in dataclasses.fields(factory):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        rows.append((f.name, str(type_name), default))
    return rows


#: Comma-separated modules imported by the CLI and by every study worker process, so plugins
#: registered at import time exist wherever a cell runs (spawned workers inherit the variable).
PLUGINS_ENV = "ATTNSETS_PLUGINS"


def load_plugins(modules: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """Import plugin modules (dotted names on sys.path, or paths to .py files) plus those listed
    in $ATTNSETS_PLUGINS; record them in $ATTNSETS_PLUGINS for worker processes. Returns the
    modules loaded. An unimportable module raises SpecError naming it."""
    import importlib
    import importlib.util
    import os
    import sys
    from pathlib import Path

    names = [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]
    names += [m for m in (modules or []) if m not in names]
    for name in names:
        try:
            if name.endswith(".py"):
                path = Path(name).resolve()
                module_name = f"attnsets_plugin_{path.stem}"
                if module_name in sys.modules:
                    continue
                spec = importlib.util.spec_from_file_location(module_name, path)
                if spec is None or spec.loader is None or not path.is_file():
                    raise ImportError(f"no such file: {path}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                spec.loader.exec_module(module)
            else:
                importlib.import_module(name)
        except ImportError as err:
            raise SpecError("plugin", name, f"an importable module or .py file ({err})") from None
    if names:
        os.environ[PLUGINS_ENV] = ",".join(str(Path(n).resolve()) if n.endswith(".py") else n
                                           for n in names)
    return names
