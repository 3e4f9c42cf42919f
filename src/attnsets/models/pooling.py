"""Pooling blocks: (h: (B, N, D), mask: (B, N) bool) -> SetOutput.

Every pooling first replaces the embeddings at padded positions with zeros, so whatever the
encoder made of the padding (even NaN or inf) cannot reach an output. Attention, attention
norms and instance scores are exactly 0 at padding.

Poolings with diagnostic outputs also define the perturbation fast path (see
`SetModel.head(..., need_maps=False)`): ``forward_logits(h, mask) -> (B, C)``, equal to
``forward(h, mask).logits`` without building attention norms or maps, and
``intermediate_floats(n) -> int``, the size in floats of the largest intermediate tensor one bag
of width n allocates in it, which perturbation passes use to size their chunks. The class
attribute ``permutation_invariant = True`` (every pooling here) allows those passes to evaluate a
sub-bag at its own width, its instances moved to the front of a narrower batch.

Readout heads: a pooling that pools an embedding z and reads it out declares the class
attribute ``accepts_head = True`` and takes ``head: HeadSpec`` (built by
`attnsets.models.head.build_readout` as its ``classifier``: one Linear layer by default, an MLP
otherwise). Poolings whose logits are made of per-instance class scores (additive,
instance_max) declare ``accepts_head = False`` and a ``head_refusal`` saying why.
The transformer poolings live in `attnsets.models.set_transformer`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attnsets.errors import SpecError
from attnsets.models.base import POOLINGS, HeadSpec, SetOutput, masked_softmax, require_int
from attnsets.models.head import SeededDropout, build_readout
from attnsets.spec.constraints import is_real


def zero_padding(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """h: (B, N, D), mask: (B, N) -> h with padded rows set to 0 (a new tensor)."""
    return h.masked_fill(~mask.unsqueeze(-1), 0.0)


def masked_max(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over dim 1 of real rows. values: (B, N, K), mask: (B, N) -> (B, K); 0 for an empty bag."""
    biggest = values.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)
    return torch.where(mask.any(dim=1, keepdim=True), biggest, torch.zeros_like(biggest))


def _init_uniform(tensor: torch.Tensor, fan_in: int) -> torch.Tensor:
    """nn.Linear's default weight range, for parameters that are not Linear layers."""
    bound = 1.0 / math.sqrt(fan_in)
    return nn.init.uniform_(tensor, -bound, bound)


def widest_linear(module: nn.Module) -> int:
    """The widest input or output of the module's Linear layers (1 if it has none): a
    per-instance pooling's largest intermediate per instance."""
    return max([1, *(max(m.in_features, m.out_features) for m in module.modules()
                     if isinstance(m, nn.Linear))])


@POOLINGS.register("mean")
class MeanPooling(nn.Module):
    """Baseline: z = mean of the real h_i; logits = head(z). No attention."""

    permutation_invariant = True
    accepts_head = True

    def __init__(self, in_dim: int, n_classes: int, head: HeadSpec = HeadSpec()) -> None:
        super().__init__()
        self.classifier = build_readout(head, in_dim, n_classes)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> SetOutput:
        count = mask.sum(dim=1, keepdim=True).clamp(min=1).to(h.dtype)  # (B, 1)
        z = zero_padding(h, mask).sum(dim=1) / count
        return SetOutput(self.classifier(z))


@POOLINGS.register("max")
class MaxPooling(nn.Module):
    """Baseline: z = feature-wise max over the real h_i; logits = head(z). No attention."""

    permutation_invariant = True
    accepts_head = True

    def __init__(self, in_dim: int, n_classes: int, head: HeadSpec = HeadSpec()) -> None:
        super().__init__()
        self.classifier = build_readout(head, in_dim, n_classes)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> SetOutput:
        return SetOutput(self.classifier(masked_max(zero_padding(h, mask), mask)))


