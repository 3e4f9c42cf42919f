"""MILLI (Early, Evers, Ramchurn, ICLR 2022, "Model Agnostic Interpretability for Multiple
Instance Learning"): a local linear surrogate fitted on coalitions of a bag's instances.

Written from the paper's description; the steps, for one bag of n real instances:

1. An initial ordering ranks the instances by how far each one alone moves the model away from
   a reference class: importance_i = 1 - p_c({i}) (c = `order_class`, class 0 by default: in
   MILLI's data sets class 0 is "no key instance"); rank 0 = the most important.
2. The bag-specific kernel turns a rank x in 0..k (k = n - 1) into an inclusion probability
       pi(x) = (2 alpha - 1) (1 - x / k) exp(-beta x) + 1 - alpha          (beta >= 0)
       pi(x) = (1 - 2 alpha) (x / k) exp(|beta| (x - k)) + alpha           (beta < 0)
   (beta's sign is flipped first when alpha > 0.5), so pi runs from alpha at the top-ranked
   instance to 1 - alpha at the last one and beta bends the curve.
3. Coalitions: each instance joins independently with probability pi(rank); a coalition that
   is empty or the whole bag is drawn again. Paired sampling adds each coalition's complement.
4. Every coalition S is evaluated by true removal, f(S) = the model on S alone (`output`), and
   weighted by the mean pi of its members.
5. A weighted linear regression f(S) ~ b + sum_{i in S} phi_i (intercept free, a 1e-10 ridge on
   the phi as in the paper's least-squares fit) gives the attributions phi_i.

Sampling follows the instances, not their positions: the uniforms that decide membership are
drawn rank-major from one seeded stream, so a bag gets the same coalitions alone or padded
among others, and permuting its instances permutes its scores (up to ties in step 1).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from attnsets.errors import SpecError
from attnsets.explain.base import ExplainContext, check_positive_int, register_explainer
from attnsets.explain.perturbation import check_output, single_scores, subset_values

#: Redraws allowed for a coalition that came out empty or full; a sample that is still
#: invalid after them (bags of 1 or 2 instances with extreme alpha) gets weight 0.
MAX_ROUNDS = 16
#: Ridge on the attributions (not the intercept) of the surrogate's weighted least squares;
#: keeps the fit defined when coalitions do not separate two instances (bags of 2).
RIDGE = 1e-10


def inclusion_probability(rank: torch.Tensor, sizes: torch.Tensor, alpha: float, beta: float
                          ) -> torch.Tensor:
    """MILLI's kernel pi(x): rank (B, N) int (0 = most important), sizes (B,) real instances
    -> (B, N) float64 probabilities of joining a coalition."""
    if alpha > 0.5:
        beta = -beta
    x = rank.to(torch.float64)
    k = (sizes.to(torch.float64) - 1).clamp(min=1)[:, None]
    if beta >= 0:
        return (2 * alpha - 1) * (1 - x / k) * torch.exp(-beta * x) + 1 - alpha
    return (1 - 2 * alpha) * (x / k) * torch.exp(abs(beta) * (x - k)) + alpha


def initial_rank(context: ExplainContext, order_class: int | None, output: str,
                 max_batch: int | None, memory_mb: float | None) -> torch.Tensor:
    """(B, N) rank of each real instance by 1 - f_c({i}) (c = order_class), or by f_t({i})
    for the explained class t when order_class is None; padding ranks after every real one."""
    if order_class is None:
        importance = single_scores(context, output, max_batch, memory_mb)
    else:
        other = replace(context, target=torch.full_like(context.target, order_class))
        other.__dict__["embedding"] = context.embedding  # share the one encoding pass
        importance = -single_scores(other, output, max_batch, memory_mb)
    keys = torch.where(context.mask, -importance.double(), torch.full_like(importance.double(),
                                                                           math.inf))
    return keys.argsort(dim=1, stable=True).argsort(dim=1)


def draw_coalitions(pi: torch.Tensor, rank: torch.Tensor, mask: torch.Tensor, n_samples: int,
                    seed: int, paired: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(coalitions (B, S, N) bool, valid (B, S) bool). A draw keeps the first of MAX_ROUNDS
    candidates that is neither empty nor the whole bag; paired: odd samples are complements."""
    n_bags, n = mask.shape
    draws = math.ceil(n_samples / 2) if paired else n_samples
    # rank-major: the uniforms of the first m ranks do not depend on the padded width n
    uniforms = torch.from_numpy(np.random.default_rng(seed).random((n, MAX_ROUNDS, draws)))
    uniforms = uniforms.to(mask.device)[rank]  # (B, N, R, D): instance of rank r gets row r
    candidates = (uniforms < pi[:, :, None, None]) & mask[:, :, None, None]
    counts = candidates.sum(dim=1)  # (B, R, D)
    ok = (counts > 0) & (counts < mask.sum(dim=1)[:, None, None])
    first = ok.to(torch.int8).argmax(dim=1)  # (B, D): first valid round (0 if none)
    index = first[:, None, None, :].expand(n_bags, n, 1, draws)
    chosen = candidates.gather(2, index).squeeze(2).transpose(1, 2)  # (B, D, N)
    valid = ok.any(dim=1)
    if not paired:
        return chosen, valid
    both = torch.stack([chosen, ~chosen & mask[:, None, :]], dim=2).reshape(n_bags, 2 * draws, n)
    return both[:, :n_samples], valid.repeat_interleave(2, dim=1)[:, :n_samples]


