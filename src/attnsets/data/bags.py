"""Bags with ground truth, stored flat (CSR-style), and padded batching.

A split holds B bags whose instances are concatenated: bag i owns rows
``offsets[i]:offsets[i+1]`` of `instances`, `concepts` and `evidence`.
Evidence is signed per class: ``evidence[j, c]`` is +1 if instance j supports class c,
-1 if it argues against c, 0 if neutral.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from attnsets.errors import SpecError


@dataclass(frozen=True)
class Bag:
    """One bag. instances: (n, *instance_shape); concepts: (n,); evidence: (n, n_classes) int8."""

    instances: np.ndarray
    label: int
    concepts: np.ndarray
    evidence: np.ndarray

    def __len__(self) -> int:
        return len(self.concepts)

    def evidence_for(self, target: int | None = None) -> np.ndarray:
        """(n,) evidence for class `target` (default: the bag's own label)."""
        return self.evidence[:, self.label if target is None else target]

    @property
    def witnesses(self) -> np.ndarray:
        """(n,) bool: instances supporting the bag's label."""
        return self.evidence_for() > 0


@dataclass(frozen=True)
class BagSplit:
    """All bags of one split, flat. instances: (total, *shape); offsets: (B+1,) int64;
    source_index: (total,) int64 row of each instance in its pool's collection (finite pools:
    the table row, the .h5ad cell, the receptor), None for generated instances."""

    instances: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    concepts: np.ndarray
    evidence: np.ndarray
    source_index: np.ndarray | None = None

    def __post_init__(self) -> None:
        total = int(self.offsets[-1]) if len(self.offsets) else 0
        if len(self.offsets) != len(self.labels) + 1 or self.offsets[0] != 0:
            raise ValueError("offsets must have len(labels) + 1 entries and start at 0")
        if not (len(self.instances) == len(self.concepts) == len(self.evidence) == total):
            raise ValueError("instances, concepts and evidence must have offsets[-1] rows")
        if self.source_index is not None and len(self.source_index) != total:
            raise ValueError("source_index must have offsets[-1] rows")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Bag:
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return Bag(self.instances[lo:hi], int(self.labels[i]), self.concepts[lo:hi],
                   self.evidence[lo:hi])

    def __iter__(self):  # type: ignore[no-untyped-def]
        return (self[i] for i in range(len(self)))

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def bag_index(self) -> np.ndarray:
        """(total,) the bag each instance belongs to."""
        return np.repeat(np.arange(len(self)), self.sizes)

    def subset(self, indices: Sequence[int] | np.ndarray) -> BagSplit:
        """The bags at `indices`, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        sizes = self.sizes[idx]
        rows = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx]) \
            if len(idx) else np.zeros(0, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        source = None if self.source_index is None else self.source_index[rows]
        return BagSplit(self.instances[rows], offsets, self.labels[idx], self.concepts[rows],
                        self.evidence[rows], source)

    @staticmethod
    def from_bags(bags: Sequence[Bag]) -> BagSplit:
        if not bags:
            raise ValueError("from_bags needs at least one bag")
        sizes = np.array([len(b) for b in bags], dtype=np.int64)
        return BagSplit(
            instances=np.concatenate([b.instances for b in bags]),
            offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            labels=np.array([b.label for b in bags], dtype=np.int64),
            concepts=np.concatenate([b.concepts for b in bags]),
            evidence=np.concatenate([b.evidence for b in bags]),
        )


@dataclass
class Batch:
    """Padded bags. x: (B, N, *shape); mask: (B, N) bool, True = real instance;
    labels: (B,) int64; evidence: (B, N) float32 for `target` (0 at padding);
    concepts: (B, N) int64 (-1 at padding); target: (B,) int64 class the evidence refers to."""

    x: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    evidence: torch.Tensor
    concepts: torch.Tensor
    target: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """Every tensor of the batch, in field order."""
        return (self.x, self.mask, self.labels, self.evidence, self.concepts, self.target)

    def to(self, device: str | torch.device, non_blocking: bool = False) -> Batch:
        """The batch with every tensor on `device`. non_blocking=True lets a copy from pinned
        host memory (see pin_memory) to CUDA overlap with work already queued."""
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in self.tensors()))

    def pin_memory(self) -> Batch:
        """The batch in page-locked host memory, so that ``.to("cuda", non_blocking=True)`` is
        asynchronous; needs a CUDA build of torch (and a visible GPU)."""
        return Batch(*(t.pin_memory() for t in self.tensors()))


def collate(bags: Sequence[Bag], target: int | Sequence[int] | None = None,
            pad_to: int | None = None) -> Batch:
    """Pad a list of bags into a Batch. Order of bags and instances is kept as given.

    target: class the evidence refers to, one int for all bags, one per bag, or None for each
    bag's own label. pad_to: pad to at least this many instances.
    """
    if len(bags) == 0:
        raise ValueError("collate needs at least one bag")
    n_max = max(max(len(b) for b in bags), pad_to or 0, 1)
    first = bags[0].instances
    x = np.zeros((len(bags), n_max, *first.shape[1:]), dtype=first.dtype)
    mask = np.zeros((len(bags), n_max), dtype=bool)
    evidence = np.zeros((len(bags), n_max), dtype=np.float32)
    concepts = np.full((len(bags), n_max), -1, dtype=np.int64)
    labels = np.array([b.label for b in bags], dtype=np.int64)
    if target is None:
        targets = labels.copy()
    elif isinstance(target, int | np.integer):
        targets = np.full(len(bags), int(target), dtype=np.int64)
    else:
        targets = np.asarray(target, dtype=np.int64)
        if targets.shape != labels.shape:
            raise SpecError("target", list(target), f"one class per bag ({len(bags)} values)")
    n_classes = bags[0].evidence.shape[1]
    if targets.size and (targets.min() < 0 or targets.max() >= n_classes):
        raise SpecError("target", targets.tolist(), f"classes 0..{n_classes - 1}")
    for i, bag in enumerate(bags):
        n = len(bag)
        x[i, :n] = bag.instances
        mask[i, :n] = True
        evidence[i, :n] = bag.evidence[:, targets[i]]
        concepts[i, :n] = bag.concepts
    return Batch(torch.from_numpy(x), torch.from_numpy(mask), torch.from_numpy(labels),
                 torch.from_numpy(evidence), torch.from_numpy(concepts), torch.from_numpy(targets))


def iterate_batches(split: BagSplit, batch_size: int, *, shuffle: bool = False,
                    rng: np.random.Generator | None = None, target: int | None = None):  # type: ignore[no-untyped-def]
    """Yield padded Batches of `batch_size` bags (the last may be smaller)."""
    if batch_size < 1:
        raise SpecError("batch_size", batch_size, "an integer >= 1")
    order = np.arange(len(split))
    if shuffle:
        order = (rng or np.random.default_rng()).permutation(order)
    for start in range(0, len(order), batch_size):
        yield collate([split[int(i)] for i in order[start:start + batch_size]], target=target)
