"""Models stage: instance encoder + pooling block. Importing registers the built-ins.

Encoders: mlp, cnn, seq_cnn. Poolings: mean, max, attention, gated_attention,
multihead_attention, additive, instance_max, set_transformer, transformer_cls.
"""

from attnsets.models import encoders, pooling, set_transformer  # noqa: F401
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
from attnsets.models.chunked import attention_pool_large
from attnsets.models.pooling import SoftmaxAttentionPooling

__all__ = [
    "DEFAULT_ENCODER", "ENCODERS", "POOLINGS", "InputInfo", "ModelSpec", "SetModel", "SetOutput",
    "SoftmaxAttentionPooling", "attention_pool_large", "build_model", "masked_softmax",
]
