"""Numbers that describe a dataset: bags, label balance, bag sizes, witnesses."""

from __future__ import annotations

from typing import Any

import numpy as np

from attnsets.data.bags import BagSplit
from attnsets.data.generate import SetDataset


def summarize_split(split: BagSplit, n_classes: int) -> dict[str, Any]:
    """Statistics of one split. Witnesses = instances with +1 evidence for their bag's label."""
    sizes = split.sizes
    own_evidence = split.evidence[np.arange(len(split.concepts)), split.labels[split.bag_index]]
    witnesses = np.bincount(split.bag_index, weights=own_evidence > 0,
                            minlength=len(split)).astype(np.int64)
    with_witness = witnesses > 0
    return {
        "bags": len(split),
        "instances": int(sizes.sum()),
        "label_counts": np.bincount(split.labels, minlength=n_classes).tolist(),
        "size_min": int(sizes.min()),
        "size_mean": float(sizes.mean()),
        "size_median": float(np.median(sizes)),
        "size_max": int(sizes.max()),
        "bags_with_witnesses": int(with_witness.sum()),
        "witnesses_mean": float(witnesses[with_witness].mean()) if with_witness.any() else 0.0,
        "witnesses_min": int(witnesses[with_witness].min()) if with_witness.any() else 0,
        "witnesses_max": int(witnesses.max()),
        "witness_rate": float(witnesses.sum() / sizes.sum()),
    }


def summarize(dataset: SetDataset) -> dict[str, Any]:
    """{"spec": ..., "kind": ..., "splits": {split: summarize_split(...)}}."""
    return {
        "spec": dataset.spec.to_dict(),
        "kind": dataset.kind,
        "instance_shape": list(dataset.instance_shape),
        "n_classes": dataset.n_classes,
        "splits": {name: summarize_split(split, dataset.n_classes)
                   for name, split in dataset.splits.items()},
    }
