"""The device setting above the training stage: studies, the CLI, assessments and the local
GPU plan. Runs on a CPU-only machine: "auto" must equal "cpu", and "cuda" must be refused
before anything runs, naming the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from attnsets.assess import AssessSpec, assess
from attnsets.audit import audit
from attnsets.cli import app
from attnsets.data import DatasetSpec, make_dataset
from attnsets.errors import SpecError, SpecErrors
from attnsets.models import ModelSpec
from attnsets.run import RunSpec, execute
from attnsets.study.config import validate_config
from attnsets.study.executor import gpu_plan
from attnsets.study.runner import run_study
from attnsets.study.store import ResultsStore
from attnsets.training import TrainSpec
from study_toml import write_study_toml

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(torch.cuda.is_available(), reason="checks a CPU-only machine")]

DATASET = {"pool": {"name": "gaussian", "dim": 4, "num_concepts": 4},
           "rule": {"name": "presence", "key": 1}, "bags": {"train": 16, "val": 8, "test": 8},
           "bag_size": {"kind": "uniform", "low": 3, "high": 6}}


def study(device: str | None) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "study": {"name": "dev", "seeds": [0], "members": 2, "explainers": ["attention", "random"],
                  "bootstrap": 5, "curve_subsets": 2},
        "training": {"epochs": 2, "batch_size": 8},
        "datasets": [{"name": "g", **DATASET}],
        "models": [{"name": "att", "pooling": "attention", "embed_dim": 8}]}
    if device is not None:
        raw["study"]["device"] = device
    return raw


def test_cpu_and_auto_studies_give_identical_records(tmp_path: Path) -> None:
    records = {}
    for device in ("cpu", "auto"):
        run_study(validate_config(study(device)), tmp_path / device, show_progress=False)
        (record,) = ResultsStore(tmp_path / device).records()
        records[device] = record
    cpu, auto = records["cpu"], records["auto"]
    assert cpu.cell_id == auto.cell_id  # the device is not part of a cell's identity
    # wall-clock timings differ from run to run; Assessment equality leaves them out
    assert cpu.assessment == auto.assessment and cpu.assessment is not None
    assert cpu.versions["device"] == auto.versions["device"] == "cpu"


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_cuda_study_on_a_machine_without_one_is_refused(tmp_path: Path, device: str) -> None:
    with pytest.raises(SpecErrors) as info:
        validate_config(study(device))
    (error,) = info.value.errors
    assert error.field == "study.device" and "no CUDA device" in error.allowed
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(write_study_toml(study(None), tmp_path / "s.toml")),
                                      "--out", str(out), "--device", device])
    assert result.exit_code == 2 and "study.device" in result.output
    assert not out.exists()


def test_device_belongs_to_the_study_not_to_the_training_table() -> None:
    raw = study(None)
    raw["training"]["device"] = "cpu"
    with pytest.raises(SpecErrors, match=r"training\.device.*\[study\] device"):
        validate_config(raw)
    raw = study("gpu")
    with pytest.raises(SpecErrors, match=r"study\.device.*cuda:N"):
        validate_config(raw)


def test_cells_train_on_the_study_device() -> None:
    (cell,) = validate_config(study("cpu")).cells
    assert cell.run_spec.training.device == "cpu"
    from attnsets.spec import identity_dict

    assert "device" not in identity_dict(cell.run.training)


def test_evaluate_audit_and_explain_data_refuse_missing_cuda(tmp_path: Path) -> None:
    config = tmp_path / "d.toml"
    config.write_text("[dataset]\nbags = {train = 8, val = 4, test = 4}\n"
                      "[dataset.pool]\nname = 'gaussian'\ndim = 4\n"
                      "[dataset.rule]\nname = 'presence'\nkey = 1\n")
    result = CliRunner().invoke(app, ["evaluate", str(config), "--device", "cuda"])
    assert result.exit_code == 2 and "training.device" in result.output
    with pytest.raises(SpecError, match=r"training\.device"):
        audit("attention", battery=[{"name": "g", **DATASET}], seeds=[0], members=1,
              training={"device": "cuda", "epochs": 1})


def test_assessment_runs_where_it_is_told() -> None:
    data = make_dataset(DatasetSpec.from_dict(DATASET))
    result = execute(RunSpec(data.spec, ModelSpec(embed_dim=8), TrainSpec(epochs=1, device="cpu"),
                             (0,), AssessSpec(explainers=("attention",), bootstrap=0)))
    members = result.members
    assert all(p.device.type == "cpu" for m in members for p in m.parameters())
    again = assess(members, data, AssessSpec(explainers=("attention",), bootstrap=0,
                                             device="cpu"))
    assert result.assessment is not None
    assert again.stage_seconds and result.assessment.stage_seconds  # timed, not compared
    untimed = [{k: v for k, v in a.to_dict().items() if k != "stage_seconds"}
               for a in (again, result.assessment)]
    assert json.dumps(untimed[0]) == json.dumps(untimed[1])  # NaN-safe
    with pytest.raises(SpecError, match="assess.device"):
        assess(members, data, AssessSpec(explainers=("attention",), device="cuda"))
    with pytest.raises(SpecError, match="device"):
        AssessSpec(device="gpu")


@pytest.mark.parametrize(("device", "workers", "gpus", "expected"), [
    ("cpu", 4, 0, (4, None)),
    ("auto", 4, 0, (4, None)),
    ("auto", 4, 2, (2, [0, 1])),
    ("cuda", 1, 2, (1, [0])),
    ("cuda", 3, 8, (3, [0, 1, 2])),
    ("cuda:1", 2, 2, (2, None)),
])
def test_local_workers_get_one_gpu_each(device: str, workers: int, gpus: int,
                                        expected: tuple[int, list[int] | None]) -> None:
    assert gpu_plan(device, workers, gpus) == expected
