"""Errors raised on bad user input: each names the field, the bad value and what is allowed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class SpecError(ValueError):
    """An impossible or unknown specification, raised before any work or file is written.

    `field` is a dotted path such as ``rule.key`` or ``bags.train``.
    """

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}: got {value!r}; allowed: {allowed}")

    def with_prefix(self, prefix: str) -> SpecError:
        """The same error with its field nested under `prefix` (e.g. ``pool`` + ``dim``)."""
        field = f"{prefix}.{self.field}" if prefix else self.field
        return SpecError(field, self.value, self.allowed)


class SpecErrors(ValueError):
    """Several spec errors reported at once."""

    def __init__(self, errors: Iterable[SpecError]) -> None:
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"{len(self.errors)} problem(s) in the spec:\n{lines}")


class DataFormatError(ValueError):
    """A saved file that is damaged, foreign, or of an unsupported format version."""


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the run stopped instead of returning a broken model."""


class TooLargeError(SpecError):
    """A job whose estimated memory exceeds the limit, refused before anything is allocated.

    `needed` and `limit` are bytes (see `attnsets.memory`)."""

    def __init__(self, field: str, value: Any, allowed: str, needed: int, limit: int) -> None:
        super().__init__(field, value, allowed)
        self.needed = needed
        self.limit = limit

    def with_prefix(self, prefix: str) -> TooLargeError:
        field = f"{prefix}.{self.field}" if prefix else self.field
        return TooLargeError(field, self.value, self.allowed, self.needed, self.limit)
