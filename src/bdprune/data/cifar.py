"""CIFAR-10 in its standard `cifar-10-batches-py` layout (https://www.cs.toronto.edu/~kriz/cifar.html).

The batches are Python pickles. A pickle can run arbitrary code, so we read them with an unpickler that
resolves only the handful of globals a numpy array needs and then checks every key and type: a file we
trust by format, not by origin.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..files import read_bytes
from .errors import DatasetFormatError, DatasetNotFoundError
from .imageset import ImageSet

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"


def _allowed_global(module: str, name: str) -> Any:
    """The object for one of the few globals an array of plain numbers needs, else None."""
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
        try:
            from numpy._core.multiarray import _reconstruct
        except ImportError:  # numpy < 2
            from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
        return _reconstruct
    if (module, name) == ("numpy", "ndarray"):
        return np.ndarray
    if (module, name) == ("numpy", "dtype"):
        return np.dtype
    if (module, name) == ("_codecs", "encode"):
        import codecs

        return codecs.encode
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        obj = _allowed_global(module, name)
        if obj is None:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: a CIFAR batch holds only arrays, lists and strings"
            )
        return obj


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 batch file into (N, 3, 32, 32) uint8 images and (N,) int64 labels."""
    try:
        raw = read_bytes(path, error=DatasetFormatError)  # no blocking, regular files only, like the weights
        batch = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DatasetFormatError(f"{path}: not a valid CIFAR-10 batch ({exc}); download the archive again") from exc
    if not isinstance(batch, dict):
        raise DatasetFormatError(f"{path}: expected a dict, found {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetFormatError(f"{path}: 'data' must be an (N, 3072) uint8 array")
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != len(data):
        raise DatasetFormatError(f"{path}: 'labels' must list one label per image")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" or (len(labels) and (labels.min() < 0 or labels.max() > 9)):
        raise DatasetFormatError(f"{path}: labels must be integers in [0, 9]")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar10_split(root: Path, train: bool) -> ImageSet:
    """Load the training batches (50,000 images) or the test batch (10,000) from `root`."""
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    names = TRAIN_BATCHES if train else (TEST_BATCH,)
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DatasetNotFoundError(f"missing {', '.join(missing)} in {folder}")
    parts = [read_batch(folder / n) for n in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ImageSet(
        images=torch.from_numpy(images.copy()),
        labels=torch.from_numpy(labels),
        classes=CIFAR10_CLASSES,
        name=f"cifar10-{'train' if train else 'test'}",
    )
