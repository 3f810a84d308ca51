"""Out-of-distribution corruptions of appendix E (Table 6): low-quality data handed to the defender.

The paper distorts 10% of the defender's data with four augmentations: colour jitter with a 90-degree
rotation (CJ, torchvision's ColorJitter(0.5, 0.5, 0.5, 0.5)), coarse salt and pepper (SAP: 30% of the
pixels, in blocks of 1% to 10% of the image size), polar warping (PW: a translation of +-0.2 in polar
coordinates) and snowflakes (Snow: flake size 0.2 to 0.5, speed 0.01 to 0.05), the last three from imgaug.
They are written here as batched pure functions of a (N, C, H, W) batch in [0, 1] (uint8 or float; the
dtype and device are kept, the input never modified) with an explicit generator. CJ and SAP follow their
definitions; PW and Snow are our approximations of imgaug's (same parameters, simpler rendering: a polar
shift by `grid_sample`, and streaks of motion-blurred white dots). On one-channel images the saturation and
hue of CJ do nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..errors import UnknownName
from .imageset import ImageSet, like_input, to_float


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def color_jitter_rotate(images: torch.Tensor, generator: torch.Generator, strength: float = 0.5) -> torch.Tensor:
    """CJ: brightness, contrast, saturation factors in [1 - s, 1 + s], hue shifted by up to s turns (on the
    YIQ chroma plane), then a rotation by 90 degrees."""
    x = to_float(images)
    n = len(x)
    view = (n, 1, 1, 1)
    x = x * _uniform(n, 1 - strength, 1 + strength, generator).view(view).to(x.device)
    gray = x.mean(1, keepdim=True) if x.shape[1] == 1 else (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    mean = gray.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * _uniform(n, 1 - strength, 1 + strength, generator).view(view).to(x.device) + mean
    saturation = _uniform(n, 1 - strength, 1 + strength, generator).view(view).to(x.device)
    hue = _uniform(n, -strength, strength, generator).to(x.device) * 2 * math.pi
    if x.shape[1] == 3:
        gray = 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
        x = gray + (x - gray) * saturation
        yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=x.device)
        y = torch.einsum("ij,njhw->nihw", yiq, x)  # (N, 3, H, W) in YIQ
        cos, sin = hue.cos().view(n, 1, 1), hue.sin().view(n, 1, 1)
        i, q = y[:, 1] * cos - y[:, 2] * sin, y[:, 1] * sin + y[:, 2] * cos
        x = torch.einsum("ij,njhw->nihw", torch.linalg.inv(yiq), torch.stack([y[:, 0], i, q], 1))
    x = x.clamp(0, 1).rot90(1 if x.shape[2] == x.shape[3] else 2, dims=(2, 3))  # 180 degrees keeps a non-square shape
    return like_input(x, images)


def coarse_salt_and_pepper(
    images: torch.Tensor, generator: torch.Generator, p: float = 0.3, size: tuple[float, float] = (0.01, 0.1)
) -> torch.Tensor:
    """SAP: a fraction `p` of the image replaced by salt (1) or pepper (0), drawn on a coarse grid of
    `size` (a fraction of the image side, per image, at least 3 x 3) and scaled up (imgaug's CoarseSaltAndPepper)."""
    x = to_float(images).clone()
    n, c, h, w = x.shape
    for i, fraction in enumerate(_uniform(n, *size, generator).tolist()):
        gh, gw = max(3, round(h * fraction)), max(3, round(w * fraction))  # imgaug's min_size 3
        hit = (torch.rand(1, 1, gh, gw, generator=generator) < p).float()
        salt = (torch.rand(1, 1, gh, gw, generator=generator) < 0.5).float()
        hit = F.interpolate(hit, size=(h, w), mode="nearest")[0].to(x.device)  # (1, H, W)
        salt = F.interpolate(salt, size=(h, w), mode="nearest")[0].to(x.device)
        x[i] = torch.where(hit.bool(), salt.expand(c, h, w), x[i])
    return like_input(x, images)


def polar_warp(images: torch.Tensor, generator: torch.Generator, translate: float = 0.2) -> torch.Tensor:
    """PW: translate the image in polar coordinates (radius and angle) by up to `translate` of their range,
    then map back (imgaug's WithPolarWarping(Affine(translate_percent=...)))."""
    x = to_float(images)
    n, _, h, w = x.shape
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    radius, angle = (xs**2 + ys**2).sqrt(), torch.atan2(ys, xs)  # (H, W) each
    max_radius = math.sqrt(2.0)
    dr = _uniform(n, -translate, translate, generator).view(n, 1, 1) * max_radius
    da = _uniform(n, -translate, translate, generator).view(n, 1, 1) * 2 * math.pi
    r, a = (radius - dr).clamp(min=0), angle - da  # (N, H, W): where each output pixel reads from
    grid = torch.stack([r * a.cos(), r * a.sin()], -1).to(x.device)  # (N, H, W, 2) as (x, y) in [-1, 1]
    return like_input(F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True), images)


