"""The docs stay true: every Python example in docs/*.md runs, every TOML dataset spec in the docs
builds a dataset, and every `attnsets <command>` the docs mention is a real command.

README.md's own Python examples are run by tests/test_docs.py; its commands are checked here.
"""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

import attnsets.data.battery
from attnsets.cli import app
from attnsets.data import POOLS, RULES, DatasetSpec, collate, make_dataset
from attnsets.explain import EXPLAINERS, explain
from attnsets.models import ENCODERS, POOLINGS, InputInfo, ModelSpec, build_model
from attnsets.registry import Registry

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10; the package depends on tomli there
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
DOC_PAGES = sorted((ROOT / "docs").glob("*.md"))
# A fenced block starts and ends at the beginning of a line: ```lang ... ```.
FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```", re.S | re.M)
REGISTRIES: dict[str, Registry[Any]] = {"pool": POOLS, "rule": RULES, "encoder": ENCODERS,
                                        "pooling": POOLINGS, "explainer": EXPLAINERS}
#: What each extension page must register (and the tests must clean up again).
EXPECTED_PLUGINS = {"extend_data.md": {"pool", "rule"},
                    "extend_models.md": {"encoder", "pooling"},
                    "extend_explainers.md": {"explainer"}}
#: Global options (`--plugin FILE`) may stand between `attnsets` and the command.
GLOBAL_OPTIONS = r"(?:(?:--plugin|-p)\s+\S+\s+)*"
COMMAND = re.compile(rf"^\s*(?:\$\s+)?attnsets\s+{GLOBAL_OPTIONS}([A-Za-z][\w-]*)", re.M)
INLINE_COMMAND = re.compile(rf"`attnsets\s+{GLOBAL_OPTIONS}([A-Za-z][\w-]*)[^`]*`")


def fenced_blocks(path: Path, language: str | None = None) -> list[str]:
    """The bodies of the fenced code blocks of `path`, optionally only those of `language`."""
    return [body for lang, body in FENCE.findall(path.read_text())
            if language is None or lang == language]


PYTHON_BLOCKS = [(page.name, index, code) for page in DOC_PAGES
                 for index, code in enumerate(fenced_blocks(page, "python"))]
TOML_BLOCKS = [(page.name, index, code) for page in DOC_PAGES
               for index, code in enumerate(fenced_blocks(page, "toml"))]


# --------------------------------------------------------------------------- fragment contexts
# Some pages show fragments that assume objects the reader already has (a trained model, a batch,
# a table of cells). Each gets them here; the block itself still runs verbatim.


def _small_dataset() -> Any:
    return make_dataset(DatasetSpec.from_dict({
        "pool": {"name": "gaussian", "num_concepts": 4, "dim": 4},
        "rule": {"name": "presence", "key": 3},
        "bags": {"train": 8, "val": 4, "test": 4},
        "bag_size": {"kind": "uniform", "low": 3, "high": 7}}))


def _explainers_context(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """docs/explainers.md uses `model`, `batch`, `members` and (in its second block) `explain`
    from the first block: an untrained attention model is enough to run the calls."""
    data = _small_dataset()
    info = InputInfo.from_dataset(data)
    members = [build_model(ModelSpec(embed_dim=8), info, seed=seed) for seed in (0, 1)]
    return {"model": members[0], "members": members, "batch": collate(list(data.test)),
            "explain": explain}


def _own_data_context(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """docs/own_data.md reads `cells.parquet` (patient, diagnosis and numeric markers) from the
    working directory: write a small one where sick patients hold a shifted cell."""
    rng = np.random.default_rng(0)
    rows = []
    for patient in range(24):
        sick = patient % 2
        cells = rng.normal(size=(int(rng.integers(5, 10)), 3))
        cells[0] += 4.0 * sick
        rows += [{"patient": f"p{patient}", "diagnosis": ("healthy", "sick")[sick],
                  "cd3": a, "cd4": b, "cd8": c} for a, b, c in cells]
    pd.DataFrame(rows).to_parquet("cells.parquet")
    return {}


def _audit_context(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """docs/audit.md imports `examples.my_model` (from the repository root) and audits it on the
    default battery, about 30 s on one core: shrink the battery to one small entry so that the
    example's calls and attributes are checked in well under a second."""
    monkeypatch.syspath_prepend(str(ROOT))
    small = {"name": "gaussian-presence", "about": "classical MIL",
             "pool": {"name": "gaussian", "num_concepts": 4, "dim": 4, "separation": 5.0},
             "rule": {"name": "presence", "key": 2}, "bags": {"train": 20, "val": 10, "test": 10},
             "bag_size": {"kind": "uniform", "low": 4, "high": 8}}
    monkeypatch.setattr(attnsets.data.battery, "DEFAULT_BATTERY", (small,))
    return {}


def _integrations_context(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """docs/integrations.md needs its three extras (skipped with the reason where one is not
    installed), audits on the default battery (shrunk as for audit.md) and reads `cells.h5ad`
    (patients whose responders hold a shifted cell, an X_pca embedding) from the working
    directory."""
    for extra in ("torchmil", "anndata", "mlflow"):
        pytest.importorskip(extra, reason=f"the {extra} extra is not installed")
    import anndata

    _audit_context(monkeypatch)
    rng = np.random.default_rng(0)
    blocks, patients = [], []
    for patient in range(16):
        cells = rng.normal(size=(int(rng.integers(5, 9)), 4))
        cells[0, 0] += 4.0 * (patient % 2)
        blocks.append(cells)
        patients += [f"p{patient}"] * len(cells)
    values = np.concatenate(blocks).astype(np.float32)
    obs = pd.DataFrame({"patient": patients,
                        "response": [("no", "yes")[int(p[1:]) % 2] for p in patients]},
                       index=[f"cell{i}" for i in range(len(values))])
    adata = anndata.AnnData(X=values, obs=obs)
    adata.obsm["X_pca"] = values[:, :3]
    adata.write_h5ad("cells.h5ad")
    return {}


CONTEXTS: dict[str, Callable[[pytest.MonkeyPatch], dict[str, Any]]] = {
    "explainers.md": _explainers_context, "own_data.md": _own_data_context,
    "audit.md": _audit_context, "integrations.md": _integrations_context}


# --------------------------------------------------------------------------- running blocks


def _snapshot() -> dict[str, dict[str, Any]]:
    return {kind: dict(registry.items()) for kind, registry in REGISTRIES.items()}


def _restore(before: dict[str, dict[str, Any]]) -> dict[str, set[str]]:
    """Put every registry back as it was. Returns the names a block added, by kind, and under
    "replaced" the names whose entry it overwrote or removed."""
    changes: dict[str, set[str]] = {}
    for kind, registry in REGISTRIES.items():
        now = dict(registry.items())
        for name in set(now) - set(before[kind]):
            registry.unregister(name)
            changes.setdefault(kind, set()).add(name)
        for name, original in before[kind].items():
            if now.get(name) is not original:
                registry.register(name, overwrite=True)(original)
                changes.setdefault("replaced", set()).add(f"{kind} {name}")
    return changes


@pytest.fixture
def run_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
              ) -> Iterator[Callable[[str, int, str], dict[str, set[str]]]]:
    """Run one block in a fresh module (dataclasses look their module up) with the page's
    context, in a temporary working directory; return what it changed in the registries."""
    monkeypatch.chdir(tmp_path)

    def run(page: str, index: int, code: str) -> dict[str, set[str]]:
        module = types.ModuleType(f"docs_{Path(page).stem}_block_{index}")
        module.__dict__.update(CONTEXTS.get(page, lambda _: {})(monkeypatch))
        before = _snapshot()
        sys.modules[module.__name__] = module
        try:
            exec(compile(code, f"docs/{page} python block {index}", "exec"), module.__dict__)
        finally:
            del sys.modules[module.__name__]
            added = _restore(before)
        return added

    yield run


@pytest.mark.parametrize(("page", "index", "code"), PYTHON_BLOCKS,
                         ids=[f"{page}#{index}" for page, index, _ in PYTHON_BLOCKS])
def test_python_example_runs(page: str, index: int, code: str,
                             run_block: Callable[[str, int, str], dict[str, set[str]]]) -> None:
    before = {kind: set(registry.names()) for kind, registry in REGISTRIES.items()}
    changes = run_block(page, index, code)
    assert {kind: set(registry.names()) for kind, registry in REGISTRIES.items()} == before
    assert "replaced" not in changes, f"docs/{page} overwrote built-ins: {changes['replaced']}"
    if page in EXPECTED_PLUGINS and index == 0:  # the page's worked example registers them
        assert set(changes) == EXPECTED_PLUGINS[page], f"docs/{page} registered {changes}"


def test_every_concept_and_extension_page_has_an_example() -> None:
    pages = {page for page, _, _ in PYTHON_BLOCKS}
    assert {"concepts.md", *EXPECTED_PLUGINS} <= pages


def test_contexts_only_name_pages_that_exist() -> None:
    assert set(CONTEXTS) <= {page.name for page in DOC_PAGES}


# --------------------------------------------------------------------------- TOML dataset specs


def dataset_tables(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The dataset specs in a parsed TOML block.

    The blocks in docs/rules.md are whole dataset config files: their `[dataset]` table is the
    spec, which is what `attnsets make-dataset` reads. A study config lists specs as
    `[[datasets]]` tables whose `name` (and a battery's `about`) are labels, not spec keys. A
    bare table with `pool` and `rule` is a spec itself. Anything else (e.g. `[[models]]`) is not
    a dataset spec.
    """
    if isinstance(config.get("dataset"), dict):
        return [config["dataset"]]
    if isinstance(config.get("datasets"), list):
        return [{k: v for k, v in entry.items() if k not in ("name", "about")}
                for entry in config["datasets"]]
    if "pool" in config and "rule" in config:
        return [config]
    return []


@pytest.mark.parametrize(("page", "index", "code"), TOML_BLOCKS,
                         ids=[f"{page}#toml{index}" for page, index, _ in TOML_BLOCKS])
def test_toml_block_parses_and_dataset_specs_build(page: str, index: int, code: str) -> None:
    config = tomllib.loads(code)
    for table in dataset_tables(config):
        data = make_dataset(DatasetSpec.from_dict(table))  # SpecErrors name every bad field
        for split in (data.train, data.val, data.test):
            counts = np.bincount(split.labels, minlength=data.n_classes)
            assert counts.max() - counts.min() <= 1  # the exact balance the docs promise


def test_rules_page_shows_a_valid_spec_for_every_built_in_rule() -> None:
    shown = {table["rule"]["name"] for code in fenced_blocks(ROOT / "docs" / "rules.md", "toml")
             for table in dataset_tables(tomllib.loads(code))}
    built_in = {name for name, rule in RULES.items() if rule.__module__.startswith("attnsets.")}
    assert shown == built_in


# --------------------------------------------------------------------------- CLI commands


def mentioned_commands(path: Path) -> set[str]:
    """Subcommands in `attnsets <command>` lines of code blocks and in inline code spans."""
    text = path.read_text()
    found = {name for block in fenced_blocks(path) for name in COMMAND.findall(block)}
    prose = FENCE.sub("", text)
    return found | set(INLINE_COMMAND.findall(prose))


CLI_PAGES = [ROOT / "README.md", *DOC_PAGES]
MENTIONED = sorted({(name, page.name) for page in CLI_PAGES for name in mentioned_commands(page)})
COMMANDS = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_the_docs_mention_commands() -> None:
    readme = mentioned_commands(ROOT / "README.md")
    assert {"datasets", "run", "audit", "explain-data", "report"} <= readme


@pytest.mark.parametrize(("command", "page"), MENTIONED,
                         ids=[f"{page}:{command}" for command, page in MENTIONED])
def test_mentioned_command_exists(command: str, page: str) -> None:
    assert command in COMMANDS, f"{page} mentions `attnsets {command}`; commands: {COMMANDS}"
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
