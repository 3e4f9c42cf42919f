"""Explainer stage: shapes, padding, invariances, cross-checks against naive references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from attnsets.data.bags import Bag, Batch, collate
from attnsets.errors import SpecError
from attnsets.explain import (
    EXPLAINERS,
    available_methods,
    deletion_curve,
    deletion_curves,
    explain,
    explain_ensemble,
    random_deletion_curve,
    register_explainer,
)
from attnsets.explain.attention import attention_rollout
from attnsets.explain.base import ExplainContext
from attnsets.models import POOLINGS, InputInfo, ModelSpec, SetModel, SetOutput, build_model
from attnsets.models.base import masked_softmax
from attnsets.models.pooling import AttentionPooling

DIM = 3
VECTOR_INFO = InputInfo("vector", (DIM,), 2)
FAST_OPTIONS: dict[str, dict[str, object]] = {
    "integrated_gradients": {"n_steps": 16},
    "shapley": {"exact": True},
}
#: Methods exempt from the permutation test (sampled Shapley is tested separately).
NOT_EQUIVARIANT: set[str] = set()


def make_bag(rng: np.random.Generator, n: int, label: int | None = None) -> Bag:
    instances = rng.normal(size=(n, DIM)).astype(np.float32)
    return Bag(instances, int(rng.integers(0, 2)) if label is None else label,
               np.zeros(n, dtype=np.int64), np.zeros((n, 2), dtype=np.int8))


def permuted(bag: Bag, order: np.ndarray) -> Bag:
    return Bag(bag.instances[order], bag.label, bag.concepts[order], bag.evidence[order])


@pytest.fixture(scope="module")
def bags() -> list[Bag]:
    rng = np.random.default_rng(0)
    return [make_bag(rng, n) for n in (4, 6, 2, 5)]


def model_for(pooling: str, seed: int = 0) -> SetModel:
    return build_model(ModelSpec(pooling=pooling, embed_dim=8), VECTOR_INFO, seed=seed)


def pooling_names() -> list[str]:
    return POOLINGS.names()


# ---------------------------------------------------------------- handcrafted model

class FirstFeature(nn.Module):
    """Encoder h_i = x_i[0]: (M, d) -> (M, 1); the other features cannot matter."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1].float()


def handcrafted_model() -> SetModel:
    """Attention on h = x[0] with sharp scores 5 tanh(h); logit_1 = 3 z = -logit_0."""
    pooling = AttentionPooling(1, 2, attention_dim=1)
    with torch.no_grad():
        pooling.score[0].weight.fill_(1.0)
        pooling.score[0].bias.zero_()
        pooling.score[2].weight.fill_(5.0)
        pooling.score[2].bias.zero_()
        pooling.classifier.weight.copy_(torch.tensor([[-3.0], [3.0]]))
        pooling.classifier.bias.zero_()
    return SetModel(FirstFeature(), pooling)


def decisive_batch() -> tuple[Batch, list[int]]:
    """Bags whose instance feature 0 lies in [0.1, 1] except one decisive instance at 3.0."""
    rng = np.random.default_rng(1)
    bags, decisive = [], []
    for n in (5, 7, 3):
        instances = rng.normal(scale=3.0, size=(n, DIM)).astype(np.float32)
        instances[:, 0] = rng.uniform(0.1, 1.0, size=n)
        position = int(rng.integers(0, n))
        instances[position, 0] = 3.0
        decisive.append(position)
        bags.append(Bag(instances, 1, np.zeros(n, dtype=np.int64), np.zeros((n, 2), np.int8)))
    return collate(bags), decisive


def target_probability(model: SetModel, bag: Bag, target: int) -> float:
    """Reference value: the model on a freshly collated bag holding exactly these instances."""
    batch = collate([bag])
    with torch.no_grad():
        logits = model(batch.x, batch.mask).logits
    return float(torch.softmax(logits, -1)[0, target])


