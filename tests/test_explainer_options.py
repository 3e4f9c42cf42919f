"""Every documented explainer option reaches its explainer, through `explain` and through an
assessment's `explainer_options` (integrated gradients' `method` used to collide with
explain()'s own `method` argument)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from attnsets.assess import AssessSpec, assess
from attnsets.data import DatasetSpec, collate, make_dataset
from attnsets.explain import EXPLAINERS, explain
from attnsets.models import InputInfo, ModelSpec, build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: (method, option, a non-default value, the option changes the scores on this model?). Shapley
#: is exact on bags this small by default, so its sampling options are compared with
#: `SAMPLED_SHAPLEY` set on both sides.
OPTIONS: list[tuple[str, str, Any, bool]] = [
    ("attention_head", "head", 1, True),
    ("gradient", "wrt", "embedding", True),
    ("grad_x_input", "wrt", "embedding", True),
    ("integrated_gradients", "n_steps", 3, True),
    ("integrated_gradients", "wrt", "embedding", True),
    ("integrated_gradients", "internal_batch_size", 12, False),
    ("integrated_gradients", "method", "riemann_left", True),
    ("leave_one_out", "output", "logit", True),
    ("leave_one_out", "max_batch", 2, False),
    ("leave_one_out", "memory_mb", 0.01, False),
    ("single", "output", "logit", True),
    ("single", "max_batch", 2, False),
    ("single", "memory_mb", 0.01, False),
    ("random", "seed", 7, True),
    ("shapley", "n_samples", 3, True),
    ("shapley", "seed", 7, True),
    ("shapley", "exact", True, True),
    ("shapley", "output", "logit", True),
    ("shapley", "max_batch", 2, False),
    ("shapley", "memory_mb", 0.01, False),
    ("shapley", "sampler", "permutation", True),
    ("shapley", "antithetic", False, True),
    ("milli", "n_samples", 20, True),
    ("milli", "alpha", 0.3, True),
    ("milli", "beta", 0.5, True),
    ("milli", "seed", 7, True),
    ("milli", "paired", False, True),
    ("milli", "order_class", None, True),
    ("milli", "output", "logit", True),
    ("milli", "max_batch", 2, False),
    ("milli", "memory_mb", 0.01, False),
]
SAMPLED_SHAPLEY = {"exact": False, "n_samples": 8}


@pytest.fixture(scope="module")
def setup() -> tuple[Any, Any, Any]:
    data = make_dataset(DatasetSpec.from_dict({
        "pool": {"name": "gaussian", "dim": 4, "num_concepts": 4},
        "rule": {"name": "presence", "key": 1}, "bags": {"train": 4, "val": 4, "test": 6},
        "bag_size": {"kind": "uniform", "low": 3, "high": 6}}))
    info = InputInfo.from_dataset(data)
    model = build_model(ModelSpec(pooling="multihead_attention", embed_dim=8,
                                  pooling_params={"heads": 2}), info, seed=0)
    return data, model, collate(list(data.test))


def test_the_table_covers_every_option_of_every_explainer() -> None:
    covered = {(m, o) for m, o, _, _ in OPTIONS}
    declared = {(name, option) for name, explainer in EXPLAINERS.items()
                if explainer.fn.__module__.startswith("attnsets.")  # not other tests' plugins
                for option in explainer.options}
    assert declared == covered


@pytest.mark.parametrize(("method", "option", "value", "changes"), OPTIONS,
                         ids=[f"{m}.{o}" for m, o, _, _ in OPTIONS])
def test_option_reaches_the_explainer(setup: tuple[Any, Any, Any], method: str, option: str,
                                      value: Any, changes: bool) -> None:
    _, model, batch = setup
    base: dict[str, Any] = {}
    if method == "shapley" and option not in ("exact", "n_samples"):
        base = dict(SAMPLED_SHAPLEY)
    if (method, option) == ("shapley", "exact"):
        base = {"exact": False}  # exact values vs the sampled default budget
    if (method, option) == ("shapley", "antithetic"):
        base["sampler"] = "permutation"  # antithetic pairs apply to the permutation sampler
    torch.manual_seed(0)
    default = explain(model, batch, method, **base)
    torch.manual_seed(0)
    chosen = explain(model, batch, method, **{**base, option: value})
    assert chosen.shape == batch.mask.shape
    if changes:
        assert not torch.allclose(default, chosen), f"{method}.{option}={value!r} had no effect"
    else:  # batching options change the cost, never the scores
        torch.testing.assert_close(default, chosen, rtol=1e-5, atol=1e-6)


def test_assessment_options_reach_the_explainer(setup: tuple[Any, Any, Any]) -> None:
    data, model, _ = setup
    scores = {}
    for rule in ("gausslegendre", "riemann_left"):
        spec = AssessSpec(explainers=("integrated_gradients",), bootstrap=0,
                          explainer_options={"integrated_gradients": {"method": rule,
                                                                      "n_steps": 4}})
        scores[rule] = assess([model], data, spec).arrays["scores/integrated_gradients"]
    assert not np.allclose(scores["gausslegendre"], scores["riemann_left"])
