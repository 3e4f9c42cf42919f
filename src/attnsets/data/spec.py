"""Dataset specifications: plain dataclasses, validated on construction, loadable from TOML/YAML."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attnsets.errors import SpecError, SpecErrors
from attnsets.registry import build_dataclass
from attnsets.spec.constraints import Interval

SPLITS: tuple[str, ...] = ("train", "val", "test")
SIZE_KINDS = ("fixed", "normal", "uniform")


@dataclass(frozen=True)
class SizeSpec:
    """Bag-size distribution. fixed: `mean`; normal: round(N(mean, sd)) clipped to >= `min`;
    uniform: integers in [low, high]."""

    kind: str = "normal"
    mean: float = 10.0
    sd: float = 2.0
    min: int = 2
    low: int = 5
    high: int = 15

    def __post_init__(self) -> None:
        if self.kind not in SIZE_KINDS:
            raise SpecError("kind", self.kind, f"one of {list(SIZE_KINDS)}")
        if self.kind in ("fixed", "normal") and not (self.mean >= 1):
            raise SpecError("mean", self.mean, "a number >= 1")
        if self.kind == "normal" and not (self.sd >= 0):
            raise SpecError("sd", self.sd, "a number >= 0")
        if self.min < 1:
            raise SpecError("min", self.min, "an integer >= 1")
        if self.kind == "uniform" and not (1 <= self.low <= self.high):
            raise SpecError("low", self.low, f"an integer with 1 <= low <= high ({self.high})")

    @property
    def smallest(self) -> int:
        """The smallest bag size this distribution can produce."""
        if self.kind == "fixed":
            return int(round(self.mean))
        if self.kind == "uniform":
            return self.low
        return self.min

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n,) int64 bag sizes."""
        if self.kind == "fixed":
            return np.full(n, int(round(self.mean)), dtype=np.int64)
        if self.kind == "uniform":
            return rng.integers(self.low, self.high + 1, size=n).astype(np.int64)
        sizes = np.rint(rng.normal(self.mean, self.sd, size=n)).astype(np.int64)
        return np.maximum(sizes, self.min)


@dataclass(frozen=True)
class WitnessSpec:
    """How many witnesses a bag that needs them gets: `count` = [low, high] (uniform integers),
    or `rate` = fraction of the bag size (at least one), as in DeepRC's 1% motif rates."""

    count: tuple[int, int] | None = (1, 3)
    rate: float | None = None

    def __post_init__(self) -> None:
        if self.rate is not None:
            if not (0.0 < self.rate <= 1.0):
                raise SpecError("rate", self.rate, "a fraction in (0, 1]")
            object.__setattr__(self, "count", None)
            return
        if self.count is None:
            raise SpecError("count", None, "[low, high] integers, or give `rate`")
        count = self.count
        if isinstance(count, int):
            count = (count, count)
        if len(count) != 2 or not (1 <= int(count[0]) <= int(count[1])):
            raise SpecError("count", list(count), "[low, high] with 1 <= low <= high")
        object.__setattr__(self, "count", (int(count[0]), int(count[1])))

    @property
    def smallest(self) -> int:
        return 1 if self.count is None else self.count[0]

    def sample(self, size: int, rng: np.random.Generator) -> int:
        """Number of witnesses for a bag of `size` instances (clipped to the size)."""
        if self.count is None:
            assert self.rate is not None
            n = max(1, math.floor(self.rate * size + 0.5))
        else:
            n = int(rng.integers(self.count[0], self.count[1] + 1))
        return min(n, size)


