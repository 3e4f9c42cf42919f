"""What part a study's model plays in a literature claim, read off its pooling's class (the
typed spec), never off the name a user gave the model. A pooling registered by a plugin plays
a role by subclassing the pooling that defines it."""

from __future__ import annotations

from collections.abc import Mapping

from attnsets.errors import SpecError
from attnsets.models import POOLINGS
from attnsets.models.pooling import (
    AttentionPooling,
    InstanceMaxPooling,
    MaxPooling,
    SoftmaxAttentionPooling,
)
from attnsets.report.collect import StudyView

#: The explainer that reads a pooling's attention weights (its registered name).
ATTENTION = "attention"

#: Single-head softmax attention pooling with a linear classifier: Ilse et al.'s attention
#: MIL, the model of the xMIL Pos-Neg and MILLI FOUR-MNIST-BAGS claims.
SINGLE_HEAD_ATTENTION: tuple[type, ...] = (AttentionPooling,)
#: Softmax attention pooling, plain or gated (Ilse et al.'s two attention MIL models).
SOFTMAX_ATTENTION: tuple[type, ...] = (SoftmaxAttentionPooling,)
#: Poolings that keep a maximum: they cannot count copies of a concept in principle.
COUNT_FREE: tuple[type, ...] = (MaxPooling, InstanceMaxPooling)


def model_poolings(study: StudyView) -> dict[str, str]:
    """Model name -> its pooling's registered name, for every finished cell's model."""
    return {c.model: c.cell.pooling for c in study.done}


def plays(pooling: str, role: tuple[type, ...]) -> bool:
    """Whether the registered pooling `pooling` is one of the classes of `role`."""
    try:
        factory = POOLINGS.get(pooling)
    except SpecError:
        return False
    return isinstance(factory, type) and issubclass(factory, role)


def models_in_role(poolings: Mapping[str, str], role: tuple[type, ...]) -> list[str]:
    """The models (in `poolings`' order) whose pooling plays `role`."""
    return [model for model, pooling in poolings.items() if plays(pooling, role)]
