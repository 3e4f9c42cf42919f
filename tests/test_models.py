"""Set models: output contract, invariances, exact padding, vmap ensembles, errors, chunking."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from attnsets.errors import SpecError
from attnsets.models import (
    POOLINGS,
    HeadSpec,
    InputInfo,
    ModelSpec,
    SetModel,
    SetOutput,
    attention_pool_large,
    build_model,
)
from attnsets.models.set_transformer import MultiHeadAttention

DIM = 5
EMBED = 8
VECTOR = InputInfo("vector", (DIM,), 3)
ALL_POOLINGS = POOLINGS.names()
#: attention is a softmax over the instances only (sums to 1 per bag and per head)
SOFTMAX_POOLINGS = {"attention", "gated_attention", "multihead_attention", "additive",
                    "set_transformer"}
NO_ATTENTION = {"mean", "max", "instance_max"}
INSTANCE_SCORES = {"additive", "instance_max"}
LAYERED = {"set_transformer", "transformer_cls"}
ATOL = 1e-5
EXAMPLES = settings(max_examples=8, deadline=None)

ENCODER_CASES = {
    "mlp": InputInfo("vector", (DIM,), 2),
    "cnn_8x8": InputInfo("image", (1, 8, 8), 2),
    "cnn_28x28": InputInfo("image", (1, 28, 28), 2),
    "seq_cnn": InputInfo("sequence", (12,), 2, vocab_size=21),
}


def make_model(pooling: str, info: InputInfo = VECTOR, seed: int = 0, **params: object) -> SetModel:
    return build_model(ModelSpec(pooling=pooling, embed_dim=EMBED, pooling_params=params),
                       info, seed=seed)


def random_instances(info: InputInfo, shape: tuple[int, ...], gen: torch.Generator,
                     scale: float = 1.0) -> torch.Tensor:
    """Instances of `info`'s kind with leading dims `shape`; `scale` > 1 makes garbage."""
    if info.kind == "sequence":
        tokens = torch.randint(1, info.vocab_size, (*shape, *info.instance_shape), generator=gen)
        # random trailing padding inside each sequence
        lengths = torch.randint(1, info.instance_shape[0] + 1, (*shape, 1), generator=gen)
        return tokens * (torch.arange(info.instance_shape[0]) < lengths)
    return scale * torch.randn(*shape, *info.instance_shape, generator=gen)


def assert_close(a: torch.Tensor | None, b: torch.Tensor | None, atol: float = ATOL) -> None:
    assert (a is None) == (b is None)
    if a is not None and b is not None:
        torch.testing.assert_close(a, b, atol=atol, rtol=0)


def per_instance_fields(out: SetOutput) -> dict[str, torch.Tensor | None]:
    """Outputs indexed by instance on their last (or instance) axis, normalised to (..., N)."""
    return {
        "attention": out.attention,
        "attention_norm": out.attention_norm,
        "head_attention": out.head_attention,
        "instance_scores": None if out.instance_scores is None
        else out.instance_scores.transpose(1, 2),
    }


# ---------------------------------------------------------------- contract and shapes


@pytest.mark.parametrize("pooling", ALL_POOLINGS)
def test_output_shapes_follow_the_contract(pooling: str) -> None:
    gen = torch.Generator().manual_seed(1)
    model = make_model(pooling)
    x = torch.randn(3, 6, DIM, generator=gen)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2, [True] + [False] * 5])
    out = model(x, mask)
    assert out.logits.shape == (3, 3)
    assert torch.isfinite(out.logits).all()
    if pooling in NO_ATTENTION:
        assert out.attention is None and out.head_attention is None
        assert out.attention_norm is None
    else:
        assert out.attention is not None and out.head_attention is not None
        assert out.attention_norm is not None
        assert out.attention.shape == out.attention_norm.shape == (3, 6)
        heads = out.head_attention.shape[1]
        assert out.head_attention.shape == (3, heads, 6)
        assert_close(out.head_attention.mean(dim=1), out.attention)
        assert (out.attention >= 0).all() and (out.attention_norm >= 0).all()
    if pooling in INSTANCE_SCORES:
        assert out.instance_scores is not None and out.instance_scores.shape == (3, 6, 3)
    else:
        assert out.instance_scores is None
    if pooling in LAYERED:
        assert out.layer_attention is not None and len(out.layer_attention) >= 2
        for layer in out.layer_attention:
            assert layer.shape[0] == 3 and layer.shape[2:] == (7, 7)
    else:
        assert out.layer_attention is None


@pytest.mark.parametrize("pooling", ALL_POOLINGS)
def test_padded_positions_get_exactly_zero(pooling: str) -> None:
    gen = torch.Generator().manual_seed(2)
    model = make_model(pooling)
    mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4])
    out = model(1e3 * torch.randn(2, 7, DIM, generator=gen), mask)
    for name, value in per_instance_fields(out).items():
        if value is not None:
            assert (value[1, ..., 3:] == 0).all(), name
    for layer in out.layer_attention or ():
        padded_tokens = torch.arange(1, 8)[~mask[1]]
        assert (layer[1][:, padded_tokens, :] == 0).all()
        assert (layer[1][:, :, padded_tokens] == 0).all()


