"""Pos-Neg (xMIL, Hense et al.): positive-evidence vs negative-evidence concepts decide."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from attnsets.data.rules.base import (
    RULES,
    LabelRule,
    as_id_list,
    background,
    binary_evidence,
    check_background,
    check_concepts,
    check_room,
    choice,
    distinct,
    draw_counts,
    pick,
)
from attnsets.data.rules.sets import random_subset
from attnsets.data.spec import SizeSpec, WitnessSpec
from attnsets.errors import SpecError

CONSTRUCTIONS = ("attnsets", "xmil")
BALANCES = ("exact", "natural")
#: Evidence concepts when none are given: ours (2 vs 2) and xMIL's toy Pos-Neg digits (3 vs 3).
DEFAULT_IDS = {"attnsets": ([8, 9], [6, 7]), "xmil": ([4, 6, 8], [5, 7, 9])}
#: Rejection sampling gives up after this many xMIL bags without the requested label.
MAX_TRIES = 10_000


@RULES.register("pos_neg")
@dataclass
class PosNeg(LabelRule):
    """Positive iff #instances of `positive` concepts > #instances of `negative` concepts.
    Unset (None) concepts default per construction: [8, 9] vs [6, 7], xmil [4, 6, 8] vs [5, 7, 9].

    construction = "attnsets" (default): the winning side gets w instances (w from the
    WitnessSpec, clipped to half the bag): a class-1 bag holds w positive-evidence instances and
    0..w-1 negative ones (uniform); a class-0 bag holds w negative-evidence instances and 0..w
    positive ones (uniform; a tie is class 0). So both classes carry witnesses and the largest
    count has the same law in both.

    construction = "xmil": xMIL's "hierarchical" sampling. Each of the pool's concepts is kept
    with probability 1/2 (drawn again if none is kept), then the bag's instances are drawn
    uniformly with replacement from the kept concepts; the WitnessSpec is not used and the bag
    size must be fixed (30 in xMIL). balance = "exact" draws such bags until one has the
    requested label (the generator's exact class balance; given its label a bag has xMIL's
    law); "natural" labels the bags as drawn (xMIL's own class shares, ~0.47 positive).
    Evidence (both): class 1: positive concepts +1, negative concepts -1; class 0: the negation.
    """

    concept_fields: ClassVar[tuple[str, ...]] = ("positive", "negative")

    positive: int | list[int] | None = None
    negative: int | list[int] | None = None
    construction: str = "attnsets"
    balance: str = "exact"

    def __post_init__(self) -> None:
        choice("construction", self.construction, CONSTRUCTIONS)
        choice("balance", self.balance, BALANCES)
        if self.balance == "natural" and self.construction != "xmil":
            raise SpecError("balance", self.balance, "'exact' for construction 'attnsets' (it "
                                                     "builds each bag for a requested label)")
        default_pos, default_neg = DEFAULT_IDS[self.construction]
        # The effective ids are written back so the fields show what the rule uses.
        self.positive = list(default_pos) if self.positive is None else self.positive
        self.negative = list(default_neg) if self.negative is None else self.negative
        self.pos_ids = as_id_list("positive", self.positive)
        self.neg_ids = as_id_list("negative", self.negative)
        distinct("negative", self.pos_ids, self.neg_ids)

    def check(self, n_concepts: int, min_size: int, witnesses: WitnessSpec) -> list[SpecError]:
        errors = check_concepts("positive", self.pos_ids, n_concepts)
        errors += check_concepts("negative", self.neg_ids, n_concepts)
        if self.construction == "xmil":
            return errors  # no background or witness counts: any bag of >= 1 instance works
        errors += check_background("negative", self.pos_ids + self.neg_ids, n_concepts)
        return errors + check_room(witnesses, min_size, groups=2)

    def check_sizes(self, bag_size: SizeSpec) -> list[SpecError]:
        if self.construction != "xmil" or bag_size.kind == "fixed":
            return []
        return [SpecError("bag_size", {"kind": bag_size.kind},
                          "a fixed size for rule.construction = 'xmil' (xMIL draws the same "
                          "number of instances into every bag), e.g. bag_size = "
                          "{ kind = \"fixed\", mean = 30 } as in xMIL's Pos-Neg")]

    @property
    def natural_balance(self) -> bool:
        return self.balance == "natural"

    def signed(self, concepts: np.ndarray) -> np.ndarray:
        """(n,) int8: +1 positive-evidence concept, -1 negative-evidence concept, else 0."""
        return np.isin(concepts, self.pos_ids).astype(np.int8) \
            - np.isin(concepts, self.neg_ids).astype(np.int8)

    def label(self, concepts: np.ndarray) -> int:
        return int(self.signed(concepts).sum(dtype=np.int64) > 0)

    def evidence(self, concepts: np.ndarray) -> np.ndarray:
        return binary_evidence(self.signed(concepts))

    def xmil_bag(self, size: int, n_concepts: int, rng: np.random.Generator) -> np.ndarray:
        """(size,) concept ids by xMIL's hierarchical sampling: a uniformly random non-empty
        subset of all concepts (each kept with probability 1/2, redrawn if empty), then `size`
        uniform draws with replacement from it."""
        kept = np.flatnonzero(random_subset(n_concepts, proper=False, rng=rng))
        return kept[rng.integers(0, len(kept), size=size)]

    def sample_bag(self, size: int, n_concepts: int, witnesses: WitnessSpec, split: str,
                   rng: np.random.Generator) -> np.ndarray:
        return self.xmil_bag(size, n_concepts, rng)

    def sample_concepts(self, label: int, size: int, n_concepts: int, witnesses: WitnessSpec,
                        split: str, rng: np.random.Generator) -> np.ndarray:
        if self.construction == "xmil":
            # Rejection keeps xMIL's law of a bag given its label: about 2 draws per bag with
            # xMIL's digits (P(label 1) ~ 0.47).
            for _ in range(MAX_TRIES):
                concepts = self.xmil_bag(size, n_concepts, rng)
                if self.label(concepts) == label:
                    return concepts
            raise SpecError("rule.balance", self.balance,
                            f"'natural' for these concepts: {MAX_TRIES} xMIL bags of "
                            f"{size} instances in a row had no label {label}")
        winning = int(draw_counts(witnesses, 1, size, size // 2, rng)[0])
        # A tie goes to class 0, so the losing side of class 1 stops one short of `winning`.
        losing = int(rng.integers(0, winning + (0 if label == 1 else 1)))
        n_pos, n_neg = (winning, losing) if label == 1 else (losing, winning)
        parts = [pick(self.pos_ids, n_pos, rng), pick(self.neg_ids, n_neg, rng)]
        return np.concatenate([*parts, background(size - n_pos - n_neg,
                                                  self.pos_ids + self.neg_ids, n_concepts, rng)])
