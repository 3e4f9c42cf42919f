"""Each setting declares its constraint once; one engine checks config tables against them.

A spec dataclass declares a field's constraint beside its default::

    @dataclass(frozen=True)
    class Criteria:
        min_score: float = constrained(Interval(float, 0, 1), default=0.9)

        def __post_init__(self) -> None:
            check_declared(self)  # raises the first problem, as a SpecError naming the field

and a config table becomes a spec with `validate(Criteria, table, "thresholds")`, which reports
EVERY problem at once (unknown keys, missing required keys, each declared constraint, then the
class's own cross-field checks) as SpecErrors whose fields carry the path in the file
(``thresholds.min_score``). `ErrorCollector` builds several specs and keeps every error.
(scikit-learn's `_param_validation` is the model; unlike it, nothing stops at the first error.)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import numpy as np

from attnsets.errors import SpecError, SpecErrors

T = TypeVar("T")

#: The dataclass field metadata key that holds a field's constraint.
CONSTRAINT = "attnsets.constraint"


def is_int(value: object) -> bool:
    """An integer (Python or NumPy) that is not a bool (``True`` is an int to Python)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """A real number (Python or NumPy int or float) that is not a bool."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _join(path: str, key: str) -> str:
    if not path:
        return key
    return f"{path}{key}" if key.startswith("[") else f"{path}.{key}"


class Constraint:
    """What values a setting accepts: `accepts` decides, `describe` says it in words (the
    `allowed` of the SpecError), `errors` may look inside containers, `normalise` turns an
    accepted value into its canonical form (a list into a tuple)."""

    def accepts(self, value: object) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def errors(self, value: object, field: str) -> list[SpecError]:
        return [] if self.accepts(value) else [SpecError(field, value, self.describe())]

    def normalise(self, value: Any) -> Any:
        return value

    def require(self, value: T, field: str) -> T:
        """`value` if it is accepted, else the first problem raised as a SpecError."""
        problems = self.errors(value, field)
        if problems:
            raise problems[0]
        return value


class Interval(Constraint):
    """A number of `kind` (int: an integer, never a bool; float: any real number) within
    [low, high]; `closed` says which ends belong to it; a missing end is unbounded."""

    def __init__(self, kind: type[int] | type[float], low: float | None = None,
                 high: float | None = None, closed: Literal["both", "left", "right", "neither"]
                 = "both") -> None:
        self.kind, self.low, self.high, self.closed = kind, low, high, closed

    def accepts(self, value: object) -> bool:
        if not (is_int(value) if self.kind is int else is_real(value)):
            return False
        number = float(value)  # type: ignore[arg-type]
        if (self.low is not None or self.high is not None) and math.isnan(number):
            return False
        if self.low is not None and not (
                number >= self.low if self.closed in ("both", "left") else number > self.low):
            return False
        return self.high is None or (
            number <= self.high if self.closed in ("both", "right") else number < self.high)

    def describe(self) -> str:
        noun = "an integer" if self.kind is int else "a number"
        left = self.closed in ("both", "left")
        right = self.closed in ("both", "right")
        if self.low is not None and self.high == math.inf and not right:
            return f"a finite number {'>=' if left else '>'} {_num(self.low)}"
        if self.low is not None and self.high is not None:
            return f"{noun} in {'[' if left else '('}{_num(self.low)}, {_num(self.high)}" \
                   f"{']' if right else ')'}"
        if self.low is not None:
            return f"{noun} {'>=' if left else '>'} {_num(self.low)}"
        if self.high is not None:
            return f"{noun} {'<=' if right else '<'} {_num(self.high)}"
        return noun

    def normalise(self, value: Any) -> Any:
        return int(value) if self.kind is int else float(value)


def _num(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


class Options(Constraint):
    """One of a fixed set of values."""

    def __init__(self, values: Iterable[object]) -> None:
        self.values = tuple(values)

    def accepts(self, value: object) -> bool:
        return isinstance(value, str | int | float | bool | type(None)) and value in self.values

    def describe(self) -> str:
        return f"one of {list(self.values)}"


class Registered(Constraint):
    """A name registered in `registry` (read when checked, so plugins registered later count)."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def accepts(self, value: object) -> bool:
        return isinstance(value, str) and value in self.registry

    def describe(self) -> str:
        return f"one of {self.registry.names()}"

    def errors(self, value: object, field: str) -> list[SpecError]:
        # the registry's own message: the extra to install, or the closest names
        return [] if self.accepts(value) else [self.registry.unknown(value, field)]