class SoftmaxAttentionPooling(nn.Module):
    """Single-head softmax attention over instances, z = sum_i a_i h_i, logits = readout(z).

    Subclasses define `attention_logits`; `attnsets.models.chunked` streams any subclass over
    bags too large to pad."""

    classifier: nn.Module
    accepts_head = True

    def attention_logits(self, h: torch.Tensor) -> torch.Tensor:
        """h: (B, N, D) -> unnormalised attention scores (B, N)."""
        raise NotImplementedError

    def readout(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, D) -> logits (B, C)."""
        return self.classifier(z)

    def _pool(self, h: torch.Tensor, mask: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (zero-padded h (B, N, D), attention (B, N), logits (B, C))."""
        h = zero_padding(h, mask)
        attention = masked_softmax(self.attention_logits(h), mask)  # (B, N)
        z = torch.einsum("bn,bnd->bd", attention, h)
        return h, attention, self.readout(z)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> SetOutput:
        h, attention, logits = self._pool(h, mask)
        # Kobayashi et al. 2020: h_i itself is what gets weighted and summed
        norm = attention * h.norm(dim=-1)
        return SetOutput(logits, attention, attention.unsqueeze(1), norm)

    def forward_logits(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """h: (B, N, D), mask: (B, N) -> logits (B, C), without the attention norms."""
        return self._pool(h, mask)[2]

    def intermediate_floats(self, n: int) -> int:
        """Largest intermediate per bag: the (N, D) embeddings or a hidden layer."""
        return widest_linear(self) * n


@POOLINGS.register("attention")
class AttentionPooling(SoftmaxAttentionPooling):
    """Ilse et al. 2018: a_i = softmax_i(w^T tanh(V h_i)); z = sum_i a_i h_i; logits = head(z)
    (W z for the default head)."""

    permutation_invariant = True

    def __init__(self, in_dim: int, n_classes: int, attention_dim: int = 64, bias: bool = True,
                 dropout: float = 0.0, head: HeadSpec = HeadSpec()) -> None:
        super().__init__()
        attention_dim = require_int("attention_dim", attention_dim)
        if not isinstance(bias, bool):
            raise SpecError("bias", bias, "true or false (biases in the attention layers)")
        if not is_real(dropout) or not 0 <= dropout < 1:
            raise SpecError("dropout", dropout, "a probability in [0, 1) (on the pooled z)")
        # bias=False: MILLI's MI-Attn scores instances with bias-free V and w
        self.score = nn.Sequential(nn.Linear(in_dim, attention_dim, bias=bias), nn.Tanh(),
                                   nn.Linear(attention_dim, 1, bias=bias))
        self.classifier = build_readout(head, in_dim, n_classes)
        # only when asked, so default models keep their parameter and module names; seeded so a
        # member of a vectorised ensemble drops what the same seed drops alone
        self.pooled_dropout = SeededDropout(float(dropout)) if dropout > 0 else None

    def attention_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.score(h).squeeze(-1)

    def readout(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, D) -> logits (B, C); dropout on z first when `dropout` > 0 (training only)."""
        return super().readout(z if self.pooled_dropout is None else self.pooled_dropout(z))


@POOLINGS.register("gated_attention")
class GatedAttentionPooling(SoftmaxAttentionPooling):
    """Ilse et al. 2018, gated: a_i = softmax_i(w^T (tanh(V h_i) * sigmoid(U h_i)))."""

    permutation_invariant = True

    def __init__(self, in_dim: int, n_classes: int, attention_dim: int = 64,
                 head: HeadSpec = HeadSpec()) -> None:
        super().__init__()
        attention_dim = require_int("attention_dim", attention_dim)
        self.content = nn.Linear(in_dim, attention_dim)  # V
        self.gate = nn.Linear(in_dim, attention_dim)  # U
        self.weight = nn.Linear(attention_dim, 1)  # w
        self.classifier = build_readout(head, in_dim, n_classes)

    def attention_logits(self, h: torch.Tensor) -> torch.Tensor:
        gated = torch.tanh(self.content(h)) * torch.sigmoid(self.gate(h))
        return self.weight(gated).squeeze(-1)


@POOLINGS.register("multihead_attention")
class MultiHeadAttentionPooling(nn.Module):
    """H independent Ilse attentions: head k scores s_ki = q_k^T tanh(V_k h_i) with its own
    learned query q_k, a_k = softmax_i(s_k), z_k = sum_i a_ki (P_k h_i); logits =
    head([z_1..z_H]) (W [z_1..z_H] for the default head).

    head_attention: (B, H, N), each head a distribution over the real instances."""

    permutation_invariant = True
    accepts_head = True

    def __init__(self, in_dim: int, n_classes: int, heads: int = 4, attention_dim: int = 32,
                 head_dim: int | None = None, head: HeadSpec = HeadSpec()) -> None:
        super().__init__()
        self.heads = require_int("heads", heads)
        attention_dim = require_int("attention_dim", attention_dim)
        self.head_dim = require_int("head_dim", max(1, in_dim // self.heads)
                                    if head_dim is None else head_dim)
        self.keys = nn.Linear(in_dim, self.heads * attention_dim)  # all V_k at once
        self.queries = nn.Parameter(_init_uniform(torch.empty(self.heads, attention_dim),
                                                  attention_dim))
        self.values = nn.Linear(in_dim, self.heads * self.head_dim)  # all P_k at once
        self.classifier = build_readout(head, self.heads * self.head_dim, n_classes)

    def _pool(self, h: torch.Tensor, mask: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (head_attention (B, H, N), values (B, N, H, E), logits (B, C))."""
        h = zero_padding(h, mask)
        keys = torch.tanh(self.keys(h)).unflatten(-1, (self.heads, -1))  # (B, N, H, A)
        scores = torch.einsum("bnha,ha->bhn", keys, self.queries)
        head_attention = masked_softmax(scores, mask.unsqueeze(1))  # (B, H, N)
        values = self.values(h).unflatten(-1, (self.heads, self.head_dim))  # (B, N, H, E)
        pooled = torch.einsum("bhn,bnhe->bhe", head_attention, values)
        return head_attention, values, self.classifier(pooled.flatten(1))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> SetOutput:
        head_attention, values, logits = self._pool(h, mask)
        norm = head_attention * values.norm(dim=-1).transpose(1, 2)  # (B, H, N)
        return SetOutput(logits, head_attention.mean(dim=1), head_attention, norm.mean(dim=1))

    def forward_logits(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """h: (B, N, D), mask: (B, N) -> logits (B, C), without the attention norms."""
        return self._pool(h, mask)[2]

    def intermediate_floats(self, n: int) -> int:
        """Largest intermediate per bag: the (N, H * A) keys or (N, H * E) values."""
        return n * max(self.keys.out_features, self.values.out_features)


class _InstanceClassifier(nn.Module):
    """Per-instance class scores p(h): Linear, or Linear-ReLU-Linear when hidden > 0.
    bias=False makes p positively homogeneous: p(a h) = a p(h) for a >= 0."""

    def __init__(self, in_dim: int, n_classes: int, hidden: int, bias: bool) -> None:
        super().__init__()
        hidden = require_int("hidden", hidden, minimum=0)
        if hidden == 0:
            self.net: nn.Module = nn.Linear(in_dim, n_classes, bias=bias)
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden, bias=bias), nn.ReLU(),
                                     nn.Linear(hidden, n_classes, bias=bias))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


