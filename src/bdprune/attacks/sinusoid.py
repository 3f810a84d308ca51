"""Sinusoid: an additive sinusoidal grating over the whole image (a dirty-label variant of the SIG signal of
Barni et al., "A new backdoor attack in CNNs by training set corruption without label poisoning", ICIP 2019).

x' = clip(x + delta * sin(2 pi f (u cos theta + v sin theta) / W + phi)), with u, v the pixel's column and row.
SIG keeps the labels of target-class images; here the poisoned samples are relabelled like BadNets (the
attack contract's all-to-one / all-to-all), so the trigger is a whole-image, low-amplitude, periodic signal:
neither a patch nor a blend with a noise image. The orientation theta and phase phi are drawn from the
generator (the same seed, the same grating); frequency and amplitude are hyperparameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import InvalidInput
from ..params import param
from .base import Attack, Tensors, register_attack


@register_attack
@dataclass(kw_only=True, eq=False, repr=False)
class Sinusoid(Attack):
    """Additive sinusoidal grating.

    Args:
        image_shape, num_classes, target, mode: as for every attack (`bdprune.attacks.Attack`).
        delta: amplitude of the grating in [0, 1] pixel units (SIG uses 20/255 on CIFAR-10).
        frequency: periods across the image width.
        generator: draws the orientation and phase.
        tensors: {"signal": (C, H, W) in [-delta, delta]} restoring a saved grating.

    Example:
        >>> attack = Sinusoid((1, 28, 28), 10, generator=torch.Generator().manual_seed(0))
        >>> poisoned, labels = attack.apply(images, labels)
    """

    name = "sinusoid"

    delta: float = param(20 / 255, gt=0.0, le=1.0)
    frequency: float = param(4.0, gt=0.0)

    def build(self, generator: torch.Generator | None, tensors: Tensors) -> None:
        c, h, w = self.image_shape
        if "signal" in tensors:
            self.signal = tensors["signal"].detach().float().cpu()
        else:
            theta, phi = (torch.rand(2, generator=generator, dtype=torch.float64) * 2 * math.pi).tolist()
            v, u = torch.meshgrid(
                torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
            )
            wave = torch.sin(2 * math.pi * self.frequency * (u * math.cos(theta) + v * math.sin(theta)) / w + phi)
            self.signal = (self.delta * wave).float().expand(c, h, w).clone()  # (C, H, W), one grating per channel
        if tuple(self.signal.shape) != tuple(self.image_shape):
            raise InvalidInput(
                f"{self.name}: the signal must be {tuple(self.image_shape)}, got {tuple(self.signal.shape)}"
            )

    def poison_images(self, images: torch.Tensor) -> torch.Tensor:
        return (images + self.signal.to(images)).clamp(0, 1)

    def state_dict(self) -> Tensors:
        return {"signal": self.signal}
