"""Run benchmarks and update docs/benchmarks.md: `python benchmarks/run.py [--only NAME ...]`."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_section  # noqa: E402

BENCHMARKS = {"ceiling": "benchmarks.bench_ceiling", "data": "benchmarks.bench_data",
              "ensemble": "benchmarks.bench_ensemble_strategy",
              "explain": "benchmarks.bench_explain",
              "study": "benchmarks.bench_study", "training": "benchmarks.bench_training",
              "training_path": "benchmarks.bench_training_path"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), help="benchmarks to run")
    args = parser.parse_args()
    for name in args.only or sorted(BENCHMARKS):
        print(f"running benchmark {name} ...", flush=True)
        section = importlib.import_module(BENCHMARKS[name]).run()
        write_section(name, section)
        print(section, flush=True)


if __name__ == "__main__":
    main()