@POOLINGS.register("additive")
class AdditivePooling(nn.Module):
    """Additive MIL (Javed et al. 2022): Ilse attention a_i, per-instance class contributions
    c_i = p(a_i h_i), logits = sum_i c_i + b.

    p has no biases, so c_i = a_i p(h_i) exactly and the contributions plus the bag-level bias
    b add up to the logits: instance_scores (B, N, C) is an exact decomposition.
    attention_norm uses ||c_i|| = a_i ||p(h_i)||, the vector that is summed."""

    permutation_invariant = True
    accepts_head = False
    head_refusal = ("its logits are the sum of per-instance class contributions (set the "
                    "instance classifier's width with pooling_params.hidden)")

    def __init__(self, in_dim: int, n_classes: int, attention_dim: int = 64,
                 hidden: int = 32) -> None:
        super().__init__()
        attention_dim = require_int("attention_dim", attention_dim)
        self.score = nn.Sequential(nn.Linear(in_dim, attention_dim), nn.Tanh(),
                                   nn.Linear(attention_dim, 1))
        self.instance_classifier = _InstanceClassifier(in_dim, n_classes, hidden, bias=False)
        self.bias = nn.Parameter(torch.zeros(n_classes))

    def _pool(self, h: torch.Tensor, mask: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (attention (B, N), contributions (B, N, C), logits (B, C))."""
        h = zero_padding(h, mask)
        attention = masked_softmax(self.score(h).squeeze(-1), mask)  # (B, N)
        contributions = self.instance_classifier(attention.unsqueeze(-1) * h)  # (B, N, C)
        contributions = zero_padding(contributions, mask)
        return attention, contributions, contributions.sum(dim=1) + self.bias

    def forward_logits(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """h: (B, N, D), mask: (B, N) -> logits (B, C), without the contribution norms."""
        return self._pool(h, mask)[2]

    def intermediate_floats(self, n: int) -> int:
        """Largest intermediate per bag: the (N, D) embeddings or a hidden layer."""
        return widest_linear(self) * n

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> SetOutput:
        attention, contributions, logits = self._pool(h, mask)
        norm = contributions.norm(dim=-1)
        return SetOutput(logits, attention, attention.unsqueeze(1), norm,
                         instance_scores=contributions)


@POOLINGS.register("instance_max")
class InstanceMaxPooling(nn.Module):
    """mi-Net: per-instance class scores s_i = p(h_i); logits = max over real instances of s_i
    (per class). instance_scores: (B, N, C), 0 at padding. No attention."""

    permutation_invariant = True
    accepts_head = False
    head_refusal = ("its logits are the max of per-instance class scores (set the instance "
                    "classifier's width with pooling_params.hidden)")

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 0) -> None:
        super().__init__()
        self.instance_classifier = _InstanceClassifier(in_dim, n_classes, hidden, bias=True)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> SetOutput:
        scores = zero_padding(self.instance_classifier(zero_padding(h, mask)), mask)
        return SetOutput(masked_max(scores, mask), instance_scores=scores)
