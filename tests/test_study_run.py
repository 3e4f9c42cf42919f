"""Running studies: end to end, failures recorded, kill -9 + resume, Ray == local."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from attnsets.cli import app
from attnsets.errors import SpecError, SpecErrors
from attnsets.models import POOLINGS, SetOutput
from attnsets.run import RunSpec
from attnsets.study.config import study_cells, validate_config
from attnsets.study.record import CellRecord
from attnsets.study.results import results_frame
from attnsets.study.runner import StudyExistsError, run_study
from attnsets.study.store import ResultsStore
from study_toml import write_study_toml

runner = CliRunner()


def tiny(cells_per_model: int = 2, name: str = "tiny") -> dict[str, Any]:
    return {
        "study": {"name": name, "seeds": list(range(cells_per_model)), "members": 2,
                  "explainers": ["attention", "random"], "bootstrap": 10, "curve_subsets": 3},
        "training": {"epochs": 2, "batch_size": 8},
        "datasets": [{"name": "g", "pool": {"name": "gaussian", "dim": 4, "num_concepts": 4},
                      "rule": {"name": "presence", "key": 1},
                      "bags": {"train": 24, "val": 12, "test": 12},
                      "bag_size": {"kind": "uniform", "low": 4, "high": 8}}],
        "models": [{"name": "att", "pooling": "attention", "embed_dim": 8}],
    }


def comparable(records: list[CellRecord]) -> dict[str, Any]:
    """cell_id -> what the cell found (its assessment and training, without wall-clock fields)."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if "seconds" not in k and k != "wall_time"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        if isinstance(value, float) and math.isnan(value):
            return "nan"
        return value
    def found(record: CellRecord) -> dict[str, Any]:
        return {**(record.assessment.to_dict() if record.assessment else {}),
                "training": record.training.to_dict() if record.training else {}}
    return {r.cell_id: (r.status, strip(found(r))) for r in records}


def test_tiny_study_end_to_end_and_results_export(tmp_path: Path) -> None:
    raw = tiny()
    raw["models"].append({"name": "mean", "pooling": "mean", "embed_dim": 8})
    summary = run_study(validate_config(raw), tmp_path, show_progress=False)
    assert (summary.total, summary.done, summary.failed) == (4, 4, 0)
    frame = results_frame(tmp_path)
    assert len(frame) == 4 and set(frame["model"]) == {"att", "mean"}
    assert frame.loc[frame["model"] == "mean", "headline.attention.auroc"].isna().all()
    assert frame.loc[frame["model"] == "att", "headline.attention.auroc"].notna().all()
    assert (tmp_path / "study.log").read_text().count("done ") == 4
    store = ResultsStore(tmp_path)
    record = store.records()[0]
    assert record.versions["torch"] == torch.__version__
    assert record.cell.run.training.epochs == 2 and len(record.cell.seeds) == 2
    cell = frame.loc[frame["model"] == "att", "cell_id"].iloc[0]
    assert store.arrays(cell)["scores/attention"].shape[0] == 2
    for suffix in ("csv", "parquet"):
        out = tmp_path / f"table.{suffix}"
        result = runner.invoke(app, ["results", str(tmp_path), "--export", str(out)])
        assert result.exit_code == 0, result.output
        back = pd.read_csv(out) if suffix == "csv" else pd.read_parquet(out)
        assert len(back) == 4 and "headline.bag_accuracy" in back.columns
    timed = runner.invoke(app, ["results", str(tmp_path), "--times", "--no-headline"])
    assert timed.exit_code == 0, timed.output
    assert "where the time went" in timed.output and "training" in timed.output
    assert "explain: attention" in timed.output and "4 cells" in timed.output
    # The same store without --resume is refused; with --resume nothing is redone.
    with pytest.raises(StudyExistsError, match="--resume"):
        run_study(validate_config(raw), tmp_path, show_progress=False)
    again = run_study(validate_config(raw), tmp_path, resume=True, show_progress=False)
    assert (again.skipped, again.done) == (4, 0)


class ExplodingPooling(nn.Module):
    """A user plugin that fails at run time only: on the validation probe's dummy two-instance
    bag it works, on real bags (more than two instances) it raises."""

    def __init__(self, in_dim: int, n_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, n_classes)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> Any:
        if h.shape[1] > 2:
            raise RuntimeError("plugin exploded")
        return SetOutput(self.linear(h.mean(dim=1)))


