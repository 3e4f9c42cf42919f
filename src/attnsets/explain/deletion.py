"""Deletion (AOPC) curves: remove the top-scored instances first and follow the model's output.

curve[b, k] = f(bag b without its k highest-scored instances), k = 0..steps, with f = p_target
(default) or the target logit. Removal goes through the mask, never by zeroing. Column 0 is the
unperturbed bag. Steps that would empty the bag (k >= its size n_b) are NaN, "not evaluated",
as attnsets.metrics.faithfulness expects; with include_empty=True step k = n_b holds
f(empty bag) and only k > n_b is NaN. The AOPC arithmetic lives in attnsets.metrics.faithfulness;
the random-order curve is its reference.

Sub-bags are evaluated like the perturbation explainers' (attnsets.explain.perturbation): logits
only, each at its own width (a curve's step k is n_b - k instances wide), in passes sized by
`memory_mb`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from attnsets.data.bags import Batch
from attnsets.errors import SpecError
from attnsets.explain.base import (
    ExplainContext,
    check_positive_int,
    eval_mode,
    instance_uniforms,
    resolve_target,
)
from attnsets.explain.perturbation import check_output, subset_values
from attnsets.models.base import SetModel
from attnsets.spec.constraints import Interval, is_int

Target = int | Sequence[int] | np.ndarray | torch.Tensor | None


@dataclass(frozen=True)
class DeletionCurves:
    """ranked: (B, steps + 1); random: (B, steps + 1) mean over orders, or (R, B, steps + 1)
    with average_random=False; sizes: (B,) real instances per bag. float32, NaN = not evaluated."""

    ranked: torch.Tensor
    random: torch.Tensor
    sizes: torch.Tensor


def _context(model: SetModel, batch: Batch, target: Target) -> ExplainContext:
    context = ExplainContext(model, batch, torch.zeros(0, dtype=torch.int64), "deletion")
    context.target = resolve_target(target, batch, int(context.output.logits.shape[-1]))
    return context


def _check_steps(steps: int | None, width: int) -> int:
    if steps is None:
        return width
    if not is_int(steps) or steps < 0:
        raise SpecError("steps", steps, "None (= padded bag width) or an integer >= 0")
    return int(steps)


def _check_seed(seed: int) -> int:
    return int(Interval(int).require(seed, "seed"))


def _check_scores(scores: torch.Tensor | np.ndarray, mask: torch.Tensor) -> torch.Tensor:
    scores_t = torch.as_tensor(np.asarray(scores) if not isinstance(scores, torch.Tensor)
                               else scores).to(mask.device)
    if tuple(scores_t.shape) != tuple(mask.shape):
        raise SpecError("scores", tuple(scores_t.shape), f"shape {tuple(mask.shape)}")
    if not bool(torch.isfinite(scores_t[mask]).all()):
        raise SpecError("scores", "non-finite values", "finite scores at real instances")
    return scores_t.detach().double()


def curves_for_ranks(context: ExplainContext, rank: torch.Tensor, steps: int, output: str,
                     include_empty: bool, max_batch: int | None,
                     memory_mb: float | None = None) -> torch.Tensor:
    """rank: (B, R, N) removal position of each instance under R orders -> (B, R, steps + 1)."""
    mask = context.mask
    n_bags, n_orders, _ = rank.shape

    def kept(bag: torch.Tensor, variant: torch.Tensor) -> torch.Tensor:
        # variant = order * (steps + 1) + k: the bag without its first k instances in `order`
        order, k = variant // (steps + 1), variant % (steps + 1)
        return (rank[bag, order] >= k[:, None]) & mask[bag]

    removed = torch.arange(steps + 1, device=mask.device)
    sizes = mask.sum(dim=1)
    last = sizes if include_empty else sizes - 1
    evaluated = (removed[None, :] <= last[:, None])[:, None, :].expand(-1, n_orders, -1)
    values = subset_values(context, n_orders * (steps + 1), kept,
                           evaluated.reshape(n_bags, -1), output, max_batch, memory_mb)
    values = values.reshape(n_bags, n_orders, steps + 1)
    return torch.where(evaluated, values, torch.full_like(values, torch.nan))


def ranks_from_keys(keys: torch.Tensor, tie_break: torch.Tensor, mask: torch.Tensor
                    ) -> torch.Tensor:
    """(B, R, N) removal position of each instance: ascending `keys`, ties in ascending
    `tie_break` order, padding last. keys, tie_break: (B, R, N)."""
    keys = torch.where(mask[:, None, :], keys, torch.full_like(keys, torch.inf))
    # Two stable sorts = lexicographic sort by (keys, tie_break).
    by_tie = tie_break.argsort(dim=-1, stable=True)
    order = by_tie.gather(-1, keys.gather(-1, by_tie).argsort(dim=-1, stable=True))
    return order.argsort(dim=-1)


def _ranked(context: ExplainContext, scores: torch.Tensor, seed: int, steps: int, output: str,
            include_empty: bool, max_batch: int | None, memory_mb: float | None
            ) -> torch.Tensor:
    tie_break = instance_uniforms(context.x, seed)[..., 0]
    rank = ranks_from_keys(-scores[:, None, :], tie_break[:, None, :], context.mask)
    return curves_for_ranks(context, rank, steps, output, include_empty, max_batch,
                            memory_mb)[:, 0]


def _random(context: ExplainContext, n_orders: int, seed: int, steps: int, output: str,
            include_empty: bool, max_batch: int | None, memory_mb: float | None
            ) -> torch.Tensor:
    """(R, B, steps + 1): one curve per random order."""
    # Stream 0 breaks ties of ranked curves; random orders use streams 1..R.
    keys = instance_uniforms(context.x, seed, n_orders + 1)[..., 1:].permute(0, 2, 1)
    positions = torch.arange(keys.shape[-1], dtype=keys.dtype, device=keys.device)
    rank = ranks_from_keys(keys, positions.expand_as(keys), context.mask)
    curves = curves_for_ranks(context, rank, steps, output, include_empty, max_batch, memory_mb)
    return curves.permute(1, 0, 2)


def deletion_curve(model: SetModel, batch: Batch, scores: torch.Tensor | np.ndarray,
                   target: Target = None, *, steps: int | None = None, output: str = "prob",
                   include_empty: bool = False, seed: int = 0,
                   max_batch: int | None = None, memory_mb: float | None = None
                   ) -> torch.Tensor:
    """(B, steps + 1) f after removing the k highest-scored instances; NaN where not evaluated.

    scores: (B, N). Ties are removed in a seeded random order that depends on the instances
    only. steps: default the padded width N. Cost: one encoding, then about
    sum_b min(n_b, steps + 1) head evaluations. max_batch / memory_mb: sub-bags per forward
    pass / memory budget of one pass (None: attnsets.explain.perturbation.MEMORY_MB).
    """
    check_output(output)
    scores_t = _check_scores(scores, batch.mask)
    steps = _check_steps(steps, batch.mask.shape[1])
    seed = _check_seed(seed)
    with eval_mode(model):
        return _ranked(_context(model, batch, target), scores_t, seed, steps, output,
                       include_empty, max_batch, memory_mb)


def random_deletion_curve(model: SetModel, batch: Batch, target: Target = None, *,
                          n_orders: int = 10, seed: int = 0, steps: int | None = None,
                          output: str = "prob", include_empty: bool = False,
                          average: bool = True, max_batch: int | None = None,
                          memory_mb: float | None = None) -> torch.Tensor:
    """Deletion curves for `n_orders` random removal orders: (B, steps + 1) averaged over the
    orders, or (R, B, steps + 1) with average=False. The orders are seeded hashes of the
    instances, so a bag gets the same curves in any batch. Cost: n_orders ranked curves."""
    check_output(output)
    n_orders = check_positive_int("n_orders", n_orders)
    seed = _check_seed(seed)
    steps = _check_steps(steps, batch.mask.shape[1])
    with eval_mode(model):
        curves = _random(_context(model, batch, target), n_orders, seed, steps, output,
                         include_empty, max_batch, memory_mb)
    return curves.mean(dim=0) if average else curves


def deletion_curves(model: SetModel, batch: Batch, scores: torch.Tensor | np.ndarray,
                    target: Target = None, *, n_orders: int = 10, seed: int = 0,
                    steps: int | None = None, output: str = "prob", include_empty: bool = False,
                    average_random: bool = True, max_batch: int | None = None,
                    memory_mb: float | None = None) -> DeletionCurves:
    """The ranked curve for `scores` and its random-order reference from one encoding.
    Feed ``ranked`` and ``random`` to attnsets.metrics.faithfulness.aopc."""
    check_output(output)
    scores_t = _check_scores(scores, batch.mask)
    n_orders = check_positive_int("n_orders", n_orders)
    seed = _check_seed(seed)
    steps = _check_steps(steps, batch.mask.shape[1])
    with eval_mode(model):
        context = _context(model, batch, target)
        ranked = _ranked(context, scores_t, seed, steps, output, include_empty, max_batch,
                         memory_mb)
        random = _random(context, n_orders, seed, steps, output, include_empty, max_batch,
                         memory_mb)
    return DeletionCurves(ranked, random.mean(dim=0) if average_random else random,
                          batch.mask.sum(dim=1))
