"""The fast perturbation path (logits-only heads, sub-bags at their own width, memory-sized
passes) against plain loops over sub-bags and against the previous implementation, kept in
benchmarks/reference_perturbation.py; exact and antithetic Shapley."""

from __future__ import annotations

import importlib.util
import itertools
import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from torch import nn

from attnsets.data.bags import Bag, Batch, collate
from attnsets.errors import SpecError
from attnsets.explain import deletion_curve, explain, random_deletion_curve
from attnsets.explain import perturbation as fast
from attnsets.models import POOLINGS, InputInfo, ModelSpec, SetModel, SetOutput, build_model
from attnsets.models.base import logits_only, masked_softmax, takes_need_maps

DIM = 3
INFO = InputInfo("vector", (DIM,), 2)
ATOL = 1e-5
#: Bags of different sizes in one padded batch (B > 1, padding in all but the widest).
SIZES = (5, 1, 7, 3)


def load_reference() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "reference_perturbation.py"
    spec = importlib.util.spec_from_file_location("reference_perturbation", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = load_reference()


def make_bag(rng: np.random.Generator, n: int, label: int) -> Bag:
    return Bag(rng.normal(size=(n, DIM)).astype(np.float32), label, np.zeros(n, dtype=np.int64),
               np.zeros((n, 2), dtype=np.int8))


@pytest.fixture(scope="module")
def bags() -> list[Bag]:
    rng = np.random.default_rng(7)
    return [make_bag(rng, n, b % 2) for b, n in enumerate(SIZES)]


def model_for(pooling: str) -> SetModel:
    # sharper weights than the default init, so that sub-bags really differ
    name, _, layers = pooling.partition(":")  # "transformer_cls:1": a one-layer variant
    params = {"layers": int(layers)} if layers else {}
    model = build_model(ModelSpec(pooling=name, embed_dim=8, pooling_params=params), INFO,
                        seed=1).eval()
    with torch.no_grad():
        for parameter in model.pooling.parameters():
            parameter.mul_(2.0)
    return model


def value(model: SetModel, bag: Bag, keep: list[int], output: str = "prob") -> float:
    """Plain reference: the model run on a freshly collated bag of exactly these instances."""
    idx = np.asarray(keep or [0], dtype=np.int64)  # the empty bag: one masked instance
    x = torch.from_numpy(bag.instances[idx].reshape(len(idx), DIM))[None]
    with torch.no_grad():
        logits = model(x, torch.full((1, len(idx)), bool(keep))).logits[0]
    return float(torch.softmax(logits, -1)[bag.label] if output == "prob" else logits[bag.label])


def naive_shapley(model: SetModel, bag: Bag) -> np.ndarray:
    n = len(bag)
    values = {s: value(model, bag, list(s)) for r in range(n + 1)
              for s in itertools.combinations(range(n), r)}
    phi = np.zeros(n)
    for i in range(n):
        for s, f_s in values.items():
            if i not in s:
                weight = math.factorial(len(s)) * math.factorial(n - len(s) - 1) / math.factorial(n)
                phi[i] += weight * (values[tuple(sorted((*s, i)))] - f_s)
    return phi


class WidthSpy:
    """Records (sub-bags, width) of every logits-only pass of a pooling."""

    def __init__(self, model: SetModel) -> None:
        self.shapes: list[tuple[int, int]] = []
        # an instance attribute shadows the method
        model.pooling.forward_logits = self._spy(model.pooling.forward_logits)

    def _spy(self, forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
             ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        def spy(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            self.shapes.append((h.shape[0], h.shape[1]))
            return forward(h, mask)

        return spy


POOLING_NAMES = POOLINGS.names()
#: Every pooling, plus the one- and three-layer transformer_cls (its fast path treats the last
#: layer specially).
VARIANTS = [*POOLING_NAMES, "transformer_cls:1", "transformer_cls:3"]


@pytest.mark.parametrize("pooling", POOLING_NAMES)
def test_logits_only_head_equals_full_forward(pooling: str) -> None:
    model = model_for(pooling)
    torch.manual_seed(0)
    h = torch.randn(4, 9, 8)
    mask = torch.rand(4, 9) > 0.4
    mask[0], mask[3] = True, False  # a full bag and an empty one
    h[~mask] = float("nan")  # padding must not leak, in either path
    with torch.no_grad():
        full = model.head(h, mask)
        logits = model.head(h, mask, need_maps=False)
    torch.testing.assert_close(logits.logits, full.logits, atol=ATOL, rtol=0)
    if hasattr(model.pooling, "forward_logits"):
        assert logits.attention is None and logits.layer_attention is None
    assert model.pooling.permutation_invariant


@pytest.mark.parametrize("pooling", VARIANTS)
def test_training_path_gives_the_full_forwards_logits_and_gradients(pooling: str) -> None:
    """Training and prediction read logits_only: the same loss gradient as the full forward,
    with the fused kernel and with the matmul form the vectorised ensemble uses (fused=False)."""
    torch.manual_seed(1)
    x = torch.randn(4, 9, DIM)
    mask = torch.rand(4, 9) > 0.4
    mask[0] = True
    x[~mask] = 0.0  # as collate pads (NaN would reach the encoder's weight gradient as 0 * NaN)

    def loss_and_grads(model: SetModel, read: Callable[[], torch.Tensor]
                       ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        logits = read()
        torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 1, 0])).backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    model = model_for(pooling)
    full, full_grads = loss_and_grads(model, lambda: model(x, mask).logits)
    for fused in (True, False):
        for module in model.modules():
            if hasattr(module, "fused"):
                module.fused = fused
        fast_logits, fast_grads = loss_and_grads(model, lambda: logits_only(model, x, mask))
        torch.testing.assert_close(fast_logits, full, atol=ATOL, rtol=0)
        assert len(fast_grads) == len(full_grads)
        for fast_grad, full_grad in zip(fast_grads, full_grads, strict=True):
            torch.testing.assert_close(fast_grad, full_grad, atol=ATOL, rtol=1e-4)


def test_logits_only_falls_back_for_an_old_two_argument_forward() -> None:
    class OldStyle(SetModel):
        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> SetOutput:  # type: ignore[override]
            return self.head(self.encode(x), mask)

    base = model_for("transformer_cls")
    old = OldStyle(base.encoder, base.pooling, base.spec, base.info)
    x, mask = torch.randn(2, 5, DIM), torch.ones(2, 5, dtype=torch.bool)
    assert not takes_need_maps(old) and takes_need_maps(base)
    with torch.no_grad():
        torch.testing.assert_close(logits_only(old, x, mask), base(x, mask).logits)


@pytest.mark.parametrize("pooling", VARIANTS)
def test_leave_one_out_and_single_match_plain_loop(pooling: str, bags: list[Bag]) -> None:
    model = model_for(pooling)
    batch = collate(bags)
    for output in ("prob", "logit"):
        loo = explain(model, batch, "leave_one_out", output=output)
        single = explain(model, batch, "single", output=output, max_batch=2)
        for b, bag in enumerate(bags):
            n = len(bag)
            full = value(model, bag, list(range(n)), output)
            expect_loo = [full - value(model, bag, [j for j in range(n) if j != i], output)
                          for i in range(n)]
            expect_single = [value(model, bag, [i], output) for i in range(n)]
            np.testing.assert_allclose(loo[b, :n].numpy(), expect_loo, atol=ATOL)
            np.testing.assert_allclose(single[b, :n].numpy(), expect_single, atol=ATOL)
            assert bool((loo[b, n:] == 0).all()) and bool((single[b, n:] == 0).all())


@pytest.mark.parametrize("pooling", VARIANTS)
def test_every_path_matches_the_previous_implementation(pooling: str, bags: list[Bag]) -> None:
    model = model_for(pooling)
    batch = collate(bags)
    # one sub-bag per pass, then the default budget: chunking must not change anything
    for memory_mb in (1e-6, None):
        close = {"atol": ATOL, "rtol": 0}
        torch.testing.assert_close(explain(model, batch, "leave_one_out", memory_mb=memory_mb),
                                   reference.leave_one_out(model, batch), **close)
        torch.testing.assert_close(explain(model, batch, "single", memory_mb=memory_mb),
                                   reference.single(model, batch), **close)
        torch.testing.assert_close(
            explain(model, batch, "shapley", n_samples=6, seed=2, antithetic=False,
                    sampler="permutation", output="logit", memory_mb=memory_mb),
            reference.shapley(model, batch, n_samples=6, seed=2, output="logit"), **close)
        small = collate([bags[0], bags[1], bags[3]])  # padded width 5: the old exact enumerates it
        torch.testing.assert_close(explain(model, small, "shapley", exact=True,
                                           memory_mb=memory_mb),
                                   reference.shapley(model, small, exact=True), **close)
        scores = explain(model, batch, "random", seed=3)
        for include_empty in (False, True):
            torch.testing.assert_close(
                deletion_curve(model, batch, scores, include_empty=include_empty,
                               memory_mb=memory_mb),
                reference.deletion_curve(model, batch, scores, include_empty=include_empty),
                equal_nan=True, **close)
            torch.testing.assert_close(
                random_deletion_curve(model, batch, n_orders=3, seed=1, average=False,
                                      include_empty=include_empty, steps=4,
                                      memory_mb=memory_mb),
                reference.random_deletion_curve(model, batch, n_orders=3, seed=1, average=False,
                                                include_empty=include_empty, steps=4),
                equal_nan=True, **close)


@pytest.mark.parametrize("pooling", ["transformer_cls", "set_transformer", "attention"])
def test_sub_bags_run_at_their_own_width(pooling: str, bags: list[Bag]) -> None:
    model = model_for(pooling)
    batch = collate(bags)
    spy = WidthSpy(model)
    explain(model, batch, "single")
    assert {width for _, width in spy.shapes} == {1}
    assert sum(count for count, _ in spy.shapes) == sum(SIZES)
    spy.shapes.clear()
    explain(model, batch, "leave_one_out")
    assert spy.shapes == [(len(SIZES) + sum(SIZES), max(SIZES))]  # one pass at the bag width
    spy.shapes.clear()
    explain(model, batch, "leave_one_out", memory_mb=1e-6)  # one sub-bag per pass
    # largest first: the full bags, then n_b - 1 wide sub-bags (the singleton's empty one last,
    # one masked slot wide)
    expected = sorted([*SIZES, *(n - 1 for n in SIZES for _ in range(n))], reverse=True)
    assert spy.shapes == [(1, max(1, n)) for n in expected]


def test_passes_respect_the_memory_budget(bags: list[Bag]) -> None:
    model = model_for("transformer_cls")
    batch = collate(bags * 8)  # 32 bags
    spy = WidthSpy(model)
    width, dim = batch.mask.shape[1], 8
    one = fast.bytes_per_sub_bag(model, width, width, dim)
    budget_mb = 5.5 * one / 2**20  # room for 5 of the widest sub-bags per pass
    explain(model, batch, "leave_one_out", memory_mb=budget_mb)
    assert all(count * fast.bytes_per_sub_bag(model, w, width, dim) <= budget_mb * 2**20
               for count, w in spy.shapes)
    assert spy.shapes[0][0] == 5
    spy.shapes.clear()
    explain(model, batch, "leave_one_out", memory_mb=budget_mb, max_batch=2)
    assert max(count for count, _ in spy.shapes) == 2
    # the largest intermediate of self-attention grows as N^2, of the others as N
    sizes = [model.pooling.intermediate_floats(n) for n in (100, 200)]
    assert sizes[1] > 3.9 * sizes[0]
    linear = model_for("set_transformer").pooling
    assert linear.intermediate_floats(200) == 2 * linear.intermediate_floats(100)
    monkey = fast.MEMORY_MB
    try:
        fast.MEMORY_MB = budget_mb  # the module default is what memory_mb=None uses
        spy.shapes.clear()
        explain(model, batch, "leave_one_out")
        assert spy.shapes[0][0] == 5
    finally:
        fast.MEMORY_MB = monkey
    for bad in (0, -1.0, "big", True, math.inf):
        with pytest.raises(SpecError, match="memory_mb"):
            explain(model, batch, "single", memory_mb=bad)


class PositionalPooling(nn.Module):
    """Test-only pooling that is not permutation invariant (a weight per position): sub-bags
    must then keep the full padded width and their positions."""

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.position = nn.Parameter(torch.linspace(-1.0, 1.0, width))
        self.score = nn.Linear(dim, 1)
        self.classifier = nn.Linear(dim, 2)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> SetOutput:
        scores = self.score(h).squeeze(-1) + 3 * self.position[:h.shape[1]]
        attention = masked_softmax(scores, mask)
        z = torch.einsum("bn,bnd->bd", attention, h.masked_fill(~mask[..., None], 0.0))
        return SetOutput(self.classifier(z), attention)


def test_position_dependent_pooling_keeps_padded_width(bags: list[Bag]) -> None:
    torch.manual_seed(0)
    model = SetModel(nn.Linear(DIM, 4), PositionalPooling(4, max(SIZES))).eval()
    batch = collate(bags)
    torch.testing.assert_close(explain(model, batch, "leave_one_out"),
                               reference.leave_one_out(model, batch), atol=ATOL, rtol=0)
    torch.testing.assert_close(explain(model, batch, "single"),
                               reference.single(model, batch), atol=ATOL, rtol=0)


# ---------------------------------------------------------------- Shapley

@pytest.mark.parametrize("pooling", ["attention", "transformer_cls", "set_transformer"])
def test_exact_shapley_matches_brute_force_and_is_efficient(pooling: str,
                                                            bags: list[Bag]) -> None:
    model = model_for(pooling)
    batch = collate(bags)  # sizes 5, 1, 7, 3: all <= AUTO_EXACT_INSTANCES
    exact = explain(model, batch, "shapley", exact=True)
    default = explain(model, batch, "shapley")  # small bags: exact by default
    torch.testing.assert_close(default, exact)
    for b, bag in enumerate(bags):
        n = len(bag)
        np.testing.assert_allclose(exact[b, :n].numpy(), naive_shapley(model, bag), atol=ATOL)
        gap = value(model, bag, list(range(n))) - value(model, bag, [])
        assert exact[b].sum().item() == pytest.approx(gap, abs=ATOL)


def test_default_shapley_mixes_exact_and_antithetic_sampling(bags: list[Bag]) -> None:
    model = model_for("gated_attention")
    rng = np.random.default_rng(3)
    big = make_bag(rng, fast.AUTO_EXACT_INSTANCES + 2, 1)
    batch = collate([bags[0], big])
    default = explain(model, batch, "shapley")
    exact_small = explain(model, collate([bags[0]]), "shapley", exact=True)
    torch.testing.assert_close(default[0, :5], exact_small[0], atol=ATOL, rtol=0)
    sampled = explain(model, collate([big]), "shapley", exact=False)
    torch.testing.assert_close(default[1], sampled[0], atol=ATOL, rtol=0)
    # efficiency holds for every sampled permutation, so for the estimate too
    gap = value(model, big, list(range(len(big)))) - value(model, big, [])
    assert default[1].sum().item() == pytest.approx(gap, abs=ATOL)
    assert sampled.shape == (1, len(big))
    with pytest.raises(SpecError, match="exact"):
        explain(model, batch, "shapley", exact="auto")


def test_antithetic_permutations_are_reversed_pairs() -> None:
    keys = fast.permutation_keys(6, 5, seed=0, antithetic=True)
    orders = keys.argsort(dim=1)
    torch.testing.assert_close(orders[1], orders[0].flip(0))
    torch.testing.assert_close(orders[3], orders[2].flip(0))
    plain = fast.permutation_keys(6, 5, seed=0)
    torch.testing.assert_close(keys[0::2], plain[0::2])  # the pairs start from the plain draws
    assert not torch.equal(keys[4], 1 - keys[3])  # an odd count leaves the last one unpaired


@pytest.mark.parametrize("sampler", ["permutation", "coalition"])
def test_antithetic_sampling_is_closer_to_exact_than_plain(sampler: str,
                                                           bags: list[Bag]) -> None:
    # same number of head evaluations; the error of the paired estimator is smaller on average
    model = model_for("attention")
    batch = collate([bags[0], bags[2]])
    exact = explain(model, batch, "shapley", exact=True)
    errors = {}
    for antithetic in (False, True):
        errors[antithetic] = np.mean([
            (explain(model, batch, "shapley", n_samples=8, seed=seed, antithetic=antithetic,
                     sampler=sampler) - exact).abs().sum().item() for seed in range(20)])
    assert errors[True] < errors[False]


def test_coalition_sampler_is_unbiased_efficient_and_beats_permutations(bags: list[Bag]) -> None:
    model = model_for("gated_attention")
    batch = collate([bags[0], bags[2], bags[1]])  # sizes 5, 7 and a single instance
    exact = explain(model, batch, "shapley", exact=True)
    many = explain(model, batch, "shapley", n_samples=3000, seed=1, sampler="coalition")
    torch.testing.assert_close(many, exact, atol=5e-3, rtol=0)
    gaps = [value(model, bag, list(range(len(bag)))) - value(model, bag, [])
            for bag in (bags[0], bags[2], bags[1])]
    errors = {}
    for sampler in ("permutation", "coalition"):
        runs = [explain(model, batch, "shapley", n_samples=10, seed=seed, sampler=sampler)
                for seed in range(10)]
        for run in runs:
            np.testing.assert_allclose(run.sum(1).numpy(), gaps, atol=ATOL)
        errors[sampler] = np.mean([(run - exact).abs().sum().item() for run in runs])
    assert errors["coalition"] < errors["permutation"]
    # the outer strata are exact, so bags of 1 or 2 instances (no middle stratum) are exact
    rng = np.random.default_rng(5)
    tiny = collate([bags[1], make_bag(rng, 2, 1)])
    torch.testing.assert_close(explain(model, tiny, "shapley", n_samples=3, seed=0),
                               explain(model, tiny, "shapley", exact=True), atol=ATOL, rtol=0)
    # padding does not change a bag's samples: alone or in the batch, the same values
    alone = explain(model, collate([bags[2]]), "shapley", n_samples=9, seed=3)
    torch.testing.assert_close(explain(model, batch, "shapley", n_samples=9, seed=3)[1],
                               alone[0], atol=1e-6, rtol=0)


def test_shapley_rejects_bad_options(bags: list[Bag]) -> None:
    model = model_for("attention")
    batch: Batch = collate(bags)
    with pytest.raises(SpecError, match="sampler"):
        explain(model, batch, "shapley", sampler="kernel")
    with pytest.raises(SpecError, match="antithetic"):
        explain(model, batch, "shapley", antithetic=1)
    with pytest.raises(SpecError, match="n_samples"):
        explain(model, batch, "shapley", n_samples=0)
    rng = np.random.default_rng(0)
    with pytest.raises(SpecError, match="exact"):
        explain(model, collate([make_bag(rng, fast.MAX_EXACT_INSTANCES + 1, 0)]), "shapley",
                exact=True)