def sub_bag(bag: Bag, keep: list[int]) -> Bag:
    idx = np.asarray(keep, dtype=np.int64)
    return Bag(bag.instances[idx].reshape(len(idx), DIM), bag.label, bag.concepts[idx],
               bag.evidence[idx].reshape(len(idx), 2))


# ---------------------------------------------------------------- contract for every method

@pytest.mark.parametrize("pooling", pooling_names())
def test_every_method_shape_padding_and_invariances(pooling: str, bags: list[Bag]) -> None:
    model = model_for(pooling)
    batch = collate(bags)
    methods = available_methods(model)
    assert {"gradient", "leave_one_out", "shapley", "random"} <= set(methods)
    alone = collate([bags[0]])
    rng = np.random.default_rng(2)
    orders = [rng.permutation(len(b)) for b in bags]
    shuffled = collate([permuted(b, o) for b, o in zip(bags, orders, strict=True)])
    for method in methods:
        options = FAST_OPTIONS.get(method, {})
        scores = explain(model, batch, method, **options)
        assert scores.shape == batch.mask.shape and scores.dtype == torch.float32, method
        assert torch.isfinite(scores).all(), method
        assert (scores[~batch.mask] == 0).all(), method
        # bag 0 (size 4) is padded to 6 in the batch; alone it has no padding
        single = explain(model, alone, method, **options)
        torch.testing.assert_close(scores[0, :4], single[0], atol=1e-5, rtol=1e-5,
                                   msg=f"{method} on {pooling} depends on padding")
        if method in NOT_EQUIVARIANT:
            continue
        moved = explain(model, shuffled, method, **options)
        for b, order in enumerate(orders):
            torch.testing.assert_close(moved[b, :len(order)], scores[b, torch.as_tensor(order)],
                                       atol=1e-5, rtol=1e-5,
                                       msg=f"{method} on {pooling} not permutation equivariant")


@pytest.mark.parametrize("pooling", pooling_names())
def test_attention_methods_read_the_model_output(pooling: str, bags: list[Bag]) -> None:
    model = model_for(pooling)
    batch = collate(bags)
    with torch.no_grad():
        out = model(batch.x, batch.mask)
    methods = available_methods(model, batch)
    if out.attention is not None:
        torch.testing.assert_close(explain(model, batch, "attention"), out.attention)
    else:
        assert "attention" not in methods
        with pytest.raises(SpecError, match=f"attention.*{pooling}|{pooling}.*attention"):
            explain(model, batch, "attention")
    if out.head_attention is not None:
        last = out.head_attention.shape[1] - 1
        torch.testing.assert_close(explain(model, batch, "attention_head", head=last),
                                   out.head_attention[:, last])
        with pytest.raises(SpecError, match="head"):
            explain(model, batch, "attention_head", head=last + 1)
    if out.attention_norm is not None:
        torch.testing.assert_close(explain(model, batch, "attention_norm"), out.attention_norm)
    if out.instance_scores is not None:
        scores = explain(model, batch, "instance_scores", target=0)
        torch.testing.assert_close(scores, out.instance_scores[..., 0])
        torch.testing.assert_close(explain(model, batch, "additive", target=0), scores)
    else:
        with pytest.raises(SpecError, match="instance_scores"):
            explain(model, batch, "instance_scores")
    assert ("rollout" in methods) == (out.layer_attention is not None)


def test_methods_that_do_not_apply_raise_spec_errors(bags: list[Bag]) -> None:
    batch = collate(bags)
    if "mean" in POOLINGS:
        with pytest.raises(SpecError) as err:
            explain(model_for("mean"), batch, "attention")
        assert "'mean'" in str(err.value) and "method" in str(err.value)
    model = model_for("attention")
    with pytest.raises(SpecError, match="rollout.*'attention' gives no layer_attention"):
        explain(model, batch, "rollout")
    with pytest.raises(SpecError, match="method"):
        explain(model, batch, "no_such_method")
    with pytest.raises(SpecError, match="n_step"):
        explain(model, batch, "integrated_gradients", n_step=3)
    with pytest.raises(SpecError, match="output"):
        explain(model, batch, "leave_one_out", output="probability")
    with pytest.raises(SpecError, match="n_samples"):
        explain(model, batch, "shapley", n_samples=0)