class Text(Constraint):
    """A string of at least `min_length` characters."""

    def __init__(self, min_length: int = 0) -> None:
        self.min_length = min_length

    def accepts(self, value: object) -> bool:
        return isinstance(value, str) and len(value) >= self.min_length

    def describe(self) -> str:
        if self.min_length == 0:
            return "a string"
        return f"a non-empty string (at least {self.min_length} character" \
               f"{'s' if self.min_length > 1 else ''})"


class InstanceOf(Constraint):
    """An instance of `cls`."""

    def __init__(self, cls: type, description: str | None = None) -> None:
        self.cls, self.description = cls, description

    def accepts(self, value: object) -> bool:
        return isinstance(value, self.cls)

    def describe(self) -> str:
        return self.description or f"a {self.cls.__name__}"


class Anything(Constraint):
    def accepts(self, value: object) -> bool:
        return True

    def describe(self) -> str:
        return "any value"


class _OrNone(Constraint):
    def __init__(self, inner: Constraint) -> None:
        self.inner = inner

    def accepts(self, value: object) -> bool:
        return value is None or self.inner.accepts(value)

    def describe(self) -> str:
        return f"{self.inner.describe()}, or None"

    def errors(self, value: object, field: str) -> list[SpecError]:
        if value is None:
            return []
        return [SpecError(field, value, self.describe()) if e.field == field else e
                for e in self.inner.errors(value, field)]

    def normalise(self, value: Any) -> Any:
        return None if value is None else self.inner.normalise(value)


def or_none(inner: Constraint) -> Constraint:
    """`inner`, or None (None means "not set": a default decided elsewhere)."""
    return _OrNone(inner)


class SequenceOf(Constraint):
    """A list (not a string) of at least `min_length` items, each accepted by `item` (problems
    named ``field[i]``); `distinct`: no item twice. Normalised to a tuple."""

    def __init__(self, item: Constraint | None = None, min_length: int = 0,
                 distinct: bool = False) -> None:
        self.item = item or Anything()
        self.min_length, self.distinct = min_length, distinct

    def accepts(self, value: object) -> bool:
        return not self.errors(value, "")

    def describe(self) -> str:
        size = "a non-empty list" if self.min_length == 1 else (
            f"a list of at least {self.min_length}" if self.min_length else "a list")
        what = "" if isinstance(self.item, Anything) else f", each item {self.item.describe()}"
        return size + what + (", each named only once" if self.distinct else "")

    def errors(self, value: object, field: str) -> list[SpecError]:
        if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence) \
                or len(value) < self.min_length:
            return [SpecError(field, value, self.describe())]
        problems = [e for i, v in enumerate(value) for e in self.item.errors(v, f"{field}[{i}]")]
        if not problems and self.distinct and len(set(map(repr, value))) != len(value):
            problems.append(SpecError(field, list(value), self.describe()))
        return problems

    def normalise(self, value: Any) -> Any:
        return tuple(self.item.normalise(v) for v in value)


class TableOf(Constraint):
    """A table whose values are each accepted by `value` (problems named ``field.key``);
    None = any values."""

    def __init__(self, value: Constraint | None = None, description: str | None = None) -> None:
        self.value = value or Anything()
        self.description = description

    def accepts(self, value: object) -> bool:
        return not self.errors(value, "")

    def describe(self) -> str:
        if self.description:
            return self.description
        return "a table" if isinstance(self.value, Anything) else \
            f"a table of {self.value.describe()}"

    def errors(self, value: object, field: str) -> list[SpecError]:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            return [SpecError(field, value, self.describe())]
        return [e for k, v in value.items() for e in self.value.errors(v, _join(field, k))]


