"""Labelling rules: a bag's concepts -> its label and each instance's signed evidence per class."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from attnsets.data.spec import SizeSpec, WitnessSpec
from attnsets.errors import SpecError
from attnsets.registry import Registry
from attnsets.spec.constraints import is_int

RULES: Registry[type[LabelRule]] = Registry("rule")

#: Rule-check errors about these dataset-level tables are reported under their own name.
DATASET_FIELDS: tuple[str, ...] = ("witnesses", "bag_size")


class LabelRule(ABC):
    """A rule. Subclasses are dataclasses whose fields are their parameters.

    The generator asks `sample_concepts` for a bag of a given label and size (constructive, so
    class balance is exact and sizes do not depend on the label); `label` and `evidence` are the
    rule's definition and are what the property tests check generated bags against. A rule
    whose `natural_balance` is True is instead asked for unlabelled bags (`sample_bag`), which
    the generator labels with `label`.
    """

    n_classes: int = 2
    #: The test split is deliberately drawn from another distribution than train / val (Raff &
    #: Holt's algorithmic unit tests): assessments then compare val with test.
    shifted_test: ClassVar[bool] = False
    #: Parameters holding concept ids. Each may also name concepts by the pool's
    #: concept_names (``key = "CD56+ NK"``): resolve_concept_names turns them into ids.
    concept_fields: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def check(self, n_concepts: int, min_size: int, witnesses: WitnessSpec) -> list[SpecError]:
        """Problems with this rule for a pool of `n_concepts` and bags of at least `min_size`.

        Fields are relative to the rule (``key`` becomes ``rule.key``), except those starting with
        one of DATASET_FIELDS (``witnesses.count``, ``bag_size``), which name the dataset's table.
        """

    @abstractmethod
    def label(self, concepts: np.ndarray) -> int:
        """The label of a bag whose instances have these concept ids. concepts: (n,)."""

    @abstractmethod
    def evidence(self, concepts: np.ndarray) -> np.ndarray:
        """(n, n_classes) int8 in {-1, 0, +1}: does instance j support class c?"""

    @abstractmethod
    def sample_concepts(self, label: int, size: int, n_concepts: int, witnesses: WitnessSpec,
                        split: str, rng: np.random.Generator) -> np.ndarray:
        """(size,) concept ids of a bag with this label (any order; the generator shuffles)."""

    def required_size(self, label: int, split: str) -> int:
        """The smallest bag this rule can build for `label` in `split` (bags are grown to it)."""
        return 1

    def check_sizes(self, bag_size: SizeSpec) -> list[SpecError]:
        """Problems with the dataset's whole size distribution (most rules only need `check`'s
        smallest bag; a rule whose construction fixes the bag size refuses other sizes here)."""
        return []

    @property
    def natural_balance(self) -> bool:
        """True when bags are drawn without a requested label (`sample_bag`) and labelled by
        `label`: class shares are then the construction's own, not the generator's exact
        balance."""
        return False

    def sample_bag(self, size: int, n_concepts: int, witnesses: WitnessSpec, split: str,
                   rng: np.random.Generator) -> np.ndarray:
        """(size,) concept ids of a bag drawn without a requested label; called by the
        generator only when `natural_balance` is True (such bags are not grown to
        `required_size`, which depends on the label: `check_sizes` guards the size instead)."""
        raise NotImplementedError(f"{type(self).__name__} builds bags per label "
                                  "(natural_balance is False): use sample_concepts")


def choice(field: str, value: object, options: tuple[str, ...]) -> str:
    """`value` if it is one of `options`, else SpecError naming them."""
    if not isinstance(value, str) or value not in options:
        raise SpecError(field, value, f"one of {list(options)}")
    return value


def check_concepts(field: str, values: list[int], n_concepts: int) -> list[SpecError]:
    """Errors for concept ids outside the pool."""
    bad = [v for v in values if not (isinstance(v, int | np.integer) and 0 <= v < n_concepts)]
    if bad:
        return [SpecError(field, bad[0] if len(values) == 1 else values,
                          f"concept ids in 0..{n_concepts - 1} (the pool has {n_concepts})")]
    return []


def background(n: int, excluded: list[int], n_concepts: int,
               rng: np.random.Generator) -> np.ndarray:
    """(n,) concept ids drawn uniformly from the concepts not in `excluded`."""
    allowed = np.setdiff1d(np.arange(n_concepts), np.asarray(excluded, dtype=np.int64))
    if n and len(allowed) == 0:
        raise SpecError("rule", excluded, "rules that leave at least one background concept")
    return allowed[rng.integers(0, len(allowed), size=n)] if n else np.zeros(0, dtype=np.int64)


def as_id_list(field: str, value: int | list[int]) -> list[int]:
    """Accept one concept id or a list of them."""
    values = [value] if isinstance(value, int | np.integer) else list(value)
    if not values:
        raise SpecError(field, value, "at least one concept id")
    if not all(is_int(v) for v in values):
        raise SpecError(field, value, "integer concept ids (or, in a dataset spec, the pool's "
                                      "concept names)")
    return [int(v) for v in values]


def resolve_concept_names(rule_cls: type[LabelRule], params: dict[str, object],
                          concept_names: list[str]) -> dict[str, object]:
    """`params` with every concept name in the rule's concept_fields replaced by its id in
    `concept_names`; ids stay. SpecError(field) for a name the pool does not have."""
    lookup = {name: i for i, name in enumerate(concept_names)}
    resolved = dict(params)
    for field in rule_cls.concept_fields:
        value = params.get(field)
        values = value if isinstance(value, list | tuple) else [value]
        if not any(isinstance(v, str) for v in values):
            continue
        unknown = [v for v in values if isinstance(v, str) and v not in lookup]
        if unknown:
            raise SpecError(field, unknown[0], f"a concept id or one of the pool's concept names "
                                               f"{concept_names}")
        ids = [lookup[v] if isinstance(v, str) else v for v in values]
        resolved[field] = ids if isinstance(value, list | tuple) else ids[0]
    return resolved


def qualify_rule_error(err: SpecError) -> SpecError:
    """Nest a rule-check error under ``rule`` unless it names a dataset-level table."""
    return err if err.field.split(".")[0] in DATASET_FIELDS else err.with_prefix("rule")


def check_background(field: str, excluded: list[int], n_concepts: int) -> list[SpecError]:
    """Error when `excluded` (concepts with a role) leaves no concept for filler instances."""
    if len(set(excluded) & set(range(n_concepts))) >= n_concepts:
        return [SpecError(field, excluded, f"concepts that leave at least one of the pool's "
                                           f"{n_concepts} concepts as background")]
    return []


def check_room(witnesses: WitnessSpec, min_size: int, groups: int = 1,
               reserved: int = 0) -> list[SpecError]:
    """Errors when the smallest bag cannot hold `groups` witness groups of the minimum witness
    count plus `reserved` other instances (counts above the room are clipped, never the minimum).
    """
    if groups * witnesses.smallest + reserved <= min_size:
        return []
    if witnesses.count is not None and groups + reserved <= min_size:
        most = (min_size - reserved) // groups
        return [SpecError("witnesses.count", list(witnesses.count),
                          f"a minimum of at most {most} witness(es) per group: the smallest bag "
                          f"({min_size}) holds {groups} group(s) + {reserved} other instance(s)")]
    return [SpecError("bag_size", min_size,
                      f"a smallest bag of at least {groups + reserved} instances ({groups} "
                      f"witness group(s) + {reserved} other instance(s))")]


def draw_counts(witnesses: WitnessSpec, groups: int, size: int, room: int,
                rng: np.random.Generator) -> np.ndarray:
    """(groups,) int64 witness counts from the WitnessSpec (rate relative to `size`), each
    clipped to room // groups so that all groups fit in `room` instances (at least 1 each)."""
    counts = np.array([witnesses.sample(size, rng) for _ in range(groups)], dtype=np.int64)
    return np.clip(counts, 1, max(1, room // max(groups, 1)))


def pick(ids: list[int], n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) int64 concept ids drawn uniformly from `ids`."""
    return np.asarray(ids, dtype=np.int64)[rng.integers(0, len(ids), size=n)]


def binary_evidence(support: np.ndarray) -> np.ndarray:
    """(n, 2) int8 from (n,) support for class 1: class 0 gets the negation."""
    support = support.astype(np.int8)
    return np.stack([-support, support], axis=1)


def distinct(field: str, *groups: list[int]) -> None:
    """Raise a SpecError if any concept id appears twice within or across `groups`."""
    seen: list[int] = [v for group in groups for v in group]
    repeated = sorted({v for v in seen if seen.count(v) > 1})
    if repeated:
        raise SpecError(field, repeated[0] if len(repeated) == 1 else repeated,
                        "distinct concept ids (each concept has one role)")
