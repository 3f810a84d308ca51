"""Streaming per-channel mean and variance in float64 (Chan, Golub and LeVeque's pairwise update).

Batches are reduced to (count, mean, M2) per channel and merged; nothing grows with the number of
samples, and the result does not depend on how the data was cut into batches (up to float rounding).
Non-finite values are left out and counted, so one NaN cannot turn a channel's statistics into NaN
silently: the caller sees how many values were dropped.
"""

from __future__ import annotations

import torch


class ChannelMoments:
    """Running count, mean and sum of squared deviations (M2) of each channel.

    Args:
        channels: number of channels C.
        device: where the running sums live (the data's device).
    """

    def __init__(self, channels: int, device: torch.device | str = "cpu") -> None:
        self.count = torch.zeros(channels, dtype=torch.float64, device=device)
        self.mean = torch.zeros(channels, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(channels, dtype=torch.float64, device=device)
        self.nonfinite = torch.zeros(channels, dtype=torch.int64, device=device)

    def update(self, x: torch.Tensor, channel_dim: int = 1) -> None:
        """Add every value of `x`, grouped by the channel axis `channel_dim` (e.g. (N, C, H, W) or (N, C))."""
        dims = tuple(d for d in range(x.ndim) if d != channel_dim % x.ndim)
        count = x.numel() // max(x.shape[channel_dim], 1)
        # Fast path, no copy of x: torch's var_mean reduces the batch accurately in its own dtype and the
        # result is merged in float64. A NaN or inf anywhere makes the batch statistics non-finite.
        var, mean = torch.var_mean(x, dim=dims, correction=0)
        if bool(torch.isfinite(var).all() and torch.isfinite(mean).all()):
            n = torch.full_like(self.count, count)
            self.merge(n, mean.double(), var.double() * n)
            return
        flat = x.movedim(channel_dim, 0).reshape(x.shape[channel_dim], -1).double()  # (C, values)
        finite = torch.isfinite(flat)
        self.nonfinite += (~finite).sum(1)
        n = finite.sum(1).double()
        xd = torch.where(finite, flat, 0.0)
        mean = xd.sum(1) / n.clamp(min=1)
        m2 = torch.where(finite, (xd - mean[:, None]) ** 2, 0.0).sum(1)
        self.merge(n, mean, m2)

    def merge(self, n: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor) -> None:
        """Merge the (count, mean, M2) of another group of values into the running ones."""
        total = self.count + n
        safe = total.clamp(min=1)
        delta = mean - self.mean
        self.mean = torch.where(total > 0, self.mean + delta * n / safe, self.mean)
        self.m2 = self.m2 + m2 + delta**2 * self.count * n / safe
        self.count = total

    def variance(self, correction: int = 1) -> torch.Tensor:
        """Per-channel variance; NaN where fewer than `correction + 1` values were seen."""
        denom = self.count - correction
        return torch.where(denom > 0, self.m2 / denom.clamp(min=1), torch.full_like(self.m2, float("nan")))

    def std(self, correction: int = 1) -> torch.Tensor:
        return self.variance(correction).sqrt()
