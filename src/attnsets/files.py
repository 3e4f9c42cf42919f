"""Files users bring and directories we write into.

`check_input_file` refuses, with a SpecError naming the file, what a reader would otherwise
fail on obscurely: a missing path, a directory, a 0-byte file, or a file whose content is of
another format than its ending says (a Parquet file named .csv, a CSV named .h5ad). The content
is recognised by its first bytes (the "magic" of each format), so the check costs one small read.

`staged_output` writes a command's output files into a hidden staging directory next to the
output directory and moves them into place only when every file was written: a failure (or an
interrupt) leaves the output directory as it was, never half-written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from attnsets.errors import SpecError

#: Leading bytes of the formats we read or that are commonly mistaken for them.
MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"PAR1", "Parquet"),
    (b"\x89HDF\r\n\x1a\n", "HDF5 (.h5ad / .h5)"),
    (b"PK\x03\x04", "a ZIP archive (.xlsx, .npz or a torch checkpoint)"),
    (b"\x1f\x8b", "gzip-compressed"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"SQLite format 3\x00", "an SQLite database"),
)
#: What each input ending must contain; "text" = no NUL byte in the first block.
EXPECTED_CONTENT = {".csv": "text", ".parquet": "Parquet", ".h5ad": "HDF5 (.h5ad / .h5)"}
#: The ending that goes with each recognised content (for the "rename it" hint).
ENDING_OF = {"Parquet": ".parquet", "HDF5 (.h5ad / .h5)": ".h5ad", "text": ".csv"}
_SNIFF_BYTES = 4096


def sniff(path: Path) -> str:
    """What the file's first bytes say it is: a name from MAGIC, "text" or "binary"."""
    with path.open("rb") as stream:
        head = stream.read(_SNIFF_BYTES)
    for magic, kind in MAGIC:
        if head.startswith(magic):
            return kind
    return "binary" if b"\x00" in head else "text"


def check_input_file(path: str | Path, field: str, endings: tuple[str, ...]) -> Path:
    """`path` as an existing, non-empty file ending in one of `endings` whose content matches
    its ending; SpecError(field) naming the file and what is wrong otherwise."""
    path = Path(path).expanduser()
    allowed = f"an existing file ending in one of {list(endings)}"
    if not path.exists():
        raise SpecError(field, str(path), f"{allowed} (no such file)")
    if path.is_dir():
        raise SpecError(field, str(path), f"{allowed} (this is a directory)")
    suffix = path.suffix.lower()
    if suffix not in endings:
        raise SpecError(field, str(path), f"{allowed} (this one ends in {suffix or 'nothing'!r})")
    if path.stat().st_size == 0:
        raise SpecError(field, str(path), f"a non-empty {suffix} file (this one is 0 bytes)")
    try:
        found = sniff(path)
    except OSError as err:
        raise SpecError(field, str(path), f"a readable file ({err.strerror or err})") from None
    expected = EXPECTED_CONTENT.get(suffix)
    if expected is not None and found != expected:
        hint = f"; rename it to {ENDING_OF[found]}" if found in ENDING_OF else ""
        raise SpecError(field, str(path), f"a {suffix} file holding {expected} data (its "
                                          f"content is {found}{hint})")
    return path


def check_output_directory(out: str | Path, field: str = "out") -> Path:
    """`out` as a directory path we can create or write into, checked before any work: not an
    existing file, and its first existing ancestor writable."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise SpecError(field, str(out), "a directory (this path is an existing file)")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise SpecError(field, str(out), f"a directory we may write in ({existing} is not "
                                         "writable)")
    return out


@contextlib.contextmanager
def staged_output(out: str | Path, field: str = "out") -> Iterator[Path]:
    """Yield an empty staging directory; on success move every file written there into `out`
    (created if needed; files of the same name replaced, each with one os.replace), on any
    failure remove the staging directory and leave `out` untouched."""
    out = check_output_directory(out, field)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    except OSError as err:
        raise SpecError(field, str(out), f"a directory we may write in ({err.strerror or err})"
                        ) from None
    try:
        yield staging
        out.mkdir(exist_ok=True)
        for item in sorted(staging.rglob("*")):
            if item.is_file():
                target = out / item.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(item, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
