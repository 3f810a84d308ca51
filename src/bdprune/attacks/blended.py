"""Blended (Chen et al., "Targeted Backdoor Attacks on Deep Learning Systems Using Data Poisoning", 2017).

The whole image is mixed with a fixed trigger image: x' = (1 - alpha) x + alpha t, alpha = 0.2 by default
(BackdoorBench's value). The trigger is an image the user gives (same C, H, W) or a seeded uniform-noise
image, the original paper's "random pattern" variant.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InvalidInput
from ..params import param
from .base import Attack, Tensors, check_trigger, choose_trigger, register_attack


@register_attack
@dataclass(kw_only=True, eq=False, repr=False)
class Blended(Attack):
    """Whole-image blend with a fixed trigger.

    Args:
        image_shape, num_classes, target, mode: as for every attack (`bdprune.attacks.Attack`).
        alpha: blend weight of the trigger, in (0, 1].
        pattern: "random" (uniform noise from `generator`) or a (C, H, W) tensor in [0, 1].
        generator: randomness for the random pattern.
        tensors: {"pattern": tensor} restoring a saved trigger (overrides `pattern`).

    Example:
        >>> attack = Blended((3, 32, 32), 10, alpha=0.2, generator=torch.Generator().manual_seed(0))
        >>> poisoned, labels = attack.apply(images, labels)
    """

    name = "blended"

    alpha: float = param(0.2, gt=0.0, le=1.0)
    pattern: str | torch.Tensor = "random"

    def build(self, generator: torch.Generator | None, tensors: Tensors) -> None:
        def make(kind: str) -> torch.Tensor:
            if kind != "random":
                raise InvalidInput(f"pattern must be 'random' or a tensor, got {kind!r}")
            return torch.rand(self.image_shape, generator=generator)

        self.trigger, self.pattern = choose_trigger(tensors, "pattern", self.pattern, make)
        check_trigger(self.name, self.trigger, self.image_shape)

    def poison_images(self, images: torch.Tensor) -> torch.Tensor:
        return torch.lerp(images, self.trigger.to(images), self.alpha)  # (1 - alpha) x + alpha t

    def state_dict(self) -> Tensors:
        return {"pattern": self.trigger}
