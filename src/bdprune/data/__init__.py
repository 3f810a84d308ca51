"""Data: in-memory image sets, whole-batch augmentation, and loaders for the real on-disk formats."""

from .arrays import image_set, read_indices
from .batches import Augment, augment_batch, batch_crop, batch_flip_lr, iterate_batches
from .datasets import DATASETS, DatasetSpec, get_spec, load_dataset
from .errors import DatasetFormatError, DatasetNotFoundError
from .folders import load_image_folder, load_tiny_imagenet_split
from .imageset import ImageSet, like_input, to_float

__all__ = [
    "DATASETS",
    "Augment",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "DatasetSpec",
    "ImageSet",
    "augment_batch",
    "batch_crop",
    "batch_flip_lr",
    "get_spec",
    "image_set",
    "iterate_batches",
    "like_input",
    "load_dataset",
    "load_image_folder",
    "load_tiny_imagenet_split",
    "read_indices",
    "to_float",
]
