"""Smooth: an additive low-frequency random pattern (a whole-image trigger with no high-frequency content).

A coarse grid of uniform noise (`cells` x `cells`, from the generator) is upsampled bicubically to the image
size, scaled to [-1, 1] and added with amplitude `eps`: x' = clip(x + eps * p). Low-frequency triggers were
proposed against frequency-domain detectors (Zeng et al., "Rethinking the backdoor attacks' triggers: a
frequency perspective", ICCV 2021); this is a simple seeded instance of the idea, relabelled like BadNets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..params import param
from .base import Attack, Tensors, register_attack


@register_attack
@dataclass(kw_only=True, eq=False, repr=False)
class Smooth(Attack):
    """Additive smooth random pattern.

    Args:
        image_shape, num_classes, target, mode: as for every attack (`bdprune.attacks.Attack`).
        eps: L-infinity amplitude of the pattern, in [0, 1] pixel units.
        cells: side of the coarse noise grid (smaller: smoother).
        generator: draws the coarse grid.
        tensors: {"signal": (C, H, W) in [-eps, eps]} restoring a saved pattern.

    Example:
        >>> attack = Smooth((1, 28, 28), 10, generator=torch.Generator().manual_seed(0))
        >>> poisoned, labels = attack.apply(images, labels)
    """

    name = "smooth"

    eps: float = param(0.1, gt=0.0, le=1.0)
    cells: int = param(4, ge=2)

    def build(self, generator: torch.Generator | None, tensors: Tensors) -> None:
        c, h, w = self.image_shape
        if "signal" in tensors:
            self.signal = tensors["signal"].detach().float().cpu()
        else:
            coarse = torch.rand(1, c, self.cells, self.cells, generator=generator)
            fine = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)[0]  # (C, H, W)
            fine = fine - fine.amin(dim=(1, 2), keepdim=True)
            fine = fine / fine.amax(dim=(1, 2), keepdim=True).clamp_min(1e-8)  # [0, 1] per channel
            self.signal = self.eps * (2 * fine - 1)

    def poison_images(self, images: torch.Tensor) -> torch.Tensor:
        return (images + self.signal.to(images)).clamp(0, 1)

    def state_dict(self) -> Tensors:
        return {"signal": self.signal}
