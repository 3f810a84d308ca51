"""Refool (Liu et al., "Reflection Backdoor: A Natural Backdoor Attack on Deep Neural Networks", ECCV 2020).

The trigger is a reflection: a picture from another scene is superimposed on the image as a glass
reflection would be (section 5.1 of the paper under reproduction evaluates it). Following the physical
models of Refool and its code, in linear light (gamma 2.2), with the transmission weight
alpha_t ~ U(0.55, 0.95) drawn per image:

* ghost effect (probability 0.49): the reflection and a copy shifted by (3..8, 3..8) pixels are mixed with
  weights g, 1 - g (g = |b - U(0.15, 0.5)|, b a fair coin), then x' = alpha_t x + (1 - alpha_t) r_ghost;
* focal blur (otherwise): the reflection is blurred with a Gaussian of sigma ~ U(1, 5), pulled back where
  the sum would overflow, weighted by a centred Gaussian vignette times (1 - alpha_t / 2), and added:
  x' = alpha_t x + vignette * r_blur.

Each poisoned image (at training and at test time) gets one reflection image of the set and its own
draws; the draws are keyed by the image's pixels (`bdprune.attacks.keyed`), so the attack stays a pure
function and a saved run re-poisons exactly. Refool's adversarial selection of the most effective
reflection images (its Algorithm 1, which needs repeated training) is not implemented: all images of the
set are used with equal probability.

Reflection images. Refool takes them from another dataset (PASCAL VOC in its code and in BackdoorBench,
about 200 images). Either pass `source="/some/dir"` (any image files, resized to the image size), or use
the default `source="dead-leaves"`: 200 seeded synthetic "dead leaves" images (occluding disks with a
power-law size distribution, the classic model of natural-image statistics). We use them by default
because the only dataset on disk is Fashion-MNIST, the victim's own distribution: its images would add a
second object of a real class, drawing them from the defender's clean reserve would hand the defender's
data to the attacker, and the test file must never feed training. Dead leaves have the occlusion edges and
scale-free structure of the natural scenes Refool reflects, need no download, and are reproduced by the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.errors import DatasetNotFoundError
from ..data.folders import IMAGE_SUFFIXES, read_images
from ..errors import InvalidInput
from ..params import param
from .base import Attack, Tensors, register_attack
from .keyed import image_keys, keyed_uniform

GAMMA = 2.2
MAX_SIGMA = 5.0
MAX_OFFSET = 8


def dead_leaves(
    count: int, shape: tuple[int, int, int], generator: torch.Generator | None, disks: int = 64
) -> torch.Tensor:
    """`count` synthetic "dead leaves" images (count, C, H, W) uint8: disks with radii ~ r^-3 stacked in order."""
    c, h, w = shape
    rmin, rmax = 1.0, max(h, w) / 2
    u = torch.rand(count, disks, generator=generator)
    radius = (rmin**-2 - u * (rmin**-2 - rmax**-2)) ** -0.5  # inverse CDF of p(r) ~ r^-3 on [rmin, rmax]
    cy = torch.rand(count, disks, generator=generator) * h
    cx = torch.rand(count, disks, generator=generator) * w
    colour = torch.rand(count, disks + 1, c, generator=generator)  # index 0 is the background
    ys = torch.arange(h, dtype=torch.float32)[None, None, :, None]
    xs = torch.arange(w, dtype=torch.float32)[None, None, None, :]
    inside = (ys - cy[..., None, None]) ** 2 + (xs - cx[..., None, None]) ** 2 <= radius[..., None, None] ** 2
    order = torch.arange(1, disks + 1)[None, :, None, None]
    top = (inside * order).amax(dim=1)  # (count, H, W): the last disk drawn covering each pixel, 0 = none
    picked = torch.gather(colour, 1, top.reshape(count, h * w, 1).expand(-1, -1, c))  # (count, H * W, C)
    return picked.permute(0, 2, 1).reshape(count, c, h, w).mul(255).round().to(torch.uint8)


def reflections_from_directory(directory: str | Path, shape: tuple[int, int, int]) -> torch.Tensor:
    """All images in `directory` (recursively), as (M, C, H, W) uint8 resized to the attack's image size."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(f"Refool: no directory {root}; pass source='dead-leaves' or a folder of images")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DatasetNotFoundError(f"Refool: no image files in {root} (suffixes {', '.join(IMAGE_SUFFIXES)})")
    return read_images(paths, "L" if shape[0] == 1 else "RGB", shape[1:])