# ---------------------------------------------------------------- targets, modes, ensembles

def test_target_resolution(bags: list[Bag]) -> None:
    model = model_for("attention")
    batch = collate(bags)
    for_one = explain(model, batch, "leave_one_out", target=1)
    # with two classes p_0 = 1 - p_1, so the removal effects flip sign
    torch.testing.assert_close(explain(model, batch, "leave_one_out", target=0), -for_one,
                               atol=1e-6, rtol=0)
    per_bag = torch.tensor([1, 0, 1, 0])
    mixed = explain(model, batch, "leave_one_out", target=per_bag)
    torch.testing.assert_close(mixed[0], for_one[0])
    torch.testing.assert_close(mixed[1], -for_one[1], atol=1e-6, rtol=0)
    # default: batch.target, the class batch.evidence refers to
    torch.testing.assert_close(explain(model, collate(bags, target=1), "leave_one_out"), for_one)
    for bad in (2, -1, torch.tensor([0, 1]), torch.tensor([0.5, 1.0, 0.0, 1.0])):
        with pytest.raises(SpecError, match="target"):
            explain(model, batch, "gradient", target=bad)


def test_explain_uses_eval_mode_and_restores_it(bags: list[Bag]) -> None:
    model = build_model(ModelSpec(pooling="attention", embed_dim=8,
                                  encoder_params={"hidden": 8}), VECTOR_INFO, seed=0)
    model.encoder.net.insert(2, nn.Dropout(0.9))  # random in train mode
    model.train()
    batch = collate(bags)
    first = explain(model, batch, "gradient")
    torch.testing.assert_close(explain(model, batch, "gradient"), first)
    assert model.training


def test_ensemble_stacks_members(bags: list[Bag]) -> None:
    members = [model_for("attention", seed=s) for s in range(3)]
    batch = collate(bags)
    stacked = explain_ensemble(members, batch, "attention")
    assert stacked.shape == (3, *batch.mask.shape)
    for k, member in enumerate(members):
        torch.testing.assert_close(stacked[k], explain(member, batch, "attention"))
    assert not torch.allclose(stacked[0], stacked[1])
    with pytest.raises(SpecError, match="members"):
        explain_ensemble([], batch, "attention")


def test_user_registered_method(bags: list[Bag]) -> None:
    @register_explainer("test_feature0", overwrite=True)
    def feature0(context: ExplainContext, scale: float = 1.0) -> torch.Tensor:
        return context.x[..., 0].float() * scale

    model = model_for("attention")
    batch = collate(bags)
    assert "test_feature0" in available_methods(model)
    scores = explain(model, batch, "test_feature0", scale=2.0)
    torch.testing.assert_close(scores, torch.where(batch.mask, 2 * batch.x[..., 0],
                                                   torch.zeros(())))
    with pytest.raises(SpecError, match="scales"):
        explain(model, batch, "test_feature0", scales=2.0)

    @register_explainer("test_wrong_shape", overwrite=True, requires=("attention",))
    def wrong_shape(context: ExplainContext) -> torch.Tensor:
        return context.x[..., 0].flatten()

    with pytest.raises(SpecError, match="test_wrong_shape"):
        explain(model, batch, "test_wrong_shape")
    if "mean" in POOLINGS:
        assert "test_wrong_shape" not in available_methods(model_for("mean"))
    with pytest.raises(SpecError, match="requires"):
        register_explainer("test_bad", requires=("gradients",))(feature0)
    assert "test_bad" not in EXPLAINERS


# ---------------------------------------------------------------- perturbation references

