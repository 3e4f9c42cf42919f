"""Write the golden records that tests/test_golden.py compares the run against.

Run once with the code of the commit named in tests/golden/README.md (before the typed run
landed): `python tests/golden/make_golden.py`. Each front door (study cell, `evaluate`,
`audit`, `explain-data`) is run on a tiny fixed-seed task and its numbers are written as JSON;
the study store it writes is kept as the "store written by an older version".
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent

DATASET: dict[str, Any] = {
    "pool": {"name": "gaussian", "dim": 4, "num_concepts": 4, "separation": 5.0},
    "rule": {"name": "presence", "key": 1},
    "bags": {"train": 40, "val": 16, "test": 16},
    "bag_size": {"kind": "uniform", "low": 4, "high": 8}}
POISON: dict[str, Any] = {**DATASET, "rule": {"name": "poison", "key": 1, "poison": 0}}

STUDY: dict[str, Any] = {
    "study": {"name": "golden", "seeds": [0], "members": 2,
              "explainers": ["attention", "random", "gradient", "leave_one_out"],
              "bootstrap": 10, "curve_subsets": 3},
    "training": {"epochs": 3, "batch_size": 8},
    "datasets": [{"name": "g", **DATASET}, {"name": "p", **POISON}],
    "models": [{"name": "att", "pooling": "attention", "embed_dim": 8},
               {"name": "tcls", "pooling": "transformer_cls", "embed_dim": 8}],
}

EVALUATE_TOML = """\
[dataset]
pool = { name = "gaussian", dim = 4, num_concepts = 4, separation = 5.0 }
rule = { name = "presence", key = 1 }
bags = { train = 40, val = 16, test = 16 }
bag_size = { kind = "uniform", low = 4, high = 8 }

[model]
pooling = "gated_attention"
embed_dim = 8

[training]
epochs = 3
batch_size = 8

[assess]
bootstrap = 10
curve_subsets = 3
"""


def clean(value: Any) -> Any:
    """JSON-ready, NaN as the string "nan", wall-clock fields dropped."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()
                if "seconds" not in str(k) and k not in ("started", "finished")}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return clean(value.tolist())
    if isinstance(value, np.generic):
        return clean(value.item())
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def compute(store_dir: Path) -> dict[str, Any]:
    """Every front door's numbers on the tiny tasks; the study store is written to store_dir."""
    from typer.testing import CliRunner

    from attnsets.audit import audit
    from attnsets.cli import app
    from attnsets.data.own import bags_from_arrays
    from attnsets.own_data import explain_own_data
    from attnsets.study.config import validate_config
    from attnsets.study.results import results_frame
    from attnsets.study.runner import run_study
    from attnsets.study.store import ResultsStore

    out: dict[str, Any] = {}
    work = Path(tempfile.mkdtemp())
    run_study(validate_config(STUDY), store_dir, show_progress=False)
    records = ResultsStore(store_dir).records()
    out["study"] = {f"{r.cell.dataset_name}/{r.cell.model_name}": clean({
        **r.assessment.to_dict(), "training": r.training.to_dict()})
        for r in records if r.assessment is not None and r.training is not None}
    out["study_frame_columns"] = sorted(results_frame(store_dir).columns)

    config = work / "evaluate.toml"
    config.write_text(EVALUATE_TOML)
    metrics_path = work / "metrics.json"
    result = CliRunner().invoke(app, ["evaluate", str(config), "--members", "2", "--explainers",
                                      "attention,random,gradient", "--seed", "3", "--json",
                                      str(metrics_path)])
    assert result.exit_code == 0, result.output
    out["evaluate"] = clean(json.loads(metrics_path.read_text()))

    audited = audit("attention", battery=[{"name": "g", **DATASET}, {"name": "p", **POISON}],
                    seeds=[0], members=2, training={"epochs": 3})
    out["audit"] = clean(audited.table.drop(columns=["train_seconds"]).astype(object)
                         .where(audited.table.notna(), None).to_dict("records"))

    rng = np.random.default_rng(0)
    bags = [rng.normal(size=(int(rng.integers(3, 7)), 3)) + (i % 2) * np.eye(3)[0]
            for i in range(30)]
    explained = explain_own_data(bags_from_arrays(bags, [i % 2 for i in range(30)]),
                                 members=2, training={"epochs": 3}, seed=1)
    out["explain_data"] = {
        "bags": clean(explained.bags.drop(columns=["bag_id"]).to_dict("list")),
        "instances": clean(explained.instances[["consensus", "rank_spread", "top_k_votes"]]
                           .to_dict("list")),
        "metrics": clean(explained.metrics)}
    shutil.rmtree(work)
    return out


def main() -> None:
    torch.set_num_threads(1)
    store_dir = HERE / "store_v0"
    shutil.rmtree(store_dir, ignore_errors=True)
    out = compute(store_dir)
    (HERE / "golden.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {HERE / 'golden.json'} and {store_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