def shift_down_right(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Each image moved by its own (dy, dx) >= 0 pixels, zeros entering from the top-left."""
    n, c, h, w = images.shape
    padded = F.pad(images, (MAX_OFFSET, 0, MAX_OFFSET, 0))  # (N, C, H + 8, W + 8)
    rows = (MAX_OFFSET - dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]  # (N, 1, H, 1)
    cols = (MAX_OFFSET - dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    chan = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image with its own Gaussian (std `sigma[i]` pixels), replicate padding; (N, C, H, W)."""
    n, c, h, w = images.shape
    radius = math.ceil(2 * MAX_SIGMA)
    t = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    k1 = torch.exp(-0.5 * (t[None, :] / sigma[:, None]) ** 2)
    k1 = k1 / k1.sum(dim=1, keepdim=True)  # (N, K)
    kernel = (k1[:, :, None] * k1[:, None, :]).repeat_interleave(c, dim=0)[:, None]  # (N * C, 1, K, K)
    padded = F.pad(images.reshape(1, n * c, h, w), (radius,) * 4, mode="replicate")
    return F.conv2d(padded, kernel, groups=n * c).reshape(n, c, h, w)


def vignette(h: int, w: int, device: torch.device) -> torch.Tensor:
    """Refool's focal-blur weight mask: a centred separable Gaussian, 1 in the middle, ~0.1 at the border."""
    ys = torch.linspace(-3, 3, h, device=device)
    xs = torch.linspace(-3, 3, w, device=device)
    return torch.exp(-(ys[:, None] ** 2) / 4) * torch.exp(-(xs[None, :] ** 2) / 4)  # (H, W)


@register_attack
@dataclass(kw_only=True, eq=False, repr=False)
class Refool(Attack):
    """Reflection trigger (ghost or focal blur) from a set of reflection images.

    Args:
        image_shape, num_classes, target, mode: as for every attack (`bdprune.attacks.Attack`).
        source: "dead-leaves" (seeded synthetic images, the default; see the module docstring) or a
            directory of image files.
        count: how many dead-leaves images to make (200, about Refool's candidate set).
        ghost_rate: probability of the ghost model (0.49 in Refool's code); the rest is focal blur.
        alpha_range: range of the transmission weight alpha_t (Refool: 1 - U(0.05, 0.45)).
        seed: keys the per-image draws; drawn from `generator` when not given.
        generator: randomness for the synthetic reflections (and the seed).
        tensors: {"reflections": (M, C, H, W) uint8} restoring a saved reflection set.

    Example:
        >>> attack = Refool((1, 28, 28), 10, generator=torch.Generator().manual_seed(0))
        >>> poisoned, labels = attack.apply(images, labels)
    """

    name = "refool"

    source: str = "dead-leaves"
    count: int = param(200, ge=1)
    ghost_rate: float = param(0.49, ge=0.0, le=1.0)
    alpha_range: tuple[float, float] = param((0.55, 0.95), gt=0.0, lt=1.0)
    seed: int | None = None

    def build(self, generator: torch.Generator | None, tensors: Tensors) -> None:
        low, high = self.alpha_range
        if low > high:
            raise InvalidInput(f"refool: alpha_range must satisfy 0 < low <= high < 1, got {list(self.alpha_range)}")
        if "reflections" in tensors:
            reflections = tensors["reflections"]
        elif self.source == "dead-leaves":
            reflections = dead_leaves(self.count, self.image_shape, generator)
        else:
            reflections = reflections_from_directory(self.source, self.image_shape)
        if reflections.dtype != torch.uint8 or tuple(reflections.shape[1:]) != self.image_shape:
            raise InvalidInput(
                f"refool: reflections must be (M, {', '.join(map(str, self.image_shape))}) uint8, "
                f"got {tuple(reflections.shape)} {reflections.dtype}"
            )
        if self.seed is None:
            self.seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        self.reflections = reflections.cpu().contiguous()

    def poison_images(self, images: torch.Tensor) -> torch.Tensor:
        _n, _, h, w = images.shape
        device = images.device
        u = keyed_uniform(image_keys(images, self.seed), 9, self.seed).to(device=device, dtype=images.dtype)  # (N, 9)
        which = (u[:, 0] * len(self.reflections)).long().clamp_(max=len(self.reflections) - 1)
        r = self.reflections.to(device)[which]  # (N, C, H, W) uint8
        r = r.to(images.dtype).div(255).pow(GAMMA)  # linear light
        t = images.pow(GAMMA)
        low, high = self.alpha_range
        alpha = (low + (high - low) * u[:, 1])[:, None, None, None]  # (N, 1, 1, 1)
        ghost = (u[:, 2] < self.ghost_rate)[:, None, None, None]

        # Ghost effect: the reflection plus a shifted copy of itself.
        dy = 3 + (u[:, 3] * 6).long().clamp_(max=5)
        dx = 3 + (u[:, 4] * 6).long().clamp_(max=5)
        g = (torch.where(u[:, 5] > 0.5, 1.0, 0.0) - (0.15 + 0.35 * u[:, 6])).abs()[:, None, None, None]
        r_ghost = g * r + (1 - g) * shift_down_right(r, dy, dx)
        ghosted = alpha * t + (1 - alpha) * r_ghost

        # Focal blur: an out-of-focus reflection, pulled back where the sum would overflow.
        r_blur = gaussian_blur(r, 1.0 + 4.0 * u[:, 7])
        over = (r_blur + t) > 1
        over_mean = ((r_blur + t) * over).sum((2, 3)) / (over.sum((2, 3)) + 1e-6)  # (N, C)
        pull = (over_mean.clamp(min=1.0) - 1) * (1.08 + 0.1 * u[:, 8:9])
        r_blur = (r_blur - pull[:, :, None, None]).clamp(0, 1)
        weight = vignette(h, w, device).to(images.dtype) * (1 - alpha / 2)  # (N, 1, H, W)
        blurred = alpha * t + weight * r_blur

        out = torch.where(ghost, ghosted, blurred)
        return out.clamp(0, 1).pow(1 / GAMMA)

    def state_dict(self) -> Tensors:
        return {"reflections": self.reflections}