def weighted_surrogate(coalitions: torch.Tensor, values: torch.Tensor, weights: torch.Tensor
                       ) -> torch.Tensor:
    """Weighted least squares of values ~ b + coalitions @ phi per bag.
    coalitions: (B, S, N) bool, values, weights: (B, S) -> phi (B, N) float64."""
    n_bags, _, n = coalitions.shape
    design = torch.cat([torch.ones_like(values[..., None]), coalitions.double()], dim=-1)
    weighted = design * weights[..., None]
    gram = weighted.transpose(1, 2) @ design  # (B, N + 1, N + 1)
    gram = gram + RIDGE * torch.eye(n + 1, dtype=gram.dtype, device=gram.device)
    rhs = (weighted * values[..., None]).sum(dim=1)  # (B, N + 1)
    return torch.linalg.solve(gram, rhs)[:, 1:]


def check_milli_options(alpha: float, beta: float, seed: int, paired: bool,
                        order_class: int | None, n_classes: int) -> None:
    for name, value in (("alpha", alpha), ("beta", beta)):
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value):
            raise SpecError(name, value, "a finite number")
    if not 0 <= alpha <= 1:
        raise SpecError("alpha", alpha, "a probability in [0, 1]")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise SpecError("seed", seed, "an integer")
    if not isinstance(paired, bool):
        raise SpecError("paired", paired, "true or false")
    if order_class is not None and (isinstance(order_class, bool)
                                    or not isinstance(order_class, int)
                                    or not 0 <= order_class < n_classes):
        raise SpecError("order_class", order_class,
                        f"None (the explained class) or a class in 0..{n_classes - 1}")


@register_explainer("milli", expensive=True,
                    description="MILLI (Early et al. 2022): weighted linear surrogate on "
                                "coalitions drawn with the bag-specific rank kernel; removal "
                                "through the mask.")
def milli_scores(context: ExplainContext, n_samples: int = 150, alpha: float = 0.05,
                 beta: float = 0.01, seed: int = 0, paired: bool = True,
                 order_class: int | None = 0, output: str = "prob",
                 max_batch: int | None = None, memory_mb: float | None = None) -> torch.Tensor:
    """(B, N) MILLI attributions for the target class (signed: < 0 refutes it). Cost: n_b
    single-instance evaluations for the ordering, then n_samples sub-bags per bag. A bag of one
    instance gets f({i}) - f(empty), the surrogate's exact answer there."""
    check_output(output)
    n_samples = check_positive_int("n_samples", n_samples)
    check_milli_options(alpha, beta, seed, paired, order_class,
                        int(context.output.logits.shape[-1]))
    mask = context.mask
    sizes = mask.sum(dim=1)
    rank = initial_rank(context, order_class, output, max_batch, memory_mb)
    pi = torch.where(mask, inclusion_probability(rank, sizes, float(alpha), float(beta)),
                     torch.zeros(mask.shape, dtype=torch.float64, device=mask.device))
    coalitions, valid = draw_coalitions(pi, rank, mask, n_samples, int(seed), paired)
    singletons = sizes == 1
    # variant n_samples is the empty bag, needed only by one-instance bags
    needed = torch.cat([valid & (sizes > 1)[:, None], singletons[:, None]], dim=1)

    def sub_bag(bag: torch.Tensor, variant: torch.Tensor) -> torch.Tensor:
        sample = variant.clamp(max=n_samples - 1)
        return coalitions[bag, sample] & (variant < n_samples)[:, None]

    values = subset_values(context, n_samples + 1, sub_bag, needed, output, max_batch,
                           memory_mb).double()
    members = coalitions.sum(dim=-1).clamp(min=1)
    weights = (coalitions.double() * pi[:, None, :]).sum(dim=-1) / members
    weights = torch.where(needed[:, :n_samples], weights, torch.zeros_like(weights))
    phi = weighted_surrogate(coalitions, values[:, :n_samples], weights)
    if bool(singletons.any()):
        alone = single_scores(context, output, max_batch, memory_mb).double()
        phi = torch.where(singletons[:, None], alone - values[:, n_samples:], phi)
    return torch.where(mask, phi, torch.zeros_like(phi)).float()
