"""Labelling rules. Importing this package registers the built-in ones."""

from attnsets.data.rules import (  # noqa: F401
    four_bags,
    pos_neg,
    presence,
    ratio,
    sets,
    threshold,
    unit_tests,
)
from attnsets.data.rules.base import RULES, LabelRule

__all__ = ["RULES", "LabelRule"]
