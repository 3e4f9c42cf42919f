"""Spec -> dataset: exact class balance (or a rule's natural one), label-independent sizes,
random instance order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from attnsets.data.bags import BagSplit
from attnsets.data.pools.base import POOLS, InstancePool
from attnsets.data.rules.base import RULES, LabelRule, qualify_rule_error, resolve_concept_names
from attnsets.data.spec import SPLITS, ComponentSpec, DatasetSpec, SizeSpec, WitnessSpec
from attnsets.errors import SpecError, SpecErrors


@dataclass
class SetDataset:
    """Train / val / test BagSplits plus what is needed to build a model for them."""

    spec: DatasetSpec
    splits: dict[str, BagSplit]
    n_classes: int
    kind: str
    instance_shape: tuple[int, ...]
    concept_names: list[str]
    vocab_size: int = 0
    metadata: dict[str, object] = field(default_factory=dict)

    @property
    def train(self) -> BagSplit:
        return self.splits["train"]

    @property
    def val(self) -> BagSplit:
        return self.splits["val"]

    @property
    def test(self) -> BagSplit:
        return self.splits["test"]


def build_pool(spec: DatasetSpec) -> InstancePool:
    return POOLS.build(spec.pool.name, spec.pool.params, "pool")


def build_rule(spec: DatasetSpec, pool: InstancePool | None = None) -> LabelRule:
    """The spec's rule, with concept names resolved against `pool` (built from the spec only
    when not given and the rule names concepts)."""
    if pool is None and names_concepts(spec.rule):
        pool = build_pool(spec)
    return _build_rule(spec.rule, pool)


def names_concepts(rule_spec: ComponentSpec) -> bool:
    """Does the rule spec name concepts (strings in the rule's concept_fields)?"""
    rule_cls = RULES.get(rule_spec.name, "rule.name")
    for field_name in getattr(rule_cls, "concept_fields", ()):
        value = rule_spec.params.get(field_name)
        values = value if isinstance(value, list | tuple) else [value]
        if any(isinstance(v, str) for v in values):
            return True
    return False


def _build_rule(rule_spec: ComponentSpec, pool: InstancePool | None) -> LabelRule:
    params = dict(rule_spec.params)
    if pool is not None and names_concepts(rule_spec):
        rule_cls = RULES.get(rule_spec.name, "rule.name")
        try:
            params = resolve_concept_names(rule_cls, params, pool.concept_names)
        except SpecError as err:
            raise err.with_prefix("rule") from None
    return RULES.build(rule_spec.name, params, "rule")


def check_components(pool_spec: ComponentSpec, rule_spec: ComponentSpec, bag_size: SizeSpec,
                     witnesses: WitnessSpec) -> list[SpecError]:
    """Every problem with a pool + rule pair found before generating (pool data may be loaded)."""
    errors: list[SpecError] = []
    pool: InstancePool | None = None
    rule: LabelRule | None = None
    try:
        pool = POOLS.build(pool_spec.name, pool_spec.params, "pool")
    except SpecError as err:
        errors.append(err)
    if pool is not None:
        try:
            n_concepts = pool.n_concepts  # loads finite pools: missing files surface here
        except SpecError as err:
            errors.append(err if err.field.startswith("pool.") else err.with_prefix("pool"))
            pool = None
    try:
        # Concept names cannot be checked without a pool: its error is reported already.
        if pool is not None or not names_concepts(rule_spec):
            rule = _build_rule(rule_spec, pool)
    except SpecError as err:
        errors.append(err)
    if pool is not None and rule is not None:
        errors.extend(qualify_rule_error(e) for e in
                      rule.check(n_concepts, bag_size.smallest, witnesses))
        errors.extend(qualify_rule_error(e) for e in rule.check_sizes(bag_size))
    return errors


def check_spec(spec: DatasetSpec) -> None:
    """Raise SpecErrors listing every problem with `spec`."""
    errors = check_components(spec.pool, spec.rule, spec.bag_size, spec.witnesses)
    if errors:
        raise SpecErrors(errors)


def balanced_labels(n: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) labels with every class count within one of n / n_classes, in random order."""
    labels = np.arange(n) % n_classes
    return rng.permutation(labels).astype(np.int64)


def make_split(pool: InstancePool, rule: LabelRule, spec: DatasetSpec, split: str,
               rng: np.random.Generator) -> BagSplit:
    n_bags = spec.bags[split]
    if rule.natural_balance:
        return natural_split(pool, rule, spec, split, rng)
    labels = balanced_labels(n_bags, rule.n_classes, rng)
    sizes = spec.bag_size.sample(n_bags, rng)
    bag_concepts = []
    for label, size in zip(labels.tolist(), sizes.tolist(), strict=True):
        size = max(size, rule.required_size(label, split))
        concepts = rule.sample_concepts(label, size, pool.n_concepts, spec.witnesses, split, rng)
        # A plugin rule whose sampler and label() disagree would silently mislabel bags.
        if (got := rule.label(concepts)) != label:
            raise SpecError("rule", spec.rule.name,
                            f"a rule whose sample_concepts(label={label}) draws bags that its "
                            f"label() also labels {label} (one {split} bag was labelled {got})")
        bag_concepts.append(rng.permutation(concepts.astype(np.int64)))
    return assemble(pool, rule, split, labels, bag_concepts, rng)


def natural_split(pool: InstancePool, rule: LabelRule, spec: DatasetSpec, split: str,
                  rng: np.random.Generator) -> BagSplit:
    """A split of bags drawn without a requested label and labelled by the rule, so class
    shares are the construction's own (a small split may lack a class)."""
    bag_concepts = [rng.permutation(rule.sample_bag(size, pool.n_concepts, spec.witnesses,
                                                    split, rng).astype(np.int64))
                    for size in spec.bag_size.sample(spec.bags[split], rng).tolist()]
    labels = np.array([rule.label(c) for c in bag_concepts], dtype=np.int64)
    return assemble(pool, rule, split, labels, bag_concepts, rng)


def assemble(pool: InstancePool, rule: LabelRule, split: str, labels: np.ndarray,
             bag_concepts: list[np.ndarray], rng: np.random.Generator) -> BagSplit:
    """The BagSplit of these bags' concepts: evidence from the rule, features from the pool."""
    sizes = np.array([len(c) for c in bag_concepts], dtype=np.int64)
    concepts = np.concatenate(bag_concepts)
    evidence = np.concatenate([rule.evidence(c) for c in bag_concepts]).astype(np.int8)
    instances, source_index = pool.draw_traced(concepts, split, rng)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return BagSplit(instances, offsets, labels, concepts, evidence, source_index)


def make_dataset(spec: DatasetSpec, progress: Callable[[str], None] | None = None) -> SetDataset:
    """Generate all splits. Split s uses its own stream seeded by (spec.seed, s), so the
    same spec gives bit-identical bags on any run."""
    check_spec(spec)
    pool = build_pool(spec)
    rule = build_rule(spec, pool)
    splits = {}
    for index, split in enumerate(SPLITS):
        if progress:
            progress(split)
        rng = np.random.default_rng([spec.seed, index])
        splits[split] = make_split(pool, rule, spec, split, rng)
    return SetDataset(spec, splits, rule.n_classes, pool.kind, pool.instance_shape,
                      pool.concept_names, pool.vocab_size, pool.metadata())


#: Names a factory may use to refer to any registered dataset builder (kept for plugins).
DatasetFactory = Callable[[DatasetSpec], SetDataset]
