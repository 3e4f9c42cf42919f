"""Bad input of every kind a user brings: their own tables and .h5ad files, model references
and checkpoints for `audit`, hostile names in the HTML report, paths with spaces and non-ASCII
characters, and sizes that cannot fit in memory. Each is refused through the CLI with one
clear line naming the field or file, exit code 2, no traceback and nothing written.
docs/reliability.md lists every case tested here with its first line."""

from __future__ import annotations

import html
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from attnsets.cli import app
from attnsets.errors import SpecError, TooLargeError
from attnsets.files import staged_output
from attnsets.memory import LIMIT_ENV, MemoryEstimate, check_fits, parse_size

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "my_model.py"
CONFIGS = ROOT / "configs" / "datasets"
runner = CliRunner()

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def refused(args: list[str], *fragments: str, env: dict[str, str] | None = None) -> str:
    """Run the CLI, expect a clean refusal (exit 2, no traceback); returns the first line."""
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        result.exception
    assert "Traceback" not in result.output
    first = result.output.strip().splitlines()[0]
    assert first.startswith("error: "), result.output
    text = " ".join(result.output.split())
    for fragment in fragments:
        assert fragment in text, (fragment, result.output)
    return first


def good_table(n_bags: int = 12, size: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame([{"bag": f"b{b}", "y": b % 2, "f0": rng.normal(), "f1": rng.normal()}
                         for b in range(n_bags) for _ in range(size)])


# --------------------------------------------------------------------------- explain-data tables


def _with(column: str, row: int, value: object) -> pd.DataFrame:
    frame = good_table()
    frame[column] = frame[column].astype(object) if isinstance(value, str) else frame[column]
    frame.loc[row, column] = value
    return frame


def _parquet_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    good_table().to_parquet(buffer)
    return buffer.getvalue()


TABLE_CASES = {
    # name: (file name, content: DataFrame (written as CSV) or raw bytes, CLI extras, fragments)
    "nan": ("t.csv", _with("f0", 4, np.nan), [], ["feature_columns", "'f0'", "1 NaN",
                                                    "row 4"]),
    "inf": ("t.csv", _with("f1", 2, np.inf), [], ["feature_columns", "'f1'", "1 infinite"]),
    "one class": ("t.csv", good_table().assign(y=1), [], ["labels", "at least two classes"]),
    "too few bags": ("t.csv", good_table(3), [], ["bags: got 3", "one in each of train, val"]),
    "one-row bags": ("t.csv", good_table(12, 1), [], ["bag_column", "bag of its own",
                                                      "row id"]),
    "non-numeric features": ("t.csv", good_table().assign(f0="a", f1="b"), [],
                             ["feature_columns", "no numeric column"]),
    "non-numeric chosen": ("t.csv", good_table().assign(f1="b"), ["--features", "f0,f1"],
                           ["feature_columns: got 'f1'", "drop or encode"]),
    "repeated columns": ("t.csv", b"bag,y,f0,f0\nb0,0,1,2\nb1,1,1,2\n", [],
                         ["columns: got ['f0']", "'f0' more than once"]),
    "repeated features": ("t.csv", good_table(), ["--features", "f0,f0"],
                          ["columns: got ['f0']", "feature_columns"]),
    "missing bag column": ("t.csv", good_table(), [], ["bag_column: got 'patient'",
                                                       "['bag', 'y', 'f0', 'f1']"]),
    "missing label value": ("t.csv", _with("y", 3, np.nan), [], ["label_column", "1 missing"]),
    "0-byte csv": ("t.csv", b"", [], ["table", "0 bytes"]),
    "header only": ("t.csv", b"bag,y,f0\n", [], ["table", "only the header"]),
    "parquet named .csv": ("t.csv", _parquet_bytes(), [], ["table", "content is Parquet",
                                                           "rename it to .parquet"]),
    "binary named .csv": ("t.csv", bytes(range(256)) * 4, [], ["table", "content is binary"]),
    "csv named .parquet": ("t.parquet", good_table().to_csv(index=False).encode(), [],
                           ["table", "content is text", "rename it to .csv"]),
    "csv named .h5ad": ("t.h5ad", good_table().to_csv(index=False).encode(), [],
                        ["table", "HDF5", "content is text"]),
    "0-byte h5ad": ("t.h5ad", b"", [], ["table", "0 bytes"]),
    "wrong extension": ("t.txt", good_table(), [], ["table", "ends in '.txt'"]),
    "missing file": ("absent.csv", None, [], ["table", "no such file"]),
    "bad format": ("t.csv", good_table(), ["--format", "xlsx"], ["fmt: got 'xlsx'"]),
}


@pytest.mark.parametrize("case", list(TABLE_CASES))
def test_explain_data_refuses_bad_tables_by_name(tmp_path: Path, case: str) -> None:
    name, content, extra, fragments = TABLE_CASES[case]
    path = tmp_path / name
    if isinstance(content, pd.DataFrame):
        content.to_csv(path, index=False)
    elif content is not None:
        path.write_bytes(content)
    bag = "patient" if case == "missing bag column" else "bag"
    out = tmp_path / "out"
    refused(["explain-data", str(path), "--bag-column", bag, "--label-column", "y",
             "--members", "2", "--epochs", "1", "-o", str(out), *extra], *fragments)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ([name] if content is not None else [])


def test_explain_data_refuses_an_out_path_that_is_a_file(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    good_table().to_csv(table, index=False)
    (tmp_path / "taken").write_text("mine")
    refused(["explain-data", str(table), "--bag-column", "bag", "--label-column", "y",
             "-o", str(tmp_path / "taken")], "out", "existing file")
    assert (tmp_path / "taken").read_text() == "mine"


def _h5ad(tmp_path: Path, repeat_var: bool = False, nan: bool = False) -> Path:
    anndata = pytest.importorskip("anndata", reason="anndata not installed")
    values = np.random.default_rng(0).normal(size=(36, 3)).astype(np.float32)
    if nan:
        values[5, 1] = np.nan
    obs = pd.DataFrame({"patient": [f"p{i // 3}" for i in range(36)],
                        "response": [str(i // 3 % 2) for i in range(36)]},
                       index=[f"c{i}" for i in range(36)])
    var = pd.DataFrame(index=["g0", "g1", "g1"] if repeat_var else ["g0", "g1", "g2"])
    path = tmp_path / "cells.h5ad"
    with warnings.catch_warnings():  # anndata warns about the repeated names we want
        warnings.simplefilter("ignore", UserWarning)
        anndata.AnnData(X=values, obs=obs, var=var).write_h5ad(path)
    return path


H5AD_CASES = {
    "repeated var_names": ["X: got", "'g1'", "var_names_make_unique"],
    "NaN in X": ["X: got 'g1'", "1 NaN"],
    "missing obs column": ["bag_column: got 'sample'", "obs columns"],
    "missing obsm key": ["obsm: got 'X_umap'", "obsm keys"],
}


@pytest.mark.parametrize("case", list(H5AD_CASES))
def test_explain_data_refuses_bad_h5ad_contents(tmp_path: Path, case: str) -> None:
    fragments = H5AD_CASES[case]
    path = _h5ad(tmp_path, repeat_var=case == "repeated var_names", nan=case == "NaN in X")
    bag = "sample" if case == "missing obs column" else "patient"
    extra = ["--obsm", "X_umap"] if case == "missing obsm key" else []
    refused(["explain-data", str(path), "--bag-column", bag, "--label-column", "response",
             "-o", str(tmp_path / "out"), *extra], *fragments)
    assert not (tmp_path / "out").exists()


def test_staged_output_leaves_the_directory_untouched_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "results"
    out.mkdir()
    (out / "bags.csv").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), staged_output(out) as staging:
        (staging / "instances.csv").write_text("new")
        (staging / "bags.csv").write_text("new")
        raise RuntimeError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # no staging left over
    assert [p.name for p in out.iterdir()] == ["bags.csv"]
    assert (out / "bags.csv").read_text() == "old"
    with staged_output(out) as staging:
        (staging / "bags.csv").write_text("new")
    assert (out / "bags.csv").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


# --------------------------------------------------------------------------- audit references

BATTERY = ('[[datasets]]\nname = "tiny"\n'
           'pool = { name = "gaussian", num_concepts = 4, dim = 6, separation = 8.0 }\n'
           'rule = { name = "presence", key = 2 }\n'
           'bags = { train = 20, val = 10, test = 10 }\n'
           'bag_size = { kind = "uniform", low = 3, high = 6 }\n')
MODELS = {
    "syntax.py": "def build(info, seed)\n    return None\n",
    "fails_import.py": "import attnsets_no_such_package\n",
    "raises_at_top.py": "raise RuntimeError('configured for another machine')\n",
    "not_module.py": "def build(info, seed):\n    return 'a string'\n",
    "raises.py": "def build(info, seed):\n    raise ValueError('no GPU here')\n",
    "not_callable.py": "build = 3\n",
    "wrong_shape.py": (
        "import torch\nclass M(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.w = torch.nn.Linear(6, 3)\n"
        "    def forward(self, x, mask):\n        return self.w(x).mean(1)\n"
        "def build(info, seed):\n    return M()\n"),
    "nan.py": (
        "import torch\nclass M(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.w = torch.nn.Linear(6, 2)\n"
        "    def forward(self, x, mask):\n        return self.w(x).mean(1) * float('nan')\n"
        "def build(info, seed):\n    return M()\n"),
}
AUDIT_CASES = {
    "missing file": ("absent.py:build", ["model", "absent.py not found"]),
    "missing function": ("not_module.py:make", ["model", "no 'make' there", "'build'"]),
    "syntax error": ("syntax.py:build", ["model", "SyntaxError", "syntax.py, line 1"]),
    "failing import": ("fails_import.py:build", ["model", "ModuleNotFoundError",
                                                 "attnsets_no_such_package"]),
    "raises on import": ("raises_at_top.py:build", ["model", "RuntimeError",
                                                    "configured for another machine"]),
    "missing module": ("attnsets_no_such_module:build", ["model", "an importable module"]),
    "not callable": ("not_callable.py:build", ["model", "a callable", "of type int"]),
    "returns not a module": ("not_module.py:build", ["model_builder: got 'str'",
                                                     "torch.nn.Module"]),
    "builder raises": ("raises.py:build", ["model_builder", "ValueError: no GPU here"]),
    "wrong logits shape": ("wrong_shape.py:build", ["model_builder.forward",
                                                    "logits of shape (4, 3)", "(4, 2)"]),
    "NaN logits": ("nan.py:build", ["model_builder.forward", "non-finite", "finite"]),
    "unknown pooling": ("atention", ["model: got 'atention'", "registered pooling"]),
}


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    for name, text in MODELS.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "battery.toml").write_text(BATTERY)
    return tmp_path


@pytest.mark.parametrize("case", list(AUDIT_CASES))
def test_audit_refuses_bad_models_before_training(model_dir: Path, case: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    reference, fragments = AUDIT_CASES[case]
    monkeypatch.chdir(model_dir)
    out = model_dir / "audit.csv"
    refused(["audit", reference, "--battery", "battery.toml", "--seeds", "0", "--members", "1",
             "-o", str(out)], *fragments)
    assert not out.exists()


def _checkpoint(tmp_path: Path) -> Path:
    from attnsets.models import InputInfo, ModelSpec, build_model
    from attnsets.training import save_model

    model = build_model(ModelSpec(pooling="gated_attention", embed_dim=8),
                        InputInfo("vector", (6,), 2))
    return save_model(model, tmp_path / "model.pt")


CHECKPOINT_CASES = {
    "0 bytes": ["not a readable attnsets checkpoint", "damaged or foreign"],
    "truncated": ["not a readable attnsets checkpoint", "damaged or foreign"],
    "foreign torch file": ["not an attnsets checkpoint"],
    "missing": ["model", "an existing checkpoint file"],
}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_audit_refuses_damaged_checkpoints(tmp_path: Path, case: str) -> None:
    fragments = CHECKPOINT_CASES[case]
    path = _checkpoint(tmp_path)
    if case == "0 bytes":
        path.write_bytes(b"")
    elif case == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    elif case == "foreign torch file":
        torch.save({"weight": torch.zeros(3)}, path)
    else:
        path.unlink()
    refused(["audit", str(path), "--seeds", "0"], str(path), *fragments)


def test_a_checkpoint_reference_audits_its_saved_architecture(tmp_path: Path) -> None:
    from attnsets.audit import _candidate
    from attnsets.models import ModelSpec

    candidate = _candidate(str(_checkpoint(tmp_path)))
    assert isinstance(candidate.model, ModelSpec)
    assert candidate.model.pooling == "gated_attention" and candidate.model.embed_dim == 8


# --------------------------------------------------------------------------- sizes


MEMORY_CASES = ("explain-data", "audit", "make-dataset", "run", "bad limit")
#: Rows of docs/reliability.md checked by the single tests named after them.
OTHER_CASES = ("out is a file", "binary config", "make-dataset out is a directory")


def test_every_documented_case_is_tested() -> None:
    """docs/reliability.md lists exactly the cases of this file: no row without a test, no
    tested kind left out of the table."""
    page = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| ([^|`]+?) \| `", page, re.MULTILINE)
    expected = [*TABLE_CASES, *H5AD_CASES, *AUDIT_CASES, *CHECKPOINT_CASES, *MEMORY_CASES,
                *OTHER_CASES]
    assert sorted(rows) == sorted(expected)


def test_parse_size_reads_units_and_refuses_junk() -> None:
    assert parse_size("512MB") == 512 * 1000 ** 2 and parse_size("4GiB") == 4 * 1024 ** 3
    assert parse_size("1000") == 1000 and parse_size("1.5k") == 1500
    for bad in ("lots", "-1GB", "0", "5 parsecs"):
        with pytest.raises(SpecError, match=LIMIT_ENV):
            parse_size(bad)


def test_check_fits_names_the_estimate_and_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LIMIT_ENV, "1MiB")
    check_fits(MemoryEstimate({"a": 1024}), "data", "a small job")
    with pytest.raises(TooLargeError) as caught:
        check_fits(MemoryEstimate({"padded": 2 * 1024 ** 2, "maps": 1024 ** 2}), "data", "job")
    err = caught.value
    assert err.field == "data" and err.needed == 3 * 1024 ** 2 and err.limit == 1024 ** 2
    assert "needs about 3.0 MiB (padded 2.0 MiB + maps 1.0 MiB)" in str(err)
    assert "at most 1.0 MiB (set by $ATTNSETS_MEMORY_LIMIT)" in str(err)


def test_every_command_refuses_a_job_over_the_memory_limit(model_dir: Path) -> None:
    env = {LIMIT_ENV: "2KB"}
    tmp_path = model_dir
    before = {p.name for p in tmp_path.iterdir()}
    table = tmp_path / "t.csv"
    good_table().to_csv(table, index=False)
    study = tmp_path / "study.toml"
    study.write_text(_study_toml("s", "d", "m"))
    before -= {"t.csv", "study.toml"}
    commands = {
        "explain-data": (["explain-data", str(table), "--bag-column", "bag", "--label-column",
                          "y", "-o", str(tmp_path / "own")], "data: got 'explaining 12 bags"),
        "audit": (["audit", "attention", "--battery", str(model_dir / "battery.toml"),
                   "--seeds", "0", "-o", str(tmp_path / "a.csv")], "battery.tiny: got"),
        "make-dataset": (["make-dataset", str(CONFIGS / "gaussian_presence.toml"), "--out",
                          str(tmp_path / "g.npz")], "dataset: got 'generating"),
        "run": (["run", str(study), "--out", str(tmp_path / "study"), "--workers", "2"],
                "datasets.d: got 'cell d x m needs about"),
    }
    assert [*commands, "bad limit"] == list(MEMORY_CASES)
    refused(commands["make-dataset"][0], "ATTNSETS_MEMORY_LIMIT: got 'lots'",
            env={LIMIT_ENV: "lots"})
    for args, first in commands.values():
        line = refused(args, "needs about", "at most 2.0 KiB (set by $ATTNSETS_MEMORY_LIMIT)",
                       env=env)
        assert line.startswith(f"error: {first}"), line
    assert {p.name for p in tmp_path.iterdir()} == before | {"study.toml", "t.csv"}


# --------------------------------------------------------------------------- names and paths

HOSTILE = "<script>alert('x')</script> & co"


def _study_toml(study: str, dataset: str, model: str) -> str:
    def quoted(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return (f"[study]\nname = {quoted(study)}\nseeds = [0]\nmembers = 2\n"
            "explainers = [\"attention\"]\nbootstrap = 0\ncurve_subsets = 2\n"
            "[training]\nepochs = 1\nbatch_size = 16\n"
            f"[[datasets]]\nname = {quoted(dataset)}\n"
            "pool = { name = \"gaussian\", dim = 4, num_concepts = 4 }\n"
            "rule = { name = \"presence\", key = 1 }\n"
            "bag_size = { kind = \"uniform\", low = 3, high = 6 }\n"
            "bags = { train = 16, val = 8, test = 8 }\n"
            f"[[models]]\nname = {quoted(model)}\npooling = \"attention\"\nembed_dim = 4\n")


@pytest.fixture(scope="module")
def hostile_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) study run by the CLI into a directory with spaces and non-ASCII letters,
    with `<script>` and `&` in its study, dataset and model names."""
    root = tmp_path_factory.mktemp("names") / "résultats d'été ü"
    root.mkdir()
    config = root / "étude 1.toml"
    config.write_text(_study_toml(f"study {HOSTILE}", f"data {HOSTILE}", f"model {HOSTILE}"),
                      encoding="utf-8")
    out = root / "out dir ü"
    result = runner.invoke(app, ["run", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "<script>" in result.output  # printed as text, not eaten as rich markup
    return out


def test_run_writes_into_a_path_with_spaces_and_non_ascii(hostile_study: Path) -> None:
    assert (hostile_study / "results.sqlite").is_file()
    result = runner.invoke(app, ["results", str(hostile_study), "--export",
                                 str(hostile_study / "tables é" / "all cells.csv")])
    assert result.exit_code == 0, result.output
    cells = pd.read_csv(hostile_study / "tables é" / "all cells.csv")
    assert set(cells["dataset"]) == {f"data {HOSTILE}"}


def test_report_escapes_every_user_name(hostile_study: Path) -> None:
    out = hostile_study / "rapport é"
    result = runner.invoke(app, ["report", str(hostile_study), "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page.lower()  # the page has no script of its own either
    escaped = html.escape(HOSTILE, quote=True)
    for name in (f"study {escaped}", f"data {escaped}", f"model {escaped}"):
        assert name in page, name
    # every & in the page starts an entity: no raw user ampersand survives
    assert not re.search(r"&(?![a-zA-Z]+;|#[0-9]+;|#x[0-9a-fA-F]+;)", page)


def test_explain_data_reads_and_writes_paths_with_spaces_and_non_ascii(tmp_path: Path) -> None:
    folder = tmp_path / "données patient ü"
    folder.mkdir()
    table = folder / "cellules été.csv"
    frame = good_table(16, 3)
    frame["bag"] = [f"[bold]{b} é&<i>" for b in frame["bag"]]  # rich markup and HTML in ids
    frame = frame.drop(index=[1, 2])  # bag 0 keeps a single instance: explained, noted
    frame.to_csv(table, index=False)
    out = folder / "sortie 1"
    result = runner.invoke(app, ["explain-data", str(table), "--bag-column", "bag",
                                 "--label-column", "y", "--members", "2", "--epochs", "1",
                                 "-o", str(out)])
    assert result.exit_code == 0, result.output
    bags = pd.read_csv(out / "bags.csv")
    assert set(bags["bag_id"]) == set(frame["bag"])
    assert "[bold]" in result.output and "é&<i>" in result.output
    assert "1 bag(s) hold a single instance" in result.output
    assert bags.loc[bags["n_instances"] == 1, "rank_agreement"].isna().all()
    assert sorted(p.name for p in folder.iterdir()) == ["cellules été.csv", "sortie 1"]


def test_audit_reads_a_model_file_and_writes_to_paths_with_spaces(model_dir: Path) -> None:
    folder = model_dir / "mes modèles ü"
    folder.mkdir()
    model = folder / "mon modèle.py"
    model.write_text(EXAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    out = folder / "résultat audit.csv"
    result = runner.invoke(app, ["audit", f"{model}:build", "--battery",
                                 str(model_dir / "battery.toml"), "--seeds", "0",
                                 "--members", "1", "--epochs", "1", "-o", str(out)])
    assert result.exit_code in (0, 1), result.output  # 1 = an entry failed (1 epoch)
    assert pd.read_csv(out)["entry"].tolist() == ["tiny"]


def test_make_dataset_reads_and_writes_paths_with_spaces(tmp_path: Path) -> None:
    folder = tmp_path / "jeux de données ü"
    folder.mkdir()
    config = folder / "mon jeu.toml"
    config.write_text((CONFIGS / "gaussian_presence.toml").read_text(), encoding="utf-8")
    out = folder / "sortie é" / "jeu 1.npz"
    result = runner.invoke(app, ["make-dataset", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file()
    refused(["make-dataset", str(config), "--out", str(folder)], "out", "directory")
    (folder / "binary.toml").write_bytes(bytes(range(256)))
    refused(["make-dataset", str(folder / "binary.toml"), "--out", str(folder / "x.npz")],
            "config", "UTF-8")
