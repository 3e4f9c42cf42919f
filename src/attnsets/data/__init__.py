"""Data stage: instance pools + labelling rules -> bags with ground-truth evidence."""

from attnsets.data import pools, rules  # noqa: F401  (registers built-ins)
from attnsets.data.bags import Bag, BagSplit, Batch, collate, iterate_batches
from attnsets.data.generate import SetDataset, make_dataset
from attnsets.data.io import load_dataset, save_dataset
from attnsets.data.pools import POOLS, InstancePool
from attnsets.data.rules import RULES, LabelRule
from attnsets.data.spec import ComponentSpec, DatasetSpec, SizeSpec, WitnessSpec

__all__ = [
    "POOLS", "RULES", "Bag", "BagSplit", "Batch", "ComponentSpec", "DatasetSpec", "InstancePool",
    "LabelRule", "SetDataset", "SizeSpec", "WitnessSpec", "collate", "iterate_batches",
    "load_dataset", "make_dataset", "save_dataset",
]
