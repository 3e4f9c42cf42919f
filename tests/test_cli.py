"""End-to-end tests of the dataset commands of the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
