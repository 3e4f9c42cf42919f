"""The assessment pipeline: silent failures are caught, good attention is not flagged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from attnsets.assess import AssessSpec, assess
from attnsets.assessment import Assessment
from attnsets.cli import app
from attnsets.data import DatasetSpec, make_dataset
from attnsets.errors import SpecError
from attnsets.models import InputInfo, ModelSpec, SetModel, SetOutput, masked_softmax
from attnsets.run import RunSpec, execute
from attnsets.training import TrainSpec

KEY = 2


@pytest.fixture(scope="module")
def dataset():  # type: ignore[no-untyped-def]
    return make_dataset(DatasetSpec.from_dict({
        "pool": {"name": "gaussian", "num_concepts": 4, "dim": 8, "separation": 12.0},
        "rule": {"name": "presence", "key": KEY},
        "bags": {"train": 20, "val": 40, "test": 60},
        "bag_size": {"kind": "uniform", "low": 6, "high": 12}, "seed": 3,
    }))


class KeyDetector(nn.Module):
    """Predicts presence exactly (max projection on the key concept's mean) while its attention
    follows `sign` x that projection: +1 points at the witnesses, -1 points away from them."""

    def __init__(self, key_mean: np.ndarray, sign: float) -> None:
        super().__init__()
        direction = torch.as_tensor(key_mean, dtype=torch.float32)
        self.register_buffer("direction", direction / direction.norm())
        self.threshold = float(np.linalg.norm(key_mean)) / 2
        self.sign = sign

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> SetOutput:
        keyness = h @ self.direction  # (B, N)
        strongest = keyness.masked_fill(~mask, -torch.inf).amax(dim=1) - self.threshold
        logits = torch.stack([-strongest, strongest], dim=-1)
        attention = masked_softmax(self.sign * keyness, mask)
        return SetOutput(logits, attention, attention[:, None], attention)


def handcrafted(dataset, sign: float) -> SetModel:  # type: ignore[no-untyped-def]
    key_mean = np.asarray(dataset.metadata["means"])[KEY]
    return SetModel(nn.Identity(), KeyDetector(key_mean, sign), info=InputInfo.from_dataset(dataset))


def test_attention_pointing_away_from_witnesses_is_a_silent_failure(dataset) -> None:  # type: ignore[no-untyped-def]
    result = assess([handcrafted(dataset, -1.0)], dataset, AssessSpec(explainers=("attention",),
                                                                       bootstrap=0))
    attention = result.explainers["attention"]
    assert result.member_mean_bag.balanced_accuracy >= 0.95
    assert attention.mean("auroc") < 0.2
    assert attention.silent == [True] and attention.silent_rate == 1.0
    assert attention.ensemble_silent
    assert result.headline()["attention.ensemble_silent"] == 1.0
    # Every correctly classified positive bag puts its top attention on a non-witness.
    assert attention.mean("misleading_rate") > 0.4


def test_attention_on_the_witnesses_is_not_flagged(dataset) -> None:  # type: ignore[no-untyped-def]
    result = assess([handcrafted(dataset, +1.0)], dataset, AssessSpec(explainers=("attention",),
                                                                      bootstrap=0))
    attention = result.explainers["attention"]
    assert attention.mean("auroc") > 0.95
    assert attention.silent == [False] and not attention.ensemble_silent
    assert attention.mean("misleading_rate") == 0.0


def test_ensembling_a_bad_member_with_good_ones_recovers_the_witnesses(dataset) -> None:  # type: ignore[no-untyped-def]
    members = [handcrafted(dataset, s) for s in (+1.0, +1.0, -1.0)]
    result = assess(members, dataset, AssessSpec(explainers=("attention",), bootstrap=0,
                                                 combine="mean_rank")).explainers["attention"]
    assert result.silent == [False, False, True]
    assert result.ensemble_value("auroc") > 0.9
    assert [point.k for point in result.curve] == [1, 2, 3]
    assert result.curve[0].p_fail == pytest.approx(1 / 3)
    assert result.curve[-1].p_fail == 0.0


def test_trained_ensemble_report_is_complete_and_json_ready(dataset) -> None:  # type: ignore[no-untyped-def]
    spec = AssessSpec(explainers=("attention", "gradient", "leave_one_out", "random", "rollout"),
                      bootstrap=20, curve_subsets=5)
    result = execute(RunSpec(dataset.spec, ModelSpec(pooling="attention", embed_dim=8),
                             TrainSpec(epochs=3), (0, 1), spec))
    assessment = result.assessment
    assert assessment is not None
    assert assessment.not_applicable == {"rollout": "does not apply to pooling 'attention'"}
    assert assessment.methods == ["attention", "gradient", "leave_one_out", "random"]
    assert len(assessment.member_bag) == 2 and len(result.training.epochs_run) == 2
    metrics = assessment.to_dict()
    assert set(metrics["member_mean"]) == {"bag", "attention", "gradient", "leave_one_out", "random"}
    assert assessment.arrays["scores/attention"].shape == (2, *assessment.arrays["mask"].shape)
    assert np.all(assessment.arrays["scores/attention"][:, ~assessment.arrays["mask"]] == 0)
    json.loads(json.dumps(metrics))  # NaN allowed, nothing unserialisable
    # every stage timed once per explainer, and the times read back from the stored layout
    stages = {"predict", "deletion/random"} | {f"{kind}/{m}" for m in assessment.methods
                                               for kind in ("explain", "deletion", "metrics")}
    assert set(assessment.stage_seconds) == stages
    assert all(v >= 0 for v in assessment.stage_seconds.values())
    assert Assessment.from_dict(metrics).stage_seconds == assessment.stage_seconds
    assert result.generate_seconds > 0  # generated from the spec


def test_evaluate_command_prints_tables(tmp_path: Path) -> None:
    config = tmp_path / "d.toml"
    config.write_text(
        "[dataset]\nbags = {train = 40, val = 20, test = 20}\n"
        "[dataset.pool]\nname = 'gaussian'\ndim = 4\nnum_concepts = 4\n"
        "[dataset.rule]\nname = 'poison'\nkey = 1\npoison = 0\n"
        "[model]\npooling = 'gated_attention'\nembed_dim = 8\n"
        "[training]\nepochs = 2\n")
    out = tmp_path / "m.json"
    result = CliRunner().invoke(app, ["evaluate", str(config), "--members", "2", "--explainers",
                                      "attention,random", "--json", str(out)])
    assert result.exit_code == 0, result.output
    for text in ("bag metrics", "attention", "random", "ens. silent", "algorithmic unit test"):
        assert text in result.output
    assert json.loads(out.read_text())["n_members"] == 2
    bad = CliRunner().invoke(app, ["evaluate", str(config), "--explainers", "telepathy"])
    assert bad.exit_code == 2 and "telepathy" in bad.output
    for extra, field in (("[assess]\nbootstrapp = 5\n", "assess.bootstrapp"),
                         ("[thresholds]\nmin_bag_score = 2\n", "thresholds.min_bag_score")):
        typo = tmp_path / "typo.toml"
        typo.write_text(config.read_text() + extra)
        bad = CliRunner().invoke(app, ["evaluate", str(typo)])
        assert bad.exit_code == 2 and field in bad.output, bad.output


def test_aopc_shares_one_random_reference_and_matches_deletion_curves(dataset) -> None:  # type: ignore[no-untyped-def]
    """assess computes the random-order curves once per member; the AOPC it reports must equal
    the one from `deletion_curves` (ranked + random of the same seed) bag batch by bag batch."""
    from attnsets.assess import padded_batches
    from attnsets.explain import deletion_curves, explain
    from attnsets.metrics import aopc

    models = [handcrafted(dataset, 1.0), handcrafted(dataset, -1.0)]
    spec = AssessSpec(explainers=("attention", "gradient"), bootstrap=0, batch_size=16, seed=5)
    result = assess(models, dataset, spec)
    batches = padded_batches(dataset.test, spec.batch_size)
    for k, model in enumerate(models):
        for method in ("attention", "gradient"):
            curves = [deletion_curves(model, b, explain(model, b, method),
                                      steps=min(spec.deletion_steps, b.x.shape[1]), seed=5)
                      for b in batches]
            expected = aopc(torch.cat([c.ranked for c in curves]).numpy(),
                            torch.cat([c.random for c in curves]).numpy())
            got = result.explainers[method].aopc[k]
            assert got.aopc == pytest.approx(float(expected["aopc"]), abs=1e-6)
            assert got.aopc_relative == pytest.approx(float(expected["aopc_relative"]),
                                                         abs=1e-6, nan_ok=True)


def test_every_class_scoring_matches_the_hand_computation(dataset) -> None:  # type: ignore[no-untyped-def]
    """Binary presence: class 0's evidence is class 1's negated. Attention does not depend on
    the class explained, so for each positive bag with AUROC a against its witnesses, the
    class-1 pair scores a (positive side only) and the class-0 pair scores AUROC(-s) = 1 - a on
    its -1 instances (negative side only): AUROC-2 over all (bag, class) pairs is exactly 0.5,
    whatever the model, and the plain AUROC (defined on class-1 pairs only) equals the label's."""
    from attnsets.assessment import Assessment

    for sign in (1.0, -1.0):
        result = assess([handcrafted(dataset, sign)], dataset, AssessSpec(
            explainers=("attention",), bootstrap=0, evaluated_classes="all"))
        attention = result.explainers["attention"]
        every = attention.all_classes
        assert every is not None and every.n_classes == 2
        positives = int((dataset.test.labels == 1).sum())
        assert every.mean["auroc2_n_eligible"] == 2 * positives
        assert every.mean["auroc2"] == pytest.approx(0.5, abs=1e-12)
        assert every.mean["auroc"] == pytest.approx(attention.mean("auroc"), abs=1e-12)
        stored = Assessment.from_dict(json.loads(json.dumps(result.to_dict())))
        assert stored.explainers["attention"].all_classes == every
        assert "attention.all_classes_auroc" in result.headline()
    label_only = assess([handcrafted(dataset, 1.0)], dataset,
                        AssessSpec(explainers=("attention",), bootstrap=0))
    assert label_only.explainers["attention"].all_classes is None
    assert "all_classes" not in label_only.to_dict()


def test_every_class_scoring_reuses_the_label_pass_exactly(dataset) -> None:  # type: ignore[no-untyped-def]
    """A bag is explained for its own label once; for every class the pairs equal explaining
    every bag for that class from scratch (class-dependent explainers, with and without a bag
    budget)."""
    from attnsets.assess import budget_rows, explain_members, padded_batches
    from attnsets.metrics import importance_report

    models = [handcrafted(dataset, 1.0), handcrafted(dataset, -1.0)]
    for budget in (None, 25):
        spec = AssessSpec(explainers=("gradient", "leave_one_out"), bootstrap=5,
                          evaluated_classes="all", bag_budget=budget)
        result = assess(models, dataset, spec)
        for method in spec.explainers:
            rows = budget_rows(len(dataset.test), budget, spec.seed) \
                if method == "leave_one_out" else None
            index = np.arange(len(dataset.test)) if rows is None else rows
            scores, evidence, mask = [], [], []
            for c in range(2):
                batches = padded_batches(dataset.test, spec.batch_size, target=c, index=index)
                scores.append(explain_members(models, batches, method, seed=spec.seed))
                evidence.append(torch.cat([b.evidence for b in batches]).numpy())
                mask.append(torch.cat([b.mask for b in batches]).numpy())
            expected = [importance_report(s, np.concatenate(evidence), np.concatenate(mask),
                                          n_boot=spec.bootstrap, seed=spec.seed)
                        for s in np.concatenate(scores, axis=1)]
            got = result.explainers[method].all_classes
            assert got is not None
            for member, want in zip(got.members, expected, strict=True):
                assert member.keys() == want.keys()
                for key, value in want.items():
                    assert member[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key


def test_a_bag_budget_scores_expensive_explainers_on_a_seeded_subset(dataset) -> None:  # type: ignore[no-untyped-def]
    """leave_one_out (declared expensive) and every deletion curve see `bag_budget` test bags;
    attention still sees all. A bag's scores do not depend on the bags beside it, so the budget's
    metrics equal the full run's metrics restricted to the same bags."""
    from attnsets.assess import budget_rows, padded_batches
    from attnsets.metrics import importance_report

    models = [handcrafted(dataset, 1.0), handcrafted(dataset, -1.0)]
    explainers = ("attention", "leave_one_out")
    full = assess(models, dataset, AssessSpec(explainers=explainers, bootstrap=0))
    spec = AssessSpec(explainers=explainers, bootstrap=0, bag_budget=7, random_orders=3)
    cut = assess(models, dataset, spec)
    rows = budget_rows(len(dataset.test), 7, spec.seed)
    assert rows is not None and len(rows) == 7 and list(rows) == sorted(set(rows))
    assert budget_rows(len(dataset.test), len(dataset.test), 0) is None
    selected = cut.arrays["explained_bags/leave_one_out"]
    assert selected.sum() == 7 and "explained_bags/attention" not in cut.arrays
    scores = full.arrays["scores/leave_one_out"]
    np.testing.assert_allclose(cut.arrays["scores/leave_one_out"][:, selected],
                               scores[:, selected], atol=1e-5)
    assert (cut.arrays["scores/leave_one_out"][:, ~selected] == 0).all()
    mask = torch.cat([b.mask for b in padded_batches(dataset.test, 128)]).numpy()
    evidence = full.arrays["evidence"]
    for k in range(2):
        expected = importance_report(scores[k][selected], evidence[selected], mask[selected],
                                     n_boot=0)
        got = cut.explainers["leave_one_out"].members[k]
        assert got["auroc"] == pytest.approx(expected["auroc"], abs=1e-6, nan_ok=True)
        assert got["n_bags"] == 7
        assert cut.explainers["leave_one_out"].aopc[k].n_bags == 7
        assert cut.explainers["attention"].aopc[k].n_bags == 7  # deletion curves: the budget
    assert cut.explainers["attention"].members[0] == full.explainers["attention"].members[0]
    with pytest.raises(SpecError, match="bag_budget"):
        AssessSpec(bag_budget=0)
