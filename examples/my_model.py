"""An example of *your own* set model, audited with `attnsets audit`.

It is written from scratch in plain torch and imports nothing from attnsets, to show the whole
contract a model needs to meet. Audit it with any of:

    attnsets audit examples/my_model.py:build          # by file path
    attnsets audit examples.my_model:build             # as a module (run from the repo root)

or from Python::

    from attnsets.audit import audit
    from examples.my_model import build
    result = audit(build)
    print(result.table)

The contract
------------
``build(info, seed) -> torch.nn.Module``. `info` describes the data (an attnsets InputInfo):

* ``info.kind``: "vector" (float (d,) instances), "image" (float (1, H, W)) or "sequence"
  (int64 tokens (L,), 0 = padding after the end of a sequence);
* ``info.instance_shape``: the shape of one instance;
* ``info.n_classes``: number of bag classes;
* ``info.vocab_size``: number of token ids including 0 (sequences only).

`seed` is the member's seed: use it for the initial weights (the audit also seeds torch's
global generator with it before calling `build`).

The module's ``forward(x, mask)`` gets a padded batch of bags, ``x: (B, N, *instance_shape)``
and ``mask: (B, N)`` bool with True = real instance, and returns ``(logits, attention)``:
``logits: (B, n_classes)`` and ``attention: (B, N)`` with exactly 0 at padded positions (or
None for a model without attention). Returning an attnsets SetOutput works too.
Padding must not change the logits: the audit feeds the same bags with junk in the padding
and reports any change.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


class InstanceEncoder(nn.Module):
    """One instance -> one embedding. x: (M, *instance_shape) -> (M, hidden).

    Vectors and images are flattened into an MLP; token sequences go through an embedding, a
    1-d convolution and a max over the real positions (so a motif is found wherever it sits).
    """

    def __init__(self, kind: str, instance_shape: tuple[int, ...], vocab_size: int,
                 hidden: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "sequence":
            self.tokens = nn.Embedding(vocab_size, 16, padding_idx=0)
            self.conv = nn.Conv1d(16, hidden, kernel_size=5, padding=2)
            self.out = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU())
        else:
            features = math.prod(instance_shape)
            self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(),
                                     nn.Linear(hidden, hidden), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind != "sequence":
            return self.mlp(x.float())
        real = (x != 0).unsqueeze(1)  # (M, 1, L)
        channels = torch.relu(self.conv(self.tokens(x.long()).transpose(1, 2)))  # (M, hidden, L)
        # A padded instance is all zeros and has no real position: give it zeros, not -inf.
        pooled = channels.masked_fill(~real, float("-inf")).amax(dim=-1)
        pooled = torch.where(real.any(dim=-1), pooled, torch.zeros_like(pooled))
        return self.out(pooled)


class TemperatureAttentionMIL(nn.Module):
    """Attention MIL with a temperature: a_i = softmax_i(s_i / T) over the real instances,
    s_i = w^T tanh(V h_i), z = sum_i a_i h_i, logits = W z.

    A temperature below 1 sharpens the attention (fewer instances carry the weight), above 1
    flattens it. forward(x: (B, N, *shape), mask: (B, N) bool) -> (logits (B, C),
    attention (B, N), 0 at padding).
    """

    def __init__(self, kind: str, instance_shape: tuple[int, ...], n_classes: int,
                 vocab_size: int = 0, hidden: int = 32, temperature: float = 0.5) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.encoder = InstanceEncoder(kind, instance_shape, vocab_size, hidden)
        self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.classifier = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, n = x.shape[:2]
        h = self.encoder(x.reshape(batch * n, *x.shape[2:])).reshape(batch, n, -1)
        # Zero the padded embeddings so that nothing computed from the padding reaches z.
        h = h * mask.unsqueeze(-1)
        scores = self.score(h).squeeze(-1) / self.temperature  # (B, N)
        attention = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        # An all-padding row would be NaN after the softmax; padding gets exactly 0.
        attention = torch.where(mask, attention, torch.zeros_like(attention))
        z = torch.einsum("bn,bnd->bd", attention, h)
        return self.classifier(z), attention


def build(info: Any, seed: int) -> TemperatureAttentionMIL:
    """The builder the audit calls once per ensemble member: (InputInfo, seed) -> module."""
    torch.manual_seed(seed)
    return TemperatureAttentionMIL(info.kind, tuple(info.instance_shape), info.n_classes,
                                   info.vocab_size)
