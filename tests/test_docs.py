"""Every Python example in README.md runs."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from attnsets.data import POOLS, RULES
from attnsets.explain import EXPLAINERS
from attnsets.models import ENCODERS, POOLINGS

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int) -> None:
    registries = (POOLS, RULES, ENCODERS, POOLINGS, EXPLAINERS)
    registered = [set(r.names()) for r in registries]
    module = types.ModuleType(f"readme_block_{index}")  # dataclasses look their module up
    sys.modules[module.__name__] = module
    try:
        exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]  # examples may register plugins; keep the registries as they were
        for registry, before in zip(registries, registered, strict=True):
            for name in set(registry.names()) - before:
                registry.unregister(name)
