"""Methods read off the model's own output: attention, one head, attention norm, rollout,
additive instance scores, and the random chance baseline. Each costs one forward pass."""

from __future__ import annotations

import torch

from attnsets.errors import SpecError
from attnsets.explain.base import ExplainContext, instance_uniforms, register_explainer
from attnsets.models.base import SetModel, SetOutput
from attnsets.spec.constraints import Interval, is_int


def _require(value: torch.Tensor | None) -> torch.Tensor:
    # `explain` checked the field before calling; this only narrows the type.
    assert value is not None
    return value


@register_explainer("attention", requires=("attention",),
                    description="SetOutput.attention: pooling weights, mean over heads.")
def attention_scores(context: ExplainContext) -> torch.Tensor:
    """(B, N) the pooling's attention weights (mean over heads)."""
    return _require(context.output.attention)


@register_explainer("attention_head", requires=("head_attention",),
                    description="SetOutput.head_attention[:, head]: the weights of one head.")
def attention_head_scores(context: ExplainContext, head: int = 0) -> torch.Tensor:
    """(B, N) attention of head `head` (B, H, N)[:, head]; negative indices count from the end."""
    heads = _require(context.output.head_attention)
    n_heads = heads.shape[1]
    if not is_int(head) or not -n_heads <= head < n_heads:
        raise SpecError("head", head, f"an integer head index in 0..{n_heads - 1}")
    return heads[:, head]


@register_explainer("attention_norm", requires=("attention_norm",),
                    description="SetOutput.attention_norm: attention x norm of the transformed "
                                "instance (Kobayashi et al. 2020).")
def attention_norm_scores(context: ExplainContext) -> torch.Tensor:
    """(B, N) attention weight times the norm of the vector it weights."""
    return _require(context.output.attention_norm)


def _rollout_problem(model: SetModel, output: SetOutput) -> str | None:
    layers = output.layer_attention
    if not layers:
        return f"pooling {type(model.pooling).__name__!r} gives an empty layer_attention"
    for layer in layers:
        if layer.dim() != 4 or layer.shape[-1] != layer.shape[-2]:
            return f"layer_attention must be (B, H, T, T); got {tuple(layer.shape)}"
    return None


def attention_rollout(layers: tuple[torch.Tensor, ...] | list[torch.Tensor],
                      token_mask: torch.Tensor) -> torch.Tensor:
    """Abnar & Zuidema 2020. layers: L x (B, H, T, T); token_mask: (B, T) bool.

    Per layer: average heads, drop attention to padded tokens, add the identity (the residual
    path), renormalise rows; then R = A_L ... A_1. Returns R: (B, T, T).
    """
    keys = token_mask[:, None, :].to(layers[0].dtype)
    eye = torch.eye(token_mask.shape[1], dtype=layers[0].dtype, device=token_mask.device)
    rollout = eye.expand(token_mask.shape[0], -1, -1)
    for layer in layers:
        mixed = layer.mean(dim=1) * keys + eye
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rollout = mixed @ rollout
    return rollout


@register_explainer("rollout", requires=("layer_attention",), check=_rollout_problem,
                    description="Attention rollout (Abnar & Zuidema 2020) through "
                                "SetOutput.layer_attention.")
def rollout_scores(context: ExplainContext) -> torch.Tensor:
    """(B, N) rolled-out attention to each instance token.

    Tokens are T = extra + N with the extra tokens (a class token) first. With a class token the
    scores are row 0 of the rollout. Without one (T == N, e.g. self-attention blocks followed by
    attention pooling) the pooling's attention a: (B, N) plays the class token's part: a @ R.
    """
    layers = _require(context.output.layer_attention)
    n_bags, n = context.mask.shape
    extra = layers[0].shape[-1] - n
    if extra < 0:
        raise SpecError("method", "rollout", f"layer_attention over >= {n} tokens; got "
                        f"{layers[0].shape[-1]} (pooling {context.pooling_name!r})")
    token_mask = torch.cat([torch.ones(n_bags, extra, dtype=torch.bool,
                                       device=context.mask.device), context.mask], dim=1)
    rollout = attention_rollout(layers, token_mask)
    if extra > 0:
        return rollout[:, 0, extra:]
    pooled = context.output.attention
    if pooled is None:
        raise SpecError("method", "rollout", f"a pooling with a class token or a final attention "
                        f"(pooling {context.pooling_name!r} has neither)")
    return torch.einsum("bt,bts->bs", pooled, rollout)


@register_explainer("instance_scores", requires=("instance_scores",),
                    description="SetOutput.instance_scores[..., target]: per-instance class "
                                "contributions of additive / instance-level poolings.")
def instance_class_scores(context: ExplainContext) -> torch.Tensor:
    """(B, N) the instance's own score for the target class."""
    scores = _require(context.output.instance_scores)
    return scores.gather(-1, context.target[:, None, None].expand(-1, scores.shape[1], 1))[..., 0]


@register_explainer("random", description="Chance baseline: seeded uniform scores.")
def random_scores(context: ExplainContext, seed: int = 0) -> torch.Tensor:
    """(B, N) uniforms in [0, 1) that depend only on (seed, instance content)."""
    Interval(int).require(seed, "seed")
    return instance_uniforms(context.x, seed)[..., 0].to(torch.float32)
