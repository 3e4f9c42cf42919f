"""Models stage: instance encoder + pooling block. Importing registers the built-ins."""

from attnsets.models import encoders, pooling  # noqa: F401
from attnsets.models.base import (
    DEFAULT_ENCODER,
    ENCODERS,
    POOLINGS,
    InputInfo,
    ModelSpec,
    SetModel,
    SetOutput,
    build_model,
    masked_softmax,
)

__all__ = [
    "DEFAULT_ENCODER", "ENCODERS", "POOLINGS", "InputInfo", "ModelSpec", "SetModel", "SetOutput",
    "build_model", "masked_softmax",
]
