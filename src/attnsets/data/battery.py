"""The audit battery: datasets with known witnesses on which a model is judged (modalities x
labelling rules, including the algorithmic unit tests). A battery is a list of BatteryEntry; a
study config's [[datasets]] tables work as entries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnsets.data.spec import DatasetSpec
from attnsets.errors import SpecError

_SMALL = {"train": 160, "val": 60, "test": 60}
#: Gaussian instances are cheap; more training bags let a plain attention model learn them.
_GAUSSIAN_BAGS = {"train": 300, "val": 60, "test": 60}
_GAUSSIAN = {"name": "gaussian", "num_concepts": 6, "dim": 8, "separation": 5.0}

#: The default battery: (name, dataset spec, what it checks). Sizes keep a whole audit of a
#: small model at a couple of minutes on 2 CPU cores.
DEFAULT_BATTERY: tuple[dict[str, Any], ...] = (
    {"name": "gaussian-presence", "about": "classical MIL: positive iff a key instance is present",
     "pool": _GAUSSIAN, "rule": {"name": "presence", "key": 2}, "bags": _GAUSSIAN_BAGS,
     "bag_size": {"kind": "uniform", "low": 6, "high": 14}},
    {"name": "gaussian-threshold", "about": "counting: positive iff >= 2 key instances",
     "pool": _GAUSSIAN, "rule": {"name": "threshold", "key": 2, "k": 2},
     "bags": _GAUSSIAN_BAGS, "bag_size": {"kind": "uniform", "low": 8, "high": 16},
     "witnesses": {"count": [2, 4]}},
    {"name": "digits-presence", "about": "images: positive iff an 8x8 digit 9 is present",
     "pool": {"name": "digits"}, "rule": {"name": "presence", "key": 9}, "bags": _SMALL,
     "bag_size": {"kind": "normal", "mean": 8, "sd": 2, "min": 3}},
    {"name": "sequences-presence", "about": "sequences: positive iff a motif-1 sequence is present",
     "pool": {"name": "sequences", "n_motifs": 2, "motif_length": 4, "min_length": 10,
              "max_length": 16},
     "rule": {"name": "presence", "key": 1}, "bags": _SMALL,
     "bag_size": {"kind": "uniform", "low": 6, "high": 12}},
    {"name": "gaussian-poison", "about": "unit test: a poison instance swaps sides at test time",
     "pool": _GAUSSIAN, "rule": {"name": "poison", "key": 2, "poison": 0},
     "bags": _GAUSSIAN_BAGS,
     "bag_size": {"kind": "uniform", "low": 6, "high": 14}},
    {"name": "gaussian-false_frequency",
     "about": "unit test: test negatives hold 35-44 copies of a shortcut concept",
     "pool": _GAUSSIAN, "rule": {"name": "false_frequency", "key": 2, "frequent": 3},
     "bags": _GAUSSIAN_BAGS, "bag_size": {"kind": "uniform", "low": 6, "high": 14}},
)



@dataclass(frozen=True)
class BatteryEntry:
    """One dataset of the battery. The replicate seed of the audit replaces `dataset.seed`."""

    name: str
    dataset: DatasetSpec
    about: str = ""

    @property
    def shifted_test(self) -> bool:
        """Is the test split deliberately shifted (an algorithmic unit test)?"""
        return self.dataset.shifted_test


def battery_entry(table: Mapping[str, Any], path: str = "battery") -> BatteryEntry:
    """A BatteryEntry from ``{"name": ..., "about": ..., **dataset spec}`` (a study config's
    [[datasets]] table works)."""
    if not isinstance(table, Mapping):
        raise SpecError(path, table, "a table with `name` and a dataset spec (pool, rule, ...)")
    name = table.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError(f"{path}.name", name, "a non-empty name for the battery entry")
    about = table.get("about", "")
    spec_table = {k: v for k, v in table.items() if k not in ("name", "about")}
    return BatteryEntry(name, DatasetSpec.from_dict(spec_table, path), str(about))


def default_battery() -> list[BatteryEntry]:
    """The default battery: gaussian presence / threshold / poison / false_frequency, digits
    presence and sequences presence, each with 160 / 60 / 60 bags."""
    return [battery_entry(table, f"battery[{i}]") for i, table in enumerate(DEFAULT_BATTERY)]


def resolve_battery(battery: Sequence[BatteryEntry | Mapping[str, Any]] | None
                    ) -> list[BatteryEntry]:
    """None -> the default battery; otherwise each item as a BatteryEntry (names unique)."""
    if battery is None:
        return default_battery()
    if isinstance(battery, str | bytes | Mapping) or not isinstance(battery, Sequence) \
            or len(battery) == 0:
        raise SpecError("battery", battery, "None (the default battery) or a non-empty list of "
                                            "BatteryEntry / {name, pool, rule, ...} tables")
    entries = [item if isinstance(item, BatteryEntry) else battery_entry(item, f"battery[{i}]")
               for i, item in enumerate(battery)]
    names = [e.name for e in entries]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SpecError("battery.name", repeated[0], "a distinct name for every entry")
    return entries


def load_battery(path: str | Path) -> list[BatteryEntry]:
    """Read a battery from a TOML / YAML file of [[datasets]] tables (name + dataset spec)."""
    from attnsets.data.spec import load_config

    raw = load_config(path)
    tables = raw.get("datasets") if isinstance(raw, dict) else None
    if not isinstance(tables, list) or not tables:
        raise SpecError("datasets", tables, f"a list of [[datasets]] tables in {path}")
    return resolve_battery(tables)
