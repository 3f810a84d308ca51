"""Image-file datasets: Tiny-ImageNet's standard layout and a generic class-per-folder directory.

Tiny-ImageNet (http://cs231n.stanford.edu/tiny-imagenet-200.zip) unpacks to::

    tiny-imagenet-200/wnids.txt                      one WordNet id per class (200 lines)
    tiny-imagenet-200/words.txt                      "wnid<TAB>readable names" (optional here)
    tiny-imagenet-200/train/<wnid>/images/*.JPEG     500 training images per class
    tiny-imagenet-200/val/images/*.JPEG              10,000 validation images
    tiny-imagenet-200/val/val_annotations.txt        "file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1"

Its test split has no labels, so the validation split serves as the test set (as in the paper).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..files import read_bytes
from .errors import DatasetFormatError, DatasetNotFoundError
from .imageset import ImageSet

MAX_PIXELS = 4096 * 4096  # per image file: far above any dataset here, far below a decompression bomb
MAX_LIST_BYTES = 64 * 2**20  # wnids.txt, words.txt, val_annotations.txt: well under 10 MB in the real dataset
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm")


def read_images(paths: Sequence[Path], mode: str, size: tuple[int, int] | None) -> torch.Tensor:
    """Decode image files into one (N, C, H, W) uint8 tensor; all images must share a size unless `size`."""
    from PIL import Image, UnidentifiedImageError

    channels = 1 if mode == "L" else 3
    out: np.ndarray | None = None
    for i, path in enumerate(paths):
        try:
            # read as the weights are (no blocking, regular files only): a FIFO named x.png would block forever
            with Image.open(io.BytesIO(read_bytes(path, error=DatasetFormatError))) as img:
                if img.width * img.height > MAX_PIXELS:  # checked on the header, before decoding
                    raise DatasetFormatError(
                        f"{path}: {img.width}x{img.height} pixels, more than bdprune decodes "
                        f"({MAX_PIXELS:,}); resize it or leave it out"
                    )
                img = img.convert(mode)
                if size is not None and img.size != (size[1], size[0]):
                    img = img.resize((size[1], size[0]), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise DatasetFormatError(f"{path}: cannot decode image ({exc}); remove or replace the file") from exc
        arr = arr[:, :, None] if arr.ndim == 2 else arr  # (H, W[, C]) -> (H, W, C)
        if out is None:
            out = np.empty((len(paths), channels, arr.shape[0], arr.shape[1]), dtype=np.uint8)
        elif arr.shape[:2] != out.shape[2:]:
            raise DatasetFormatError(
                f"{path}: size {arr.shape[1]}x{arr.shape[0]} differs from {out.shape[3]}x{out.shape[2]} of the"
                " first image; pass a size to resize all images to one size"
            )
        out[i] = arr.transpose(2, 0, 1)
    if out is None:
        raise DatasetFormatError("no images to read")
    return torch.from_numpy(out)


def _read_lines(path: Path) -> list[str]:
    if not path.exists():
        raise DatasetNotFoundError(f"missing {path}")
    try:
        text = read_bytes(path, limit=MAX_LIST_BYTES, error=DatasetFormatError).decode()
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(f"{path}: not a text file ({exc})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _tiny_root(root: Path) -> Path:
    return root / "tiny-imagenet-200" if (root / "tiny-imagenet-200").is_dir() else root


def load_tiny_imagenet_split(root: Path, train: bool) -> ImageSet:
    """Load Tiny-ImageNet's training split or its labelled validation split (used as the test set)."""
    root = _tiny_root(root)
    wnids = _read_lines(root / "wnids.txt")
    if len(set(wnids)) != len(wnids):
        raise DatasetFormatError(f"{root / 'wnids.txt'}: duplicate class ids")
    index = {w: i for i, w in enumerate(wnids)}
    classes = tuple(wnids)
    words = root / "words.txt"
    if words.is_file():  # readable names for reports; the first synonym of each class
        table = dict(line.split("\t", 1) for line in _read_lines(words) if "\t" in line)
        classes = tuple(table.get(w, w).split(",")[0].strip() for w in wnids)

    paths: list[Path] = []
    labels: list[int] = []
    if train:
        for wnid in wnids:
            folder = root / "train" / wnid / "images"
            if not folder.is_dir():
                raise DatasetNotFoundError(f"missing {folder}")
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            paths += files
            labels += [index[wnid]] * len(files)
    else:
        annotations = root / "val" / "val_annotations.txt"
        for n, line in enumerate(_read_lines(annotations), 1):
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in index:
                raise DatasetFormatError(f"{annotations}:{n}: expected 'file<TAB>wnid...' with a known wnid")
            paths.append(root / "val" / "images" / fields[0])
            labels.append(index[fields[1]])
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DatasetNotFoundError(f"{len(missing)} validation images listed but missing, e.g. {missing[0]}")
    if not paths:
        raise DatasetFormatError(f"{root}: no images found")
    return ImageSet(
        images=read_images(paths, "RGB", None),
        labels=torch.tensor(labels, dtype=torch.int64),
        classes=classes,
        name=f"tiny-imagenet-{'train' if train else 'val'}",
    )


def load_image_folder(
    root: Path, *, grayscale: bool = False, size: tuple[int, int] | None = None, classes: Sequence[str] | None = None
) -> ImageSet:
    """Load `root/<class name>/<image files>`; classes are the sorted folder names unless given.

    Args:
        root: the directory holding one sub-directory per class.
        grayscale: decode to one channel instead of RGB.
        size: (H, W) to resize every image to; by default all images must already share one size.
        classes: class names in label order (to match another split's labels); folders not listed are an error.
    """
    if not root.is_dir():
        raise DatasetNotFoundError(f"no directory {root}")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    class_names = tuple(classes) if classes is not None else tuple(folders)
    unknown = set(folders) - set(class_names)
    if unknown:
        raise DatasetFormatError(f"{root}: folders {sorted(unknown)} are not among the given classes")
    paths, labels = [], []
    for label, name in enumerate(class_names):
        folder = root / name
        if not folder.is_dir():
            continue
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise DatasetFormatError(f"{root}: no images in class folders (suffixes {', '.join(IMAGE_SUFFIXES)})")
    return ImageSet(
        images=read_images(paths, "L" if grayscale else "RGB", size),
        labels=torch.tensor(labels, dtype=torch.int64),
        classes=class_names,
        name=root.name,
    )
