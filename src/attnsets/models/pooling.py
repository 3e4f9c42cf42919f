"""Pooling blocks: (h: (B, N, D), mask: (B, N) bool) -> SetOutput."""

from __future__ import annotations

import torch
from torch import nn

from attnsets.models.base import POOLINGS, SetOutput, masked_softmax


@POOLINGS.register("attention")
class AttentionPooling(nn.Module):
    """Ilse et al. 2018: a_i = softmax_i(w^T tanh(V h_i)); z = sum_i a_i h_i; logits = W z."""

    def __init__(self, in_dim: int, n_classes: int, attention_dim: int = 64) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(in_dim, attention_dim), nn.Tanh(),
                                   nn.Linear(attention_dim, 1))
        self.classifier = nn.Linear(in_dim, n_classes)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> SetOutput:
        attention = masked_softmax(self.score(h).squeeze(-1), mask)  # (B, N)
        z = torch.einsum("bn,bnd->bd", attention, h)
        norm = attention * h.norm(dim=-1)
        return SetOutput(self.classifier(z), attention, attention.unsqueeze(1), norm)
