"""The canonical form of every spec: one `to_dict` / `from_dict` and a stable hash."""

from attnsets.spec.codec import (
    JSONValue,
    from_dict,
    identity_dict,
    stable_hash,
    to_dict,
)

__all__ = ["JSONValue", "from_dict", "identity_dict", "stable_hash", "to_dict"]
