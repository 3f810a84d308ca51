"""A defender's own image sets, in the formats they come in: tensors from Python, a dataset's own files (IDX,
CIFAR batches), an .npz or .safetensors of images and labels, or one folder per class; and the indices of a
subset.

`image_set(source, image_shape=..., num_classes=...)` turns any of them into an `ImageSet` of the model's
input shape, so that EP can read a (possibly poisoned) training set as it is kept, without writing it out as
tens of thousands of PNG files. Nothing here unpickles: .npz files are read with `allow_pickle=False`, CIFAR
batches with the restricted unpickler of `bdprune.data.cifar`.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import BdpruneError, InvalidInput
from ..files import MAX_FILE_BYTES, read_bytes, tensors_from_bytes
from .cifar import load_cifar10_split
from .errors import DatasetFormatError, DatasetNotFoundError
from .folders import load_image_folder
from .idx import load_idx_split
from .imageset import ImageSet

ARRAY_KEYS = (("images", "labels"), ("x", "y"), ("x_train", "y_train"))  # names an array file may use


def image_set(
    source: ImageSet | tuple[torch.Tensor, torch.Tensor] | str | Path,
    *,
    image_shape: Sequence[int],
    num_classes: int,
    indices: str | Sequence[int] | torch.Tensor | None = None,
    name: str = "",
    model: str = "the model",
) -> ImageSet:
    """An image set from what a defender has, checked against the model's input.

    Args:
        source: an `ImageSet`; (images, labels) tensors or arrays, images uint8 in [0, 255] or float in [0, 1]
            as (N, C, H, W), (N, H, W, C) or, for one channel, (N, H, W); or a path: a directory with a
            dataset's files (IDX `train-images-idx3-ubyte[.gz]` and labels, CIFAR-10 `data_batch_*`), an
            IDX images file (its labels file beside it), an .npz or .safetensors holding images and labels
            (named images/labels, x/y or x_train/y_train), or a directory of one folder per class.
        image_shape: (C, H, W) the model takes.
        num_classes: the model's classes; labels must lie below.
        indices: the samples to keep (positions in the source): "START:STOP", a file of integers (.json,
            .npy, or text separated by spaces, commas or newlines), or a sequence.
        name: for reports (default: the path's name).
        model: how messages name the model, e.g. "a fashion-mnist model".
    """
    shape = tuple(int(s) for s in image_shape)
    classes = tuple(str(i) for i in range(num_classes))
    if isinstance(source, ImageSet):
        data = source
    elif isinstance(source, (tuple, list)):
        images, labels = source
        data = _from_arrays(torch.as_tensor(images), torch.as_tensor(labels), shape, classes, name or "tensors")
    else:
        data = _from_path(Path(source).expanduser(), shape, classes, name, model)
    if tuple(data.image_shape) != shape:
        raise InvalidInput(
            f"{data.name or source}: images of shape {tuple(data.image_shape)}, but {model} takes {shape}"
        )
    if len(data) == 0:
        raise InvalidInput(f"{data.name or source}: no images")
    if len(data.labels) and int(data.labels.max()) >= num_classes:
        raise InvalidInput(
            f"{data.name or source}: label {int(data.labels.max())}, but {model} has {num_classes} classes"
        )
    return data if indices is None else data.subset(read_indices(indices, len(data)))


def _from_path(path: Path, shape: tuple[int, ...], classes: tuple[str, ...], name: str, model: str) -> ImageSet:
    try:
        if path.is_dir():
            if any((path / f"train-images-idx3-ubyte{gz}").is_file() for gz in ("", ".gz")):
                return _relabelled(load_idx_split(path, "train", classes, name or f"{path.name}-train"), classes)
            if (path / "data_batch_1").is_file() or (path / "cifar-10-batches-py").is_dir():
                return load_cifar10_split(path, True)
            folders = load_image_folder(path, grayscale=shape[0] == 1, size=tuple(shape[1:]))  # type: ignore[arg-type]
            if folders.num_classes != len(classes):
                raise InvalidInput(
                    f"{path} has {folders.num_classes} class folders, but {model} has {len(classes)} "
                    "classes; give one folder per class of the model"
                )
            return folders
        if path.name.endswith(("-images-idx3-ubyte", "-images-idx3-ubyte.gz")):
            prefix = path.name.split("-images-idx3-ubyte")[0]
            return load_idx_split(path.parent, prefix, classes, name or path.name)
        if path.suffix in (".npz", ".safetensors"):
            return _from_arrays(*_read_arrays(path), shape, classes, name or path.name)
    except FileNotFoundError as exc:
        raise DatasetNotFoundError(str(exc)) from None
    if not path.exists():
        raise DatasetNotFoundError(f"no file or directory {path}")
    raise InvalidInput(
        f"{path}: not a format bdprune reads as an image set; give a directory with the dataset's "
        "files (IDX or CIFAR-10 batches), an IDX images file, an .npz or .safetensors of images and "
        "labels, or a directory of one folder per class"
    )


def _relabelled(data: ImageSet, classes: tuple[str, ...]) -> ImageSet:
    return data if data.classes == classes else ImageSet(data.images, data.labels, classes, data.name, data.indices)


def _read_arrays(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of an .npz (never unpickled) or .safetensors file."""
    raw = read_bytes(path)
    if path.suffix == ".safetensors":
        arrays = tensors_from_bytes(raw, path)
    else:
        try:
            entries = zipfile.ZipFile(io.BytesIO(raw)).infolist()
            if sum(e.file_size for e in entries) > MAX_FILE_BYTES:
                raise DatasetFormatError(f"{path} would expand to more than {MAX_FILE_BYTES:,} bytes")
            with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                arrays = {k: torch.from_numpy(np.ascontiguousarray(npz[k])) for k in npz.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
            raise DatasetFormatError(
                f"{path} is not a readable .npz of arrays ({str(exc).splitlines()[0]}); save it "
                "with numpy.savez(path, images=..., labels=...)"
            ) from None
    for images, labels in ARRAY_KEYS:
        if images in arrays and labels in arrays:
            return arrays[images], arrays[labels]
    raise DatasetFormatError(
        f"{path} holds {sorted(arrays)}; name the arrays {' or '.join('/'.join(k) for k in ARRAY_KEYS)}"
    )


def _from_arrays(
    images: torch.Tensor, labels: torch.Tensor, shape: tuple[int, ...], classes: tuple[str, ...], name: str
) -> ImageSet:
    c, h, w = shape
    if images.ndim == 3 and c == 1:
        images = images[:, None]  # (N, H, W) -> (N, 1, H, W)
    if images.ndim == 4 and tuple(images.shape[1:]) == (h, w, c) and tuple(images.shape[1:]) != shape:
        images = images.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    if images.ndim != 4 or tuple(images.shape[1:]) != shape:
        raise InvalidInput(
            f"{name}: images of shape {tuple(images.shape)}; the model takes (N, {c}, {h}, {w}) "
            f"(or (N, {h}, {w}, {c}){f', (N, {h}, {w})' if c == 1 else ''})"
        )
    if images.is_floating_point():
        if images.numel() and (float(images.min()) < 0 or float(images.max()) > 1):
            raise InvalidInput(f"{name}: float images must lie in [0, 1] (or give uint8 in [0, 255])")
        images = images.float()
    elif images.dtype != torch.uint8:
        raise InvalidInput(f"{name}: images must be uint8 in [0, 255] or float in [0, 1], got {images.dtype}")
    if (
        labels.is_floating_point()
        or labels.is_complex()
        or labels.dtype == torch.bool
        or labels.shape != images.shape[:1]
    ):
        raise InvalidInput(f"{name}: labels must be {len(images)} integers, got {labels.dtype} {tuple(labels.shape)}")
    if len(labels) and int(labels.min()) < 0:
        raise InvalidInput(f"{name}: labels must be class indices >= 0, got {int(labels.min())}")
    try:
        return ImageSet(images.contiguous(), labels.long(), classes, name)
    except BdpruneError as exc:
        raise InvalidInput(f"{name}: {exc}") from None


def read_indices(spec: str | Sequence[int] | torch.Tensor, count: int) -> torch.Tensor:
    """Positions in a set of `count` samples: "START:STOP", a file of integers (.json, .npy, or text), or a
    sequence; each must lie in [0, count) and appear once."""
    if isinstance(spec, str) and ":" in spec and not Path(spec).exists():
        start, _, stop = spec.partition(":")
        try:
            first, end = int(start or 0), int(stop) if stop else count
        except ValueError:
            raise InvalidInput(f"indices {spec!r}: write START:STOP (e.g. 0:500) or name a file of integers") from None
        if first < end and (first < 0 or end > count):  # checked before the range takes memory (0:10**12)
            raise InvalidInput(
                f"indices must lie in [0, {count}) (the set has {count} samples), got [{first}, {end - 1}]"
            )
        positions = torch.arange(first, end)
    elif isinstance(spec, (str, Path)):
        path = Path(spec)
        raw = read_bytes(path)
        try:
            if path.suffix == ".npy":
                values = np.load(io.BytesIO(raw), allow_pickle=False)
            elif path.suffix == ".json":
                values = json.loads(raw)
            else:
                values = [int(t) for t in raw.decode().replace(",", " ").split()]
            positions = torch.as_tensor(np.asarray(values)).flatten()
        except (ValueError, UnicodeDecodeError, TypeError) as exc:
            raise InvalidInput(f"{path}: not a list of integers ({str(exc).splitlines()[0]})") from None
    else:
        positions = torch.as_tensor(spec).flatten()
    if positions.is_floating_point() or positions.dtype == torch.bool:
        raise InvalidInput(f"indices must be integers, got {positions.dtype}")
    positions = positions.long()
    if len(positions) == 0:
        raise InvalidInput("the indices select no sample")
    if int(positions.min()) < 0 or int(positions.max()) >= count:
        raise InvalidInput(
            f"indices must lie in [0, {count}) (the set has {count} samples), got "
            f"[{int(positions.min())}, {int(positions.max())}]"
        )
    if len(positions.unique()) != len(positions):
        raise InvalidInput("the indices name some samples twice")
    return positions
