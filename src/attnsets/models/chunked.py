"""One forward pass of a softmax-attention model over a bag too large to pad in memory.

The bag is encoded and scored chunk by chunk while an online softmax keeps a running maximum
m, the running normaliser l = sum_i exp(s_i - m) and the running weighted sum
z = sum_i exp(s_i - m) h_i; when a chunk raises the maximum, l and z are rescaled by
exp(m_old - m_new). Only the scalar scores and norms of all N instances are kept (8 bytes per
instance), plus one chunk of activations. The pooled embedding goes through the pooling's
readout head (a linear layer or an MLP, see HeadSpec) as in the plain forward pass.
Everything is computed and accumulated on the model's device; a bag held on the host (an array, a
memmap, a CPU tensor) is moved there chunk by chunk.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from attnsets.device import device_of, to_device
from attnsets.errors import SpecError
from attnsets.models.base import SetModel, SetOutput, require_int
from attnsets.models.pooling import SoftmaxAttentionPooling


def attention_pool_large(model: SetModel, x: torch.Tensor | np.ndarray,
                         chunk_size: int = 65_536) -> SetOutput:
    """Logits and attention of `model` (pooling `attention` or `gated_attention`) for one bag.

    x: (N, *instance_shape) tensor or array (a numpy memmap works: only one chunk is read at a
    time), or (1, N, *instance_shape) when `model.info` tells the instance shape.
    Returns SetOutput(logits (1, C), attention (1, N), head_attention (1, 1, N),
    attention_norm (1, N)) on the model's device, equal to `model(x[None], mask)` up to float
    rounding.
    """
    pooling: Any = model.pooling
    if not isinstance(pooling, SoftmaxAttentionPooling):
        raise SpecError("model.pooling", type(pooling).__name__,
                        "a single-head softmax attention pooling (attention, gated_attention)")
    chunk_size = require_int("chunk_size", chunk_size)
    if model.info is not None and x.ndim == len(model.info.instance_shape) + 2:
        if x.shape[0] != 1:
            raise SpecError("x", tuple(x.shape), "one bag: (N, *instance_shape) or "
                            "(1, N, *instance_shape)")
        x = x[0]
    n = int(x.shape[0])
    if n < 1:
        raise SpecError("x", tuple(x.shape), "a bag with at least one instance")
    device = device_of(model)
    scores = torch.empty(n, dtype=torch.float64, device=device)
    norms = torch.empty(n, dtype=torch.float64, device=device)
    running_max = torch.tensor(float("-inf"), dtype=torch.float64, device=device)
    running_sum = torch.zeros((), dtype=torch.float64, device=device)
    running_z = torch.zeros((), dtype=torch.float64, device=device)  # (D,) after the 1st chunk
    with torch.no_grad():
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            rows = x[start:stop]
            chunk = to_device(torch.as_tensor(np.asarray(rows) if isinstance(rows, np.ndarray)
                                              else rows), device)
            h = model.encode(chunk.unsqueeze(0))  # (1, n_chunk, D)
            chunk_scores = pooling.attention_logits(h)[0].double()  # (n_chunk,)
            h = h[0].double()
            scores[start:stop] = chunk_scores
            norms[start:stop] = h.norm(dim=-1)
            new_max = torch.maximum(running_max, chunk_scores.max())
            rescale = torch.exp(running_max - new_max)  # 0 on the first chunk
            weights = torch.exp(chunk_scores - new_max)
            running_sum = running_sum * rescale + weights.sum()
            running_z = running_z * rescale + weights @ h
            running_max = new_max
        z = (running_z / running_sum).to(torch.float32).unsqueeze(0)  # (1, D)
        logits = pooling.readout(z)
        attention = (torch.exp(scores - running_max) / running_sum).to(torch.float32)[None]
        attention_norm = attention * norms.to(torch.float32)[None]
    return SetOutput(logits, attention, attention.unsqueeze(1), attention_norm)