@pytest.mark.parametrize("pooling", ALL_POOLINGS)
def test_nan_embeddings_at_padding_cannot_reach_any_output(pooling: str) -> None:
    """The pooling alone: NaN/inf where the encoder saw padding gives the same outputs as 0."""
    gen = torch.Generator().manual_seed(3)
    pool = make_model(pooling).pooling
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    h = torch.randn(2, 5, EMBED, generator=gen)
    poisoned = h.clone()
    poisoned[1, 2] = float("nan")
    poisoned[1, 3:] = float("inf")
    clean = h.masked_fill(~mask.unsqueeze(-1), 0.0)
    for got, want in zip(pool(poisoned, mask), pool(clean, mask), strict=True):
        if isinstance(got, tuple):
            assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
        else:
            assert (got is None and want is None) or torch.equal(got, want)


@pytest.mark.parametrize("pooling", sorted(SOFTMAX_POOLINGS))
def test_softmax_attention_sums_to_one_over_real_instances(pooling: str) -> None:
    gen = torch.Generator().manual_seed(4)
    model = make_model(pooling)
    mask = torch.tensor([[True] * 6, [True] * 2 + [False] * 4])
    out = model(torch.randn(2, 6, DIM, generator=gen), mask)
    assert out.attention is not None and out.head_attention is not None
    assert_close(out.attention.sum(dim=1), torch.ones(2))
    assert_close(out.head_attention.sum(dim=2), torch.ones_like(out.head_attention[..., 0]))


@pytest.mark.parametrize("pooling", sorted(LAYERED))
def test_layer_attention_rows_are_distributions(pooling: str) -> None:
    gen = torch.Generator().manual_seed(5)
    model = make_model(pooling)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    out = model(torch.randn(2, 5, DIM, generator=gen), mask)
    assert out.layer_attention is not None
    real_tokens = torch.cat([torch.ones(2, 1, dtype=torch.bool), mask], dim=1)  # (B, N+1)
    for layer in out.layer_attention:
        row_sums = layer.sum(dim=-1)  # (B, H, N+1)
        expected = real_tokens.unsqueeze(1).expand_as(row_sums).float()
        assert_close(row_sums, expected)
    last = out.layer_attention[-1]
    # the reported attention is the read-out token's row of the last map
    assert_close(out.attention, last[:, :, 0, 1:].mean(dim=1))


def test_transformer_cls_attention_is_the_class_row_without_self_attention() -> None:
    gen = torch.Generator().manual_seed(6)
    out = make_model("transformer_cls")(torch.randn(2, 4, DIM, generator=gen),
                                        torch.ones(2, 4, dtype=torch.bool))
    assert out.attention is not None and out.layer_attention is not None
    self_attention = out.layer_attention[-1][:, :, 0, 0].mean(dim=1)
    assert_close(out.attention.sum(dim=1) + self_attention, torch.ones(2))
    assert (self_attention > 0).all()


# ---------------------------------------------------------------- invariances