def test_leave_one_out_and_single_match_naive_loops(bags: list[Bag]) -> None:
    model = model_for("attention")
    batch = collate(bags)
    loo = explain(model, batch, "leave_one_out")
    single = explain(model, batch, "single", max_batch=3)  # several chunks
    loo_logit = explain(model, batch, "leave_one_out", output="logit")
    for b, bag in enumerate(bags):
        full = target_probability(model, bag, bag.label)
        for i in range(len(bag)):
            rest = [j for j in range(len(bag)) if j != i]
            without = target_probability(model, sub_bag(bag, rest), bag.label)
            assert loo[b, i].item() == pytest.approx(full - without, abs=1e-5)
            only = target_probability(model, sub_bag(bag, [i]), bag.label)
            assert single[b, i].item() == pytest.approx(only, abs=1e-5)
    with torch.no_grad():
        out = model(batch.x, batch.mask).logits
    # logit version: the full-bag term is the model's own logit
    bag0_rest = collate([sub_bag(bags[0], [1, 2, 3])])
    with torch.no_grad():
        rest_logit = model(bag0_rest.x, bag0_rest.mask).logits[0, bags[0].label]
    assert loo_logit[0, 0].item() == pytest.approx(
        (out[0, bags[0].label] - rest_logit).item(), abs=1e-5)


def naive_shapley(model: SetModel, bag: Bag, target: int) -> np.ndarray:
    n = len(bag)
    value = {subset: target_probability(model, sub_bag(bag, list(subset)), target)
             for r in range(n + 1) for subset in itertools.combinations(range(n), r)}
    phi = np.zeros(n)
    for i in range(n):
        for subset, f_subset in value.items():
            if i in subset:
                continue
            weight = math.factorial(len(subset)) * math.factorial(n - len(subset) - 1) \
                / math.factorial(n)
            phi[i] += weight * (value[tuple(sorted((*subset, i)))] - f_subset)
    return phi


def test_shapley_exact_matches_enumeration_and_sampling_converges(bags: list[Bag]) -> None:
    model = model_for("attention")
    small = [bags[0], bags[2]]  # sizes 4 and 2
    batch = collate(small)
    exact = explain(model, batch, "shapley", exact=True)
    sampled = explain(model, batch, "shapley", n_samples=3000, seed=3)
    for b, bag in enumerate(small):
        reference = naive_shapley(model, bag, bag.label)
        np.testing.assert_allclose(exact[b, :len(bag)].numpy(), reference, atol=1e-5)
        np.testing.assert_allclose(sampled[b, :len(bag)].numpy(), reference, atol=0.01)


def test_shapley_efficiency_symmetry_and_seeding(bags: list[Bag]) -> None:
    model = model_for("gated_attention" if "gated_attention" in POOLINGS else "attention")
    rng = np.random.default_rng(4)
    twin = make_bag(rng, 5, label=1)
    twin.instances[3] = twin.instances[1]  # instances 1 and 3 are interchangeable
    batch = collate([twin, bags[1], bags[3]])
    with torch.no_grad():
        h = model.encode(batch.x)
        full = torch.softmax(model.head(h, batch.mask).logits, -1)
        empty = torch.softmax(model.head(h, torch.zeros_like(batch.mask)).logits, -1)
    gap = (full - empty).gather(1, batch.target[:, None])[:, 0]
    sampled = explain(model, batch, "shapley", n_samples=7, seed=5)
    exact = explain(model, collate([twin]), "shapley", exact=True)
    # every sampled permutation telescopes to f(full) - f(empty): efficiency is exact
    torch.testing.assert_close(sampled.sum(1), gap, atol=1e-5, rtol=0)
    torch.testing.assert_close(exact.sum(1), gap[:1], atol=1e-5, rtol=0)
    assert exact[0, 1].item() == pytest.approx(exact[0, 3].item(), abs=1e-6)
    many = explain(model, collate([twin]), "shapley", n_samples=2000, seed=0)
    assert many[0, 1].item() == pytest.approx(many[0, 3].item(), abs=0.01)
    torch.testing.assert_close(explain(model, batch, "shapley", n_samples=7, seed=5), sampled)
    assert not torch.allclose(explain(model, batch, "shapley", n_samples=7, seed=6), sampled)
    with pytest.raises(SpecError, match="exact"):
        explain(model, collate([make_bag(rng, 15)]), "shapley", exact=True)


