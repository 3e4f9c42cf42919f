"""Gradient methods: saliency, gradient x input, integrated gradients (Captum).

All differentiate the target logit. Instances with float features are differentiated at the
input x; integer inputs (token sequences) cannot be, so there the methods work on the encoder
output h = model.encode(x): (B, N, D) and the logits model.head(h, mask). Per-feature
attributions are reduced to one score per instance by summing over all feature dimensions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from attnsets.errors import SpecError
from attnsets.explain.base import ExplainContext, check_positive_int, register_explainer

WRT_CHOICES = ("auto", "input", "embedding")
#: Instances per forward pass of integrated gradients when internal_batch_size is None: all
#: 50 path points of a batch at once put (50 B, N, N) attention tensors of self-attention
#: models in memory (20 GB for B = 128, N = 200 with their backward).
IG_INSTANCES_PER_PASS = 1 << 15
IG_RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


def differentiable_point(context: ExplainContext, wrt: str
                         ) -> tuple[torch.Tensor, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """The tensor to attribute to, (B, N, ...), and forward(point, mask) -> logits (B, C).

    wrt: "input" (x; needs float x), "embedding" (h = model.encode(x)), or "auto" (input for
    float x, embedding for integer x).
    """
    if wrt not in WRT_CHOICES:
        raise SpecError("wrt", wrt, f"one of {list(WRT_CHOICES)}")
    model, x = context.model, context.x
    if wrt == "auto":
        wrt = "input" if x.dtype.is_floating_point else "embedding"
    if wrt == "input":
        if not x.dtype.is_floating_point:
            raise SpecError("wrt", "input", f"'embedding' or 'auto' for integer inputs "
                            f"(x is {x.dtype}; gradients need float inputs)")
        return x.detach().clone(), lambda point, mask: model(point, mask).logits
    with torch.no_grad():
        h = model.encode(x)
    return h.detach().clone(), lambda point, mask: model.head(point, mask).logits


def _per_instance(attributions: torch.Tensor) -> torch.Tensor:
    """(B, N, *feature) -> (B, N), summing over every feature dimension."""
    return attributions.reshape(*attributions.shape[:2], -1).sum(dim=-1)


def target_logit_gradient(context: ExplainContext, wrt: str
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(point, d logit_target / d point), both (B, N, ...). Bags are independent in eval mode, so
    one backward pass of the summed target logits gives every bag's gradient."""
    point, forward = differentiable_point(context, wrt)
    point.requires_grad_(True)
    with torch.enable_grad():
        logits = forward(point, context.mask)
        selected = logits.gather(-1, context.target[:, None]).sum()
        (grad,) = torch.autograd.grad(selected, point)
    return point.detach(), grad


@register_explainer("gradient", description="Saliency: sum over features of |d logit_t / d x|.")
def gradient_scores(context: ExplainContext, wrt: str = "auto") -> torch.Tensor:
    """(B, N) sum_f |d logit_target / d x_{i,f}| (or of h_{i,f}, see module doc)."""
    _, grad = target_logit_gradient(context, wrt)
    return _per_instance(grad.abs())


@register_explainer("grad_x_input",
                    description="Gradient x input: sum over features of x * d logit_t / d x.")
def grad_x_input_scores(context: ExplainContext, wrt: str = "auto") -> torch.Tensor:
    """(B, N) sum_f x_{i,f} * d logit_target / d x_{i,f} (signed)."""
    point, grad = target_logit_gradient(context, wrt)
    return _per_instance(point * grad)


@register_explainer("integrated_gradients", expensive=True,
                    description="Integrated gradients (Captum) from a zero baseline, summed over "
                                "features.")
def integrated_gradients_scores(context: ExplainContext, n_steps: int = 50, wrt: str = "auto",
                                internal_batch_size: int | None = None,
                                method: str = "gausslegendre") -> torch.Tensor:
    """(B, N) sum_f (x_f - 0) * mean over the path alpha x of d logit_target / d x_f.

    internal_batch_size: bags x path points per pass (None: whole path points, about
    IG_INSTANCES_PER_PASS instances per pass, so memory does not grow with n_steps).
    Completeness: the scores of a bag sum to logit_t(x) - logit_t(0) up to quadrature error.
    The zero baseline only scales real instances; padding stays masked out along the path.
    """
    n_steps = check_positive_int("n_steps", n_steps)
    if method not in IG_RULES:
        raise SpecError("method", method, f"an integration rule, one of {list(IG_RULES)}")
    n_bags, width = context.mask.shape[0], max(int(context.mask.shape[1]), 1)
    if internal_batch_size is not None:
        internal_batch_size = check_positive_int("internal_batch_size", internal_batch_size)
    else:  # whole path points (multiples of the batch: Captum's unit), about a fixed size
        steps_per_pass = max(1, IG_INSTANCES_PER_PASS // (width * max(n_bags, 1)))
        internal_batch_size = min(n_steps, steps_per_pass) * max(n_bags, 1)
    # Imported here: captum (with matplotlib) is about a quarter of a study worker's start-up,
    # and most cells never run integrated gradients.
    from captum.attr import IntegratedGradients

    point, forward = differentiable_point(context, wrt)
    integrated = IntegratedGradients(forward)
    with torch.enable_grad():
        attributions = integrated.attribute(
            point, baselines=torch.zeros_like(point), target=context.target,
            additional_forward_args=(context.mask,), n_steps=n_steps, method=method,
            internal_batch_size=internal_batch_size)
    return _per_instance(attributions.detach())
