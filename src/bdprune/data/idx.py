"""MNIST-family IDX files (MNIST, Fashion-MNIST), plain or gzip-compressed.

Format (http://yann.lecun.com/exdb/mnist/): a big-endian header `0x00 0x00 <type> <ndim>`, then `ndim`
big-endian uint32 sizes, then the data. Only unsigned bytes (type 0x08) occur in these datasets.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from ..files import read_bytes
from .errors import DatasetFormatError, DatasetNotFoundError
from .imageset import ImageSet

_UBYTE = 0x08
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES = tuple(str(d) for d in range(10))


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally .gz) into a uint8 array of the shape its header declares."""
    try:
        raw = read_bytes(path, error=DatasetFormatError)
        raw = gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetFormatError(f"{path}: cannot decompress ({exc}); the file is corrupt, download it again") from exc
    if len(raw) < 4:
        raise DatasetFormatError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != _UBYTE or not 1 <= ndim <= 4:
        raise DatasetFormatError(
            f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()}); expected 0000080{{1,3}}"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFormatError(f"{path}: header truncated")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DatasetFormatError(
            f"{path}: header declares shape {shape} ({expected} bytes) but the file holds {len(raw) - header}"
            " bytes of data; the file is truncated or corrupt, download it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DatasetNotFoundError(f"missing {stem}[.gz] in {root}")


def load_idx_split(root: Path, prefix: str, classes: tuple[str, ...], name: str) -> ImageSet:
    """Load `{prefix}-images-idx3-ubyte[.gz]` and `{prefix}-labels-idx1-ubyte[.gz]` from `root`."""
    images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1:
        raise DatasetFormatError(
            f"{root}: expected (N, H, W) images and (N,) labels, got {images.shape}, {labels.shape}"
        )
    if len(images) != len(labels):
        raise DatasetFormatError(f"{root}: {len(images)} images but {len(labels)} labels in split {prefix!r}")
    if len(labels) and int(labels.max()) >= len(classes):
        raise DatasetFormatError(f"{root}: label {int(labels.max())} out of range for {len(classes)} classes")
    return ImageSet(
        images=torch.from_numpy(images.copy()).unsqueeze(1),  # (N, H, W) -> (N, 1, H, W)
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=classes,
        name=name,
    )
