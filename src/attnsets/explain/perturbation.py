"""Perturbation methods: remove instances through the mask (true removal, never zeroing).

The value of a sub-bag S is f(S) = p_target(S) (softmax probability, `output="prob"`, default)
or the target logit (`output="logit"`). Instances are encoded once, h = model.encode(x), and
every sub-bag is evaluated as model.head(h_S, mask_S, need_maps=False): logits only, so poolings
with a fast path skip their diagnostic maps (see attnsets.models.pooling).

How the passes scale (`subset_values`):

* A sub-bag is evaluated at its own width: for permutation-invariant poolings (the class
  attribute ``permutation_invariant``, set by every built-in pooling) its real instances are
  gathered to the front of a batch as wide as the largest sub-bag in the pass, so a `single`
  sub-bag is one instance wide and a leave-one-out sub-bag n - 1. Other poolings (user
  modules) are run at the full padded width with the mask, as before.
* Sub-bags are sorted by size, largest first, so that one pass holds sub-bags of similar width.
* A pass holds as many sub-bags as fit a memory budget (`memory_mb`, default MEMORY_MB) given
  the largest intermediate one sub-bag allocates: ``pooling.intermediate_floats(width)`` where
  the pooling defines it (H (N+1)^2 attention scores for transformer_cls, H N m for
  set_transformer's induced points), else N x D embeddings.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from attnsets.errors import SpecError
from attnsets.explain.base import (
    ExplainContext,
    check_positive_int,
    register_explainer,
    target_values,
)
from attnsets.models.base import SetModel, takes_need_maps
from attnsets.spec.constraints import Interval, is_real

OUTPUTS = ("prob", "logit")
#: Default memory budget of one perturbation forward pass, in MiB (option `memory_mb`). Set
#: ``attnsets.explain.perturbation.MEMORY_MB`` to change it for every call.
MEMORY_MB = 256.0
#: Tensors as large as the largest intermediate alive at once in a pass (a layer's input,
#: hidden activations, output and residual; scores and their softmax): the budget is divided by
#: this many times its size. 6 keeps the measured peak of set_transformer's passes (resident
#: set, allocator slack included) at about the budget (docs/benchmarks.md).
LIVE_COPIES = 6
#: Mask elements built at once while counting sub-bag sizes before the passes.
SIZING_ELEMENTS = 1 << 22
#: (bag index (M,), variant index (M,)) -> masks (M, N) bool.
MaskBuilder = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: Exact Shapley enumerates 2^n sub-bags per bag; exact=True refuses bags larger than this.
MAX_EXACT_INSTANCES = 14
#: Default number of samples of sampled Shapley (coalitions or permutations, n_b + 1 sub-bags
#: each). Chosen by benchmarks/bench_shapley.py: the smallest budget tried whose worst cell
#: (trained attention, gated and transformer_cls models on gaussian and digits bags) reaches a
#: Spearman correlation >= 0.95 with exact values, near ties merged (docs/explainers.md).
DEFAULT_SAMPLES = 400


def _sampling_cost(n: int) -> int:
    """Sub-bags of the default coalition sampler for a bag of n instances."""
    return DEFAULT_SAMPLES * (n + 1) + 2 * n + 2


#: With the defaults (n_samples=None, exact=None), bags of at most this many real instances get
#: exact values: the largest n whose 2^n sub-bags cost no more than default sampling (12).
AUTO_EXACT_INSTANCES = max(n for n in range(MAX_EXACT_INSTANCES + 1)
                           if 2**n <= _sampling_cost(n))


def check_output(output: str) -> str:
    if output not in OUTPUTS:
        raise SpecError("output", output, "'prob' (softmax probability) or 'logit'")
    return output


def check_memory_mb(memory_mb: float | None) -> float:
    """The budget in MiB: `memory_mb`, or MEMORY_MB when None."""
    value = MEMORY_MB if memory_mb is None else memory_mb
    if not is_real(value) or not value > 0 or not math.isfinite(value):
        raise SpecError("memory_mb", memory_mb, "None (= MEMORY_MB) or a number of MiB > 0")
    return float(value)


def compacts(model: SetModel) -> bool:
    """True if sub-bags may be evaluated at their own width (instances moved to the front)."""
    return bool(getattr(getattr(model, "pooling", None), "permutation_invariant", False))


def bytes_per_sub_bag(model: SetModel, width: int, padded: int, dim: int) -> int:
    """Memory one sub-bag of `width` costs in a pass: LIVE_COPIES x the pooling's largest
    intermediate, its gathered embeddings, and its (padded,) mask row with the gather indices."""
    hint = getattr(getattr(model, "pooling", None), "intermediate_floats", None)
    floats = int(hint(width)) if hint is not None else width * dim
    return 4 * (LIVE_COPIES * max(floats, width * dim) + width * dim) + 25 * padded


def _fast_head(model: SetModel) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(h, mask) -> logits, logits-only where model.head takes need_maps (SetModel does; a
    subclass may have overridden head with the old signature)."""
    if takes_need_maps(model, through=("head",)):
        return lambda h, mask: model.head(h, mask, need_maps=False).logits
    return lambda h, mask: model.head(h, mask).logits


