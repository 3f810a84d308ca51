"""A per-channel streaming histogram on a power-of-two grid: EP's memory that does not grow with N.

EP needs the distribution of each neuron's per-sample pre-activation maximum over the whole (possibly
poisoned) training set. Keeping every value costs N x (neurons) floats: 57,000 samples x 2,400 neurons of a
width-32 ResNet-18 is 550 MB, and the official code avoids it only by looking at one batch. Instead each
channel keeps `num_bins` counts over a grid whose bin width is a power of two, 2**e, aligned to multiples
of 2**e. When new values fall outside the covered range the width doubles as often as needed and
neighbouring bins merge exactly, so the final histogram depends only on the multiset of values seen (on
their min and max), not on the batch size or order.

Resolution: with the default 2,048 bins, a channel whose values span R standard deviations gets bins of
R/2048 to 2R/2048 standard deviations; for R = 40 (a backdoor neuron whose poisoned mode sits far out)
that is under 0.04 standard deviations. The estimators in `bdprune.neurons.entropy` read the histogram
with the exact float64 mean and variance that are tracked alongside.

Memory: groups x channels x num_bins int64 counts (2 x 2,400 x 2,048 x 8 B = 79 MB for a width-32
ResNet-18 with benign/poisoned groups), fixed whatever the number of samples.
"""

from __future__ import annotations

import torch

from ..errors import InvalidInput
from .moments import ChannelMoments

_MAX_SHIFT = 62  # floor(a / 2**s) for |a| < 2**62 is 0 or -1 once s >= 62
_RELATIVE_FLOOR = 42  # bins are never finer than 2**-42 of the largest magnitude seen


