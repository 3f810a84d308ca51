"""WaNet (Nguyen & Tran, "WaNet - Imperceptible Warping-based Backdoor Attack", ICLR 2021).

The trigger is a fixed, smooth, small geometric warp (section 5.1 of the paper under reproduction lists
it among the evaluated attacks). A k x k control grid of random offsets, uniform in [-1, 1] and divided by
its mean absolute value, is upsampled bicubically to the image size; the warping field is

    grid = clamp(identity + s * noise / size, -1, 1)          (grid_sample coordinates, align_corners=True)

and the poisoned image is the image sampled at `grid`. Defaults follow the WaNet paper and its code:
k = 4, s = 0.5, grid rescale 1.

Noise mode: WaNet also trains on "cross" samples, warped by the backdoor field plus a random per-pixel
perturbation (uniform in [-1, 1] / size) and kept with their TRUE labels, so that the network learns the
one specific warp rather than any warp. Their number is `cross_ratio` times the number of poisoned
samples (2 in WaNet's code). `bdprune.attacks.poison.choose_cross_positions` and `cross_at` add them to a
training set; the positions are recorded with the run like the poisoned ones. Each cross sample's
perturbation is keyed by its pixels (`bdprune.attacks.keyed`), so re-applying a loaded attack rebuilds it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InvalidInput
from ..params import param
from .base import Attack, Tensors, register_attack
from .keyed import image_keys, keyed_uniform


def control_grid(k: int, generator: torch.Generator | None) -> torch.Tensor:
    """WaNet's random control grid: (2, k, k) offsets uniform in [-1, 1], normalised to mean |offset| 1."""
    ins = torch.rand(2, k, k, generator=generator) * 2 - 1
    return ins / ins.abs().mean()


def identity_grid(h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """(1, H, W, 2) sampling grid of `F.grid_sample` (x, y order, align_corners=True) that changes nothing."""
    ys = torch.linspace(-1, 1, h, device=device)
    xs = torch.linspace(-1, 1, w, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=-1)[None]


def warping_field(noise: torch.Tensor, h: int, w: int, strength: float, rescale: float = 1.0) -> torch.Tensor:
    """The backdoor sampling grid (1, H, W, 2) from a (2, k, k) control grid."""
    up = F.interpolate(noise[None], size=(h, w), mode="bicubic", align_corners=True)  # (1, 2, H, W)
    scale = torch.tensor([w, h], dtype=up.dtype, device=up.device)  # offsets are in pixels / size per axis
    offset = up.permute(0, 2, 3, 1) / scale  # (1, H, W, 2)
    return ((identity_grid(h, w, up.device) + strength * offset) * rescale).clamp(-1, 1)


def warp(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Sample float images (N, C, H, W) at `grid` ((1 or N), H, W, 2); a new tensor."""
    grid = grid.to(images).expand(len(images), -1, -1, -1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True).clamp(0, 1)


@register_attack
@dataclass(kw_only=True, eq=False, repr=False)
class WaNet(Attack):
    """Warping-based trigger with noise-mode ("cross") samples.

    Args:
        image_shape, num_classes, target, mode: as for every attack (`bdprune.attacks.Attack`).
        k: side of the random control grid (4 in WaNet).
        s: warping strength (0.5 in WaNet); s = 0 leaves images unchanged.
        grid_rescale: scale of the whole grid (1 in WaNet).
        cross_ratio: noise-mode samples per poisoned sample (2 in WaNet); 0 turns noise mode off.
        seed: keys the per-image noise of cross samples; drawn from `generator` when not given.
        generator: randomness for the control grid (and the seed).
        tensors: {"noise": (2, k, k) tensor} restoring a saved control grid.

    Example:
        >>> attack = WaNet((1, 28, 28), 10, k=4, s=0.5, generator=torch.Generator().manual_seed(0))
        >>> poisoned, labels = attack.apply(images, labels)  # images (N, 1, 28, 28) in [0, 1] or uint8
    """

    name = "wanet"

    k: int = param(4, ge=2)
    s: float = param(0.5, ge=0.0)
    grid_rescale: float = param(1.0, gt=0.0)
    cross_ratio: float = param(2.0, ge=0.0)
    seed: int | None = None

    def build(self, generator: torch.Generator | None, tensors: Tensors) -> None:
        _, h, w = self.image_shape
        if self.k > min(h, w):
            raise InvalidInput(
                f"wanet: the control grid side k must lie in [2, {min(h, w)}] for {h}x{w} images, got {self.k}"
            )
        self.noise = tensors["noise"].detach().float().cpu() if "noise" in tensors else control_grid(self.k, generator)
        if tuple(self.noise.shape) != (2, self.k, self.k):
            raise InvalidInput(
                f"wanet: the saved control grid has shape {tuple(self.noise.shape)}, expected (2, {self.k}, {self.k})"
            )
        if self.seed is None:
            self.seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        self.grid = warping_field(self.noise, h, w, self.s, self.grid_rescale)  # (1, H, W, 2)

    def cross_count(self, poisoned: int) -> int:
        return round(self.cross_ratio * poisoned)

    def poison_images(self, images: torch.Tensor) -> torch.Tensor:
        return warp(images, self.grid)

    def cross_images(self, images: torch.Tensor) -> torch.Tensor:
        """Noise-mode images: the backdoor warp plus a random per-pixel perturbation keyed by each image."""
        n, _, h, w = images.shape
        draws = keyed_uniform(image_keys(images, self.seed), h * w * 2, self.seed)  # (N, H * W * 2)
        jitter = (draws.to(images.device) * 2 - 1).view(n, h, w, 2)
        scale = torch.tensor([w, h], dtype=images.dtype, device=images.device)
        grid = (self.grid.to(images) + jitter.to(images) / scale).clamp(-1, 1)  # (N, H, W, 2)
        return warp(images, grid)

    def state_dict(self) -> Tensors:
        return {"noise": self.noise}
