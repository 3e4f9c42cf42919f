"""Declared constraints for spec dataclasses and config tables, and the one engine that checks them."""

from attnsets.spec.constraints import (
    Anything,
    Constraint,
    ErrorCollector,
    InstanceOf,
    Interval,
    Options,
    Registered,
    SequenceOf,
    TableOf,
    Text,
    check_declared,
    constrained,
    declarations,
    declared_errors,
    is_int,
    is_real,
    or_none,
    table_errors,
    validate,
)

__all__ = ["Anything", "Constraint", "ErrorCollector", "InstanceOf", "Interval", "Options",
           "Registered", "SequenceOf", "TableOf", "Text", "check_declared", "constrained",
           "declarations", "declared_errors", "is_int", "is_real", "or_none", "table_errors",
           "validate"]
