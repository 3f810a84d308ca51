"""BadNets (Gu et al., "BadNets: Identifying Vulnerabilities in the Machine Learning Model Supply Chain", 2017).

A small square patch is stamped onto the image. The paper under reproduction uses a random 3x3 pattern in
the bottom-right corner on CIFAR-10 (5x5 on Tiny-ImageNet), poisoning rate 0.1, target class 0, and both
all-to-one and all-to-all (y -> (y + 1) mod C) labelling (section 5.1). Its official code draws the
pattern as sigmoid(randn), which `pattern="random"` reproduces.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import ALL_TO_ONE, Attack, register_attack

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
    raise ValueError(f"pattern must be 'random', 'white' or 'checkerboard', got {kind!r}")


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
class BadNets(Attack):
    """Square patch trigger.

    Args:
        image_shape: (C, H, W).
        num_classes: classes of the task.
        target: target class (all-to-one).
        mode: "all-to-one" or "all-to-all".
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

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int,
        target: int = 0,
        mode: str = ALL_TO_ONE,
        size: int = 3,
        pattern: str | torch.Tensor = "random",
        corner: str = "bottom-right",
        margin: int = 0,
        generator: torch.Generator | None = None,
        tensors: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(image_shape, num_classes, target, mode)
        c, h, w = self.image_shape
        if corner not in CORNERS:
            raise ValueError(f"corner must be one of {CORNERS}, got {corner!r}")
        if not 1 <= size <= min(h, w) - margin or margin < 0:
            raise ValueError(f"a {size}x{size} patch with margin {margin} does not fit a {h}x{w} image")
        if tensors and "patch" in tensors:  # a saved trigger; keep the recorded kind
            patch, kind = tensors["patch"], pattern if isinstance(pattern, str) else "custom"
        elif isinstance(pattern, torch.Tensor):
            patch, kind = pattern, "custom"
        else:
            patch, kind = make_patch(pattern, c, size, generator), pattern
        patch = patch.detach().float().cpu()
        if tuple(patch.shape) != (c, size, size) or patch.min() < 0 or patch.max() > 1:
            raise ValueError(f"the patch must be a ({c}, {size}, {size}) tensor in [0, 1], got {tuple(patch.shape)}")
        self.patch, self.pattern, self.size, self.corner, self.margin = patch, kind, size, corner, margin

    def poison_images(self, images: torch.Tensor) -> torch.Tensor:
        return stamp(images, self.patch, self.corner, self.margin)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "size": self.size, "pattern": self.pattern, "corner": self.corner,
                "margin": self.margin}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"patch": self.patch}
