"""Labelling rules. Importing this package registers the built-in ones."""

from attnsets.data.rules import presence  # noqa: F401
from attnsets.data.rules.base import RULES, LabelRule

__all__ = ["RULES", "LabelRule"]
