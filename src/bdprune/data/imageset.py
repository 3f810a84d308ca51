"""An image classification set held in memory as one tensor: the unit every other part works on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from ..errors import InvalidInput


@dataclass(frozen=True)
class ImageSet:
    """Images and labels of one split, resident in memory.

    Keeping the whole set as a single uint8 tensor (airbench's choice) makes poisoning, subsetting and
    augmentation whole-batch tensor operations instead of a Python loop over samples.

    Attributes:
        images: (N, C, H, W), uint8 in [0, 255] or float32 in [0, 1].
        labels: (N,) int64 class indices in [0, num_classes).
        classes: class names; their count is the number of classes.
        name: where the set came from, for reports.
        indices: (N,) int64 positions of these samples in the set they were taken from (the original
            training or test file). Subsets and splits keep them, so a sample can always be traced back.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str = ""
    indices: torch.Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if images.ndim != 4:
            raise InvalidInput(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        if images.dtype not in (torch.uint8, torch.float32):
            raise InvalidInput(f"images must be uint8 or float32, got {images.dtype}")
        if labels.ndim != 1 or labels.dtype != torch.int64:
            raise InvalidInput(f"labels must be a 1-D int64 tensor, got {labels.dtype} {tuple(labels.shape)}")
        if len(images) != len(labels):
            raise InvalidInput(f"{len(images)} images but {len(labels)} labels")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(self.classes)):
            raise InvalidInput(
                f"labels must lie in [0, {len(self.classes)}), got [{int(labels.min())}, {int(labels.max())}]"
            )
        if self.indices is None:
            object.__setattr__(self, "indices", torch.arange(len(labels)))
        elif self.indices.shape != labels.shape:
            raise InvalidInput("indices must have one entry per sample")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, positions: torch.Tensor | Sequence[int]) -> ImageSet:
        """The samples at `positions` (positions in this set, not original indices)."""
        pos = torch.as_tensor(positions, dtype=torch.int64)
        return replace(self, images=self.images[pos], labels=self.labels[pos], indices=self.indices[pos])

    def with_samples(self, images: torch.Tensor, labels: torch.Tensor, name: str | None = None) -> ImageSet:
        """A set with the same classes and indices but new images and labels (e.g. poisoned ones)."""
        return replace(self, images=images, labels=labels, name=self.name if name is None else name)

    def split(self, sizes: Sequence[int], generator: torch.Generator) -> tuple[ImageSet, ...]:
        """Disjoint random parts of the given sizes (they must add up to at most len(self)).

        Args:
            sizes: the number of samples in each part.
            generator: the source of randomness; the same seed gives the same split.
        """
        if any(s < 0 for s in sizes) or sum(sizes) > len(self):
            raise InvalidInput(f"cannot split {len(self)} samples into parts of sizes {list(sizes)}")
        order = torch.randperm(len(self), generator=generator)
        parts, start = [], 0
        for size in sizes:
            parts.append(self.subset(order[start : start + size].sort().values))
            start += size
        return tuple(parts)

    def sample(self, count: int, generator: torch.Generator) -> ImageSet:
        """`count` samples drawn without replacement."""
        if count > len(self):
            raise InvalidInput(f"asked for {count} samples but the set has only {len(self)}")
        return self.split([count], generator)[0]

    def float_images(self) -> torch.Tensor:
        """The images as float32 in [0, 1]."""
        return to_float(self.images)

    def to(self, device: torch.device | str) -> ImageSet:
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] -> float32 [0, 1] (a new tensor when the dtype changes)."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def like_input(result: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Cast float [0, 1] `result` back to the dtype of `reference`, rounding to the nearest level for uint8."""
    if reference.dtype == torch.uint8:
        return result.clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)
    return result.clamp(0.0, 1.0).to(reference.dtype)
