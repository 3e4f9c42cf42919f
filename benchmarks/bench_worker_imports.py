"""What a spawned study worker imports before its first cell computes: unpickling its task
(executor.guarded, cell.evaluate_cell and a Cell holding its RunSpec) and attnsets.run, which
evaluate_cell imports. Prints the seconds and the cumulative import time of the heavy packages
(python -X importtime), for fresh interpreters. `python benchmarks/bench_worker_imports.py`"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from attnsets.study.cell import evaluate_cell  # noqa: E402
from attnsets.study.config import study_cells, validate_config  # noqa: E402
from attnsets.study.executor import guarded  # noqa: E402

HEAVY = ("torch", "captum", "matplotlib.pyplot", "pydantic", "sklearn", "scipy", "rich", "typer",
         "pandas")
STUDY = {"study": {"name": "w", "seeds": [0], "members": 2, "explainers": ["attention"]},
         "training": {"epochs": 1},
         "datasets": [{"name": "g", "pool": {"name": "gaussian"},
                       "rule": {"name": "presence", "key": 1}}],
         "models": [{"name": "a", "pooling": "attention"}]}
CHILD = """import pickle, sys, time
started = time.perf_counter()
task = pickle.loads(open(sys.argv[1], "rb").read())
import attnsets.run
print(round(time.perf_counter() - started, 2))
"""


def main(repeats: int = 3) -> None:
    cell = study_cells(validate_config(STUDY))[0]
    with tempfile.TemporaryDirectory() as tmp:
        task = Path(tmp) / "task.pkl"
        task.write_bytes(pickle.dumps((guarded, evaluate_cell, cell, 1)))
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
        for _ in range(repeats):
            out = subprocess.run([sys.executable, "-X", "importtime", "-c", CHILD, str(task)],
                                 capture_output=True, text=True, env=env, check=True)
            cumulative: dict[str, float] = {}
            for line in out.stderr.splitlines():
                parts = line.split("|")
                if len(parts) == 3 and parts[2].strip() in HEAVY:
                    name = parts[2].strip()
                    cumulative[name] = max(cumulative.get(name, 0.0), int(parts[1]) / 1e6)
            print(f"worker imports: {out.stdout.strip()} s;",
                  ", ".join(f"{k} {v:.2f} s" for k, v in sorted(cumulative.items())))


if __name__ == "__main__":
    main()
