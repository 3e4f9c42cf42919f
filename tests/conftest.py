"""Fixtures shared by several test modules."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from attnsets.registry import DISABLE_AUTOLOAD_ENV

# The registries hold the built-ins only (many tests list POOLINGS.names() as "every pooling"):
# no installed `attnsets.plugins` entry point is loaded, here or in spawned study workers.
# tests/test_plugins.py turns it back on where it tests the loading.
os.environ[DISABLE_AUTOLOAD_ENV] = "1"


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Train on one torch thread for the whole module: bitwise determinism, a fair share of the
    2 shared cores, and no oversubscription when the other test worker is busy."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
