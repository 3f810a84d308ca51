"""Per-image randomness without a generator: random draws keyed by the image's own pixels.

Some triggers are random per image: Refool picks a reflection image and a blend per poisoned sample, and
WaNet's noise-mode samples each get their own random warp. `Attack.apply` is a pure batched function with
no generator argument, and a saved run is rebuilt by re-applying the loaded attack to the recorded
positions, so those draws must be a function of (attack seed, image) alone. They are here: an image's
8-bit levels are hashed with seeded random integer weights (a universal hash), and each key is spread into
as many uniform numbers as needed with a multiplicative hash. All arithmetic is exact (float64 sums of
integers below 2^53, int64 products below 2^62), so the draws are the same on every device and torch version.
"""

from __future__ import annotations

import torch

PRIME = 2_147_483_647  # 2^31 - 1
EXACT = 2**53  # float64 represents every integer below this exactly


def _weights(count: int, modulus: int, seed: int, salt: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 7919 + salt)
    return torch.randint(1, modulus, (count,), generator=g, dtype=torch.int64)


def image_keys(images: torch.Tensor, seed: int) -> torch.Tensor:
    """One integer key in [0, 2^31 - 1) per image, a hash of its 8-bit levels and `seed`.

    Args:
        images: (N, C, H, W) float in [0, 1] (or uint8).
        seed: the attack's seed; other seeds give unrelated keys.

    Returns:
        (N,) int64 on the images' device.
    """
    flat = images.reshape(len(images), -1)  # (N, D)
    levels = flat.double() if flat.dtype == torch.uint8 else flat.double().mul(255.0).round()
    d = flat.shape[1]
    modulus = min(PRIME, EXACT // (255 * max(d, 1)))  # keep every partial sum below 2^53: exact on any device
    weights = _weights(d, modulus, seed, 1).to(device=images.device, dtype=torch.float64)
    return torch.remainder(levels @ weights, modulus).long()  # (N,)


def keyed_uniform(keys: torch.Tensor, count: int, seed: int, salt: int = 0) -> torch.Tensor:
    """(N, count) float32 numbers in [0, 1), a deterministic function of each key, `seed` and `salt`.

    Different salts give independent-looking streams for different uses (which reflection, which blend).
    """
    a = _weights(count, PRIME, seed, 2 + 2 * salt).to(keys.device)
    b = _weights(count, PRIME, seed, 3 + 2 * salt).to(keys.device)
    mixed = torch.remainder(keys[:, None] * a[None, :] + b[None, :], PRIME)  # (N, count); products < 2^62
    mixed = torch.remainder(mixed * 48271 + (mixed >> 7), PRIME)  # a second round breaks the linearity in the key
    return (mixed.double() / PRIME).float()