def test_sampled_shapley_does_not_depend_on_padding(bags: list[Bag]) -> None:
    model = model_for("attention")
    batch = explain(model, collate(bags), "shapley", n_samples=9, seed=1)
    alone = explain(model, collate([bags[3]]), "shapley", n_samples=9, seed=1)
    torch.testing.assert_close(batch[3, :5], alone[0], atol=1e-6, rtol=0)


def test_random_scores_are_seeded_uniforms(bags: list[Bag]) -> None:
    model = model_for("attention")
    batch = collate(bags)
    first = explain(model, batch, "random", seed=1)
    torch.testing.assert_close(explain(model, batch, "random", seed=1), first)
    assert not torch.allclose(explain(model, batch, "random", seed=2), first)
    real = first[batch.mask]
    assert ((real >= 0) & (real < 1)).all() and len(set(real.tolist())) == len(real)
    # over many distinct instances the values look uniform
    big = collate([make_bag(np.random.default_rng(9), 400)])
    values = explain(model, big, "random")[0].numpy()
    assert abs(values.mean() - 0.5) < 0.05 and abs((values < 0.25).mean() - 0.25) < 0.06


# ---------------------------------------------------------------- gradients

def test_integrated_gradients_completeness(bags: list[Bag]) -> None:
    model = model_for("attention")
    batch = collate(bags)
    scores = explain(model, batch, "integrated_gradients", n_steps=64)
    with torch.no_grad():
        at_x = model(batch.x, batch.mask).logits
        at_zero = model(torch.zeros_like(batch.x), batch.mask).logits
    gap = (at_x - at_zero).gather(1, batch.target[:, None])[:, 0]
    torch.testing.assert_close(scores.sum(1), gap.float(), atol=2e-3, rtol=1e-2)


def test_integrated_gradients_default_passes_are_bounded_and_exact(
        bags: list[Bag], monkeypatch: pytest.MonkeyPatch) -> None:
    """By default IG walks the path in passes of about IG_INSTANCES_PER_PASS instances (memory
    stays flat for big bags); the scores equal one pass over every path point."""
    import attnsets.explain.gradients as gradients

    model = model_for("transformer_cls")
    batch = collate(bags)
    whole = explain(model, batch, "integrated_gradients", n_steps=24,
                    internal_batch_size=24 * len(bags))
    calls: list[int] = []
    forward = model.forward

    def counting(x: torch.Tensor, mask: torch.Tensor):  # type: ignore[no-untyped-def]
        calls.append(x.shape[0])
        return forward(x, mask)

    monkeypatch.setattr(model, "forward", counting)
    monkeypatch.setattr(gradients, "IG_INSTANCES_PER_PASS", 5 * len(bags) * batch.x.shape[1])
    chunked = explain(model, batch, "integrated_gradients", n_steps=24)
    assert max(calls) <= 5 * len(bags) and len(calls) >= 24 // 5
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-4)


def test_gradient_methods_match_autograd(bags: list[Bag]) -> None:
    model = model_for("attention")
    batch = collate(bags)
    x = batch.x.clone().requires_grad_(True)
    logits = model(x, batch.mask).logits
    (grad,) = torch.autograd.grad(logits.gather(1, batch.target[:, None]).sum(), x)
    masked = batch.mask[..., None]
    torch.testing.assert_close(explain(model, batch, "gradient"),
                               (grad.abs() * masked).sum(-1))
    torch.testing.assert_close(explain(model, batch, "saliency"),
                               (grad.abs() * masked).sum(-1))
    torch.testing.assert_close(explain(model, batch, "grad_x_input"),
                               (grad * batch.x * masked).sum(-1))