class StreamingHistogram:
    """Histograms of C channels, updated with (B, C) batches of values.

    Args:
        channels: number of channels C.
        num_bins: bins per channel (and per group).
        groups: number of sample groups counted separately (e.g. 2 for benign/poisoned when known, for
            plots); estimators use the sum over groups.
        device: where counts live.

    Attributes:
        counts: (groups, C, num_bins) int64.
        exponent: (C,) int64; bin width is 2**exponent.
        offset: (C,) int64; bin j of channel c covers [(offset + j) * w, (offset + j + 1) * w).
        lo, hi: (C,) float64 exact min and max of the finite values seen.
        moments: exact float64 count, mean and M2 of the finite values.
    """

    def __init__(self, channels: int, num_bins: int = 2048, groups: int = 1, device: torch.device | str = "cpu"):
        if num_bins < 16 or num_bins % 2:
            raise InvalidInput(f"num_bins must be an even number >= 16, got {num_bins}")
        self.channels, self.num_bins, self.groups = channels, num_bins, groups
        self.counts = torch.zeros(groups, channels, num_bins, dtype=torch.int64, device=device)
        self.exponent = torch.zeros(channels, dtype=torch.int64, device=device)
        self.offset = torch.zeros(channels, dtype=torch.int64, device=device)
        self.lo = torch.full((channels,), float("inf"), dtype=torch.float64, device=device)
        self.hi = torch.full((channels,), float("-inf"), dtype=torch.float64, device=device)
        self.moments = ChannelMoments(channels, device)

    # -- the grid --------------------------------------------------------------------------------------
    def _exponent_for(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """The smallest e >= floor(log2 max|x|) - 42 with floor(hi / 2**e) - floor(lo / 2**e) < num_bins."""
        magnitude = torch.maximum(lo.abs(), hi.abs())
        floor_e = torch.where(
            magnitude > 0,
            torch.frexp(magnitude).exponent.to(torch.int64) - _RELATIVE_FLOOR,
            torch.full_like(self.exponent, -100),
        )
        span = (hi - lo).clamp(min=0)
        guess = torch.where(span > 0, torch.log2(span / (self.num_bins - 2)).ceil().to(torch.int64) - 1, floor_e)
        e = torch.maximum(guess, floor_e)
        while True:  # at most a couple of rounds: the guess is within one doubling
            width = torch.ldexp(torch.ones_like(lo), -e)  # 2**-e, exact
            fits = (torch.floor(hi * width) - torch.floor(lo * width)) <= self.num_bins - 1
            if bool(fits.all()):
                return e
            e = torch.where(fits, e, e + 1)

    def _rebin(self, rows: torch.Tensor, exponent: torch.Tensor, offset: torch.Tensor) -> None:
        """Move the counts of channels `rows` onto the coarser grid (exponent, offset)."""
        shift = (exponent - self.exponent[rows]).clamp(0, _MAX_SHIFT)
        absolute = self.offset[rows, None] + torch.arange(self.num_bins, device=rows.device)  # (R, bins)
        target = (absolute >> shift[:, None]) - offset[:, None]
        target = target.clamp(0, self.num_bins - 1)  # exact by construction; the clamp only guards
        old = self.counts[:, rows]  # (G, R, bins)
        new = torch.zeros_like(old).scatter_add_(2, target.expand_as(old), old)
        self.counts[:, rows] = new
        self.exponent[rows] = exponent
        self.offset[rows] = offset

    # -- updates -----------------------------------------------------------------------------------------
    def update(self, values: torch.Tensor, group: torch.Tensor | None = None) -> None:
        """Add a batch of values (B, C); `group` (B,) int64 in [0, groups) labels the samples."""
        if values.ndim != 2 or values.shape[1] != self.channels:
            raise ValueError(f"expected values of shape (B, {self.channels}), got {tuple(values.shape)}")
        v = values.detach().double()
        self.moments.update(v, channel_dim=1)
        finite = torch.isfinite(v)
        all_finite = bool(finite.all())  # the common case skips every mask below
        if all_finite:
            lo, hi = torch.minimum(self.lo, v.amin(0)), torch.maximum(self.hi, v.amax(0))
        else:
            if not bool(finite.any()):
                return
            big = torch.finfo(torch.float64).max
            lo = torch.minimum(self.lo, torch.where(finite, v, big).amin(0))
            hi = torch.maximum(self.hi, torch.where(finite, v, -big).amax(0))
        # The grid only moves when some channel's range grew; after the first batches it rarely does.
        if not bool(torch.equal(lo, self.lo) and torch.equal(hi, self.hi)):
            self._regrid(lo, hi)

        scale = torch.ldexp(torch.ones_like(lo), -self.exponent)  # 1 / bin width, exact
        x = v if all_finite else torch.where(finite, v, 0.0)
        index = (torch.floor(x * scale) - self.offset).clamp_(0, self.num_bins - 1).long()  # (B, C)
        base = torch.arange(self.channels, device=v.device) * self.num_bins  # (C,)
        if group is not None:
            base = base + group.to(v.device).long()[:, None] * (self.channels * self.num_bins)  # (B, C)
        flat = index + base
        if not all_finite:
            flat = flat[finite]
        self.counts.view(-1).index_add_(0, flat.flatten(), torch.ones(flat.numel(), dtype=torch.int64, device=v.device))

    def _regrid(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Move to the grid that covers the new ranges [lo, hi], merging the counts already held."""
        seen = torch.isfinite(lo)
        exponent = torch.where(
            seen, self._exponent_for(torch.where(seen, lo, 0.0), torch.where(seen, hi, 0.0)), self.exponent
        )
        start = torch.floor(torch.where(seen, lo, 0.0) * torch.ldexp(torch.ones_like(lo), -exponent))
        offset = torch.where(seen, start.to(torch.int64), self.offset)
        had_data = torch.isfinite(self.lo)
        moved = had_data & ((exponent != self.exponent) | (offset != self.offset))
        if bool(moved.any()):
            rows = moved.nonzero().flatten()
            self._rebin(rows, exponent[rows], offset[rows])
        self.exponent, self.offset, self.lo, self.hi = exponent, offset, lo, hi

    # -- reading -----------------------------------------------------------------------------------------
    @property
    def total_counts(self) -> torch.Tensor:
        """(C, num_bins) counts summed over groups."""
        return self.counts.sum(0)

    @property
    def bin_width(self) -> torch.Tensor:
        """(C,) float64 bin widths."""
        return torch.ldexp(torch.ones_like(self.lo), self.exponent)

    def edges(self) -> torch.Tensor:
        """(C, num_bins + 1) float64 bin edges."""
        steps = torch.arange(self.num_bins + 1, device=self.offset.device, dtype=torch.float64)
        return (self.offset[:, None].double() + steps) * self.bin_width[:, None]

    @property
    def nonfinite(self) -> torch.Tensor:
        """(C,) number of values left out because they were NaN or infinite."""
        return self.moments.nonfinite

    def coarse(self, channel: int, max_bins: int = 80) -> tuple[list[float], list[list[float]]]:
        """A plotting-sized histogram of one channel: (edges, counts per group) over its occupied range."""
        counts = self.counts[:, channel].double()  # (groups, bins)
        occupied = counts.sum(0).nonzero().flatten()
        if len(occupied) == 0:
            return [], [[] for _ in range(self.groups)]
        first, last = int(occupied.min()), int(occupied.max()) + 1
        step = -(-(last - first) // max_bins)  # fine bins per plotted bin (ceil division)
        n_coarse = -(-(last - first) // step)
        window = torch.nn.functional.pad(counts[:, first:last], (0, n_coarse * step - (last - first)))
        coarse = window.reshape(self.groups, n_coarse, step).sum(-1)  # (groups, n_coarse)
        width = float(self.bin_width[channel]) * step
        left = float(self.edges()[channel, first])
        return [left + i * width for i in range(n_coarse + 1)], coarse.tolist()
