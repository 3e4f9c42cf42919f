"""Shared plumbing: each benchmark returns a Markdown section; sections live between markers in
docs/benchmarks.md so one benchmark can be re-run without touching the others."""

from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Every number on this page is produced by `make bench` (or `python benchmarks/run.py --only NAME`)
on the project's reference machine (2 CPU cores, no GPU). Speed-ups are ratios measured side by side
in one run, so they compare like with like even when absolute times drift between machines.
"""

T = TypeVar("T")


def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads)")


def timed(fn: Callable[[], T], repeats: int = 1) -> tuple[float, T]:
    """Best wall time over `repeats` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result  # type: ignore[return-value]


def write_section(name: str, markdown: str) -> None:
    """Replace (or append) the section `name` of docs/benchmarks.md."""
    text = DOC.read_text() if DOC.exists() else HEADER
    block = f"<!-- bench:{name} -->\n{markdown.strip()}\n<!-- /bench:{name} -->"
    pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text.rstrip()}\n\n{block}\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def gaussian_batch(size: int, n_bags: int, dim: int) -> Any:
    """n_bags gaussian presence bags of exactly `size` instances (d = dim), 5% witnesses,
    collated into one Batch (seeded: every benchmark run sees the same bags)."""
    from attnsets.data import DatasetSpec, collate
    from attnsets.data.generate import build_pool, build_rule, make_split

    spec = DatasetSpec.from_dict({
        "pool": {"name": "gaussian", "dim": dim}, "rule": {"name": "presence", "key": 3},
        "bag_size": {"kind": "fixed", "mean": size}, "witnesses": {"rate": 0.05},
        "bags": {"train": n_bags, "val": 1, "test": 1}})
    split = make_split(build_pool(spec), build_rule(spec), spec, "train",
                       np.random.default_rng(0))
    return collate(list(split))
