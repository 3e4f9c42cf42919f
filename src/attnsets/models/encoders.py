"""Instance encoders, one per data kind. Each maps (M, *instance_shape) -> (M, out_dim)."""

from __future__ import annotations

import math

import torch
from torch import nn

from attnsets.models.base import ENCODERS, InputInfo


@ENCODERS.register("mlp")
class MLPEncoder(nn.Module):
    """Vectors and tables: Linear-ReLU stack. x: (M, d) -> (M, out_dim)."""

    def __init__(self, info: InputInfo, out_dim: int, hidden: int = 64, layers: int = 2) -> None:
        super().__init__()
        in_dim = math.prod(info.instance_shape)
        dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
        blocks: list[nn.Module] = [nn.Flatten()]
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            blocks.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                blocks.append(nn.ReLU())
        blocks.append(nn.ReLU())
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float())