def test_token_sequences_are_attributed_at_the_embedding() -> None:
    info = InputInfo("sequence", (6,), 2, vocab_size=5)
    model = build_model(ModelSpec(pooling="attention", embed_dim=8,
                                  encoder_params={"token_dim": 4, "channels": 6}), info, seed=0)
    rng = np.random.default_rng(5)
    seq_bags = []
    for n in (3, 5):
        tokens = rng.integers(1, 5, size=(n, 6))
        tokens[:, 4:] = 0  # trailing token padding
        seq_bags.append(Bag(tokens, 1, np.zeros(n, np.int64), np.zeros((n, 2), np.int8)))
    batch = collate(seq_bags)
    h = model.encode(batch.x).detach().requires_grad_(True)
    logits = model.head(h, batch.mask).logits
    (grad,) = torch.autograd.grad(logits[:, 1].sum(), h)
    torch.testing.assert_close(explain(model, batch, "grad_x_input"),
                               (grad * h.detach() * batch.mask[..., None]).sum(-1))
    scores = explain(model, batch, "integrated_gradients", n_steps=32)
    with torch.no_grad():
        gap = model.head(h, batch.mask).logits[:, 1] \
            - model.head(torch.zeros_like(h), batch.mask).logits[:, 1]
    torch.testing.assert_close(scores.sum(1), gap, atol=2e-3, rtol=1e-2)
    with pytest.raises(SpecError, match="wrt"):
        explain(model, batch, "gradient", wrt="input")
    assert explain(model, batch, "random").shape == batch.mask.shape


# ---------------------------------------------------------------- handcrafted ground truth

@pytest.mark.parametrize("method,options", [
    ("attention", {}), ("gradient", {}), ("grad_x_input", {}),
    ("integrated_gradients", {"n_steps": 32}), ("leave_one_out", {}), ("single", {}),
    ("shapley", {"n_samples": 16, "output": "logit"}), ("shapley", {"exact": True}),
    ("milli", {"n_samples": 1000}),
])
def test_decisive_instance_ranked_first(method: str, options: dict[str, object]) -> None:
    model = handcrafted_model()
    batch, decisive = decisive_batch()
    scores = explain(model, batch, method, **options)
    masked = scores.masked_fill(~batch.mask, -math.inf)
    assert masked.argmax(dim=1).tolist() == decisive, method


# ---------------------------------------------------------------- rollout

class SelfAttentionThenPool(nn.Module):
    """One single-head self-attention layer over the instances (no class token), then
    attention pooling; reports the layer map for rollout. Test-only pooling."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query, self.key = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.pool = AttentionPooling(dim, 2, attention_dim=4)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> SetOutput:
        scores = self.query(h) @ self.key(h).transpose(1, 2)
        mixing = masked_softmax(scores, mask[:, None, :]) * mask[:, :, None]
        pooled = self.pool(h + mixing @ h, mask)
        return pooled._replace(layer_attention=(mixing[:, None],))


def test_rollout_one_layer_is_identity_added_attention(bags: list[Bag]) -> None:
    if "transformer_cls" not in POOLINGS:
        pytest.skip("transformer_cls pooling not registered")
    model = build_model(ModelSpec(pooling="transformer_cls", embed_dim=8,
                                  pooling_params={"layers": 1}), VECTOR_INFO, seed=0)
    batch = collate(bags)
    with torch.no_grad():
        layer = model(batch.x, batch.mask).layer_attention[0].mean(1)  # (B, T, T)
    row = layer[:, 0] + torch.nn.functional.one_hot(torch.tensor(0), layer.shape[-1])
    expected = (row / row.sum(-1, keepdim=True))[:, 1:]
    torch.testing.assert_close(explain(model, batch, "rollout"), expected * batch.mask)


def test_rollout_multiplies_layers() -> None:
    torch.manual_seed(0)
    mask = torch.tensor([[True, True, True, False]])
    token_mask = torch.cat([torch.ones(1, 1, dtype=torch.bool), mask], dim=1)
    layers = [masked_softmax(torch.randn(1, 2, 5, 5), token_mask[:, None, None, :])
              for _ in range(2)]
    steps = []
    for layer in layers:
        mixed = layer.mean(1) + torch.eye(5)
        steps.append(mixed / mixed.sum(-1, keepdim=True))
    rollout = attention_rollout(layers, token_mask)
    torch.testing.assert_close(rollout[:, 0, 1:4], (steps[1] @ steps[0])[:, 0, 1:4])


def test_rollout_without_class_token_uses_pooling_attention(bags: list[Bag]) -> None:
    torch.manual_seed(0)
    model = SetModel(nn.Sequential(nn.Linear(DIM, 4), nn.ReLU()), SelfAttentionThenPool(4))
    batch = collate(bags)
    with torch.no_grad():
        out = model(batch.x, batch.mask)
    mixed = out.layer_attention[0][:, 0] + torch.diag_embed(batch.mask.float())
    mixed = mixed / mixed.sum(-1, keepdim=True).clamp(min=1)
    expected = torch.einsum("bt,bts->bs", out.attention, mixed)
    scores = explain(model, batch, "rollout")
    torch.testing.assert_close(scores, expected * batch.mask)
    torch.testing.assert_close(scores.sum(1), torch.ones(len(bags)))


# ---------------------------------------------------------------- deletion curves

def full_and_empty(model: SetModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) p_target of each whole bag and of the empty bag."""
    with torch.no_grad():
        h = model.encode(batch.x)
        full = torch.softmax(model.head(h, batch.mask).logits, -1)
        empty = torch.softmax(model.head(h, torch.zeros_like(batch.mask)).logits, -1)
    pick = batch.target[:, None]
    return full.gather(1, pick)[:, 0], empty.gather(1, pick)[:, 0]


