"""Memory estimates checked before allocating, so that a job too large for this machine is
refused with the estimate instead of being killed by the operating system half-way.

What dominates (measured shapes, not a profile): a split padded to its largest bag,
``B x N x D`` values (`attnsets.assess.padded_batches` builds the whole split at once), the
per-bag maps of every member, ``K x B x N`` (scores, and about a dozen float64 working arrays
in `attnsets.metrics.agreement`), and a training batch of the vectorised ensemble,
``K x batch x N x (D + 6 * embed_dim)`` float32 activations. The estimate is a lower bound of
the peak, not a promise: it is there to catch sizes that cannot fit at all.

The limit is ``$ATTNSETS_MEMORY_LIMIT`` ("512MB", "4GiB", a number of bytes) when set, else the
memory available now (``MemAvailable`` of /proc/meminfo, or the free pages from
``os.sysconf``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from attnsets.errors import SpecError, TooLargeError

if TYPE_CHECKING:
    from attnsets.data.spec import DatasetSpec
    from attnsets.run import RunSpec

LIMIT_ENV = "ATTNSETS_MEMORY_LIMIT"
#: float64 (K, B, N) working arrays of the agreement signals (ranks, centred, unit, order, ...).
AGREEMENT_WORK_ARRAYS = 12
#: Activations per instance and member in a training step, in units of embed_dim.
TRAINING_WIDTH_FACTOR = 6
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000 ** 2, "mb": 1000 ** 2,
          "g": 1000 ** 3, "gb": 1000 ** 3, "t": 1000 ** 4, "tb": 1000 ** 4,
          "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3, "tib": 1024 ** 4}


def parse_size(text: str, field: str = LIMIT_ENV) -> int:
    """Bytes from "512MB", "4GiB", "1.5g" or "1000000"; SpecError(field) otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
    if match is None or match.group(2) not in _UNITS or float(match.group(1)) <= 0:
        raise SpecError(field, text, "a positive size such as 512MB, 4GiB or 1000000 (bytes)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def memory_limit() -> tuple[int | None, str]:
    """(bytes, where the number comes from); bytes None when nothing can be read (no check)."""
    configured = os.environ.get(LIMIT_ENV)
    if configured:
        return parse_size(configured), f"${LIMIT_ENV}"
    return _available_bytes(), "the memory available now"


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclass
class MemoryEstimate:
    """Named parts of an estimated peak, in bytes."""

    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        return " + ".join(f"{name} {format_bytes(size)}" for name, size in self.parts.items())


def value_bytes(kind: str) -> int:
    """Bytes of one instance value as the model sees it: token ids are int64, the rest float32."""
    return 8 if kind == "sequence" else 4


def run_estimate(split_shapes: Mapping[str, tuple[int, int]], instance_shape: Iterable[int],
                 kind: str, members: int, batch_size: int, embed_dim: int,
                 kept_maps: bool = False) -> MemoryEstimate:
    """Peak estimate of training and explaining `members` models on splits of (bags, largest
    bag) shapes; kept_maps: the (K, B, N) scores of every split are kept (explain-data)."""
    numel = math.prod(int(d) for d in instance_shape)
    widest = max(n for _, n in split_shapes.values())
    padded = max(b * n for b, n in split_shapes.values())
    parts = {
        f"the largest split padded to its largest bag ({padded // max(widest, 1)} bags x "
        f"{widest} instances x {numel} values)": padded * numel * value_bytes(kind),
        f"per-bag maps ({members} members x that split, {AGREEMENT_WORK_ARRAYS} float64 "
        "working arrays)": AGREEMENT_WORK_ARRAYS * 8 * members * padded,
        f"a training batch ({members} members x {batch_size} bags x {widest} instances x "
        f"(input + {TRAINING_WIDTH_FACTOR} x embed_dim {embed_dim}) float32)":
            4 * members * min(batch_size, padded) * widest * (numel + TRAINING_WIDTH_FACTOR
                                                              * embed_dim),
    }
    if kept_maps:
        parts["member scores kept for every split (float32)"] = 4 * members * sum(
            b * n for b, n in split_shapes.values())
    return MemoryEstimate(parts)


def check_fits(estimate: MemoryEstimate, field: str, what: str) -> None:
    """Raise TooLargeError(field) when `estimate` exceeds the memory limit."""
    limit, source = memory_limit()
    if limit is None or estimate.total <= limit:
        return
    how = f"set by ${LIMIT_ENV}" if source == f"${LIMIT_ENV}" else \
        f"{source}; ${LIMIT_ENV} sets another limit"
    raise TooLargeError(field, f"{what} needs about {format_bytes(estimate.total)} "
                               f"({estimate.describe()})",
                        f"at most {format_bytes(limit)} ({how}): use fewer or smaller bags",
                        estimate.total, limit)


#: Standard deviations above the mean taken as the largest bag of a normal size distribution.
NORMAL_WIDEST_SD = 5.0


def spec_split_shapes(spec: DatasetSpec) -> dict[str, tuple[int, int]]:
    """(bags, largest bag) per split of a dataset spec, before generating it: the largest bag
    is the distribution's maximum (mean + 5 sd for a normal)."""
    size = spec.bag_size
    if size.kind == "fixed":
        widest = round(size.mean)
    elif size.kind == "uniform":
        widest = size.high
    else:
        widest = max(size.min, math.ceil(size.mean + NORMAL_WIDEST_SD * size.sd))
    return {name: (int(count), int(widest)) for name, count in spec.bags.items()}


def generation_estimate(spec: DatasetSpec, instance_shape: Iterable[int], kind: str
                        ) -> MemoryEstimate:
    """The generated dataset itself: every instance stored flat, at its mean bag size."""
    size = spec.bag_size
    mean = (size.low + size.high) / 2 if size.kind == "uniform" else max(size.mean, size.min)
    total = int(sum(spec.bags.values()) * mean)
    numel = math.prod(int(d) for d in instance_shape)
    return MemoryEstimate({f"the generated instances ({total} x {numel} values)":
                           total * numel * value_bytes(kind)})


def check_run_fits(run: RunSpec, field: str, what: str, parallel: int = 1) -> None:
    """Refuse a run (dataset spec x model x members) whose estimate exceeds the limit, before
    the data is generated; parallel: how many such runs share the memory at once (workers)."""
    from attnsets.config.preflight import dataset_info
    from attnsets.models import ModelSpec

    if run.dataset is None:
        return
    info = dataset_info(run.dataset)
    embed_dim = run.model.embed_dim if isinstance(run.model, ModelSpec) else 64
    estimate = run_estimate(spec_split_shapes(run.dataset), info.instance_shape, info.kind,
                            len(run.seeds), run.training.batch_size, embed_dim)
    estimate.parts.update(generation_estimate(run.dataset, info.instance_shape, info.kind).parts)
    if parallel > 1:
        estimate = MemoryEstimate({f"{parallel} workers x ({estimate.describe()})":
                                   parallel * estimate.total})
    check_fits(estimate, field, what)


def check_study_fits(cells: Sequence[Any], workers: int = 1) -> None:
    """Refuse a study one of whose cells cannot fit, `workers` of them at once (each dataset x
    model checked once)."""
    seen: set[tuple[str, str]] = set()
    parallel = max(1, min(int(workers), len(cells)))
    for cell in cells:
        key = (cell.dataset_name, cell.model_name)
        if key in seen:
            continue
        seen.add(key)
        check_run_fits(cell.run_spec, f"datasets.{cell.dataset_name}",
                       f"cell {cell.dataset_name} x {cell.model_name}", parallel)


def check_generation_fits(spec: DatasetSpec, field: str = "dataset") -> None:
    """Refuse generating a dataset whose instances alone exceed the limit."""
    from attnsets.config.preflight import dataset_info

    info = dataset_info(spec)
    check_fits(generation_estimate(spec, info.instance_shape, info.kind), field,
               f"generating {sum(spec.bags.values())} bags")