def constrained(constraint: Constraint, default: Any = dataclasses.MISSING, *,
                default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its constraint declared (the one declaration of the setting)."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={CONSTRAINT: constraint})


def declarations(cls: type) -> dict[str, Constraint]:
    """{field: constraint} of the declared fields of a spec dataclass."""
    return {f.name: f.metadata[CONSTRAINT] for f in dataclasses.fields(cls)
            if CONSTRAINT in f.metadata}


def declared_errors(cls: type, values: Mapping[str, object], path: str = "") -> list[SpecError]:
    """Every problem of the given field values against the fields' declared constraints."""
    return [e for name, constraint in declarations(cls).items() if name in values
            for e in constraint.errors(values[name], _join(path, name))]


def check_declared(spec: object) -> None:
    """For `__post_init__`: raise the first declared-constraint problem of `spec` as a
    SpecError, else store each declared field in its canonical form (lists become tuples)."""
    declared = declarations(type(spec))
    values = {name: getattr(spec, name) for name in declared}
    problems = declared_errors(type(spec), values)
    if problems:
        raise problems[0]
    for name, constraint in declared.items():
        object.__setattr__(spec, name, constraint.normalise(values[name]))


def table_errors(table: object, declared: Mapping[str, Constraint], path: str = "",
                 required: Collection[str] = (), what: str = "a table") -> list[SpecError]:
    """Every problem of a config `table` against `declared` {key: constraint}: not a table,
    keys not declared, required keys missing, values the constraints refuse."""
    if not isinstance(table, Mapping):
        return [SpecError(path or "config", table, what)]
    problems = [SpecError(_join(path, str(key)), table[key],
                          f"no such key here; the keys are {sorted(declared)}")
                for key in table if key not in declared]
    problems += [SpecError(_join(path, key), None, "a value (this key is required)")
                 for key in required if key not in table]
    problems += [e for key, constraint in declared.items() if key in table
                 for e in constraint.errors(table[key], _join(path, key))]
    return problems


def validate(cls: type[T], table: object, path: str = "",
             fixed: Mapping[str, object] | None = None) -> T:
    """`cls` built from a config table, or SpecErrors with every problem at once, each named
    ``path.key``: unknown keys, missing required keys, every declared constraint, then the
    class's own checks (its __post_init__). `fixed`: fields set by the caller, not the file."""
    fields = [f for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    fixed = dict(fixed or {})
    declared: dict[str, Constraint] = {f.name: f.metadata.get(CONSTRAINT, Anything())
                                       for f in fields if f.name not in fixed}
    required = [f.name for f in fields if f.name not in fixed
                and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    problems = table_errors(table, declared, path, required, f"a table of {sorted(declared)}")
    if problems:
        raise SpecErrors(problems)
    assert isinstance(table, Mapping)
    try:
        return cls(**table, **fixed)
    except SpecErrors as err:
        raise SpecErrors([e.with_prefix(path) for e in err.errors]) from None
    except SpecError as err:
        raise SpecErrors([err.with_prefix(path)]) from None
    except TypeError as err:  # a value of a type an undeclared field's own check did not expect
        raise SpecErrors([SpecError(path or cls.__name__, dict(table),
                                    f"valid parameters ({err})")]) from None


class ErrorCollector:
    """Build everything, keep every error: `attempt(path, build)` returns build() or None, its
    SpecError(s) kept with `path` prepended; `raise_all()` raises them together (each once)."""

    def __init__(self) -> None:
        self.errors: list[SpecError] = []

    def attempt(self, path: str, build: Callable[[], T]) -> T | None:
        try:
            return build()
        except SpecErrors as err:
            self.extend(err.errors, path)
        except SpecError as err:
            self.extend([err], path)
        return None

    def extend(self, errors: Iterable[SpecError], prefix: str = "") -> None:
        self.errors += [e.with_prefix(prefix) for e in errors]

    def __bool__(self) -> bool:
        return bool(self.errors)

    def unique(self) -> list[SpecError]:
        return list({str(e): e for e in self.errors}.values())

    def raise_all(self) -> None:
        if self.errors:
            raise SpecErrors(self.unique())