def test_deletion_curves_shapes_endpoints_and_reference(bags: list[Bag]) -> None:
    model = model_for("attention")
    batch = collate(bags)
    scores = explain(model, batch, "leave_one_out")
    curves = deletion_curves(model, batch, scores, n_orders=4)
    width = batch.mask.shape[1]
    assert curves.ranked.shape == curves.random.shape == (len(bags), width + 1)
    full, empty = full_and_empty(model, batch)
    sizes = curves.sizes.tolist()
    for curve in (curves.ranked, curves.random):
        torch.testing.assert_close(curve[:, 0], full)
        for b, size in enumerate(sizes):
            assert torch.isfinite(curve[b, :size]).all() and curve[b, size:].isnan().all()
    with_empty = deletion_curves(model, batch, scores, n_orders=4, include_empty=True)
    for curve in (with_empty.ranked, with_empty.random):
        for b, size in enumerate(sizes):
            assert curve[b, size].item() == pytest.approx(empty[b].item(), abs=1e-6)
            assert curve[b, size + 1:].isnan().all()
    # naive reference for bag 1: rebuild the bag without its top-k instances
    bag = bags[1]
    order = np.argsort(-scores[1, :len(bag)].numpy(), kind="stable")
    for k in range(len(bag)):
        kept = sorted(order[k:].tolist())
        assert curves.ranked[1, k].item() == pytest.approx(
            target_probability(model, sub_bag(bag, kept), bag.label), abs=1e-5)
    short = deletion_curve(model, batch, scores.numpy(), steps=2, output="logit", max_batch=5)
    assert short.shape == (len(bags), 3)
    per_order = random_deletion_curve(model, batch, steps=width + 3, n_orders=3, average=False)
    assert per_order.shape == (3, len(bags), width + 4)
    torch.testing.assert_close(per_order.mean(0),
                               random_deletion_curve(model, batch, steps=width + 3, n_orders=3),
                               equal_nan=True)
    assert not torch.equal(per_order[0, 1, :6], per_order[1, 1, :6])


