"""Tables on disk: CSV or Parquet, chosen by the file ending (own-data tables, study exports,
audit tables)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import pandas as pd

from attnsets.errors import SpecError

TABLE_FORMATS = (".csv", ".parquet")


def check_table_path(path: str | Path, field: str = "path") -> Path:
    """`path` as a Path if it ends in a table format; SpecError naming `field` otherwise."""
    path = Path(path)
    if path.suffix.lower() not in TABLE_FORMATS:
        raise SpecError(field, str(path), f"a file ending in one of {list(TABLE_FORMATS)}")
    return path


def write_table(frame: pd.DataFrame, path: str | Path, field: str = "path") -> Path:
    """Write `frame` as CSV or Parquet, chosen by the file ending; returns the path. The file
    is written next to `path` under a temporary name and renamed into place, so a failure
    never leaves a truncated table (nor replaces a previous one)."""
    path = check_table_path(path, field)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        if path.suffix.lower() == ".csv":
            frame.to_csv(temp_name, index=False)
        else:
            frame.to_parquet(temp_name, index=False)
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    return path
