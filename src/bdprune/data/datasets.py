"""The datasets bdprune knows by name: where they live, how to read them, how to augment them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UnknownName
from .batches import Augment
from .cifar import load_cifar10_split
from .errors import DatasetFormatError, DatasetNotFoundError
from .folders import load_tiny_imagenet_split
from .idx import FASHION_MNIST_CLASSES, MNIST_CLASSES, load_idx_split
from .imageset import ImageSet


@dataclass(frozen=True)
class DatasetSpec:
    """What bdprune needs to know about a dataset.

    Attributes:
        name: registry name.
        image_shape: (C, H, W).
        num_classes: number of classes.
        mean, std: per-channel statistics of the training images in [0, 1], used by the model's input
            normalisation layer.
        augment: the training augmentation (crop padding W/8, flip where it keeps the meaning).
        default_root: where we look when no directory is given.
        how_to_get: what to tell a user whose files are missing.
        load: (root, train) -> ImageSet.
    """

    name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment
    default_root: str | None
    how_to_get: str
    load: Callable[[Path, bool], ImageSet]


def _idx(classes: tuple[str, ...], name: str) -> Callable[[Path, bool], ImageSet]:
    def load(root: Path, train: bool) -> ImageSet:
        return load_idx_split(root, "train" if train else "t10k", classes, f"{name}-{'train' if train else 'test'}")

    return load


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="fashion-mnist",
            image_shape=(1, 28, 28),
            num_classes=10,
            mean=(0.2860,),
            std=(0.3530,),
            augment=Augment(pad=3, flip=True),
            default_root="/usr/share/datasets/fashion-mnist",
            how_to_get="install Debian's package (sudo apt-get install dataset-fashion-mnist), or put the four "
            "IDX files from https://github.com/zalandoresearch/fashion-mnist in a directory and pass --data-dir",
            load=_idx(FASHION_MNIST_CLASSES, "fashion-mnist"),
        ),
        DatasetSpec(
            name="mnist",
            image_shape=(1, 28, 28),
            num_classes=10,
            mean=(0.1307,),
            std=(0.3081,),
            augment=Augment(pad=3, flip=False),  # a flipped digit is not the same digit
            default_root="/usr/share/datasets/mnist",
            how_to_get="put the four IDX files (train-images-idx3-ubyte.gz, ...) in a directory and pass --data-dir",
            load=_idx(MNIST_CLASSES, "mnist"),
        ),
        DatasetSpec(
            name="cifar10",
            image_shape=(3, 32, 32),
            num_classes=10,
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2470, 0.2435, 0.2616),
            augment=Augment(pad=4, flip=True),
            default_root=None,
            how_to_get="download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, unpack it and pass "
            "--data-dir DIR (the directory holding cifar-10-batches-py/)",
            load=load_cifar10_split,
        ),
        DatasetSpec(
            name="tiny-imagenet",
            image_shape=(3, 64, 64),
            num_classes=200,
            mean=(0.4802, 0.4481, 0.3975),
            std=(0.2770, 0.2691, 0.2821),
            augment=Augment(pad=8, flip=True),
            default_root=None,
            how_to_get="download http://cs231n.stanford.edu/tiny-imagenet-200.zip, unpack it and pass "
            "--data-dir DIR (the directory holding tiny-imagenet-200/)",
            load=load_tiny_imagenet_split,
        ),
    )
}


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise UnknownName(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}") from None


def load_dataset(name: str, root: str | Path | None = None, *, train: bool = True) -> ImageSet:
    """Load the training or test split of a named dataset.

    Args:
        name: one of `DATASETS`.
        root: the directory holding its files; default: the dataset's usual place.
        train: the training split (True) or the test split (False).

    Raises:
        DatasetNotFoundError: the files are missing; the message says where we looked and how to get them.
        DatasetFormatError: a file is truncated or corrupt.
    """
    spec = get_spec(name)
    where = root if root is not None else spec.default_root
    if where is None:
        raise DatasetNotFoundError(f"{name}: no data directory given. To get it: {spec.how_to_get}")
    path = Path(where).expanduser()
    try:
        data = spec.load(path, train)
    except DatasetNotFoundError as exc:
        raise DatasetNotFoundError(f"{name}: looked in {path}: {exc}. To get it: {spec.how_to_get}") from None
    if data.image_shape != spec.image_shape:
        raise DatasetFormatError(f"{name}: images in {path} are {data.image_shape}, expected {spec.image_shape}")
    return data