def test_deletion_monotone_on_handcrafted_model() -> None:
    model = handcrafted_model()
    batch, _ = decisive_batch()
    truth = batch.x[..., 0].float()
    ranked = deletion_curve(model, batch, truth, include_empty=True)
    sizes = batch.mask.sum(1).tolist()
    for b, size in enumerate(sizes):
        assert (ranked[b, :size + 1].diff() <= 1e-6).all()
        assert ranked[b, 0] > 0.99 and ranked[b, size].item() == pytest.approx(0.5)
    random = random_deletion_curve(model, batch, n_orders=8)
    # removing the decisive instance first loses more than a random order, at every step
    for b, size in enumerate(sizes):
        assert (ranked[b, 1:size] < random[b, 1:size]).all()
    loo = explain(model, batch, "leave_one_out")
    # leave-one-out finds the decisive instance, so its first deletion step is the truth's
    torch.testing.assert_close(deletion_curve(model, batch, loo)[:, 1], ranked[:, 1])
    faithfulness = pytest.importorskip("attnsets.metrics.faithfulness")
    result = faithfulness.aopc(deletion_curve(model, batch, truth).numpy(),
                               random_deletion_curve(model, batch, average=False).numpy())
    assert result["aopc_relative"] > 0.01  # p saturates near 1: the gap is small but real


def test_deletion_ties_and_random_orders_ignore_padding(bags: list[Bag]) -> None:
    model = model_for("attention")
    alone, padded = collate([bags[0]]), collate(bags)
    torch.testing.assert_close(random_deletion_curve(model, padded, n_orders=3, seed=2)[0, :5],
                               random_deletion_curve(model, alone, n_orders=3, seed=2)[0],
                               atol=1e-6, rtol=0, equal_nan=True)
    # all scores tied: the removal order comes from the seeded instance hash, not positions
    tied = deletion_curve(model, padded, torch.zeros(padded.mask.shape), seed=4)
    torch.testing.assert_close(tied[0, :5], deletion_curve(model, alone, torch.zeros(1, 4),
                                                           seed=4)[0], equal_nan=True)
    assert not torch.equal(tied, deletion_curve(model, padded, torch.zeros(padded.mask.shape),
                                                seed=5))


def test_deletion_rejects_bad_input(bags: list[Bag]) -> None:
    model = model_for("attention")
    batch = collate(bags)
    with pytest.raises(SpecError, match="scores"):
        deletion_curve(model, batch, torch.zeros(2, 3))
    bad = torch.zeros(batch.mask.shape)
    bad[0, 0] = math.nan
    with pytest.raises(SpecError, match="scores"):
        deletion_curve(model, batch, bad)
    bad[0, 0] = 0.0
    bad[2, 4] = math.nan  # padding may hold anything
    assert deletion_curve(model, batch, bad).shape == (len(bags), batch.mask.shape[1] + 1)
    with pytest.raises(SpecError, match="steps"):
        deletion_curve(model, batch, torch.zeros(batch.mask.shape), steps=-1)
    with pytest.raises(SpecError, match="n_orders"):
        random_deletion_curve(model, batch, n_orders=0)
    with pytest.raises(SpecError, match="output"):
        deletion_curves(model, batch, torch.zeros(batch.mask.shape), output="p")


def test_an_mlp_head_keeps_every_method_that_applies(bags: list[Bag]) -> None:
    """No registered explainer reads the readout's weights: the methods for an attention model
    are the same with an MLP head, and each runs on it (instance_scores, the one method that
    reads a per-instance decomposition, applies only to poolings that refuse a head)."""
    from attnsets.models import HeadSpec

    linear = model_for("attention")
    mlp = build_model(ModelSpec(pooling="attention", embed_dim=8,
                                head=HeadSpec(hidden=(8,), dropout=0.15)),
                      VECTOR_INFO, seed=0)
    assert available_methods(mlp) == available_methods(linear)
    from attnsets.explain import EXPLAINERS

    batch = collate(bags[:3])
    built_in = [name for name in available_methods(mlp)  # not those other tests registered
                if EXPLAINERS.get(name).fn.__module__.startswith("attnsets.")]
    assert "attention" in built_in and "shapley" in built_in
    for method in built_in:
        scores = explain(mlp, batch, method)
        assert scores.shape == batch.mask.shape and torch.isfinite(scores).all(), method
