"""Plugins found by themselves (the `attnsets.plugins` entry-point group), did-you-mean on an
unknown name, and what a torchmil name says without torchmil. conftest turns the automatic
loading off for the suite; the tests here turn it back on, with a throw-away distribution on
sys.path, and put every registry back afterwards."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import attnsets.integrations as integrations
from attnsets import registry
from attnsets.assess import AssessSpec
from attnsets.cli import app
from attnsets.data import POOLS, RULES, DatasetSpec
from attnsets.errors import SpecError, SpecErrors
from attnsets.explain import EXPLAINERS
from attnsets.models import ENCODERS, POOLINGS, ModelSpec
from study_toml import write_study_toml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
REGISTRIES = (POOLS, RULES, ENCODERS, POOLINGS, EXPLAINERS)
TINY_STUDY = {"study": {"name": "plugged", "seeds": [0], "members": 1,
                        "explainers": ["attention"], "bootstrap": 0, "curve_subsets": 2},
              "training": {"epochs": 1, "batch_size": 16},
              "datasets": [{"name": "g", "pool": {"name": "gaussian", "num_concepts": 4, "dim": 6},
                            "rule": {"name": "presence", "key": 2},
                            "bags": {"train": 32, "val": 8, "test": 8},
                            "bag_size": {"kind": "uniform", "low": 4, "high": 6}}],
              "models": [{"name": "abmil", "pooling": "torchmil_abmil", "embed_dim": 8,
                          "pooling_params": {"att_dim": 8}}]}


@pytest.fixture()
def autoload(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Entry-point loading on, as for a user; every registry restored afterwards."""
    saved = [(r, dict(r._items), dict(r._reserved)) for r in REGISTRIES]
    monkeypatch.delenv(registry.DISABLE_AUTOLOAD_ENV, raising=False)
    monkeypatch.setitem(registry._AUTOLOAD, "done", False)
    failures = len(registry.PLUGIN_FAILURES)
    yield
    for reg, items, reserved in saved:
        reg._items, reg._reserved = items, reserved
    del registry.PLUGIN_FAILURES[failures:]


def _distribution(root: Path, name: str, entry_points: str, modules: dict[str, str],
                  monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed distribution as importlib.metadata sees one: a .dist-info with METADATA and
    entry_points.txt, plus its modules, in a directory put first on sys.path."""
    info = root / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[attnsets.plugins]\n{entry_points}\n")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(root))


def test_own_entry_points_are_the_ones_pyproject_declares() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    assert declared["attnsets.plugins"] == registry.OWN_PLUGINS


def test_an_installed_distribution_s_pooling_is_found_by_name(
        autoload: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _distribution(tmp_path, "attnsets_extra_pooling", "extra = extra_pooling:register",
                  {"extra_pooling": "from attnsets.models import POOLINGS\n"
                                    "def register():\n"
                                    "    POOLINGS.register('extra_mean')(POOLINGS.get('mean'))\n"},
                  monkeypatch)
    assert "extra_mean" in POOLINGS
    assert ModelSpec(pooling="extra_mean").check() == []


def test_a_failing_plugin_is_a_warning_naming_its_entry_point(
        autoload: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _distribution(tmp_path, "attnsets_broken", "broken = broken_plugin",
                  {"broken_plugin": "raise RuntimeError('needs a GPU driver')\n"}, monkeypatch)
    with pytest.warns(registry.PluginWarning, match="'broken'.*attnsets_broken.*needs a GPU"):
        assert "attention" in POOLINGS.names()
    assert [f.name for f in registry.PLUGIN_FAILURES][-1] == "broken"


def test_a_failing_plugin_is_one_line_in_the_cli(
        autoload: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _distribution(tmp_path, "attnsets_broken", "broken = broken_plugin",
                  {"broken_plugin": "raise RuntimeError('needs a GPU driver')\n"}, monkeypatch)
    result = CliRunner().invoke(app, ["datasets"])
    assert result.exit_code == 0, result.output
    assert "warning: plugin entry point 'broken'" in result.output
    assert "Traceback" not in result.output and "gaussian" in result.output


@pytest.mark.parametrize(("registry_of", "typo", "meant"), [
    (POOLINGS, "atention", "attention"), (EXPLAINERS, "gradeint", "gradient"),
    (POOLS, "gausian", "gaussian"), (RULES, "presense", "presence"), (ENCODERS, "mpl", "mlp")])
def test_an_unknown_name_gets_a_did_you_mean(registry_of: registry.Registry, typo: str,
                                            meant: str) -> None:
    with pytest.raises(SpecError, match=f"did you mean '{meant}'") as err:
        registry_of.get(typo)
    assert err.value.value == typo and meant in err.value.allowed


def test_did_you_mean_reaches_the_specs() -> None:
    [problem] = ModelSpec(pooling="gated_atention").check()
    assert problem.field == "pooling" and "did you mean 'gated_attention'" in problem.allowed
    with pytest.raises(SpecError, match=r"explainers\[1\].*did you mean 'rollout'"):
        AssessSpec(explainers=("attention", "rolout"))
    raw = {**TINY_STUDY["datasets"][0], "rule": {"name": "thresold", "key": 2}}
    raw.pop("name")
    with pytest.raises((SpecError, SpecErrors), match="did you mean 'threshold'"):
        DatasetSpec.from_dict(raw)


def test_a_misspelt_pooling_in_a_study_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    raw = {**TINY_STUDY, "models": [{"name": "a", "pooling": "atention", "embed_dim": 8}]}
    config = write_study_toml(raw, tmp_path / "study.toml")
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "out")])
    output = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 2 and "did you mean 'attention'" in output
    assert not (tmp_path / "out").exists()


def test_a_torchmil_name_without_torchmil_says_which_extra(
        autoload: None, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in POOLINGS._items if n.startswith("torchmil_")]:
        POOLINGS.unregister(name)
    monkeypatch.setattr(integrations, "torchmil_installed", lambda: False)
    with pytest.raises(SpecError, match=r"pip install 'attnsets\[torchmil\]'"):
        POOLINGS.get("torchmil_abmil", "model.pooling")
    [problem] = ModelSpec(pooling="torchmil_transmil").check()
    assert "attnsets[torchmil]" in problem.allowed


def test_torchmil_poolings_by_name_without_plugin_option(autoload: None, tmp_path: Path) -> None:
    pytest.importorskip("torchmil", reason="torchmil not installed (pip install "
                                            "'attnsets[torchmil]')")
    for name in [n for n in POOLINGS._items if n.startswith("torchmil_")]:
        POOLINGS.unregister(name)  # as in a fresh process: nothing imported the integration
    config = write_study_toml(TINY_STUDY, tmp_path / "study.toml")
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "1 done, 0 failed" in result.output
