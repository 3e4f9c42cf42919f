"""One connection to a study's results store for the whole of a report command: the per-cell
arrays (scores, mask, evidence) that figures and findings read, and the finished records'
timings. `open_results` has read the records already; this is the only other opening."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import numpy as np

from attnsets.study.store import ResultsStore


class StoredArrays:
    """Read-only access to `directory`'s store, opened on first use and closed by `close` (or
    on leaving a ``with`` block)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._store: ResultsStore | None = None

    def _open(self) -> ResultsStore:
        if self._store is None:
            self._store = ResultsStore(self.directory)
        return self._store

    def of(self, cell_id: str) -> dict[str, np.ndarray]:
        """The arrays stored with cell `cell_id` (``scores/<method>``, ``mask``, ...)."""
        return self._open().arrays(cell_id)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> StoredArrays:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()
