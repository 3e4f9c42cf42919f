"""The readout head after pooling: z: (B, D) -> logits (B, C), built from a HeadSpec.

The default HeadSpec builds a plain ``nn.Linear(D, C)`` (the same module, parameter names and
initialisation as before heads existed, so existing models are unchanged). A HeadSpec with
hidden widths builds `ReadoutMLP`: [Linear, ReLU, SeededDropout] per width, then Linear.

Dropout and ensembles. ``nn.Dropout`` draws from torch's global generator; under torch.func.vmap
(the vectorised ensemble) each member then draws other masks than the same seed trained alone,
and CPU and CUDA draw differently. `SeededDropout` instead derives its mask from a hash of
(the member's own seed, the number of training forward passes so far, the element's position):
integer arithmetic only, so a member in the vectorised ensemble drops exactly the units the
same seed drops when trained alone, on any device. The seed is a buffer (stacked per member by
the ensemble), drawn from torch's generator when the model is built, so it follows the init
seed; the pass counter is a Python int that advances once per forward pass in training mode.
"""

from __future__ import annotations

import torch
from torch import nn

from attnsets.models.base import HeadSpec

_MASK32 = 0xFFFFFFFF
#: Odd 27-bit multiplier of a well-mixing 32-bit integer hash (products stay below 2^59, so
#: int64 arithmetic never overflows).
_MULTIPLIER = 0x45D9F3B


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective mixing of 32-bit values held in int64: x: any shape, values in [0, 2^32)."""
    x = ((x >> 16) ^ x) * _MULTIPLIER & _MASK32
    x = ((x >> 16) ^ x) * _MULTIPLIER & _MASK32
    return (x >> 16) ^ x


def hashed_bits(seed: torch.Tensor, step: int, shape: torch.Size) -> torch.Tensor:
    """32 well-mixed bits per element (int64 in [0, 2^32)), a function of (seed, step,
    position) only. seed: () int64; step >= 0; shape: the output shape."""
    position = torch.arange(shape.numel(), dtype=torch.int64, device=seed.device).reshape(shape)
    stream = _mix32((_mix32(seed & _MASK32) + step) & _MASK32)
    return _mix32(_mix32(position ^ stream) ^ stream)


class SeededDropout(nn.Module):
    """Dropout with probability p whose masks depend on (seed buffer, training pass, position)
    only (see the module docstring). x: any shape -> same shape; identity in eval mode."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)
        # integer threshold on 32 random bits: drop when bits < p * 2^32
        self.threshold = int(round(self.p * 2**32))
        self.register_buffer("seed", torch.randint(0, 2**31 - 1, (), dtype=torch.int64))
        self.steps = 0  # training forward passes so far

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        step, self.steps = self.steps, self.steps + 1
        keep = hashed_bits(self.seed, step, x.shape) >= self.threshold
        return x * keep.to(x.dtype) / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ReadoutMLP(nn.Module):
    """[Linear(in, h_1), ReLU, SeededDropout(p)] per hidden width, then Linear(h_k, C).
    z: (B, in_dim) -> logits (B, C)."""

    def __init__(self, in_dim: int, n_classes: int, hidden: tuple[int, ...],
                 dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for out in hidden:
            layers += [nn.Linear(width, out), nn.ReLU()]
            if dropout > 0.0:
                layers.append(SeededDropout(dropout))
            width = out
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)  # type: ignore[no-any-return]


def build_readout(head: HeadSpec, in_dim: int, n_classes: int) -> nn.Module:
    """The readout `head` describes: nn.Linear(in_dim, n_classes) for the default HeadSpec,
    else a ReadoutMLP. z: (B, in_dim) -> (B, n_classes)."""
    if head.is_linear:
        return nn.Linear(in_dim, n_classes)
    return ReadoutMLP(in_dim, n_classes, head.hidden, head.dropout)
