"""Whole-batch augmentation and batch iteration on the compute device.

Per-sample randomness is a batched draw from an explicit generator (airbench's `batch_flip_lr`,
`batch_crop`), never a Python loop over images. Batches come out as float32 in [0, 1]: input
normalisation lives inside the model (see `bdprune.models.normalize`), so attacks, metrics and
defenses all speak the same [0, 1] image space.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InvalidInput
from .imageset import ImageSet, to_float


@dataclass(frozen=True)
class Augment:
    """Training augmentation: random crop after zero padding, and horizontal flip.

    Attributes:
        pad: padding in pixels before the random crop back to the original size (0: no crop).
        flip: flip half the images left-right (off for data where a flip changes the meaning).
    """

    pad: int = 4
    flip: bool = True


def _rand(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    # Draw on the generator's own device, then move: a CPU generator gives the same numbers whatever
    # the compute device, so a seed means the same augmentation on CPU and CUDA.
    gen_device = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=gen_device).to(device)


def batch_flip_lr(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip a random half of the images left-right. (N, C, H, W) -> (N, C, H, W), a new tensor."""
    flip = _rand(len(images), generator, images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def batch_crop(images: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by `pad` and take a random crop of the original size from each image.

    Implemented as one gather over the padded batch: the row and column offsets are drawn per image.
    """
    if pad <= 0:
        return images.clone()
    n, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))  # (N, C, H + 2p, W + 2p)
    span = 2 * pad + 1
    dy = (_rand(n, generator, images.device) * span).long().clamp_(max=span - 1)
    dx = (_rand(n, generator, images.device) * span).long().clamp_(max=span - 1)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]  # (N, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    chan = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def augment_batch(images: torch.Tensor, augment: Augment, generator: torch.Generator | None) -> torch.Tensor:
    """Apply `augment` to a float batch."""
    if augment.pad > 0:
        images = batch_crop(images, augment.pad, generator)
    if augment.flip:
        images = batch_flip_lr(images, generator)
    return images


def iterate_batches(
    data: ImageSet,
    batch_size: int,
    *,
    device: torch.device | str | None = None,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    augment: Augment | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (images, labels, positions) batches; images float32 [0, 1] on `device`.

    Args:
        data: the set to iterate over.
        batch_size: samples per batch (the last batch may be smaller unless `drop_last`).
        device: where batches are produced; default: where `data` lives.
        shuffle: visit samples in a random order drawn from `generator`.
        generator: randomness for shuffling and augmentation (required if either is on).
        augment: training augmentation, or None for plain batches.
        drop_last: skip a final incomplete batch.

    Yields:
        images (B, C, H, W) float32, labels (B,) int64, positions (B,) int64 into `data`.
    """
    if batch_size < 1:
        raise InvalidInput(f"batch_size must be at least 1, got {batch_size}")
    if (shuffle or augment is not None) and generator is None:
        raise InvalidInput("shuffling or augmenting needs an explicit torch.Generator (pass generator=...)")
    device = torch.device(device) if device is not None else data.images.device
    n = len(data)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        pos = order[start : start + batch_size]
        # Index on the data's device, convert after the move: uint8 is 4x cheaper to transfer than float.
        images = to_float(data.images[pos.to(data.images.device)].to(device, non_blocking=True))
        labels = data.labels[pos.to(data.labels.device)].to(device, non_blocking=True)
        if augment is not None:
            images = augment_batch(images, augment, generator)
        yield images, labels, pos
