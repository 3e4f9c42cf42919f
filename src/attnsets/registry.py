"""Name -> factory registries: users add datasets, models and explainers without editing ours."""

from __future__ import annotations

import dataclasses
import difflib
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
        #: name prefix -> what to install for names under it (an extra that is missing).
        self._reserved: dict[str, str] = {}

    def reserve(self, prefix: str, hint: str) -> None:
        """Names starting with `prefix` belong to a plugin that could not register them (its
        extra is not installed): an unknown name under it gets `hint` instead of a list."""
        self._reserved[prefix] = hint

    def unknown(self, name: Any, field: str | None = None) -> SpecError:
        """The SpecError for a name not registered here: what to install when a missing
        extra owns the name, else the registered names and the closest ones (did you mean)."""
        text = str(name)
        for prefix, hint in self._reserved.items():
            if text.startswith(prefix) and name not in self._items:
                return SpecError(field or self.kind, name, hint)
        allowed = f"one of {self.names()}"
        close = difflib.get_close_matches(text, self.names(), n=3, cutoff=0.6)
        if close:
            allowed += "; did you mean " + " or ".join(repr(c) for c in close) + "?"
        return SpecError(field or self.kind, name, allowed)

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
        if name not in self:
            raise self.unknown(name, field)
        return self._items[name]

    def build(self, name: str, params: Mapping[str, object] | None = None,
              field: str | None = None) -> Any:
        """Instantiate `name` with `params`, turning bad parameters into a SpecError."""
        field = field or self.kind
        factory: Any = self.get(name, f"{field}.name")
        return build_dataclass(factory, params or {}, field)

    def names(self) -> list[str]:
        load_entry_point_plugins()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        # Built-in names never wait for the plugins; an unknown one loads them first.
        if name in self._items:
            return True
        load_entry_point_plugins()
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


#: The entry-point group in which installed packages declare their plugins: each entry point
#: names a module (imported) or a callable (imported, then called with no arguments) that
#: registers pools, rules, encoders, poolings or explainers.
ENTRY_POINT_GROUP = "attnsets.plugins"

#: "1" loads no entry-point plugins (built-ins and --plugin modules only), like pytest's
#: PYTEST_DISABLE_PLUGIN_AUTOLOAD; the test suite sets it so its registries hold the built-ins.
DISABLE_AUTOLOAD_ENV = "ATTNSETS_DISABLE_PLUGIN_AUTOLOAD"

#: attnsets' own entry points, as pyproject.toml declares them; loaded also when the installed
#: metadata predates them (a source checkout on PYTHONPATH). A test keeps the two equal.
OWN_PLUGINS: dict[str, str] = {"torchmil": "attnsets.integrations:torchmil_plugin"}


class PluginWarning(UserWarning):
    """An installed plugin failed to load; its names are missing, everything else works."""


@dataclasses.dataclass(frozen=True)
class PluginFailure:
    """One entry point that raised while loading."""

    name: str
    value: str
    distribution: str
    error: str

    def __str__(self) -> str:
        return (f"plugin entry point {self.name!r} = {self.value!r} (distribution "
                f"{self.distribution}, group {ENTRY_POINT_GROUP!r}) failed to load and was "
                f"skipped: {self.error}")


_AUTOLOAD = {"done": False}
#: Every entry point that failed to load in this process, in order.
PLUGIN_FAILURES: list[PluginFailure] = []


def _entry_points() -> list[tuple[str, str, str, Callable[[], Any]]]:
    """(name, value, distribution, load) for the group's installed entry points and our own,
    each value once."""
    from importlib import metadata

    found = [(ep.name, ep.value, ep.dist.name if ep.dist is not None else "?", ep.load)
             for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)]
    values = {value for _, value, _, _ in found}
    found += [(name, value, "attnsets", metadata.EntryPoint(name, value, ENTRY_POINT_GROUP).load)
              for name, value in OWN_PLUGINS.items() if value not in values]
    return found


def load_entry_point_plugins(force: bool = False) -> list[str]:
    """Load every `attnsets.plugins` entry point once per process (registries call this the
    first time a name is missing or the names are listed; `force` loads them again). A plugin
    that raises is skipped with a PluginWarning naming it (recorded in PLUGIN_FAILURES).
    Returns the entry points loaded by this call."""
    import os
    import types
    import warnings

    if (_AUTOLOAD["done"] and not force) or os.environ.get(DISABLE_AUTOLOAD_ENV, "") not in ("", "0"):
        return []
    # Set first: a plugin that looks a name up while it registers must not load them again.
    _AUTOLOAD["done"] = True
    loaded = []
    for name, value, distribution, load in _entry_points():
        try:
            target = load()
            if callable(target) and not isinstance(target, types.ModuleType):
                target()
        except Exception as err:  # noqa: BLE001 - a third party's bug must not stop ours
            failure = PluginFailure(name, value, distribution, f"{type(err).__name__}: {err}")
            PLUGIN_FAILURES.append(failure)
            warnings.warn(str(failure), PluginWarning, stacklevel=3)
            continue
        loaded.append(name)
    return loaded
