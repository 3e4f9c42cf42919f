"""attnsets: can the attention weights of a set model be trusted as an explanation?"""

from attnsets.data import (
    Bag,
    BagSplit,
    Batch,
    DatasetSpec,
    SetDataset,
    collate,
    load_dataset,
    make_dataset,
    save_dataset,
)
from attnsets.errors import DataFormatError, SpecError, SpecErrors

__version__ = "0.1.0"

__all__ = [
    "Bag", "BagSplit", "Batch", "DataFormatError", "DatasetSpec", "SetDataset", "SpecError",
    "SpecErrors", "collate", "load_dataset", "make_dataset", "save_dataset", "__version__",
]