@pytest.fixture
def exploding_plugin() -> Iterator[str]:
    POOLINGS.register("exploding_test_pooling")(ExplodingPooling)
    yield "exploding_test_pooling"
    POOLINGS.unregister("exploding_test_pooling")


def test_a_failing_cell_is_recorded_and_the_study_goes_on(tmp_path: Path, exploding_plugin: str) -> None:
    raw = tiny(cells_per_model=1)
    raw["models"].append({"name": "boom", "pooling": "exploding_test_pooling", "embed_dim": 8})
    # workers=1 runs in this process, where the plugin is registered.
    summary = run_study(validate_config(raw), tmp_path, show_progress=False)
    assert (summary.done, summary.failed) == (1, 1)
    assert "plugin exploded" in summary.failures[0][1]
    failed = ResultsStore(tmp_path).records("failed")
    assert "RuntimeError: plugin exploded" in (failed[0].error or "")
    assert "plugin exploded" in (tmp_path / "study.log").read_text()
    # --resume retries failed cells only.
    again = run_study(validate_config(raw), tmp_path, resume=True, show_progress=False)
    assert (again.skipped, again.failed) == (1, 1)


def test_a_plugin_that_cannot_run_is_rejected_at_validation(exploding_plugin: str) -> None:
    raw = tiny(cells_per_model=1)
    raw["models"].append({"name": "boom", "pooling": "exploding_test_pooling", "embed_dim": 8})
    raw["models"][-1]["embed_dim"] = 0
    with pytest.raises(SpecErrors, match=r"models\[1\]\.embed_dim"):
        validate_config(raw)


def test_bad_config_is_rejected_before_anything_is_written(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[study]\nname = 'x'\nmembers = 0\n[[datasets]]\nname = 'd'\n"
                      "pool = {name = 'nope'}\nrule = {name = 'presence'}\n"
                      "[[models]]\nname = 'm'\npooling = 'attention'\n")
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(config), "--out", str(out)])
    assert result.exit_code == 2
    assert "study.members" in result.output and "datasets[0].pool.name" in result.output
    assert not out.exists()