@pytest.mark.parametrize("pooling", ALL_POOLINGS)
@EXAMPLES
@given(n=st.integers(1, 10), seed=st.integers(0, 2**16), data=st.data())
def test_permuting_instances_permutes_per_instance_outputs(pooling: str, n: int, seed: int,
                                                           data: st.DataObject) -> None:
    perm = torch.tensor(data.draw(st.permutations(range(n))))
    model = make_model(pooling, seed=seed % 3)
    x = torch.randn(1, n, DIM, generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(1, n, dtype=torch.bool)
    out, permuted = model(x, mask), model(x[:, perm], mask)
    assert_close(permuted.logits, out.logits)
    for name, value in per_instance_fields(out).items():
        other = per_instance_fields(permuted)[name]
        assert_close(other, None if value is None else value[..., perm])
    tokens = torch.cat([torch.zeros(1, dtype=torch.long), perm + 1])
    for layer, layer_permuted in zip(out.layer_attention or (), permuted.layer_attention or (),
                                     strict=True):
        assert_close(layer_permuted, layer[:, :, tokens][:, :, :, tokens])


def check_padding_invariance(model: SetModel, info: InputInfo, n: int, longest: int, slot: int,
                             seed: int) -> None:
    """A bag alone vs. the same bag at `slot` in a batch padded to `longest` with garbage."""
    gen = torch.Generator().manual_seed(seed)
    bag = random_instances(info, (n,), gen)
    alone = model(bag.unsqueeze(0), torch.ones(1, n, dtype=torch.bool))
    sizes = [longest, max(1, longest // 2), n]
    sizes[2], sizes[slot] = sizes[slot], n
    x = random_instances(info, (3, longest), gen, scale=1e3)  # padding slots hold garbage
    x[slot, :n] = bag
    mask = torch.arange(longest) < torch.tensor(sizes).unsqueeze(1)
    batched = model(x, mask)
    assert_close(batched.logits[slot], alone.logits[0])
    for name, value in per_instance_fields(alone).items():
        other = per_instance_fields(batched)[name]
        assert_close(None if other is None else other[slot, ..., :n],
                     None if value is None else value[0])
        if other is not None:
            assert (other[slot, ..., n:] == 0).all(), name
    for layer_alone, layer in zip(alone.layer_attention or (), batched.layer_attention or (),
                                  strict=True):
        assert_close(layer[slot, :, :n + 1, :n + 1], layer_alone[0])


@pytest.mark.parametrize("pooling", ALL_POOLINGS)
@EXAMPLES
@given(n=st.integers(1, 8), extra=st.integers(1, 6), slot=st.integers(0, 2),
       seed=st.integers(0, 2**16))
def test_padding_with_garbage_changes_nothing(pooling: str, n: int, extra: int, slot: int,
                                              seed: int) -> None:
    check_padding_invariance(make_model(pooling, seed=seed % 3), VECTOR, n, n + extra, slot, seed)


@pytest.mark.parametrize("pooling", ALL_POOLINGS)
def test_four_classes_forward_and_backward(pooling: str) -> None:
    gen = torch.Generator().manual_seed(7)
    info = InputInfo("vector", (DIM,), 4)
    model = make_model(pooling, info)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    x = 1e3 * torch.randn(2, 6, DIM, generator=gen)
    x[mask] = torch.randn(9, DIM, generator=gen)
    out = model(x, mask)
    assert out.logits.shape == (2, 4)
    if out.instance_scores is not None:
        assert out.instance_scores.shape == (2, 6, 4)
    F.cross_entropy(out.logits, torch.tensor([3, 1])).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


# ---------------------------------------------------------------- hand-computed cases


def test_mean_and_max_poolings_match_hand_computation() -> None:
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 5, DIM, generator=gen)
    mask = torch.tensor([[True] * 5, [True] * 2 + [False] * 3])
    for pooling, reduce in (("mean", lambda h: h.mean(dim=0)),
                            ("max", lambda h: h.max(dim=0).values)):
        model = make_model(pooling)
        h = model.encode(x)
        expected = torch.stack([model.pooling.classifier(reduce(h[b][mask[b]])) for b in range(2)])
        assert_close(model(x, mask).logits, expected)


@pytest.mark.parametrize("pooling", ["attention", "gated_attention"])
def test_ilse_attention_matches_hand_computation(pooling: str) -> None:
    gen = torch.Generator().manual_seed(9)
    model = make_model(pooling)
    pool = model.pooling
    x = torch.randn(1, 6, DIM, generator=gen)
    h = model.encode(x)[0]
    if pooling == "attention":
        scores = pool.score(h).squeeze(-1)
    else:
        gated = torch.tanh(h @ pool.content.weight.T + pool.content.bias) * torch.sigmoid(
            h @ pool.gate.weight.T + pool.gate.bias)
        scores = gated @ pool.weight.weight[0] + pool.weight.bias
    weights = torch.exp(scores - scores.max())
    weights = weights / weights.sum()
    out = model(x, torch.ones(1, 6, dtype=torch.bool))
    assert_close(out.attention[0], weights)
    assert_close(out.logits[0], pool.classifier(weights @ h))
    assert_close(out.attention_norm[0], weights * h.norm(dim=-1))


def test_multihead_attention_pooling_matches_hand_computation() -> None:
    gen = torch.Generator().manual_seed(10)
    model = make_model("multihead_attention", heads=3, attention_dim=4, head_dim=2)
    pool = model.pooling
    x = torch.randn(1, 5, DIM, generator=gen)
    h = model.encode(x)[0]  # (N, D)
    pooled, norms, head_weights = [], [], []
    for k in range(3):
        keys = torch.tanh(h @ pool.keys.weight[4 * k:4 * k + 4].T + pool.keys.bias[4 * k:4 * k + 4])
        weights = torch.softmax(keys @ pool.queries[k], dim=0)
        values = h @ pool.values.weight[2 * k:2 * k + 2].T + pool.values.bias[2 * k:2 * k + 2]
        pooled.append(weights @ values)
        norms.append(weights * values.norm(dim=-1))
        head_weights.append(weights)
    out = model(x, torch.ones(1, 5, dtype=torch.bool))
    assert_close(out.head_attention[0], torch.stack(head_weights))
    assert_close(out.logits[0], pool.classifier(torch.cat(pooled)))
    assert_close(out.attention_norm[0], torch.stack(norms).mean(dim=0))


def test_additive_contributions_decompose_the_logits() -> None:
    gen = torch.Generator().manual_seed(11)
    model = make_model("additive", InputInfo("vector", (DIM,), 4))
    with torch.no_grad():
        model.pooling.bias.copy_(torch.randn(4, generator=gen))
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    x = torch.randn(2, 6, DIM, generator=gen)
    out = model(x, mask)
    assert out.instance_scores is not None and out.attention is not None
    assert_close(out.instance_scores.sum(dim=1) + model.pooling.bias, out.logits)
    # c_i = p(a_i h_i) = a_i p(h_i): contributions are attention times instance scores
    h = model.encode(x).masked_fill(~mask.unsqueeze(-1), 0)
    per_instance = model.pooling.instance_classifier(h) * mask.unsqueeze(-1)
    assert_close(out.instance_scores, out.attention.unsqueeze(-1) * per_instance)
    assert_close(out.attention_norm, out.instance_scores.norm(dim=-1))


def test_instance_max_logits_are_the_max_instance_scores() -> None:
    gen = torch.Generator().manual_seed(12)
    model = make_model("instance_max", hidden=6)
    mask = torch.tensor([[True] * 4, [True] + [False] * 3])
    x = torch.randn(2, 4, DIM, generator=gen)
    out = model(x, mask)
    assert out.instance_scores is not None
    h = model.encode(x)
    expected = model.pooling.instance_classifier(h)
    assert_close(out.instance_scores[mask], expected[mask])
    assert_close(out.logits[0], expected[0].max(dim=0).values)
    assert_close(out.logits[1], expected[1, 0])


def test_our_multihead_attention_matches_torch_reference() -> None:
    """Our explicit q/k/v attention equals nn.MultiheadAttention given the same weights."""
    gen = torch.Generator().manual_seed(13)
    torch.manual_seed(13)
    ours = MultiHeadAttention(dim=8, heads=2, head_dim=4)
    reference = nn.MultiheadAttention(8, 2, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.cat([ours.q.weight, ours.k.weight, ours.v.weight]))
        reference.in_proj_bias.copy_(torch.cat([ours.q.bias, ours.k.bias, ours.v.bias]))
        reference.out_proj.weight.copy_(ours.o.weight)
        reference.out_proj.bias.copy_(ours.o.bias)
    query = torch.randn(2, 3, 8, generator=gen)
    keys = torch.randn(2, 5, 8, generator=gen)
    key_mask = torch.tensor([[True] * 5, [True, True, False, True, False]])
    got = ours(query, keys, key_mask)
    want, want_weights = reference(query, keys, keys, key_padding_mask=~key_mask,
                                   average_attn_weights=False)
    assert_close(got.out, want)
    assert_close(got.weights, want_weights)
    # Kobayashi norms: ||W_O^h v_hk|| is the norm of head h's output for a one-hot attention
    norms = ours.value_norms(got.values)
    v = keys @ ours.v.weight.T + ours.v.bias
    for head in range(2):
        part = v[..., 4 * head:4 * head + 4] @ ours.o.weight[:, 4 * head:4 * head + 4].T
        assert_close(norms[:, head], part.norm(dim=-1))


# ---------------------------------------------------------------- ensembles under vmap


def check_vmap_matches_members(models: list[SetModel], x: torch.Tensor,
                               mask: torch.Tensor) -> None:
    params, buffers = stack_module_state(models)  # type: ignore[arg-type]
    skeleton = copy.deepcopy(models[0]).to("meta")

    def forward(p: dict, b: dict, x: torch.Tensor, mask: torch.Tensor) -> dict:
        return functional_call(skeleton, (p, b), (x, mask)).present()

    def loss(p: dict, b: dict, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = functional_call(skeleton, (p, b), (x, mask)).logits
        return F.cross_entropy(logits, torch.zeros(len(x), dtype=torch.long))

    stacked = vmap(forward, in_dims=(0, 0, None, None))(params, buffers, x, mask)
    grads = vmap(grad(loss), in_dims=(0, 0, None, None))(params, buffers, x, mask)
    for k, member in enumerate(models):
        single = member(x, mask).present()
        assert stacked.keys() == single.keys()
        for name, want in single.items():
            if isinstance(want, tuple):
                for got, want_layer in zip(stacked[name], want, strict=True):
                    assert_close(got[k], want_layer)
            else:
                assert_close(stacked[name][k], want)
        member.zero_grad()
        loss(dict(member.named_parameters()), dict(member.named_buffers()), x, mask).backward()
        for name, param in member.named_parameters():
            assert_close(grads[name][k], param.grad, atol=1e-4)


@pytest.mark.parametrize("pooling", ALL_POOLINGS)
def test_vmap_over_stacked_members_equals_each_member(pooling: str) -> None:
    gen = torch.Generator().manual_seed(14)
    models = [make_model(pooling, seed=s) for s in range(3)]
    mask = torch.tensor([[True] * 5, [True] * 2 + [False] * 3])
    check_vmap_matches_members(models, torch.randn(2, 5, DIM, generator=gen), mask)


# ---------------------------------------------------------------- encoders


@pytest.mark.parametrize("case", sorted(ENCODER_CASES))
def test_encoder_shapes_invariances_and_vmap(case: str) -> None:
    info = ENCODER_CASES[case]
    gen = torch.Generator().manual_seed(15)
    model = make_model("attention", info)
    x = random_instances(info, (2, 4), gen)
    assert model.encode(x).shape == (2, 4, EMBED)
    mask = torch.tensor([[True] * 4, [True] * 3 + [False]])
    assert model(x, mask).logits.shape == (2, 2)
    perm = torch.tensor([2, 0, 3, 1])
    full = torch.ones(2, 4, dtype=torch.bool)
    out, permuted = model(x, full), model(x[:, perm], full)
    assert_close(permuted.logits, out.logits)
    assert_close(permuted.attention, out.attention[:, perm])
    check_padding_invariance(model, info, n=3, longest=5, slot=1, seed=16)
    check_vmap_matches_members([make_model("attention", info, seed=s) for s in range(2)], x, mask)


def test_cnn_flattened_size_follows_the_image_size() -> None:
    for side, cells in ((8, 2 * 2), (28, 7 * 7), (9, 2 * 2)):
        model = make_model("attention", InputInfo("image", (1, side, side), 2))
        linear = [m for m in model.encoder.modules() if isinstance(m, nn.Linear)]
        assert linear[0].in_features == 50 * cells


def test_seq_cnn_ignores_trailing_padding_and_the_padding_embedding() -> None:
    gen = torch.Generator().manual_seed(17)
    short, long = (InputInfo("sequence", (length,), 2, vocab_size=21) for length in (10, 16))
    encoder_short = make_model("attention", short, seed=3).encoder
    encoder_long = make_model("attention", long, seed=3).encoder
    tokens = torch.randint(1, 21, (4, 10), generator=gen)
    tokens[1, 6:] = 0
    tokens[2, 1:] = 0
    padded = torch.cat([tokens, torch.zeros(4, 6, dtype=torch.long)], dim=1)
    assert_close(encoder_long(padded), encoder_short(tokens))
    with torch.no_grad():  # even a drifted padding embedding must not matter
        encoder_long.embed.weight[0] = 100.0
    assert_close(encoder_long(padded), encoder_short(tokens))
    empty = encoder_long(torch.zeros(1, 16, dtype=torch.long))
    assert_close(empty[0], torch.relu(encoder_long.out[0].bias))


# ---------------------------------------------------------------- errors and registration


def test_unknown_pooling_names_the_field_and_the_choices() -> None:
    with pytest.raises(SpecError) as err:
        make_model("no_such_pooling")
    assert err.value.field == "model.pooling"
    assert "set_transformer" in str(err.value)


@pytest.mark.parametrize(("pooling", "params", "field"), [
    ("attention", {"bogus": 1}, "model.pooling_params.bogus"),
    ("attention", {"in_dim": 3}, "model.pooling_params.in_dim"),
    ("attention", {"attention_dim": -3}, "model.pooling_params.attention_dim"),
    ("multihead_attention", {"heads": 0}, "model.pooling_params.heads"),
    ("set_transformer", {"inducing": 0}, "model.pooling_params.inducing"),
    ("set_transformer", {"layer_norm": "yes"}, "model.pooling_params.layer_norm"),
    ("transformer_cls", {"layers": 1.5}, "model.pooling_params.layers"),
    ("additive", {"hidden": -1}, "model.pooling_params.hidden"),
])
def test_bad_pooling_params_name_the_field(pooling: str, params: dict, field: str) -> None:
    with pytest.raises(SpecError) as err:
        make_model(pooling, **params)
    assert err.value.field == field


@pytest.mark.parametrize(("info", "params", "field"), [
    (VECTOR, {"hidden": 0}, "model.encoder_params.hidden"),
    (VECTOR, {"width": 3}, "model.encoder_params.width"),
    (ENCODER_CASES["cnn_8x8"], {"kernel_size": 4}, "model.encoder_params.kernel_size"),
    (ENCODER_CASES["cnn_8x8"], {"channels": [8, 0]}, "model.encoder_params.channels"),
    (InputInfo("image", (1, 3, 3), 2), {}, "model.encoder"),
    (ENCODER_CASES["seq_cnn"], {"layers": 0}, "model.encoder_params.layers"),
])
def test_bad_encoder_params_name_the_field(info: InputInfo, params: dict, field: str) -> None:
    with pytest.raises(SpecError) as err:
        build_model(ModelSpec(embed_dim=EMBED, encoder_params=params), info)
    assert err.value.field == field


def test_seq_cnn_refuses_data_without_a_vocabulary() -> None:
    with pytest.raises(SpecError) as err:
        build_model(ModelSpec(encoder="seq_cnn"), VECTOR)
    assert err.value.field == "model.encoder"


def test_a_user_registered_pooling_is_built_by_name() -> None:
    class ScaledSumPooling(nn.Module):
        def __init__(self, in_dim: int, n_classes: int, scale: float = 1.0) -> None:
            super().__init__()
            if scale <= 0:
                raise SpecError("scale", scale, "a number > 0")
            self.scale = scale
            self.classifier = nn.Linear(in_dim, n_classes)

        def forward(self, h: torch.Tensor, mask: torch.Tensor) -> SetOutput:
            return SetOutput(self.classifier(self.scale * (h * mask.unsqueeze(-1)).sum(dim=1)))

    POOLINGS.register("test_scaled_sum")(ScaledSumPooling)
    try:
        with pytest.raises(ValueError, match="already registered"):
            POOLINGS.register("test_scaled_sum")(ScaledSumPooling)
        model = make_model("test_scaled_sum", scale=2.0)
        assert isinstance(model.pooling, ScaledSumPooling)
        x = torch.randn(1, 3, DIM)
        h = model.encode(x)[0]
        assert_close(model(x, torch.ones(1, 3, dtype=torch.bool)).logits[0],
                     model.pooling.classifier(2.0 * h.sum(dim=0)))
        with pytest.raises(SpecError) as err:
            make_model("test_scaled_sum", scale=-1.0)
        assert err.value.field == "model.pooling_params.scale"
    finally:
        POOLINGS._items.pop("test_scaled_sum", None)


# ---------------------------------------------------------------- chunked large bags


@pytest.mark.parametrize("pooling", ["attention", "gated_attention"])
def test_chunked_pass_equals_plain_forward(pooling: str) -> None:
    gen = torch.Generator().manual_seed(18)
    model = make_model(pooling, InputInfo("vector", (DIM,), 4))
    x = torch.randn(20_000, DIM, generator=gen)
    with torch.no_grad():
        plain = model(x.unsqueeze(0), torch.ones(1, len(x), dtype=torch.bool))
    chunked = attention_pool_large(model, x, chunk_size=3_001)
    assert chunked.attention is not None and chunked.attention.shape == (1, 20_000)
    assert_close(chunked.logits, plain.logits)
    assert_close(chunked.attention, plain.attention)
    assert_close(chunked.attention_norm, plain.attention_norm)
    assert_close(chunked.head_attention, plain.head_attention)
    # the same bag given batched (1, N, d) or as a numpy array
    assert_close(attention_pool_large(model, x.unsqueeze(0), chunk_size=7_000).logits,
                 plain.logits)
    assert_close(attention_pool_large(model, x.numpy(), chunk_size=20_000).logits, plain.logits)


@pytest.mark.parametrize("descending", [False, True])
def test_chunked_softmax_is_stable_for_widely_spread_scores(descending: bool) -> None:
    """Scores span over a thousand units, so exp without a running maximum overflows even in
    float64 (the accumulators' precision). Rising scores force a rescaling of the sums at every
    chunk; falling scores need the maximum kept."""
    gen = torch.Generator().manual_seed(19)
    model = make_model("attention")
    with torch.no_grad():
        model.pooling.score[2].weight.mul_(3000.0)
        x = torch.randn(5_000, DIM, generator=gen)
        scores = model.pooling.attention_logits(model.encode(x.unsqueeze(0)))[0]
        x = x[scores.argsort(descending=descending)]
        assert float(scores.max() - scores.min()) > 1000.0  # float64 exp overflows past ~709
        plain = model(x.unsqueeze(0), torch.ones(1, len(x), dtype=torch.bool))
    chunked = attention_pool_large(model, x, chunk_size=512)
    assert_close(chunked.logits, plain.logits)
    assert_close(chunked.attention, plain.attention)


def test_chunked_refuses_other_poolings_and_bad_chunks() -> None:
    x = np.zeros((10, DIM), dtype=np.float32)
    with pytest.raises(SpecError) as err:
        attention_pool_large(make_model("mean"), x)
    assert err.value.field == "model.pooling"
    with pytest.raises(SpecError) as err:
        attention_pool_large(make_model("attention"), x, chunk_size=0)
    assert err.value.field == "chunk_size"
    with pytest.raises(SpecError) as err:
        attention_pool_large(make_model("attention"), np.zeros((2, 10, DIM), dtype=np.float32))
    assert err.value.field == "x"


# ---------------------------------------------------------------- readout heads

#: An MLP head with dropout, the form configs use: [Linear, ReLU, Dropout] then Linear.
MLP_HEAD = HeadSpec(hidden=(16,), dropout=0.15)
HEAD_POOLINGS = [name for name in ALL_POOLINGS if getattr(POOLINGS.get(name), "accepts_head",
                                                          False)]


def make_head_model(pooling: str, info: InputInfo = VECTOR, seed: int = 0,
                    head: HeadSpec = MLP_HEAD) -> SetModel:
    return build_model(ModelSpec(pooling=pooling, embed_dim=EMBED, head=head), info, seed=seed)


def test_every_embedding_pooling_takes_a_head_and_instance_scorers_refuse_it() -> None:
    assert set(HEAD_POOLINGS) == {"mean", "max", "attention", "gated_attention",
                                  "multihead_attention", "set_transformer", "transformer_cls"}
    for pooling in ("additive", "instance_max"):
        with pytest.raises(SpecError) as err:
            make_head_model(pooling)
        assert err.value.field == "model.head"
        assert "per-instance" in err.value.allowed and "attention" in err.value.allowed
        # the same problem is found without data, by ModelSpec.check
        problems = ModelSpec(pooling=pooling, head=MLP_HEAD).check()
        assert [p.field for p in problems] == ["head"]
        make_head_model(pooling, head=HeadSpec())  # the default head is theirs already


@pytest.mark.parametrize("pooling", HEAD_POOLINGS)
def test_mlp_head_is_the_readout_and_keeps_the_pooling_weights(pooling: str) -> None:
    linear, mlp = make_model(pooling, seed=4), make_head_model(pooling, seed=4)
    assert isinstance(linear.pooling.classifier, nn.Linear)
    layers = list(mlp.pooling.classifier.net)
    assert [type(m).__name__ for m in layers] == ["Linear", "ReLU", "SeededDropout", "Linear"]
    assert layers[0].out_features == 16 and layers[-1].out_features == VECTOR.n_classes
    # The head is built last, so the encoder and pooling start from the same weights either way.
    mlp_state = mlp.state_dict()
    for name, value in linear.state_dict().items():
        if not name.startswith("pooling.classifier."):
            assert torch.equal(mlp_state[name], value), name
    # logits = head(pooled embedding): equal to running the head on the default head's input
    gen = torch.Generator().manual_seed(20)
    x, mask = torch.randn(2, 5, DIM, generator=gen), torch.tensor([[True] * 5, [True] * 2 + [False] * 3])
    captured: list[torch.Tensor] = []
    hook = mlp.pooling.classifier.register_forward_hook(lambda m, i, o: captured.append(i[0]))
    mlp.eval()
    with torch.no_grad():
        out = mlp(x, mask)
    hook.remove()
    expected = layers[3](torch.relu(layers[0](captured[0])))
    assert_close(out.logits, expected)


def test_ilse_attention_with_mlp_head_matches_hand_computation() -> None:
    gen = torch.Generator().manual_seed(21)
    model = make_head_model("attention", head=HeadSpec(hidden=(6, 5)))
    pool = model.pooling
    x = torch.randn(1, 6, DIM, generator=gen)
    h = model.encode(x)[0]
    weights = torch.softmax(pool.score(h).squeeze(-1), dim=0)
    first, _, second, _, last = pool.classifier.net
    z = weights @ h
    expected = last(torch.relu(second(torch.relu(first(z)))))
    assert_close(model(x, torch.ones(1, 6, dtype=torch.bool)).logits[0], expected)


@pytest.mark.parametrize("pooling", HEAD_POOLINGS)
@EXAMPLES
@given(n=st.integers(1, 10), seed=st.integers(0, 2**16), data=st.data())
def test_mlp_head_permutation_invariance(pooling: str, n: int, seed: int,
                                         data: st.DataObject) -> None:
    perm = torch.tensor(data.draw(st.permutations(range(n))))
    model = make_head_model(pooling, seed=seed % 3).eval()
    x = torch.randn(1, n, DIM, generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(1, n, dtype=torch.bool)
    out, permuted = model(x, mask), model(x[:, perm], mask)
    assert_close(permuted.logits, out.logits)
    for name, value in per_instance_fields(out).items():
        assert_close(per_instance_fields(permuted)[name], None if value is None else value[..., perm])


@pytest.mark.parametrize("pooling", HEAD_POOLINGS)
@EXAMPLES
@given(n=st.integers(1, 8), extra=st.integers(1, 6), slot=st.integers(0, 2),
       seed=st.integers(0, 2**16))
def test_mlp_head_padding_with_garbage_changes_nothing(pooling: str, n: int, extra: int,
                                                       slot: int, seed: int) -> None:
    model = make_head_model(pooling, seed=seed % 3).eval()
    check_padding_invariance(model, VECTOR, n, n + extra, slot, seed)


@pytest.mark.parametrize("pooling", HEAD_POOLINGS)
def test_vmap_with_dropout_in_the_head_equals_each_member(pooling: str) -> None:
    """In training mode, with dropout active: every stacked member drops exactly the units it
    drops alone (seeded dropout), in the forward pass and in the gradients."""
    gen = torch.Generator().manual_seed(22)
    models = [make_head_model(pooling, seed=s, head=HeadSpec(hidden=(16,), dropout=0.5))
              for s in range(3)]
    mask = torch.tensor([[True] * 5, [True] * 2 + [False] * 3])
    x = torch.randn(2, 5, DIM, generator=gen)
    probe = copy.deepcopy(models[0])
    with torch.no_grad():
        assert not torch.allclose(probe(x, mask).logits, probe.eval()(x, mask).logits)
    params, buffers = stack_module_state(models)  # type: ignore[arg-type]
    skeleton = copy.deepcopy(models[0])  # its pass counter is where every member's is: 0
    labels = torch.zeros(len(x), dtype=torch.long)

    def logits(p: dict, b: dict) -> torch.Tensor:
        return functional_call(skeleton, (p, b), (x, mask)).logits

    def loss(p: dict, b: dict) -> torch.Tensor:
        return F.cross_entropy(logits(p, b), labels)

    stacked = vmap(logits)(params, buffers)  # training pass 0
    grads = vmap(grad(loss))(params, buffers)  # training pass 1
    for k, member in enumerate(models):
        assert_close(stacked[k], member(x, mask).logits)  # pass 0
        member.zero_grad()
        F.cross_entropy(member(x, mask).logits, labels).backward()  # pass 1
        for name, param in member.named_parameters():
            assert_close(grads[name][k], param.grad, atol=1e-4)


def test_seeded_dropout_masks() -> None:
    from attnsets.models.head import SeededDropout

    torch.manual_seed(0)
    first, second = SeededDropout(0.25), SeededDropout(0.25)
    assert int(first.seed) != int(second.seed)
    x = torch.ones(64, 256)
    masks = [first(x) != 0 for _ in range(3)]
    for mask in masks:  # about 1 - p kept, survivors scaled by 1 / (1 - p)
        assert abs(float(mask.float().mean()) - 0.75) < 0.01
    out = first(x)
    assert torch.allclose(out[out != 0], torch.full((1,), 1 / 0.75))
    assert not torch.equal(masks[0], masks[1])  # a new mask every training pass
    # neighbouring units and passes are not correlated
    flat = masks[0].float().flatten()
    assert abs(float(torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1])) < 0.03
    assert abs(float(torch.corrcoef(torch.stack([flat, masks[1].float().flatten()]))[0, 1])) < 0.03
    replay = copy.deepcopy(second)
    assert torch.equal(second(x), replay(x))  # a function of (seed, pass, position) only
    assert not torch.equal(second(x) != 0, masks[2])
    assert torch.equal(first.eval()(x), x)


@pytest.mark.parametrize(("head", "field"), [
    ({"hidden": [0]}, "head.hidden"), ({"hidden": "64"}, "head.hidden"),
    ({"hidden": [64.5]}, "head.hidden"), ({"hidden": [64], "dropout": 1.0}, "head.dropout"),
    ({"hidden": [64], "dropout": -0.1}, "head.dropout"), ({"dropout": 0.2}, "head.dropout"),
    ({"hidden": [64], "dropout": True}, "head.dropout"), ({"width": 3}, "head.width"),
    ([64], "head"),
])
def test_bad_heads_name_the_field(head: object, field: str) -> None:
    with pytest.raises(SpecError) as err:
        ModelSpec(head=head)  # type: ignore[arg-type]
    assert err.value.field == field


def test_head_config_table_round_trip() -> None:
    from attnsets.registry import build_dataclass

    spec = build_dataclass(ModelSpec, {"pooling": "attention",
                                       "head": {"hidden": [64], "dropout": 0.15}}, "")
    assert spec.head == HeadSpec(hidden=(64,), dropout=0.15)
    assert spec.to_dict()["head"] == {"hidden": [64], "dropout": 0.15}
    assert build_dataclass(ModelSpec, spec.to_dict(), "") == spec
    assert "head" not in ModelSpec().to_dict()  # default: records written before heads agree
    with pytest.raises(SpecError) as err:
        build_dataclass(ModelSpec, {"head": {"hidden": [0]}}, "model")
    assert err.value.field == "model.head.hidden"
    with pytest.raises(SpecError) as err:
        make_model("attention", head={"hidden": [4]})
    assert err.value.field == "model.pooling_params.head"


def test_a_user_pooling_without_the_capability_refuses_a_head() -> None:
    class SumPooling(nn.Module):
        def __init__(self, in_dim: int, n_classes: int) -> None:
            super().__init__()
            self.classifier = nn.Linear(in_dim, n_classes)

        def forward(self, h: torch.Tensor, mask: torch.Tensor) -> SetOutput:
            return SetOutput(self.classifier((h * mask.unsqueeze(-1)).sum(dim=1)))

    POOLINGS.register("test_sum_head")(SumPooling)
    try:
        make_head_model("test_sum_head", head=HeadSpec())
        with pytest.raises(SpecError, match="accepts_head") as err:
            make_head_model("test_sum_head")
        assert err.value.field == "model.head"
    finally:
        POOLINGS._items.pop("test_sum_head", None)


@pytest.mark.parametrize("pooling", ["attention", "gated_attention"])
def test_chunked_pass_with_mlp_head_equals_plain_forward(pooling: str) -> None:
    gen = torch.Generator().manual_seed(23)
    model = make_head_model(pooling, InputInfo("vector", (DIM,), 4)).eval()
    x = torch.randn(5_000, DIM, generator=gen)
    with torch.no_grad():
        plain = model(x.unsqueeze(0), torch.ones(1, len(x), dtype=torch.bool))
    chunked = attention_pool_large(model, x, chunk_size=1_001)
    assert_close(chunked.logits, plain.logits)
    assert_close(chunked.attention, plain.attention)
