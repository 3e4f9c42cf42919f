"""Transformer poolings with exposed attention and exact padding masks.

- `set_transformer` (Lee et al. 2019): ISAB encoder layers with m inducing points, then PMA with
  one seed vector; padded keys are masked in every attention.
- `transformer_cls`: pre-LayerNorm self-attention layers over [class token; instances].

Both report `layer_attention` in one format, so a single rollout implementation serves both:
a tuple of (B, H, N+1, N+1) maps, token 0 the read-out token (class token / PMA seed), tokens
1..N the instances, each row a distribution over the tokens it attends to, rows and columns of
padded instances exactly 0. Rollout adds the residual identity itself.

`forward_logits` (the perturbation fast path, `SetModel.head(..., need_maps=False)`) computes
the same logits without any map: PyTorch's fused scaled-dot-product attention, no ISAB
instance<-instance compositions (which made set_transformer quadratic in N), and in
transformer_cls's last layer only the class-token row, the only row the classifier reads.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from attnsets.errors import SpecError
from attnsets.models.base import POOLINGS, HeadSpec, SetOutput, masked_softmax, require_int
from attnsets.models.head import build_readout
from attnsets.models.pooling import zero_padding


class Attended(NamedTuple):
    """out: (B, Q, D); weights: (B, H, Q, K); values: (B, H, K, E) per-head value vectors."""

    out: torch.Tensor
    weights: torch.Tensor
    values: torch.Tensor


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with explicit q/k/v/output projections.
    query: (B, Q, D), keys: (B, K, D), key_mask: (B, K) bool or None -> Attended."""

    #: attend uses PyTorch's fused kernel. It has no vmap batching rule on the CPU (vmap falls
    #: back to a loop over members, slower than the matmul form at small N), so the vectorised
    #: ensemble trainer sets this to False on its template.
    fused: bool = True

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.q = nn.Linear(dim, heads * head_dim)
        self.k = nn.Linear(dim, heads * head_dim)
        self.v = nn.Linear(dim, heads * head_dim)
        self.o = nn.Linear(heads * head_dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)  # (B, H, T, E)

    def forward(self, query: torch.Tensor, keys: torch.Tensor,
                key_mask: torch.Tensor | None) -> Attended:
        q, k, v = self._split(self.q(query)), self._split(self.k(keys)), self._split(self.v(keys))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, H, Q, K)
        if key_mask is None:
            weights = torch.softmax(scores, dim=-1)
        else:
            weights = masked_softmax(scores, key_mask[:, None, None, :])
        mixed = (weights @ v).transpose(1, 2).flatten(2)  # (B, Q, H * E)
        return Attended(self.o(mixed), weights, v)

    def attend(self, query: torch.Tensor, keys: torch.Tensor,
               key_mask: torch.Tensor | None) -> torch.Tensor:
        """forward(...).out without the weights: fused attention, no (Q, K) map kept.
        query: (B, Q, D), keys: (B, K, D), key_mask: (B, K) bool or None -> (B, Q, D)."""
        q, k, v = self._split(self.q(query)), self._split(self.k(keys)), self._split(self.v(keys))
        if not self.fused:
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
            weights = torch.softmax(scores, dim=-1) if key_mask is None else \
                masked_softmax(scores, key_mask[:, None, None, :])
            return self.o((weights @ v).transpose(1, 2).flatten(2))
        if key_mask is None:
            mixed = F.scaled_dot_product_attention(q, k, v)
        else:
            mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
            # a query with no real key mixes nothing (masked_softmax's 0 rows); kernels differ
            # on such rows (0 or NaN), so set them explicitly
            mixed = torch.where(key_mask.any(dim=-1)[:, None, None, None], mixed,
                                torch.zeros_like(mixed))
        return self.o(mixed.transpose(1, 2).flatten(2))

    def value_norms(self, values: torch.Tensor) -> torch.Tensor:
        """||W_O^h v_hk||, the norm of what key k adds to the output through head h
        (Kobayashi et al. 2020). values: (B, H, K, E) -> (B, H, K)."""
        w_out = self.o.weight.unflatten(1, (self.heads, self.head_dim))  # (D, H, E)
        return torch.einsum("bhke,dhe->bhkd", values, w_out).norm(dim=-1)