def _done_cells(out: Path) -> int:
    try:
        with sqlite3.connect(f"file:{out / 'results.sqlite'}?mode=ro", uri=True) as db:
            return db.execute("SELECT COUNT(*) FROM cells WHERE status='done'").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    raw = tiny(cells_per_model=6, name="killme")
    raw["training"]["epochs"] = 6
    config = write_study_toml(raw, tmp_path / "study.toml")
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    command = [sys.executable, "-m", "attnsets.cli", "run", str(config), "--workers", "1"]
    proc = subprocess.Popen([*command, "--out", str(killed)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _done_cells(killed) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the study finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _done_cells(killed)
    assert 2 <= partial < 6
    # The interrupted store is consistent and a plain rerun is refused.
    refused = subprocess.run([*command, "--out", str(killed)], capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr + refused.stdout
    resumed = subprocess.run([*command, "--out", str(killed), "--resume"], capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{6 - partial} done, 0 failed, {partial} already done" in resumed.stdout
    subprocess.run([*command, "--out", str(clean)], check=True, capture_output=True)
    assert comparable(ResultsStore(killed).records()) == comparable(ResultsStore(clean).records())


def test_ray_executor_matches_local(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    raw = tiny(cells_per_model=2)
    local = run_study(validate_config(copy.deepcopy(raw)), tmp_path / "local", workers=2,
                      show_progress=False)
    remote = run_study(validate_config(copy.deepcopy(raw)), tmp_path / "ray", workers=2,
                       executor="ray", show_progress=False)
    assert local.done == remote.done == 2
    a = comparable(ResultsStore(tmp_path / "local").records())
    b = comparable(ResultsStore(tmp_path / "ray").records())
    assert a.keys() == b.keys()
    for cell_id in a:
        assert a[cell_id][0] == b[cell_id][0] == "done"
        _assert_close(a[cell_id][1], b[cell_id][1])


def _assert_close(x: Any, y: Any) -> None:
    if isinstance(x, dict):
        assert x.keys() == y.keys()
        for k in x:
            _assert_close(x[k], y[k])
    elif isinstance(x, list):
        assert len(x) == len(y)
        for a, b in zip(x, y, strict=True):
            _assert_close(a, b)
    elif isinstance(x, float):
        assert y == pytest.approx(x, abs=1e-6)
    else:
        assert x == y


def _children(pid: int) -> set[int]:
    """Worker processes (multiprocessing spawn_main) whose parent is `pid`."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid and b"spawn_main" in cmdline:
            found.add(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's reaping is left


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux")
def test_workers_do_not_outlive_a_killed_driver(tmp_path: Path) -> None:
    """Each cell trains for minutes, so a worker that is gone seconds after kill -9 of the
    driver was stopped by the parent-death signal, not by finishing its cell."""
    raw = tiny(cells_per_model=2, name="orphans")
    raw["training"].update({"epochs": 100000, "patience": 100000})
    config = write_study_toml(raw, tmp_path / "study.toml")
    proc = subprocess.Popen([sys.executable, "-m", "attnsets.cli", "run", str(config), "--workers",
                             "2", "--out", str(tmp_path / "out")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    workers: set[int] = set()
    while len(workers) < 2 and time.time() < deadline and proc.poll() is None:
        workers = _children(proc.pid)
        time.sleep(0.05)
    assert proc.poll() is None and len(workers) == 2, "no two workers started"
    time.sleep(3)  # into the training loop
    assert all(_running(w) for w in workers)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_running(w) for w in workers):
        time.sleep(0.1)
    alive = [w for w in workers if _running(w)]
    for w in alive:  # do not leave them behind
        os.kill(w, signal.SIGKILL)
    assert not alive, f"workers {alive} outlived the driver"


PLUGIN = '''
from dataclasses import dataclass

import numpy as np

from attnsets.data.pools.base import POOLS, InstancePool


@POOLS.register("cubes_plugin")
@dataclass
class Cubes(InstancePool):
    dim: int = 3

    @property
    def n_concepts(self) -> int:
        return 4

    @property
    def instance_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    def draw(self, concepts, split, rng):
        return (3.0 * concepts[:, None] + rng.random((len(concepts), self.dim))).astype(np.float32)
'''


def test_cli_plugins_reach_spawned_workers(tmp_path: Path) -> None:
    """A pool registered by `--plugin my_plugin.py` is known to the config validation in the
    driver and to the spawned worker processes that run the cells."""
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    raw = tiny(cells_per_model=2, name="plugged")
    raw["datasets"][0]["pool"] = {"name": "cubes_plugin", "dim": 3}
    config = write_study_toml(raw, tmp_path / "study.toml")
    env = {k: v for k, v in os.environ.items() if k != "ATTNSETS_PLUGINS"}
    base = [sys.executable, "-m", "attnsets.cli"]
    run = [*base, "--plugin", str(tmp_path / "my_plugin.py"), "run", str(config), "--workers",
           "2", "--out", str(tmp_path / "out")]
    without = subprocess.run([*base, "run", str(config), "--out", str(tmp_path / "no")], env=env,
                             capture_output=True, text=True)
    assert without.returncode == 2 and "cubes_plugin" in without.stdout + without.stderr
    done = subprocess.run(run, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _done_cells(tmp_path / "out") == 2
    missing = subprocess.run([*base, "--plugin", "no_such_plugin_module", "datasets"], env=env,
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "plugin" in missing.stdout + missing.stderr


def test_an_in_process_study_restores_the_callers_torch_threads(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    wanted = (os.cpu_count() or 1) + 1  # never what a cell sets (cores // workers)
    torch.set_num_threads(wanted)
    try:
        summary = run_study(validate_config(tiny(cells_per_model=1, name="threads")), tmp_path,
                            workers=1, show_progress=False)
        assert summary.done == 1
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)


DYING_CELLS = '''
import os
import signal
import time

from attnsets.study.record import CellRecord


def run_cell(cell):
    """replicate 1 kills its worker (as the OOM killer would); the others take a moment, so
    a neighbour is in flight when the pool breaks."""
    if cell.replicate == 1:
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.5)
    return CellRecord(cell=cell, status="done")
'''


def test_a_worker_killed_by_the_os_costs_only_its_own_cell(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker SIGKILLed mid-cell (as the OOM killer does) breaks the process pool; only the
    cells in flight become suspects and are rerun alone: the one that kills its worker again is
    recorded as failed, its innocent neighbour and every other cell complete."""
    import importlib

    from attnsets.study.config import study_cells
    from attnsets.study.executor import run_cells

    (tmp_path / "dying_cells_module.py").write_text(DYING_CELLS)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("dying_cells_module")
    cells = study_cells(validate_config(tiny(cells_per_model=5, name="dying")))
    records = {r.cell_id: r for r in run_cells(cells, module.run_cell, workers=2)}
    by_replicate = {c.replicate: records[c.cell_id] for c in cells}
    assert len(records) == 5
    assert by_replicate[1].status == "failed" and "also when it ran alone" in (by_replicate[1].error or "")
    assert all(by_replicate[r].status == "done" for r in (0, 2, 3, 4)), {  # 0 was in flight
        r: (by_replicate[r].status, (by_replicate[r].error or "")[-300:]) for r in (0, 2, 3, 4)}


# --- scheduling and worker threads ---------------------------------------------------------------

def test_worker_threads_share_the_cores_one_each_when_workers_match_cores() -> None:
    from attnsets.study.executor import worker_threads

    assert worker_threads(2, cores=2) == 1
    assert worker_threads(4, cores=2) == 1  # never 0, even oversubscribed
    assert worker_threads(1, cores=2) == 2
    assert worker_threads(2, cores=8) == 4
    assert worker_threads(3, cores=8) == 2
    assert worker_threads(1) == (os.cpu_count() or 1)
    with pytest.raises(SpecError, match="workers"):
        worker_threads(0, cores=2)


def scheduling_study() -> dict[str, Any]:
    raw = tiny(cells_per_model=1, name="order")
    small = raw["datasets"][0]
    large = {**copy.deepcopy(small), "name": "large",
             "bag_size": {"kind": "uniform", "low": 30, "high": 40}}
    raw["datasets"] = [small, large]
    raw["models"].append({"name": "tcls", "pooling": "transformer_cls", "embed_dim": 8})
    raw["study"]["explainers"] = ["attention", "leave_one_out", "random"]
    return raw


def test_cost_estimate_grows_with_bags_and_is_cubic_for_perturbing_self_attention() -> None:
    from attnsets.study.runner import assessment_cost, estimated_cost

    cells = {(c.dataset_name, c.model_name): c.run
             for c in study_cells(validate_config(scheduling_study()))}
    cost = {key: estimated_cost(spec) for key, spec in cells.items()}
    assert cost[("large", "att")] > cost[("g", "att")]
    assert cost[("g", "tcls")] > cost[("g", "att")]
    assert cost[("large", "tcls")] > cost[("large", "att")] > cost[("g", "att")]
    # The assessment alone (no training): on self-attention a pass over N instances costs ~N^2,
    # so its cost grows faster with the bag size than attention pooling's (~N).
    assessment = {}
    for key, value in cells.items():
        assessment[key] = assessment_cost(value)
    growth_tcls = assessment[("large", "tcls")] / assessment[("g", "tcls")]
    growth_att = assessment[("large", "att")] / assessment[("g", "att")]
    assert growth_tcls > 1.5 * growth_att and growth_att > 35 / 6
    spec = cells[("g", "tcls")]
    assert spec.assess is not None
    more = dataclasses.replace(spec, assess=dataclasses.replace(
        spec.assess, explainers=(*spec.assess.explainers, "shapley")))
    assert estimated_cost(more) > estimated_cost(spec)


def test_schedule_puts_the_most_expensive_cells_first_and_learns_from_timings() -> None:
    from attnsets.study.runner import estimated_cost, schedule

    cells = study_cells(validate_config(scheduling_study()))
    order = [(c.dataset_name, c.model_name) for c in schedule(cells)]
    assert order[0] == ("large", "tcls") and order[-1] == ("g", "att")
    costs = [estimated_cost(c.run) for c in schedule(cells)]
    assert costs == sorted(costs, reverse=True)
    # A resumed study: the small attention cell took 10,000x its estimate and the small
    # transformer_cls cell just its estimate, so the large attention cell now goes first.
    small = [c for c in cells if c.dataset_name == "g"]
    finished = [CellRecord(cell=c, status="done", started=0.0, finished=(
        1e4 if c.model_name == "att" else 1.0) * estimated_cost(c.run)) for c in small]
    rest = [c for c in cells if c.dataset_name == "large"]
    assert [c.model_name for c in schedule(rest)] == ["tcls", "att"]
    assert [c.model_name for c in schedule(rest, finished)] == ["att", "tcls"]


def test_run_study_starts_the_most_expensive_cell_first(tmp_path: Path) -> None:
    started: list[tuple[str, str]] = []

    def record_order(cell: Any) -> CellRecord:
        started.append((cell.dataset_name, cell.model_name))
        return CellRecord(cell=cell, status="done", started=0.0, finished=1.0)

    summary = run_study(validate_config(scheduling_study()), tmp_path, run_cell=record_order,
                        show_progress=False)
    assert summary.done == 4
    assert started[0] == ("large", "tcls") and started[-1] == ("g", "att")


def test_cost_estimate_counts_the_encoder_of_the_data_kind() -> None:
    """A CNN on digits or a sequence CNN costs more per instance than the vector MLP: at equal
    bag sizes an image or sequence cell is estimated dearer (the demo's mean-pooling cells took
    3.5 s on vectors, 20 s on digits bags half as large)."""
    from attnsets.spec import from_dict
    from attnsets.study.runner import ENCODER_COST, estimated_cost

    def run(pool: str) -> RunSpec:
        return from_dict(RunSpec, {"dataset": {"pool": pool, "rule": "presence",
                                               "bag_size": {"kind": "fixed", "mean": 10}},
                                   "model": {"pooling": "mean"}, "seeds": [0, 1],
                                   "training": {"epochs": 5}, "assess": {"explainers": ["attention"]}})

    costs = {pool: estimated_cost(run(pool)) for pool in ("gaussian", "digits", "sequences")}
    assert costs["digits"] > 5 * costs["gaussian"] and costs["sequences"] > 5 * costs["gaussian"]
    assert ENCODER_COST["vector"] == 1.0


def test_the_pool_shorthand_runs_resumes_and_reports(tmp_path: Path) -> None:
    """`pool = "gaussian"` (the string shorthand DatasetSpec accepts) validated, then crashed
    `attnsets run` in the scheduler before issue 21 (the cost model dug `.get` out of the raw
    table); the results table read the pool name the same way."""
    raw = tiny(cells_per_model=1, name="shorthand")
    raw["datasets"][0]["pool"] = "gaussian"
    raw["models"][0]["embed_dim"] = 8
    config = write_study_toml(raw, tmp_path / "s.toml")
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "1 done, 0 failed" in result.output
    frame = results_frame(out)
    assert list(frame["pool"]) == ["gaussian"] and list(frame["rule"]) == ["presence"]
    # Spelled out as a table with a default written explicitly it is the same cell: nothing reruns.
    raw["datasets"][0]["pool"] = {"name": "gaussian"}
    raw["training"]["batch_size"] = 8
    raw["training"]["lr"] = 0.001
    again = runner.invoke(app, ["run", str(write_study_toml(raw, tmp_path / "t.toml")), "--out",
                                str(out), "--resume"])
    assert again.exit_code == 0, again.output
    assert "0 done, 0 failed, 1 already done" in again.output


def test_resume_with_the_config_of_another_study_is_refused(tmp_path: Path) -> None:
    run_study(validate_config(tiny(cells_per_model=1)), tmp_path, show_progress=False)
    before = (tmp_path / "results.sqlite").read_bytes(), (tmp_path / "config.json").read_text()
    other = write_study_toml(tiny(cells_per_model=1, name="other"), tmp_path / "other.toml")
    result = runner.invoke(app, ["run", str(other), "--out", str(tmp_path), "--resume"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "results.sqlite" in text and "'tiny'" in text and "'other'" in text
    assert "Traceback" not in result.output
    assert ((tmp_path / "results.sqlite").read_bytes(), (tmp_path / "config.json").read_text()) \
        == before


def test_a_second_run_while_one_holds_the_store_is_refused(tmp_path: Path) -> None:
    from attnsets.study.store import ResultsStore

    config = write_study_toml(tiny(cells_per_model=1), tmp_path / "s.toml")
    with ResultsStore.open_for_run(tmp_path / "out"):
        result = runner.invoke(app, ["run", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "another attnsets run" in result.output
    assert "study.lock" in " ".join(result.output.split())
    assert not (tmp_path / "out" / "config.json").exists()
