"""Blended (Chen et al., "Targeted Backdoor Attacks on Deep Learning Systems Using Data Poisoning", 2017).

The whole image is mixed with a fixed trigger image: x' = (1 - alpha) x + alpha t, alpha = 0.2 by default
(BackdoorBench's value). The trigger is an image the user gives (same C, H, W) or a seeded uniform-noise
image, the original paper's "random pattern" variant.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import ALL_TO_ONE, Attack, register_attack


@register_attack
class Blended(Attack):
    """Whole-image blend with a fixed trigger.

    Args:
        image_shape: (C, H, W).
        num_classes: classes of the task.
        target: target class (all-to-one).
        mode: "all-to-one" or "all-to-all".
        alpha: blend weight of the trigger, in (0, 1].
        pattern: "random" (uniform noise from `generator`) or a (C, H, W) tensor in [0, 1].
        generator: randomness for the random pattern.
        tensors: {"pattern": tensor} restoring a saved trigger (overrides `pattern`).

    Example:
        >>> attack = Blended((3, 32, 32), 10, alpha=0.2, generator=torch.Generator().manual_seed(0))
        >>> poisoned, labels = attack.apply(images, labels)
    """

    name = "blended"

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int,
        target: int = 0,
        mode: str = ALL_TO_ONE,
        alpha: float = 0.2,
        pattern: str | torch.Tensor = "random",
        generator: torch.Generator | None = None,
        tensors: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(image_shape, num_classes, target, mode)
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must lie in (0, 1], got {alpha}")
        if tensors and "pattern" in tensors:  # a saved trigger; keep the recorded kind
            trigger, kind = tensors["pattern"], pattern if isinstance(pattern, str) else "custom"
        elif isinstance(pattern, torch.Tensor):
            trigger, kind = pattern, "custom"
        elif pattern == "random":
            trigger, kind = torch.rand(self.image_shape, generator=generator), "random"
        else:
            raise ValueError(f"pattern must be 'random' or a tensor, got {pattern!r}")
        trigger = trigger.detach().float().cpu()
        if tuple(trigger.shape) != self.image_shape or trigger.min() < 0 or trigger.max() > 1:
            raise ValueError(f"the trigger must be a {self.image_shape} tensor in [0, 1], got {tuple(trigger.shape)}")
        self.trigger, self.alpha, self.pattern = trigger, float(alpha), kind

    def poison_images(self, images: torch.Tensor) -> torch.Tensor:
        return torch.lerp(images, self.trigger.to(images), self.alpha)  # (1 - alpha) x + alpha t

    def params(self) -> dict[str, Any]:
        return {**super().params(), "alpha": self.alpha, "pattern": self.pattern}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"pattern": self.trigger}
