"""Models stage: instance encoder + pooling block. Importing registers the built-ins.

Encoders: mlp, cnn, seq_cnn. Poolings: mean, max, attention, gated_attention,
multihead_attention, additive, instance_max, set_transformer, transformer_cls. Readout heads
(HeadSpec, `attnsets.models.head`): every pooling that pools an embedding takes one.
"""

from attnsets.models import encoders, head, pooling, set_transformer  # noqa: F401
from attnsets.models.base import (
    DEFAULT_ENCODER,
    ENCODERS,
    POOLINGS,
    HeadSpec,
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
    "DEFAULT_ENCODER", "ENCODERS", "HeadSpec", "POOLINGS", "InputInfo", "ModelSpec", "SetModel", "SetOutput",
    "SoftmaxAttentionPooling", "attention_pool_large", "build_model", "masked_softmax",
]
