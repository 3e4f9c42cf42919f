"""Spec machinery: declared constraints and the one engine that checks them
(`attnsets.spec.constraints`); the canonical form, one `to_dict` / `from_dict` and a stable hash
(`attnsets.spec.codec`)."""

from attnsets.spec.codec import JSONValue, from_dict, identity_dict, stable_hash, to_dict
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

__all__ = ["Anything", "Constraint", "ErrorCollector", "InstanceOf", "Interval", "JSONValue",
           "Options", "Registered", "SequenceOf", "TableOf", "Text", "check_declared",
           "constrained", "declarations", "declared_errors", "from_dict", "identity_dict",
           "is_int", "is_real", "or_none", "stable_hash", "table_errors", "to_dict", "validate"]
