"""The perturbation explainers and deletion curves as they were before the fast path (commit
be06728), kept verbatim as the reference of benchmarks/bench_perturbation.py and
tests/test_perturbation_fast.py: every sub-bag runs the full forward (all diagnostic maps) at the
full padded width, in chunks of about MAX_ROWS_PER_PASS instance rows.

Entry points take (model, batch) like the public API: leave_one_out, single, shapley,
deletion_curve, random_deletion_curve.
"""

from __future__ import annotations

import math
from collections.abc import Callable

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
    target_values,
)
from attnsets.models.base import SetModel

OUTPUTS = ("prob", "logit")
#: Default work per forward pass: variants x padded bag width, in instance rows.
MAX_ROWS_PER_PASS = 1 << 17
#: (bag index (M,), variant index (M,)) -> masks (M, N) bool.
MaskBuilder = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: Exact Shapley enumerates 2^N sub-bags per bag; beyond this width use sampling.
MAX_EXACT_INSTANCES = 14


def check_output(output: str) -> str:
    if output not in OUTPUTS:
        raise SpecError("output", output, "'prob' (softmax probability) or 'logit'")
    return output


def auto_max_batch(n: int) -> int:
    """Variants per forward pass so that one pass holds about MAX_ROWS_PER_PASS instances."""
    return max(1, MAX_ROWS_PER_PASS // max(n, 1))


def subset_values(context: ExplainContext, n_variants: int, build_masks: MaskBuilder,
                  needed: torch.Tensor | None = None, output: str = "prob",
                  max_batch: int | None = None) -> torch.Tensor:
    """f(S) for `n_variants` sub-bags of every bag -> (B, V) float32.

    build_masks(bag, variant) -> (M, N) bool: the masks of the given (bag, variant) pairs, built
    per chunk so memory stays O(max_batch * N). needed: (B, V) bool, the variants to evaluate;
    the others are left 0 and cost nothing. max_batch: variants per forward pass (None: about
    MAX_ROWS_PER_PASS instances per pass).
    """
    check_output(output)
    n_bags, n = context.mask.shape
    max_batch = auto_max_batch(n) if max_batch is None \
        else check_positive_int("max_batch", max_batch)
    h = context.embedding
    device = context.mask.device
    rows = torch.arange(n_bags * n_variants, device=device) if needed is None \
        else needed.reshape(-1).nonzero().squeeze(1)
    values = torch.zeros(n_bags * n_variants, dtype=torch.float32, device=device)
    with torch.no_grad():
        for start in range(0, len(rows), max_batch):
            chunk = rows[start:start + max_batch]
            bag, variant = chunk // n_variants, chunk % n_variants
            logits = context.model.head(h[bag], build_masks(bag, variant)).logits
            values[chunk] = target_values(logits, context.target[bag], output).float()
    return values.reshape(n_bags, n_variants)


def leave_one_out_scores(context: ExplainContext, output: str = "prob",
                         max_batch: int | None = None) -> torch.Tensor:
    """(B, N) f(bag) - f(bag minus i). Cost: B + (number of real instances) head evaluations."""
    mask = context.mask
    positions = torch.arange(mask.shape[1], device=mask.device)

    def without_one(bag: torch.Tensor, variant: torch.Tensor) -> torch.Tensor:
        # variant 0 is the full bag; variant v > 0 drops instance v - 1
        return mask[bag] & (positions[None, :] != (variant - 1)[:, None])

    needed = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)  # (B, 1 + N)
    values = subset_values(context, mask.shape[1] + 1, without_one, needed, output, max_batch)
    return values[:, :1] - values[:, 1:]


def single_scores(context: ExplainContext, output: str = "prob",
                  max_batch: int | None = None) -> torch.Tensor:
    """(B, N) f({i}). Cost: one head evaluation per real instance."""
    mask = context.mask
    positions = torch.arange(mask.shape[1], device=mask.device)

    def only_one(bag: torch.Tensor, variant: torch.Tensor) -> torch.Tensor:
        return positions[None, :] == variant[:, None]

    return subset_values(context, mask.shape[1], only_one, mask, output, max_batch)