def _feed_forward(dim: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))


def _norm(dim: int, layer_norm: bool) -> nn.Module:
    return nn.LayerNorm(dim) if layer_norm else nn.Identity()


class MAB(nn.Module):
    """Multihead attention block (Lee et al. 2019), post-norm:
    MAB(X, Y) = LN(A + rFF(A)), A = LN(X + Multihead(X, Y, Y))."""

    def __init__(self, dim: int, heads: int, head_dim: int, ff_dim: int,
                 layer_norm: bool) -> None:
        super().__init__()
        self.attention = MultiHeadAttention(dim, heads, head_dim)
        self.norm1, self.norm2 = _norm(dim, layer_norm), _norm(dim, layer_norm)
        self.ff = _feed_forward(dim, ff_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor,
                y_mask: torch.Tensor | None) -> tuple[torch.Tensor, Attended]:
        attended = self.attention(x, y, y_mask)
        return self._finish(x, attended.out), attended

    def _finish(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        a = self.norm1(x + attended)
        return self.norm2(a + self.ff(a))

    def forward_fast(self, x: torch.Tensor, y: torch.Tensor,
                     y_mask: torch.Tensor | None) -> torch.Tensor:
        """forward(...)[0] with fused attention and no weights. x: (B, Q, D), y: (B, K, D)."""
        return self._finish(x, self.attention.attend(x, y, y_mask))


class ISAB(nn.Module):
    """Induced set attention block: I' = MAB(I, X) (inducing points read the instances),
    out = MAB(X, I') (instances read the inducing points). Linear in N."""

    def __init__(self, dim: int, inducing: int, heads: int, head_dim: int, ff_dim: int,
                 layer_norm: bool) -> None:
        super().__init__()
        self.inducing = nn.Parameter(nn.init.xavier_uniform_(torch.empty(inducing, dim)))
        self.read = MAB(dim, heads, head_dim, ff_dim, layer_norm)
        self.write = MAB(dim, heads, head_dim, ff_dim, layer_norm)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, N, D), mask: (B, N) -> (out (B, N, D), instance<-instance map (B, N, N)).

        The map composes instances<-inducing with inducing<-instances, each averaged over
        heads (head k of one block has no relation to head k of the other)."""
        inducing = self.inducing.unsqueeze(0).expand(x.shape[0], -1, -1)
        summary, read = self.read(inducing, x, mask)
        out, written = self.write(x, summary, None)
        composed = written.weights.mean(dim=1) @ read.weights.mean(dim=1)  # (B, N, N)
        return out, composed * mask.unsqueeze(-1)

    def forward_fast(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """forward(...)[0] without the (B, N, N) map: O(N m) time and memory."""
        inducing = self.inducing.unsqueeze(0).expand(x.shape[0], -1, -1)
        summary = self.read.forward_fast(inducing, x, mask)
        return self.write.forward_fast(x, summary, None)


def _with_readout_token(readout_row: torch.Tensor, readout_self: torch.Tensor,
                        instance_map: torch.Tensor) -> torch.Tensor:
    """Assemble a (B, H, N+1, N+1) map: row 0 = [readout_self, readout_row], rows 1.. =
    [0, instance_map]. readout_row: (B, H, N), readout_self: (B, H, 1), instance_map:
    (B, H, N, N)."""
    top = torch.cat([readout_self, readout_row], dim=-1).unsqueeze(2)  # (B, H, 1, N+1)
    bottom = torch.cat([torch.zeros_like(instance_map[..., :1]), instance_map], dim=-1)
    return torch.cat([top, bottom], dim=2)


def _head_dim(dim: int, heads: int, head_dim: int | None) -> int:
    return require_int("head_dim", max(1, dim // heads) if head_dim is None else head_dim)


@POOLINGS.register("set_transformer")
class SetTransformerPooling(nn.Module):
    """Lee et al. 2019: `layers` ISAB blocks with `inducing` points, then PMA with one seed:
    z = MAB(s, rFF(X)); logits = head(z) (W z for the default head).

    attention: (B, N) the seed's attention over instances, mean over heads; attention_norm uses
    ||W_O^h v_hi|| per head. layer_attention: one (B, 1, N+1, N+1) map per ISAB (head-averaged
    composition, the read-out token untouched: row 0 = [1, 0...]) then the PMA map
    (B, H, N+1, N+1) with row 0 = [0, seed attention] and identity for the instances, which
    PMA does not change."""

    permutation_invariant = True
    accepts_head = True

    def __init__(self, in_dim: int, n_classes: int, heads: int = 4, inducing: int = 8,
                 layers: int = 2, head_dim: int | None = None, ff_dim: int | None = None,
                 layer_norm: bool = True, head: HeadSpec = HeadSpec()) -> None:
        super().__init__()
        heads = require_int("heads", heads)
        inducing = require_int("inducing", inducing)
        layers = require_int("layers", layers)
        head_dim = _head_dim(in_dim, heads, head_dim)
        ff_dim = require_int("ff_dim", 2 * in_dim if ff_dim is None else ff_dim)
        if not isinstance(layer_norm, bool):
            raise SpecError("layer_norm", layer_norm, "true or false")
        self.encoder = nn.ModuleList(ISAB(in_dim, inducing, heads, head_dim, ff_dim, layer_norm)
                                     for _ in range(layers))
        self.seed = nn.Parameter(nn.init.xavier_uniform_(torch.empty(1, in_dim)))
        self.pool_ff = nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU())
        self.pool = MAB(in_dim, heads, head_dim, ff_dim, layer_norm)
        self.classifier = build_readout(head, in_dim, n_classes)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> SetOutput:
        x = zero_padding(h, mask)
        real = mask.to(x.dtype)
        no_readout = torch.zeros_like(real).unsqueeze(1)  # (B, 1, N)
        maps: list[torch.Tensor] = []
        for block in self.encoder:
            x, composed = block(x, mask)
            maps.append(_with_readout_token(no_readout, torch.ones_like(real[:, None, :1]),
                                            composed.unsqueeze(1)))
        seed = self.seed.unsqueeze(0).expand(x.shape[0], -1, -1)
        pooled, attended = self.pool(seed, self.pool_ff(x), mask)
        head_attention = attended.weights[:, :, 0, :]  # (B, H, N)
        heads = head_attention.shape[1]
        identity = torch.diag_embed(real).unsqueeze(1).expand(-1, heads, -1, -1)
        maps.append(_with_readout_token(head_attention, torch.zeros_like(head_attention[..., :1]),
                                        identity))
        norm = head_attention * self.pool.attention.value_norms(attended.values)
        return SetOutput(self.classifier(pooled[:, 0]), head_attention.mean(dim=1),
                         head_attention, norm.mean(dim=1), layer_attention=tuple(maps))

    def forward_logits(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """h: (B, N, D), mask: (B, N) -> logits (B, C), equal to forward(h, mask).logits."""
        x = zero_padding(h, mask)
        for block in self.encoder:
            x = block.forward_fast(x, mask)
        seed = self.seed.unsqueeze(0).expand(x.shape[0], -1, -1)
        pooled = self.pool.forward_fast(seed, self.pool_ff(x), mask)
        return self.classifier(pooled[:, 0])

    def intermediate_floats(self, n: int) -> int:
        """Largest intermediate per bag in forward_logits: the (H, N, m) attention between
        instances and inducing points (if the kernel materialises it) or an (N, ff) hidden."""
        block: ISAB = self.encoder[0]  # type: ignore[assignment]
        attention = block.read.attention
        ff_dim = block.read.ff[0].out_features
        return n * max(attention.heads * block.inducing.shape[0],
                       attention.heads * attention.head_dim, ff_dim)


class TransformerLayer(nn.Module):
    """Pre-norm self-attention layer: x += MHA(LN(x)); x += FF(LN(x)).
    x: (B, T, D), mask: (B, T) -> (x, Attended)."""

    def __init__(self, dim: int, heads: int, head_dim: int, ff_dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = MultiHeadAttention(dim, heads, head_dim)
        self.ff = _feed_forward(dim, ff_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, Attended]:
        normed = self.norm1(x)
        attended = self.attention(normed, normed, mask)
        x = x + attended.out
        return x + self.ff(self.norm2(x)), attended

    def forward_fast(self, x: torch.Tensor, mask: torch.Tensor, rows: int | None = None
                     ) -> torch.Tensor:
        """forward(...)[0] with fused attention and no weights, for the first `rows` tokens
        only (None: all). Every token still serves as a key. x: (B, T, D) -> (B, rows, D)."""
        normed = self.norm1(x)
        x = x[:, :rows]
        x = x + self.attention.attend(normed[:, :rows], normed, mask)
        return x + self.ff(self.norm2(x))


@POOLINGS.register("transformer_cls")
class TransformerClsPooling(nn.Module):
    """Self-attention over [class token; instances] (no positions: permutation invariant);
    logits = head(LN(final class token)) (W LN(...) for the default head).

    attention: (B, N) the class token's attention to the instances in the last layer, mean over
    heads. It is not renormalised: it sums to 1 minus the class token's attention to itself.
    layer_attention: every layer's (B, H, N+1, N+1) map, token 0 the class token."""

    permutation_invariant = True
    accepts_head = True

    def __init__(self, in_dim: int, n_classes: int, heads: int = 4, layers: int = 2,
                 head_dim: int | None = None, ff_dim: int | None = None,
                 head: HeadSpec = HeadSpec()) -> None:
        super().__init__()
        heads = require_int("heads", heads)
        layers = require_int("layers", layers)
        head_dim = _head_dim(in_dim, heads, head_dim)
        ff_dim = require_int("ff_dim", 2 * in_dim if ff_dim is None else ff_dim)
        self.cls_token = nn.Parameter(nn.init.normal_(torch.empty(in_dim), std=0.02))
        self.layers = nn.ModuleList(TransformerLayer(in_dim, heads, head_dim, ff_dim)
                                    for _ in range(layers))
        self.final_norm = nn.LayerNorm(in_dim)
        self.classifier = build_readout(head, in_dim, n_classes)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> SetOutput:
        h = zero_padding(h, mask)
        cls = self.cls_token.expand(h.shape[0], 1, -1)
        tokens = torch.cat([cls, h], dim=1)  # (B, N+1, D)
        token_mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)  # (B, N+1)
        # padded tokens still compute (from real keys only); zero their rows for clean maps
        row_mask = token_mask[:, None, :, None].to(h.dtype)
        maps: list[torch.Tensor] = []
        for layer in self.layers:
            tokens, attended = layer(tokens, token_mask)
            maps.append(attended.weights * row_mask)
        last_layer: TransformerLayer = self.layers[-1]  # type: ignore[assignment]
        head_attention = attended.weights[:, :, 0, 1:]  # (B, H, N)
        value_norms = last_layer.attention.value_norms(attended.values)[:, :, 1:]
        norm = head_attention * value_norms
        logits = self.classifier(self.final_norm(tokens[:, 0]))
        return SetOutput(logits, head_attention.mean(dim=1), head_attention, norm.mean(dim=1),
                         layer_attention=tuple(maps))

    def forward_logits(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """h: (B, N, D), mask: (B, N) -> logits (B, C), equal to forward(h, mask).logits.
        The last layer updates only the class token: the classifier reads nothing else."""
        h = zero_padding(h, mask)
        tokens = torch.cat([self.cls_token.expand(h.shape[0], 1, -1), h], dim=1)  # (B, N+1, D)
        token_mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        for index, layer in enumerate(self.layers):
            last = index == len(self.layers) - 1
            tokens = layer.forward_fast(tokens, token_mask, rows=1 if last else None)
        return self.classifier(self.final_norm(tokens[:, 0]))

    def intermediate_floats(self, n: int) -> int:
        """Largest intermediate per bag: the (H, N+1, N+1) self-attention scores (what the
        unfused kernel materialises) or an (N+1, ff) hidden layer."""
        layer: TransformerLayer = self.layers[0]  # type: ignore[assignment]
        tokens = n + 1
        return tokens * max(layer.attention.heads * tokens, layer.ff[0].out_features,
                            3 * layer.attention.heads * layer.attention.head_dim)
