"""Write tests/golden/store_v1: a results store as schema version 1 wrote it.

Run once with the code of the commit named in tests/golden/README.md (the last main before
issue 21 changed the store): `PYTHONPATH=<that checkout>/src python tests/golden/make_store_v1.py`.
tests/test_golden.py resumes it with the current code (0 cells trained: the migration re-keys
the cells to the new ids) and reports from it. Do not regenerate it to make a test pass.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
STORE = HERE / "store_v1"

DATASET: dict[str, Any] = {
    "pool": {"name": "gaussian", "dim": 4, "num_concepts": 4, "separation": 5.0},
    "rule": {"name": "presence", "key": 1},
    "bags": {"train": 32, "val": 12, "test": 12},
    "bag_size": {"kind": "uniform", "low": 4, "high": 8}}

#: Two datasets x two models x one replicate; leave_one_out on a bag budget of 6 (half of the
#: test bags), so the store holds `explained_bags/leave_one_out`; a non-default training field.
STUDY: dict[str, Any] = {
    "study": {"name": "golden_v1", "seeds": [0], "members": 2,
              "explainers": ["attention", "random", "leave_one_out"],
              "bootstrap": 10, "curve_subsets": 3, "bag_budget": 6},
    "training": {"epochs": 2, "batch_size": 8},
    "datasets": [{"name": "g", **DATASET},
                 {"name": "p", **DATASET, "rule": {"name": "poison", "key": 1, "poison": 0}}],
    "models": [{"name": "att", "pooling": "attention", "embed_dim": 8},
               {"name": "mean", "pooling": "mean", "embed_dim": 8}],
}


def main() -> None:
    from attnsets.study.config import validate_config
    from attnsets.study.runner import run_study

    torch.set_num_threads(1)
    shutil.rmtree(STORE, ignore_errors=True)
    summary = run_study(validate_config(STUDY), STORE, show_progress=False)
    assert summary.ok and summary.done == 4, summary
    (STORE / "study.lock").unlink(missing_ok=True)
    for leftover in STORE.glob("results.sqlite-*"):  # WAL side files, empty after close
        leftover.unlink()
    print(f"wrote {STORE}", file=sys.stderr)


if __name__ == "__main__":
    main()
