"""Sparse: a few isolated pixels scattered over the whole image take fixed random values.

Unlike a BadNets patch the trigger has no spatial extent: `pixels` positions drawn anywhere in the image
(from the generator), each set to a random value in {0, 1} per channel: x' = (1 - m) x + m t with a sparse
mask m. A sparse, non-local trigger in the spirit of the "pixel" and "scattered" triggers of the poisoning
literature (e.g. the one-pixel-style patterns of Bagdasaryan and Shmatikov, 2021), relabelled like BadNets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InvalidInput
from ..params import param
from .base import Attack, Tensors, register_attack


@register_attack
@dataclass(kw_only=True, eq=False, repr=False)
class Sparse(Attack):
    """Scattered fixed pixels.

    Args:
        image_shape, num_classes, target, mode: as for every attack (`bdprune.attacks.Attack`).
        pixels: how many pixel positions carry the trigger.
        generator: draws the positions and their values.
        tensors: {"pattern": (C, H, W), "mask": (1, H, W)} restoring a saved trigger.

    Example:
        >>> attack = Sparse((1, 28, 28), 10, generator=torch.Generator().manual_seed(0))
        >>> poisoned, labels = attack.apply(images, labels)
    """

    name = "sparse"

    pixels: int = param(12, ge=1)

    def build(self, generator: torch.Generator | None, tensors: Tensors) -> None:
        c, h, w = self.image_shape
        if self.pixels > h * w:
            raise InvalidInput(f"{self.name}: {self.pixels} pixels do not fit an image of {h}x{w}")
        if "pattern" in tensors and "mask" in tensors:
            self.pattern = tensors["pattern"].detach().float().cpu()
            self.mask = tensors["mask"].detach().float().cpu()
            return
        where = torch.randperm(h * w, generator=generator)[: self.pixels]
        self.mask = torch.zeros(1, h * w)
        self.mask[0, where] = 1.0
        self.mask = self.mask.view(1, h, w)
        self.pattern = torch.randint(0, 2, (c, h, w), generator=generator).float()

    def poison_images(self, images: torch.Tensor) -> torch.Tensor:
        return torch.lerp(images, self.pattern.to(images), self.mask.to(images))

    def state_dict(self) -> Tensors:
        return {"pattern": self.pattern, "mask": self.mask}
