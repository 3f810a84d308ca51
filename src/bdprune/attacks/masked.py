"""A trigger image pasted through a mask: x' = (1 - m) x + m t.

The general form of a static trigger (Neural Cleanse writes triggers this way, Wang et al., S&P 2019): a
patch is a mask of ones on a square, a blend a constant mask of alpha. Its use here is naming a trigger
that a user has as files, `bdprune defend --trigger-image T.png --trigger-mask M.png --target N`, so that
the ASR of a foreign model can be measured before and after a repair.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InvalidInput
from .base import Attack, Tensors, check_trigger, choose_trigger, register_attack


@register_attack
@dataclass(kw_only=True, eq=False, repr=False)
class Masked(Attack):
    """A trigger image t pasted through a mask m in [0, 1].

    Args:
        image_shape, num_classes, target, mode: as for every attack (`bdprune.attacks.Attack`).
        pattern: "random" (uniform noise from `generator`) or a (C, H, W) tensor in [0, 1].
        mask: "corner" (ones on the bottom-right 3x3 square) or a (1, H, W) or (C, H, W) tensor in [0, 1].
        generator: randomness for the random pattern.
        tensors: {"pattern": ..., "mask": ...} restoring a saved trigger (overrides `pattern` and `mask`).

    Example:
        >>> attack = Masked((1, 28, 28), 10, pattern=trigger, mask=mask, target=0)  # tensors in [0, 1]
        >>> poisoned, labels = attack.apply(images, labels)
    """

    name = "masked"

    pattern: str | torch.Tensor = "random"
    mask: str | torch.Tensor = "corner"

    def build(self, generator: torch.Generator | None, tensors: Tensors) -> None:
        c, h, w = self.image_shape

        def make_pattern(kind: str) -> torch.Tensor:
            if kind != "random":
                raise InvalidInput(f"pattern must be 'random' or a tensor, got {kind!r}")
            return torch.rand(self.image_shape, generator=generator)

        def make_mask(kind: str) -> torch.Tensor:
            if kind != "corner" or min(h, w) < 3:
                raise InvalidInput(f"mask must be 'corner' (on images of at least 3x3) or a tensor, got {kind!r}")
            mask = torch.zeros(1, h, w)
            mask[:, -3:, -3:] = 1.0
            return mask

        self.trigger, self.pattern = choose_trigger(tensors, "pattern", self.pattern, make_pattern)
        self.alpha, self.mask = choose_trigger(tensors, "mask", self.mask, make_mask)
        check_trigger(self.name, self.trigger, self.image_shape)
        channels = c if self.alpha.ndim == 3 and self.alpha.shape[0] == c else 1  # one mask for all, or one each
        check_trigger(f"{self.name} mask", self.alpha, (channels, h, w))
        if not bool(self.alpha.any()):
            raise InvalidInput(f"{self.name}: the mask is zero everywhere, so the trigger would change nothing")

    def poison_images(self, images: torch.Tensor) -> torch.Tensor:
        return torch.lerp(images, self.trigger.to(images), self.alpha.to(images))  # (1 - m) x + m t

    def state_dict(self) -> Tensors:
        return {"pattern": self.trigger, "mask": self.alpha}
