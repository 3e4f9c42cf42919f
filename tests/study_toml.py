"""Write a study config dict as a TOML file (the tests' CLI runs read files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)  # strings quoted, booleans lower case, numbers as they are


def write_study_toml(raw: dict[str, Any], path: Path) -> Path:
    """raw's tables ([study], [training], [thresholds], [grid]) and arrays of tables
    ([[datasets]], [[models]]) as TOML at `path`; dotted keys (grid paths) are quoted."""
    lines = []
    for section in ("study", "training", "thresholds", "grid"):
        if section in raw:
            lines.append(f"[{section}]")
            lines += [f'"{k}" = {toml_value(v)}' if "." in k else f"{k} = {toml_value(v)}"
                      for k, v in raw[section].items()]
    for section in ("datasets", "models"):
        for entry in raw[section]:
            lines.append(f"[[{section}]]")
            lines += [f"{k} = {toml_value(v)}" for k, v in entry.items()]
    path.write_text("\n".join(lines) + "\n")
    return path