def permutation_keys(n: int, n_samples: int, seed: int) -> torch.Tensor:
    """(n_samples, n) uniforms; row s orders the positions in permutation s. Drawn position-major
    from one seeded stream, so the keys of the first m positions do not depend on n: a bag gets
    the same permutations alone or padded in a wider batch (padding sits after real instances)."""
    return torch.from_numpy(np.random.default_rng(seed).random((n, n_samples)).T.copy())


def sampled_shapley(context: ExplainContext, n_samples: int, seed: int, output: str,
                    max_batch: int | None) -> torch.Tensor:
    """Permutation sampling: phi_i = mean_s [f(pre_s(i) + i) - f(pre_s(i))], where pre_s(i) are
    the instances before i in permutation s. Every permutation's contributions sum to
    f(full) - f(empty), so the estimate is exactly efficient."""
    mask = context.mask
    n_bags, n = mask.shape
    keys = permutation_keys(n, n_samples, seed).to(mask.device)
    keys = torch.where(mask[:, None, :], keys[None], torch.full_like(keys[None], math.inf))
    rank = keys.argsort(dim=-1, stable=True).argsort(dim=-1)  # (B, S, N) place of i in perm s
    steps = torch.arange(n + 1, device=mask.device)

    def prefix(bag: torch.Tensor, variant: torch.Tensor) -> torch.Tensor:
        # variant = sample * (n + 1) + k: the first k instances of permutation `sample`
        sample, k = variant // (n + 1), variant % (n + 1)
        return (rank[bag, sample] < k[:, None]) & mask[bag]

    sizes = mask.sum(dim=1)
    needed = (steps[None, :] <= sizes[:, None])[:, None, :].expand(n_bags, n_samples, n + 1)
    values = subset_values(context, n_samples * (n + 1), prefix, needed.reshape(n_bags, -1),
                           output, max_batch)
    values = values.reshape(n_bags, n_samples, n + 1)
    before = values.gather(-1, rank)
    after = values.gather(-1, (rank + 1).clamp(max=n))
    return (after - before).mean(dim=1)


def exact_shapley(context: ExplainContext, output: str, max_batch: int | None) -> torch.Tensor:
    """phi_i = sum over S in bag minus i of |S|! (n-|S|-1)! / n! [f(S + i) - f(S)], over all
    2^N sub-bags (N <= MAX_EXACT_INSTANCES)."""
    mask = context.mask
    n_bags, n = mask.shape
    if n > MAX_EXACT_INSTANCES:
        raise SpecError("exact", True, f"bags padded to <= {MAX_EXACT_INSTANCES} instances "
                        f"(this batch has {n}); use sampling (exact=False)")
    codes = torch.arange(2**n, device=mask.device)
    bit_values = 2 ** torch.arange(n, device=mask.device)
    members = (codes[:, None] & bit_values[None, :]) > 0  # (2^N, N): is i in subset S
    inside_bag = ~(members[None] & ~mask[:, None, :]).any(dim=-1)  # (B, 2^N): S within the bag
    values = subset_values(context, 2**n, lambda bag, code: members[code], inside_bag, output,
                           max_batch)
    with_i = codes[:, None] | bit_values[None, :]  # (2^N, N) code of S + i
    gain = values[:, with_i] - values[:, codes, None]  # (B, 2^N, N)
    size = members.sum(dim=1).to(torch.float64)[None, :, None]  # |S|
    bag_size = mask.sum(dim=1).to(torch.float64)[:, None, None]
    log_weight = (torch.lgamma(size + 1) + torch.lgamma((bag_size - size).clamp(min=1))
                  - torch.lgamma(bag_size + 1))
    counts = inside_bag[:, :, None] & ~members[None] & mask[:, None, :]
    weight = torch.where(counts, log_weight.exp(), torch.zeros_like(log_weight))
    return (weight * gain.to(torch.float64)).sum(dim=1).float()


def shapley_scores(context: ExplainContext, n_samples: int = 25, seed: int = 0,
                   exact: bool = False, output: str = "prob",
                   max_batch: int | None = None) -> torch.Tensor:
    """(B, N) Shapley value of each instance for the game S -> f(S) (f(empty) is the model on an
    empty bag). Sampling costs B * n_samples * (n + 1) head evaluations; exact costs
    sum_b 2^(n_b)."""
    check_output(output)
    if exact:
        return exact_shapley(context, output, max_batch)
    n_samples = check_positive_int("n_samples", n_samples)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise SpecError("seed", seed, "an integer")
    return sampled_shapley(context, n_samples, int(seed), output, max_batch)


