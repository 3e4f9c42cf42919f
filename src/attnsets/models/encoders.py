"""Instance encoders, one per data kind. Each maps (M, *instance_shape) -> (M, out_dim).

Every instance is encoded on its own, so padded instances cannot influence real ones here;
the poolings then ignore whatever the encoder made of the padding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from attnsets.errors import SpecError
from attnsets.models.base import ENCODERS, InputInfo, require_int


@ENCODERS.register("mlp")
class MLPEncoder(nn.Module):
    """Vectors and tables: Linear-ReLU stack. x: (M, d) -> (M, out_dim)."""

    def __init__(self, info: InputInfo, out_dim: int, hidden: int = 64, layers: int = 2) -> None:
        super().__init__()
        hidden = require_int("hidden", hidden)
        layers = require_int("layers", layers)
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


def _odd_kernel(value: object) -> int:
    kernel = require_int("kernel_size", value)
    if kernel % 2 == 0:
        # 'same' padding needs an odd kernel to keep the length unchanged
        raise SpecError("kernel_size", value, "an odd integer >= 1")
    return kernel


def _channel_list(value: object) -> list[int]:
    if isinstance(value, int | str) or not isinstance(value, Sequence) or len(value) == 0:
        raise SpecError("channels", value, "a non-empty list of integers >= 1")
    return [require_int("channels", c) for c in value]


#: Convolution padding of the `cnn` encoder: "same" keeps the size, "valid" shrinks it by k - 1.
CNN_PADDINGS = ("same", "valid")


def _dropout_rate(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise SpecError("dropout", value, "a probability in [0, 1)")
    return float(value)


def _hidden_list(value: object) -> list[int]:
    if isinstance(value, int | str) or not isinstance(value, Sequence):
        raise SpecError("hidden", value, "a list of integers >= 1 (may be empty)")
    return [require_int("hidden", h) for h in value]


@ENCODERS.register("cnn")
class CNNEncoder(nn.Module):
    """Images, LeNet-like as in Ilse et al. 2018: (conv-ReLU-maxpool 2x2) per entry of
    `channels`, then (Linear-ReLU) per entry of `hidden` and a last Linear-ReLU to out_dim.
    x: (M, C, H, W) -> (M, out_dim).

    padding "same" (default) lets 8x8 digits survive two poolings as well as 28x28 MNIST;
    "valid" is the unpadded LeNet / MILLI MI-Attn layout (28 -> 24 -> 12 -> 8 -> 4: 50 x 4 x 4
    = 800 features). dropout > 0 follows every pooling stage and every Linear-ReLU (MI-Attn:
    0.15); at 0 no Dropout module is added, so default models keep their parameter names.
    The flattened size is computed from `info.instance_shape`."""

    def __init__(self, info: InputInfo, out_dim: int, channels: Sequence[int] = (20, 50),
                 kernel_size: int = 5, padding: str = "same", dropout: float = 0.0,
                 hidden: Sequence[int] = ()) -> None:
        super().__init__()
        widths = _channel_list(channels)
        kernel = _odd_kernel(kernel_size)
        if padding not in CNN_PADDINGS:
            raise SpecError("padding", padding, f"one of {list(CNN_PADDINGS)}")
        rate, hidden_dims = _dropout_rate(dropout), _hidden_list(hidden)
        shrink = 0 if padding == "same" else kernel - 1
        in_channels, height, width = self._check_shape(info, widths, shrink)
        drop: list[nn.Module] = [nn.Dropout(rate)] if rate > 0 else []
        blocks: list[nn.Module] = []
        for out_channels in widths:
            blocks += [nn.Conv2d(in_channels, out_channels, kernel,
                                 padding=kernel // 2 if padding == "same" else 0),
                       nn.ReLU(), nn.MaxPool2d(2), *drop]
            in_channels, height, width = out_channels, (height - shrink) // 2, \
                (width - shrink) // 2
        blocks.append(nn.Flatten())
        dims = [in_channels * height * width, *hidden_dims, out_dim]
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            blocks += [nn.Linear(a, b), nn.ReLU(), *([nn.Dropout(rate)] if rate > 0 else [])]
        self.net = nn.Sequential(*blocks)

    @staticmethod
    def _check_shape(info: InputInfo, widths: list[int], shrink: int) -> tuple[int, int, int]:
        """(channels, height, width) of the images, refused if a stage would leave < 1 pixel."""
        shape = tuple(info.instance_shape)
        side = min(shape[1:], default=0) if len(shape) == 3 else 0
        for _ in widths:
            side = (side - shrink) // 2
        if len(shape) != 3 or side < 1:
            raise SpecError("model.encoder", "cnn",
                            f"image instances (channels, height, width) large enough for "
                            f"{len(widths)} pooling stages (each -{shrink} then /2); the data "
                            f"has instance_shape {shape}")
        return shape[0], shape[1], shape[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float())


@ENCODERS.register("seq_cnn")
class SequenceCNNEncoder(nn.Module):
    """Token sequences: embedding (token 0 = padding) -> `layers` x (Conv1d-ReLU) over positions
    -> max over real positions -> Linear-ReLU. tokens: (M, L) int64 -> (M, out_dim).

    Padding positions are zeroed after every layer, so trailing padding behaves exactly like the
    convolution's own zero padding: a sequence encodes the same whatever its padded length.
    An all-padding sequence (a padded instance) encodes as Linear-ReLU of zeros."""

    def __init__(self, info: InputInfo, out_dim: int, token_dim: int = 32, channels: int = 64,
                 kernel_size: int = 5, layers: int = 1) -> None:
        super().__init__()
        if info.vocab_size < 2 or len(info.instance_shape) != 1:
            raise SpecError("model.encoder", "seq_cnn",
                            "token sequences (instance_shape (L,), vocab_size >= 2); the data "
                            f"has instance_shape {tuple(info.instance_shape)}, vocab_size "
                            f"{info.vocab_size}")
        token_dim = require_int("token_dim", token_dim)
        channels = require_int("channels", channels)
        kernel = _odd_kernel(kernel_size)
        layers = require_int("layers", layers)
        self.embed = nn.Embedding(info.vocab_size, token_dim, padding_idx=0)
        self.convs = nn.ModuleList(
            nn.Conv1d(token_dim if i == 0 else channels, channels, kernel, padding=kernel // 2)
            for i in range(layers))
        self.out = nn.Sequential(nn.Linear(channels, out_dim), nn.ReLU())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        real = (tokens != 0).unsqueeze(1)  # (M, 1, L)
        features = self.embed(tokens.long()).transpose(1, 2)  # (M, token_dim, L)
        for conv in self.convs:
            features = torch.relu(conv(features * real))
        pooled = features.masked_fill(~real, float("-inf")).amax(dim=-1)  # (M, channels)
        pooled = torch.where(real.any(dim=-1), pooled, torch.zeros_like(pooled))
        return self.out(pooled)
