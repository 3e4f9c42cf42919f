"""Tables on disk: CSV or Parquet, chosen by the file ending (own-data tables, study exports,
audit tables)."""

from __future__ import annotations

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
    """Write `frame` as CSV or Parquet, chosen by the file ending; returns the path."""
    path = check_table_path(path, field)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path