def curves_for_ranks(context: ExplainContext, rank: torch.Tensor, steps: int, output: str,
                     include_empty: bool, max_batch: int | None) -> torch.Tensor:
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
                           evaluated.reshape(n_bags, -1), output, max_batch)
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
            include_empty: bool, max_batch: int | None) -> torch.Tensor:
    tie_break = instance_uniforms(context.x, seed)[..., 0]
    rank = ranks_from_keys(-scores[:, None, :], tie_break[:, None, :], context.mask)
    return curves_for_ranks(context, rank, steps, output, include_empty, max_batch)[:, 0]


def _random(context: ExplainContext, n_orders: int, seed: int, steps: int, output: str,
            include_empty: bool, max_batch: int | None) -> torch.Tensor:
    """(R, B, steps + 1): one curve per random order."""
    # Stream 0 breaks ties of ranked curves; random orders use streams 1..R.
    keys = instance_uniforms(context.x, seed, n_orders + 1)[..., 1:].permute(0, 2, 1)
    positions = torch.arange(keys.shape[-1], dtype=keys.dtype, device=keys.device)
    rank = ranks_from_keys(keys, positions.expand_as(keys), context.mask)
    curves = curves_for_ranks(context, rank, steps, output, include_empty, max_batch)
    return curves.permute(1, 0, 2)


def _context(model: SetModel, batch: Batch, target: int | None = None) -> ExplainContext:
    context = ExplainContext(model, batch, torch.zeros(0, dtype=torch.int64), "reference")
    context.target = resolve_target(target, batch, int(context.output.logits.shape[-1]))
    return context


def leave_one_out(model: SetModel, batch: Batch, output: str = "prob",
                  max_batch: int | None = None) -> torch.Tensor:
    """(B, N) reference leave-one-out scores (0 at padding)."""
    with eval_mode(model):
        scores = leave_one_out_scores(_context(model, batch), output, max_batch)
    return torch.where(batch.mask, scores, torch.zeros_like(scores))


def single(model: SetModel, batch: Batch, output: str = "prob",
           max_batch: int | None = None) -> torch.Tensor:
    """(B, N) reference single-instance scores (0 at padding)."""
    with eval_mode(model):
        scores = single_scores(_context(model, batch), output, max_batch)
    return torch.where(batch.mask, scores, torch.zeros_like(scores))


def shapley(model: SetModel, batch: Batch, n_samples: int = 25, seed: int = 0,
            exact: bool = False, output: str = "prob",
            max_batch: int | None = None) -> torch.Tensor:
    """(B, N) reference Shapley values: plain permutation sampling or padded-width exact."""
    with eval_mode(model):
        scores = shapley_scores(_context(model, batch), n_samples, seed, exact, output, max_batch)
    return torch.where(batch.mask, scores, torch.zeros_like(scores))


def deletion_curve(model: SetModel, batch: Batch, scores: torch.Tensor, *,
                   steps: int | None = None, output: str = "prob", include_empty: bool = False,
                   seed: int = 0, max_batch: int | None = None) -> torch.Tensor:
    """(B, steps + 1) reference ranked deletion curve."""
    steps = batch.mask.shape[1] if steps is None else steps
    with eval_mode(model):
        return _ranked(_context(model, batch), scores.detach().double(), seed, steps, output,
                       include_empty, max_batch)


def random_deletion_curve(model: SetModel, batch: Batch, *, n_orders: int = 10, seed: int = 0,
                          steps: int | None = None, output: str = "prob",
                          include_empty: bool = False, average: bool = True,
                          max_batch: int | None = None) -> torch.Tensor:
    """Reference random-order deletion curves: (B, steps + 1) mean or (R, B, steps + 1)."""
    steps = batch.mask.shape[1] if steps is None else steps
    with eval_mode(model):
        curves = _random(_context(model, batch), n_orders, seed, steps, output, include_empty,
                         max_batch)
    return curves.mean(dim=0) if average else curves