def snowflakes(
    images: torch.Tensor,
    generator: torch.Generator,
    flake_size: tuple[float, float] = (0.2, 0.5),
    speed: tuple[float, float] = (0.01, 0.05),
    density: tuple[float, float] = (0.005, 0.075),
) -> torch.Tensor:
    """Snow: white flakes (dots blurred by `flake_size`) smeared along a random direction by `speed`
    (a fraction of the image side), screened over the image; an approximation of imgaug's Snowflakes.
    Each image gets its own kernels, applied to the whole batch at once as a grouped convolution."""
    x = to_float(images)
    n, _, h, w = x.shape
    dots = (torch.rand(n, h, w, generator=generator) < _uniform(n, *density, generator).view(n, 1, 1)).float()
    sigma = (0.5 + 2.0 * _uniform(n, *flake_size, generator)).view(n, 1, 1)  # (N, 1, 1) pixels
    radius = math.ceil(2 * (0.5 + 2.0 * flake_size[1]))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    blob = torch.exp(-(t[:, None] ** 2 + t[None] ** 2) / (2 * sigma**2))  # (N, K, K)
    lengths = (_uniform(n, *speed, generator) * max(h, w) * 4).round().clamp(min=1)  # (N,) pixels each side
    direction = _uniform(n, 0.0, math.pi, generator)
    reach = int(lengths.max())
    streak = torch.zeros(n, 2 * reach + 1, 2 * reach + 1)
    rows = torch.arange(n)
    for step in range(-reach, reach + 1):
        on = (step <= lengths) & (-step <= lengths)
        dy = (reach + (step * direction.sin()).round()).long()
        dx = (reach + (step * direction.cos()).round()).long()
        streak[rows[on], dy[on], dx[on]] = 1.0
    streak = streak / streak.sum((1, 2), keepdim=True)
    layer = F.conv2d(dots[None], blob[:, None], padding=radius, groups=n)  # (1, N, H, W)
    layer = F.conv2d(layer, streak[:, None], padding=reach, groups=n)[0]  # (N, H, W)
    layer = (layer / layer.amax((1, 2), keepdim=True).clamp(min=1e-6)).clamp(0, 1)[:, None].to(x.device)
    return like_input(1 - (1 - x) * (1 - layer), images)  # screen blend: flakes only brighten


CORRUPTIONS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "cj": color_jitter_rotate,
    "sap": coarse_salt_and_pepper,
    "pw": polar_warp,
    "snow": snowflakes,
}


def corrupt_fraction(data: ImageSet, name: str, fraction: float, generator: torch.Generator) -> ImageSet:
    """`data` with a random `fraction` of its images replaced by their corrupted versions (labels kept)."""
    if name not in CORRUPTIONS:
        raise UnknownName(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    count = round(fraction * len(data))
    positions = torch.randperm(len(data), generator=generator)[:count]
    images = data.images.clone()
    if count:
        images[positions] = CORRUPTIONS[name](data.images[positions], generator)
    return data.with_samples(images, data.labels.clone(), name=f"{data.name}+{name}")
