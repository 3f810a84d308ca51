"""BadNets (Gu et al., "BadNets: Identifying Vulnerabilities in the Machine Learning Model Supply Chain", 2017).

A small square patch is stamped onto the image. The paper under reproduction uses a random 3x3 pattern in
the bottom-right corner on CIFAR-10 (5x5 on Tiny-ImageNet), poisoning rate 0.1, target class 0, and both
all-to-one and all-to-all (y -> (y + 1) mod C) labelling (section 5.1). Its official code draws the
pattern as sigmoid(randn), which `pattern="random"` reproduces.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InvalidInput
from ..params import param
from .base import Attack, Tensors, check_trigger, choose_trigger, register_attack

CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left")


def make_patch(kind: str, channels: int, size: int, generator: torch.Generator | None) -> torch.Tensor:
    """A (C, size, size) trigger in [0, 1]: "random" (sigmoid of a normal draw), "white" or "checkerboard"."""
    if kind == "random":
        return torch.sigmoid(torch.randn(channels, size, size, generator=generator))
    if kind == "white":
        return torch.ones(channels, size, size)
    if kind == "checkerboard":
        grid = (torch.arange(size)[:, None] + torch.arange(size)[None, :]) % 2 == 0
        return grid.float().expand(channels, size, size).clone()
    raise InvalidInput(f"pattern must be 'random', 'white', 'checkerboard' or a tensor, got {kind!r}")


def stamp(images: torch.Tensor, patch: torch.Tensor, corner: str, margin: int) -> torch.Tensor:
    """Copy of `images` (N, C, H, W) with `patch` (C, s, s) pasted `margin` pixels from `corner`."""
    _, _, h, w = images.shape
    s = patch.shape[-1]
    top = margin if corner.startswith("top") else h - s - margin
    left = margin if corner.endswith("left") else w - s - margin
    out = images.clone()
    out[:, :, top : top + s, left : left + s] = patch.to(images)
    return out


@register_attack
@dataclass(kw_only=True, eq=False, repr=False)
class BadNets(Attack):
    """Square patch trigger.

    Args:
        image_shape, num_classes, target, mode: as for every attack (`bdprune.attacks.Attack`).
        size: side of the square patch in pixels (3 for 32 px images, 5 for 64 px in the paper).
        pattern: "random" (the paper's sigmoid(randn) pattern, drawn from `generator`), "white",
            "checkerboard", or a (C, size, size) tensor in [0, 1].
        corner: where the patch goes: "bottom-right" (default), "bottom-left", "top-right", "top-left".
        margin: pixels between the patch and the image border.
        generator: randomness for the random pattern.
        tensors: {"patch": tensor} restoring a saved pattern (overrides `pattern`).

    Example:
        >>> attack = BadNets((3, 32, 32), 10, size=3, generator=torch.Generator().manual_seed(0))
        >>> poisoned, labels = attack.apply(images, labels)  # images (N, 3, 32, 32) in [0, 1] or uint8
    """

    name = "badnets"

    size: int = param(3, ge=1)
    pattern: str | torch.Tensor = "random"
    corner: str = param("bottom-right", choices=CORNERS)
    margin: int = param(0, ge=0)

    def build(self, generator: torch.Generator | None, tensors: Tensors) -> None:
        c, h, w = self.image_shape
        if self.size > min(h, w) - self.margin:
            raise InvalidInput(
                f"a {self.size}x{self.size} patch with margin {self.margin} does not fit a {h}x{w} image"
            )
        self.patch, self.pattern = choose_trigger(
            tensors, "patch", self.pattern, lambda kind: make_patch(kind, c, self.size, generator)
        )
        check_trigger(self.name, self.patch, (c, self.size, self.size))

    def poison_images(self, images: torch.Tensor) -> torch.Tensor:
        return stamp(images, self.patch, self.corner, self.margin)

    def state_dict(self) -> Tensors:
        return {"patch": self.patch}