def sub_bag_sizes(rows: torch.Tensor, n_variants: int, build_masks: MaskBuilder,
                  width: int) -> torch.Tensor:
    """(R,) number of instances in each sub-bag of `rows` (flat bag * n_variants + variant)."""
    step = max(1, SIZING_ELEMENTS // max(width, 1))
    sizes = [build_masks(chunk // n_variants, chunk % n_variants).sum(dim=1)
             for chunk in rows.split(step)]
    return torch.cat(sizes) if sizes else torch.zeros(0, dtype=torch.int64, device=rows.device)


def compact(h: torch.Tensor, bag: torch.Tensor, masks: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather each sub-bag's instances to the front, in their order.
    h: (B, N, D), bag: (M,), masks: (M, N) bool -> (h_S (M, W, D), mask_S (M, W)),
    W = max(1, largest sub-bag); one row per kept instance is copied, nothing else."""
    counts = masks.sum(dim=1)
    width = max(1, int(counts.max())) if len(counts) else 1
    row, col = masks.nonzero(as_tuple=True)  # row-major: each row's instances in order
    first = counts.cumsum(0) - counts  # index in (row, col) of each row's first instance
    slot = torch.arange(len(row), device=masks.device) - first[row]
    sub_h = h.new_zeros(len(bag), width, h.shape[-1])
    sub_h[row, slot] = h[bag[row], col]
    return sub_h, torch.arange(width, device=masks.device)[None, :] < counts[:, None]


def subset_values(context: ExplainContext, n_variants: int, build_masks: MaskBuilder,
                  needed: torch.Tensor | None = None, output: str = "prob",
                  max_batch: int | None = None, memory_mb: float | None = None
                  ) -> torch.Tensor:
    """f(S) for `n_variants` sub-bags of every bag -> (B, V) float32.

    build_masks(bag, variant) -> (M, N) bool: the masks of the given (bag, variant) pairs, built
    per chunk (it is called twice per sub-bag: once to count sizes, once to evaluate). needed:
    (B, V) bool, the variants to evaluate; the others are left 0 and cost nothing. max_batch:
    at most this many sub-bags per forward pass (None: as many as `memory_mb` allows).
    memory_mb: budget of one pass (None: MEMORY_MB), see the module docstring.
    """
    check_output(output)
    if max_batch is not None:
        max_batch = check_positive_int("max_batch", max_batch)
    budget = check_memory_mb(memory_mb) * 2**20
    n_bags, n = context.mask.shape
    model, h = context.model, context.embedding
    device = context.mask.device
    rows = torch.arange(n_bags * n_variants, device=device) if needed is None \
        else needed.reshape(-1).nonzero().squeeze(1)
    values = torch.zeros(n_bags * n_variants, dtype=torch.float32, device=device)
    shrink = compacts(model)
    if shrink:
        # largest first: a pass is as wide as its first sub-bag and the next ones are as wide
        sizes = sub_bag_sizes(rows, n_variants, build_masks, n)
        order = sizes.argsort(descending=True, stable=True)
        rows, sizes = rows[order], sizes[order].tolist()
    head = _fast_head(model)
    start = 0
    with torch.no_grad():
        while start < len(rows):
            width = max(1, sizes[start]) if shrink else n
            per_pass = max(1, int(budget // bytes_per_sub_bag(model, width, n, h.shape[-1])))
            chunk = rows[start:start + min(per_pass, max_batch or per_pass)]
            bag, variant = chunk // n_variants, chunk % n_variants
            masks = build_masks(bag, variant)
            sub_h, sub_mask = compact(h, bag, masks) if shrink else (h[bag], masks)
            values[chunk] = target_values(head(sub_h, sub_mask), context.target[bag],
                                          output).float()
            start += len(chunk)
    return values.reshape(n_bags, n_variants)


@register_explainer("leave_one_out", expensive=True,
                    description="f(full bag) - f(bag without i); f = p_target or logit.")
def leave_one_out_scores(context: ExplainContext, output: str = "prob",
                         max_batch: int | None = None, memory_mb: float | None = None
                         ) -> torch.Tensor:
    """(B, N) f(bag) - f(bag minus i). Cost: B + (number of real instances) head evaluations,
    each sub-bag n_b - 1 wide."""
    mask = context.mask
    positions = torch.arange(mask.shape[1], device=mask.device)

    def without_one(bag: torch.Tensor, variant: torch.Tensor) -> torch.Tensor:
        # variant 0 is the full bag; variant v > 0 drops instance v - 1
        return mask[bag] & (positions[None, :] != (variant - 1)[:, None])

    needed = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)  # (B, 1 + N)
    values = subset_values(context, mask.shape[1] + 1, without_one, needed, output, max_batch,
                           memory_mb)
    return values[:, :1] - values[:, 1:]


@register_explainer("single", expensive=True, description="f(bag holding only instance i).")
def single_scores(context: ExplainContext, output: str = "prob",
                  max_batch: int | None = None, memory_mb: float | None = None
                  ) -> torch.Tensor:
    """(B, N) f({i}). Cost: one head evaluation per real instance, each one instance wide."""
    mask = context.mask
    positions = torch.arange(mask.shape[1], device=mask.device)

    def only_one(bag: torch.Tensor, variant: torch.Tensor) -> torch.Tensor:
        return positions[None, :] == variant[:, None]

    return subset_values(context, mask.shape[1], only_one, mask, output, max_batch, memory_mb)


def permutation_keys(n: int, n_samples: int, seed: int, antithetic: bool = False
                     ) -> torch.Tensor:
    """(n_samples, n) uniforms; row s orders the positions in permutation s. Drawn position-major
    from one seeded stream, so the keys of the first m positions do not depend on n: a bag gets
    the same permutations alone or padded in a wider batch (padding sits after real instances).
    antithetic: every odd row is 1 - the row before, i.e. the reverse of that permutation."""
    keys = torch.from_numpy(np.random.default_rng(seed).random((n, n_samples)).T.copy())
    if antithetic:
        keys[1::2] = 1.0 - keys[0::2][:n_samples // 2]
    return keys


def sampled_shapley(context: ExplainContext, n_samples: int, seed: int, output: str,
                    max_batch: int | None, memory_mb: float | None = None,
                    antithetic: bool = True, bags: torch.Tensor | None = None) -> torch.Tensor:
    """Permutation sampling: phi_i = mean_s [f(pre_s(i) + i) - f(pre_s(i))], where pre_s(i) are
    the instances before i in permutation s. Every permutation's contributions sum to
    f(full) - f(empty), so the estimate is exactly efficient. antithetic: permutations come in
    (order, reverse order) pairs, which cancels much of the sampling noise (an instance early
    in one is late in the other). bags: (B,) bool, the bags to score (None: all); others get 0."""
    mask = context.mask
    n_bags, n = mask.shape
    keys = permutation_keys(n, n_samples, seed, antithetic).to(mask.device)
    keys = torch.where(mask[:, None, :], keys[None], torch.full_like(keys[None], math.inf))
    rank = keys.argsort(dim=-1, stable=True).argsort(dim=-1)  # (B, S, N) place of i in perm s
    steps = torch.arange(n + 1, device=mask.device)

    def prefix(bag: torch.Tensor, variant: torch.Tensor) -> torch.Tensor:
        # variant = sample * (n + 1) + k: the first k instances of permutation `sample`
        sample, k = variant // (n + 1), variant % (n + 1)
        return (rank[bag, sample] < k[:, None]) & mask[bag]

    sizes = mask.sum(dim=1)
    chosen = steps[None, :] <= sizes[:, None]
    if bags is not None:
        chosen = chosen & bags[:, None]
    needed = chosen[:, None, :].expand(n_bags, n_samples, n + 1)
    values = subset_values(context, n_samples * (n + 1), prefix, needed.reshape(n_bags, -1),
                           output, max_batch, memory_mb)
    values = values.reshape(n_bags, n_samples, n + 1)
    before = values.gather(-1, rank)
    after = values.gather(-1, (rank + 1).clamp(max=n))
    return (after - before).mean(dim=1)


def coalition_sizes_for(sizes: torch.Tensor, n_samples: int, seed: int, antithetic: bool
                        ) -> torch.Tensor:
    """(B, S) coalition sizes in 1..n_b-1, systematically spread over the uniform size law (grid
    point j of K covers [j/K, (j+1)/K), one seeded offset); antithetic: each followed by the
    size of its complement, n_b - t."""
    grid = math.ceil(n_samples / 2) if antithetic else n_samples
    offset = float(np.random.default_rng([seed, 1]).random())
    points = (torch.arange(grid, device=sizes.device, dtype=torch.float64) + offset) / grid
    drawn = 1 + (points[None, :] * (sizes[:, None] - 1).clamp(min=0)).floor().long()  # (B, K)
    if not antithetic:
        return drawn
    paired = torch.empty(len(sizes), n_samples, dtype=torch.int64, device=sizes.device)
    paired[:, 0::2] = drawn
    paired[:, 1::2] = sizes[:, None] - drawn[:, :n_samples // 2]
    return paired


def coalition_sub_bags(mask: torch.Tensor, members: torch.Tensor, n_samples: int
                       ) -> tuple[MaskBuilder, torch.Tensor]:
    """The sub-bags coalition_shapley evaluates, as (mask builder, needed (B, V)).

    members: (B, S, N) bool coalitions T. Variants: n_samples blocks of n + 1 (T, then T with
    instance j flipped), then n + 1 leave-one-out (full bag, bag - j), then n singles {j},
    then the empty bag: V = n_samples (n + 1) + 2 n + 2."""
    n_bags, n = mask.shape
    positions = torch.arange(n, device=mask.device)
    loo_start = n_samples * (n + 1)
    single_start, empty = loo_start + n + 1, loo_start + 2 * n + 1

    def sub_bag(bag: torch.Tensor, variant: torch.Tensor) -> torch.Tensor:
        sample, j = (variant // (n + 1)).clamp(max=n_samples - 1), variant % (n + 1)
        flip = positions[None, :] == (j - 1)[:, None]
        in_sample = (members[bag, sample] ^ flip) & mask[bag]
        loo = mask[bag] & (positions[None, :] != (variant - loo_start - 1)[:, None])
        single = positions[None, :] == (variant - single_start)[:, None]
        out = torch.where((variant < loo_start)[:, None], in_sample, loo)
        out = torch.where(((variant >= single_start) & (variant < empty))[:, None], single, out)
        return out & (variant < empty)[:, None]

    with_base = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)  # (B, 1 + N)
    needed = torch.cat([with_base[:, None, :].expand(n_bags, n_samples, n + 1)
                        .reshape(n_bags, -1), with_base, mask, torch.ones_like(mask[:, :1])],
                       dim=1)
    return sub_bag, needed


def coalition_combine(values: torch.Tensor, mask: torch.Tensor, members: torch.Tensor,
                      coalition_sizes: torch.Tensor) -> torch.Tensor:
    """phi (B, N) float64 from the values (B, V) of coalition_sub_bags' variants: exact outer
    strata, the mean middle-stratum marginal, then the efficiency shift."""
    n_bags, n_samples, n = members.shape
    sizes = mask.sum(dim=1)
    loo_start = n_samples * (n + 1)
    single_start, empty = loo_start + n + 1, loo_start + 2 * n + 1
    at = values[:, :loo_start].reshape(n_bags, n_samples, n + 1)
    full, without = values[:, loo_start], values[:, loo_start + 1:single_start]
    alone, empty_value = values[:, single_start:empty], values[:, empty]
    base, flipped = at[:, :, :1], at[:, :, 1:]
    gains = torch.where(members, base - flipped, flipped - base)  # (B, S, N)
    stratum = coalition_sizes[..., None] - members.long()  # |coalition without i|
    middle = (stratum >= 1) & (stratum <= (sizes - 2)[:, None, None]) & mask[:, None, :]
    count = middle.sum(dim=1)
    middle_mean = torch.where(middle, gains, torch.zeros_like(gains)).sum(dim=1) \
        / count.clamp(min=1)
    n_real = sizes.to(torch.float64)[:, None].clamp(min=1)
    outer = (alone - empty_value[:, None]) + (full[:, None] - without)
    outer = torch.where((sizes == 1)[:, None], outer / 2, outer)  # one stratum, counted twice
    phi = (outer + (n_real - 2).clamp(min=0) * middle_mean) / n_real
    phi = torch.where(mask, phi, torch.zeros_like(phi))
    shift = (full - empty_value - phi.sum(dim=1)) / n_real[:, 0]
    return phi + shift[:, None]


def coalition_shapley(context: ExplainContext, n_samples: int, seed: int, output: str,
                      max_batch: int | None, memory_mb: float | None = None,
                      antithetic: bool = True, bags: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """Stratified shared-coalition sampling. phi_i = (1/n) sum over strata s = 0..n-1 of the
    mean marginal f(S + i) - f(S) over coalitions S of size s without i.

    * The two outer strata are exact: s = 0 is f({i}) - f(empty), s = n-1 is f(bag) -
      f(bag - i) (2 n + 2 sub-bags per bag).
    * The n - 2 middle strata are sampled: coalitions T with |T| in 1..n-1 (systematically
      spread, one seeded offset; with antithetic each followed by its complement) give every
      instance its marginal at T: f(T + i) - f(T) if i is not in T, f(T) - f(T - i) if it is.
      Given that it falls in a middle stratum, an instance's marginal is at a size uniform on
      1..n-2 and a coalition uniform given its size, so the mean of those marginals is unbiased
      for the middle strata; the rare samples in an outer stratum are dropped. A coalition costs
      n_b + 1 sub-bags, like a permutation. All instances are measured against the same
      coalitions, so the noise that decides their ranks largely cancels (e.g. whether a
      coalition already holds a witness is shared by every instance).
    * A final equal shift of all phi_i makes the estimate exactly efficient (sum = f(bag) -
      f(empty)) without changing ranks.

    bags: (B,) bool, the bags to score (None: all); others get 0."""
    mask = context.mask
    n_bags, n = mask.shape
    keys = permutation_keys(n, n_samples, seed, antithetic).to(mask.device)
    keys = torch.where(mask[:, None, :], keys[None], torch.full_like(keys[None], math.inf))
    rank = keys.argsort(dim=-1, stable=True).argsort(dim=-1)  # (B, S, N)
    sizes = mask.sum(dim=1)
    # reversed keys order the complement first: its first n_b - t instances = bag minus T
    coalition_sizes = coalition_sizes_for(sizes, n_samples, seed, antithetic)
    members = (rank < coalition_sizes[..., None]) & mask[:, None, :]  # (B, S, N)
    sub_bag, needed = coalition_sub_bags(mask, members, n_samples)
    chosen = torch.ones_like(sizes, dtype=torch.bool) if bags is None else bags
    values = subset_values(context, needed.shape[1], sub_bag, needed & chosen[:, None], output,
                           max_batch, memory_mb).double()
    phi = coalition_combine(values, mask, members, coalition_sizes)
    return torch.where(mask & chosen[:, None], phi, torch.zeros_like(phi)).float()


#: Elements of the (bags, 2^n, n) gain tensor combined at once by exact Shapley.
EXACT_COMBINE_ELEMENTS = 1 << 22


def exact_shapley(context: ExplainContext, output: str, max_batch: int | None,
                  memory_mb: float | None = None, bags: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """phi_i = sum over S in bag minus i of |S|! (n-|S|-1)! / n! [f(S + i) - f(S)], over the
    2^(n_b) sub-bags of each bag's real instances (n_b <= MAX_EXACT_INSTANCES), whatever the
    padded width. bags: (B,) bool, the bags to score (None: all); others get 0."""
    mask = context.mask
    n_bags, n = mask.shape
    sizes = mask.sum(dim=1)
    chosen = torch.ones_like(sizes, dtype=torch.bool) if bags is None else bags
    largest = int(torch.where(chosen, sizes, torch.zeros_like(sizes)).max()) if n_bags else 0
    if largest > MAX_EXACT_INSTANCES:
        raise SpecError("exact", True, f"bags of <= {MAX_EXACT_INSTANCES} instances (this batch "
                        f"has one of {largest}); use sampling (exact=False)")
    scores = torch.zeros(n_bags, n, dtype=torch.float32, device=mask.device)
    if largest == 0:
        return scores
    # bit j of a code says whether the bag's j-th real instance is in S
    real_index = (mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, N)
    codes = torch.arange(2**largest, device=mask.device)
    bit_values = 2 ** torch.arange(largest, device=mask.device)

    def members_of(bag: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return mask[bag] & ((code[:, None] >> real_index[bag]) & 1).bool()

    exact_sizes = torch.where(chosen, sizes, torch.zeros_like(sizes))  # no 2^1000 overflow
    needed = chosen[:, None] & (codes[None, :] < (2 ** exact_sizes)[:, None])  # (B, 2^n)
    values = subset_values(context, 2**largest, members_of, needed, output, max_batch,
                           memory_mb).double()
    members = (codes[:, None] & bit_values[None, :]) > 0  # (2^n, n): is j in S
    with_j = codes[:, None] | bit_values[None, :]  # (2^n, n) code of S + j
    size = members.sum(dim=1).to(torch.float64)[None, :, None]  # |S|
    phi = torch.zeros(n_bags, largest, dtype=torch.float64, device=mask.device)
    step = max(1, EXACT_COMBINE_ELEMENTS // (2**largest * largest))
    for start in range(0, n_bags, step):
        part = slice(start, start + step)
        gain = values[part][:, with_j] - values[part][:, codes, None]  # (b, 2^n, n)
        bag_size = sizes[part].to(torch.float64)[:, None, None]
        log_weight = (torch.lgamma(size + 1) + torch.lgamma((bag_size - size).clamp(min=1))
                      - torch.lgamma(bag_size + 1))
        # S must lie in the bag, and j must be one of its real instances not in S
        valid = needed[part][:, :, None] & ~members[None] \
            & (torch.arange(largest, device=mask.device) < sizes[part][:, None])[:, None, :]
        weight = torch.where(valid, log_weight.exp(), torch.zeros_like(log_weight))
        phi[part] = (weight * gain).sum(dim=1)
    scores = phi.gather(1, real_index.clamp(max=largest - 1)).float()
    return torch.where(mask & chosen[:, None], scores, torch.zeros_like(scores))


SAMPLERS = {"coalition": coalition_shapley, "permutation": sampled_shapley}


@register_explainer("shapley", expensive=True,
                    description="Shapley values of instance presence (removal through the mask); "
                                "exact enumeration on small bags, shared-coalition sampling "
                                "otherwise.")
def shapley_scores(context: ExplainContext, n_samples: int | None = None, seed: int = 0,
                   exact: bool | None = None, output: str = "prob",
                   max_batch: int | None = None, antithetic: bool = True,
                   sampler: str = "coalition", memory_mb: float | None = None
                   ) -> torch.Tensor:
    """(B, N) Shapley value of each instance for the game S -> f(S) (f(empty) is the model on an
    empty bag).

    exact=None with n_samples=None (the defaults): exact values for bags of at most
    AUTO_EXACT_INSTANCES real instances, DEFAULT_SAMPLES samples for larger ones. exact=True:
    exact for every bag (at most MAX_EXACT_INSTANCES instances). exact=False, or an explicit
    n_samples: sampling for every bag. sampler: "coalition" (shared coalitions, see
    coalition_shapley) or "permutation" (sampled_shapley); a sample costs n_b + 1 head
    evaluations either way; exact costs 2^(n_b).
    """
    check_output(output)
    if n_samples is not None:
        n_samples = check_positive_int("n_samples", n_samples)
    Interval(int).require(seed, "seed")
    if exact is not None and not isinstance(exact, bool):
        raise SpecError("exact", exact, "None (exact on small bags), true or false")
    if not isinstance(antithetic, bool):
        raise SpecError("antithetic", antithetic, "true or false")
    if sampler not in SAMPLERS:
        raise SpecError("sampler", sampler, f"one of {sorted(SAMPLERS)}")
    if exact:
        return exact_shapley(context, output, max_batch, memory_mb)
    sizes = context.mask.sum(dim=1)
    auto = exact is None and n_samples is None
    small = sizes <= AUTO_EXACT_INSTANCES if auto else torch.zeros_like(sizes, dtype=torch.bool)
    scores = torch.zeros(context.mask.shape, dtype=torch.float32, device=context.mask.device)
    if bool(small.any()):
        scores = exact_shapley(context, output, max_batch, memory_mb, bags=small)
    if not bool(small.all()):
        sampled = SAMPLERS[sampler](context, n_samples or DEFAULT_SAMPLES, int(seed), output,
                                    max_batch, memory_mb, antithetic, bags=~small)
        scores = torch.where(small[:, None], scores, sampled)
    return scores
