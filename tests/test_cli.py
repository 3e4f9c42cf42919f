"""End-to-end tests of the dataset commands of the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from attnsets.cli import app

runner = CliRunner()
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "datasets"


def test_datasets_lists_every_registered_modality_and_rule() -> None:
    from attnsets.data import POOLS, RULES

    result = runner.invoke(app, ["datasets"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in POOLS.names() + RULES.names():
        assert name in result.output


def test_datasets_keeps_square_brackets_of_docstrings_and_defaults() -> None:
    """rich reads "[min_length, max_length]" as a markup tag unless the text is escaped."""
    import re

    from attnsets.cli import _first_line
    from attnsets.data import POOLS, RULES
    from attnsets.registry import describe_parameters

    result = runner.invoke(app, ["datasets"], env={"COLUMNS": "600"})
    assert result.exit_code == 0, result.output
    assert "lengths uniform in [min_length, max_length]" in result.output
    bracketed = 0
    for registry in (POOLS, RULES):
        for _, factory in registry.items():
            texts = [_first_line(factory)] + [f"{p} = {d}" for p, _, d in
                                              describe_parameters(factory)]
            for span in (s for text in texts for s in re.findall(r"\[[^\]]*\]", text)):
                assert span in result.output, span
                bracketed += 1
    assert bracketed >= 3  # the check above is not vacuous


def test_make_dataset_then_summary(tmp_path: Path) -> None:
    out = tmp_path / "g.npz"
    result = runner.invoke(app, ["make-dataset", str(CONFIGS / "gaussian_presence.toml"),
                                 "--out", str(out), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert out.is_file()
    with np.load(out, allow_pickle=False) as npz:
        assert '"seed": 3' in str(npz["spec"])
        assert npz["train.labels"].shape == (500,)
    result = runner.invoke(app, ["summary", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert '"label_counts": [\n        250,\n        250\n      ]' in result.output


def test_bad_config_names_every_field_and_writes_nothing(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        "[dataset]\nbags = { train = -5, val = 10, test = 10 }\n"
        "[dataset.pool]\nname = 'gaussian'\ndim = 0\n"
        "[dataset.rule]\nname = 'presence'\nkey = 42\n"
    )
    out = tmp_path / "never.npz"
    result = runner.invoke(app, ["make-dataset", str(config), "--out", str(out)])
    assert result.exit_code == 2
    for fragment in ("bags.train", "pool.dim", "-5"):
        assert fragment in result.output
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [config]


def test_summary_refuses_a_foreign_file(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.arange(3))
    result = runner.invoke(app, ["summary", str(foreign)])
    assert result.exit_code == 2
    assert "not an attnsets dataset" in result.output


def test_audit_command_audits_a_model_file(tmp_path: Path) -> None:
    battery = tmp_path / "battery.toml"
    battery.write_text('[[datasets]]\nname = "tiny-presence"\n'
                       'pool = { name = "gaussian", num_concepts = 4, dim = 6, separation = 8.0 }\n'
                       'rule = { name = "presence", key = 2 }\n'
                       'bags = { train = 60, val = 30, test = 30 }\n')
    example = Path(__file__).resolve().parents[1] / "examples" / "my_model.py"
    out = tmp_path / "audit.csv"
    result = CliRunner().invoke(app, ["audit", f"{example}:build", "--battery", str(battery),
                                      "--seeds", "0", "--members", "2", "--epochs", "10",
                                      "-o", str(out)])
    assert result.exit_code in (0, 1), result.output  # 1 = an entry failed
    assert "verdict:" in result.output and "tiny-presence" in result.output
    assert pd.read_csv(out)["entry"].tolist() == ["tiny-presence"]
    bad = CliRunner().invoke(app, ["audit", "no_such_pooling"])
    assert bad.exit_code == 2 and "registered pooling" in bad.output


def test_explain_data_command_writes_instance_and_bag_tables(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [{"bag": f"b{b}", "y": b % 2, "f0": rng.normal() + 5.0 * (b % 2 and i == 0),
             "f1": rng.normal()} for b in range(30) for i in range(5)]
    table = tmp_path / "cells.parquet"
    pd.DataFrame(rows).to_parquet(table)
    result = CliRunner().invoke(app, ["explain-data", str(table), "--bag-column", "bag",
                                      "--label-column", "y", "--members", "2", "--epochs", "5",
                                      "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    instances = pd.read_csv(tmp_path / "out" / "instances.csv")
    bags = pd.read_csv(tmp_path / "out" / "bags.csv")
    assert len(instances) == 150 and len(bags) == 30
    missing = CliRunner().invoke(app, ["explain-data", str(table), "--bag-column", "sample",
                                       "--label-column", "y"])
    assert missing.exit_code == 2 and "bag_column" in missing.output


def test_run_headline_reports_the_chosen_importance_metric(tmp_path: Path) -> None:
    """Regression: with importance_metric = "auprc2" the headline printed "—" for attention,
    ensemble and gain (it looked the numbers up under the AUROC names)."""
    import re

    from attnsets.report.collect import load_study
    from study_toml import write_study_toml

    raw = {"study": {"name": "metric", "seeds": [0], "members": 2, "explainers": ["attention"],
                     "bootstrap": 0, "curve_subsets": 2},
           "training": {"epochs": 2, "batch_size": 16},
           "thresholds": {"importance_metric": "auprc2"},
           "datasets": [{"name": "pn", "pool": {"name": "gaussian", "dim": 4, "num_concepts": 4,
                                                 "separation": 6.0},
                         "rule": {"name": "pos_neg", "positive": [1], "negative": [2]},
                         "bag_size": {"kind": "normal", "mean": 8, "sd": 1, "min": 5},
                         "bags": {"train": 32, "val": 16, "test": 16}}],
           "models": [{"name": "abmil", "pooling": "attention", "embed_dim": 8}]}
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(write_study_toml(raw, tmp_path / "s.toml")),
                                 "--out", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "attention AUPRC2" in result.output and "ensemble AUPRC2" in result.output
    stored = load_study(out).done[0].assessment.headline()
    line = next(x for x in result.output.splitlines() if "abmil" in x)
    numbers = re.findall(r"[+-]?\d+\.\d{3}", line)
    assert "—" not in line
    assert numbers[1:] == [f"{stored['attention.auprc2']:.3f}",
                           f"{stored['attention.silent_rate']:.3f}",
                           f"{stored['attention.ensemble_auprc2']:.3f}",
                           f"{stored['attention.ensemble_gain']:+.3f}"]


def test_audit_table_prints_the_chosen_importance_metric(capsys) -> None:  # type: ignore[no-untyped-def]
    """Regression: the audit table read `attention_auroc` whatever the metric (KeyError)."""
    from types import SimpleNamespace

    from attnsets.cli import print_audit
    from attnsets.metrics import SilentFailureCriteria

    row = {"entry": "e", "learns_task": True, "learn_score": 0.9,
           "attention_finds_witnesses": True, "attention_auprc2": 0.812,
           "no_silent_failures": True, "silent_members": 0, "members_trained": 2,
           "passes_unit_test": None, "respects_padding": True, "passed": True, "notes": ""}
    result = SimpleNamespace(model="m", seconds=1.0, table=pd.DataFrame([row]), passed=True,
                             criteria=SilentFailureCriteria(importance_metric="auprc2"),
                             verdict="pass")
    print_audit(result)
    printed = capsys.readouterr().out
    assert "AUPRC2" in printed and "0.812" in printed