@dataclass(frozen=True)
class ComponentSpec:
    """A registered component chosen by name with its parameters (e.g. a pool or a rule)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.params}


@dataclass(frozen=True)
class DatasetSpec:
    """Everything that determines a dataset: same spec => bit-identical bags."""

    pool: ComponentSpec
    rule: ComponentSpec
    bags: dict[str, int] = field(default_factory=lambda: {"train": 200, "val": 100, "test": 100})
    bag_size: SizeSpec = field(default_factory=SizeSpec)
    witnesses: WitnessSpec = field(default_factory=WitnessSpec)
    seed: int = 0

    def __post_init__(self) -> None:
        for split in SPLITS:
            n = self.bags.get(split)
            Interval(int, 1).require(n, f"bags.{split}")
        extra = sorted(set(self.bags) - set(SPLITS))
        if extra:
            raise SpecError(f"bags.{extra[0]}", self.bags[extra[0]], f"splits {list(SPLITS)}")
        Interval(int, 0).require(self.seed, "seed")

    def to_dict(self) -> dict[str, Any]:
        wit: dict[str, Any] = {"rate": self.witnesses.rate} if self.witnesses.rate is not None \
            else {"count": list(self.witnesses.count or ())}
        return {
            "pool": self.pool.to_dict(),
            "rule": self.rule.to_dict(),
            "bags": dict(self.bags),
            "bag_size": asdict(self.bag_size),
            "witnesses": wit,
            "seed": self.seed,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @property
    def shifted_test(self) -> bool:
        """Is the test split deliberately shifted (declared by the rule, e.g. poison)?"""
        from attnsets.data.rules.base import RULES

        return self.rule.name in RULES and RULES.get(self.rule.name).shifted_test

    @staticmethod
    def from_dict(data: Mapping[str, object], path: str = "") -> DatasetSpec:
        """Build and fully validate a spec; all problems are raised together as SpecErrors."""
        return dataset_spec_from_dict(data, path)


def _component(data: object, path: str, errors: list[SpecError]) -> ComponentSpec | None:
    """A pool or rule: a table with a name and its parameters, or just the name."""
    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, Mapping) or "name" not in data:
        errors.append(SpecError(path, data, "a table with a `name` key and its parameters"))
        return None
    params = {str(k): v for k, v in data.items() if k != "name"}
    return ComponentSpec(str(data["name"]), params)


def _sub(data: Mapping[str, object], key: str, factory: Any, path: str,
         errors: list[SpecError]) -> Any:
    raw = data.get(key, {})
    if not isinstance(raw, Mapping):
        errors.append(SpecError(_join(path, key), raw, "a table"))
        return factory()
    try:
        return build_dataclass(factory, raw, _join(path, key))
    except SpecError as err:
        errors.append(err)
        return factory()


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def dataset_spec_from_dict(data: Mapping[str, object], path: str = "", check_data: bool = True
                           ) -> DatasetSpec:
    """check_data=False: the structure only, without building the pool and rule (a stored
    record reads back even where the pool's files are absent)."""
    # data.generate builds pools and rules, which import this module: a real cycle.
    from attnsets.data.generate import check_components

    errors: list[SpecError] = []
    if not isinstance(data, Mapping):
        raise SpecErrors([SpecError(path or "dataset", data, "a table")])
    known = {"pool", "rule", "bags", "bag_size", "witnesses", "seed"}
    for key in sorted(set(data) - known):
        errors.append(SpecError(_join(path, key), data[key], f"keys {sorted(known)}"))
    pool = _component(data.get("pool"), _join(path, "pool"), errors)
    rule = _component(data.get("rule"), _join(path, "rule"), errors)
    size = _sub(data, "bag_size", SizeSpec, path, errors)
    wit_raw = data.get("witnesses", {})
    if isinstance(wit_raw, Mapping) and isinstance(wit_raw.get("count"), list):
        wit_raw = {**wit_raw, "count": tuple(wit_raw["count"])}
    witnesses = _sub({"witnesses": wit_raw}, "witnesses", WitnessSpec, path, errors)
    bags = data.get("bags", {"train": 200, "val": 100, "test": 100})
    seed = data.get("seed", 0)
    spec = None
    if pool is not None and rule is not None:
        if check_data:
            errors.extend(e.with_prefix(path) for e in check_components(pool, rule, size,
                                                                        witnesses))
        try:
            spec = DatasetSpec(pool, rule, dict(bags) if isinstance(bags, Mapping)
                               else bags, size, witnesses, seed)
        except SpecError as err:
            errors.append(err.with_prefix(path))
        except (TypeError, ValueError):
            errors.append(SpecError(_join(path, "bags"), bags, "a table of train/val/test counts"))
    if errors:
        raise SpecErrors(errors)
    assert spec is not None
    return spec


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a TOML or YAML config file into a dict (where TOML / YAML enters: the typed specs
    are built from it)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError("config", str(path), "an existing .toml, .yaml or .yml file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SpecError("config", str(path), f"a UTF-8 text file (this one is binary or in "
                                             f"another encoding: {err.reason} at byte "
                                             f"{err.start})") from None
    if path.suffix == ".toml":
        try:
            import tomllib  # type: ignore[import-not-found,unused-ignore]
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise SpecError("config", str(path), f"valid TOML ({err})") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise SpecError("config", str(path), f"valid YAML ({err})") from None
        return data or {}
    raise SpecError("config", str(path), "a file ending in .toml, .yaml or .yml")
