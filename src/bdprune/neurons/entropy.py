"""Differential entropy of standardised pre-activations (section 3.2, equation 1), three estimators.

EP ranks neurons by h(x / sd(x)): the entropy after scaling to unit variance. Among unit-variance
distributions the Gaussian has the largest entropy, 0.5 * log(2 * pi * e) = 1.4189 nats, and a neuron whose
benign and poisoned pre-activations form two separated modes has less (section 4.2). Scaling only shifts
entropy, h(x / s) = h(x) - log s, so each estimator works on the raw histogram and subtracts log(sd).

All three read a `StreamingHistogram` (fixed memory, whatever the number of samples):

* "histogram": the plug-in estimate -sum p_j log(p_j / w) over bins of width w standard deviations, the
  official code's estimator (it uses w = 0.01 on 500 samples, where nearly every bin holds one sample and
  the estimate measures little but the sample count). Default w: Scott's normal-reference rule
  3.49 * n^(-1/3), which balances the histogram's bias and variance.
* "vasicek": the m-spacing estimator (Vasicek 1976), mean over samples of log(n / 2m * (x_(i+m) - x_(i-m))),
  with m = round(sqrt(n)). It needs no bin width; order statistics come from the fine histogram by linear
  interpolation inside bins, which is exact to within one fine bin.
* "kde": resubstitution, -mean_i log f(x_i) (Ahmad and Lin 1976), with a Gaussian kernel of Silverman's
  bandwidth 1.06 * n^(-1/5) standard deviations, evaluated on the fine bins by FFT convolution. The sample
  itself stays in f: leaving it out makes an isolated tail sample's log-density unbounded.

A channel with fewer than two finite values or zero variance has no defined standardised entropy: NaN.
"""

from __future__ import annotations

import math

import torch

from .sketch import StreamingHistogram

GAUSSIAN_ENTROPY = 0.5 * math.log(2 * math.pi * math.e)  # h(N(0, 1)) in nats
ESTIMATORS = ("histogram", "vasicek", "kde")
_CHUNK = 256  # channels evaluated at once (bounds the (channels x points) work tensors)


def _valid(sketch: StreamingHistogram) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n, sd, ok): finite counts, population standard deviations, and which channels have an entropy."""
    n = sketch.moments.count
    sd = sketch.moments.std(correction=0)
    ok = (n >= 2) & torch.isfinite(sd) & (sd > 0) & (sd > 1e-12 * sketch.moments.mean.abs())
    return n, sd, ok


def histogram_entropy(sketch: StreamingHistogram, bin_width: float | None = None) -> torch.Tensor:
    """Plug-in histogram estimate of h(x / sd), (C,) float64.

    Args:
        sketch: the per-channel histogram.
        bin_width: bin width in standard deviations; default 3.49 * n^(-1/3) (Scott). Fine bins are merged
            in aligned groups of round(bin_width * sd / fine width), so the realised width can differ from
            the requested one by the fine width (then `log(width)` uses the realised one).
    """
    n, sd, ok = _valid(sketch)
    counts = sketch.total_counts.double()  # (C, bins)
    fine = sketch.bin_width
    width = torch.full_like(sd, bin_width) if bin_width is not None else 3.49 * n.clamp(min=1) ** (-1.0 / 3.0)
    group = torch.where(ok, (width * sd / fine).round().clamp(min=1), torch.ones_like(sd)).long()  # (C,)
    absolute = sketch.offset[:, None] + torch.arange(sketch.num_bins, device=counts.device)
    coarse = torch.div(absolute, group[:, None], rounding_mode="floor")
    coarse = coarse - coarse[:, :1]
    merged = torch.zeros(counts.shape[0], sketch.num_bins + 1, dtype=torch.float64, device=counts.device)
    merged.scatter_add_(1, coarse, counts)
    p = merged / n.clamp(min=1)[:, None]
    plogp = torch.where(p > 0, p * torch.log(p.clamp(min=1e-300)), torch.zeros_like(p)).sum(1)
    h = -plogp + torch.log(group.double() * fine) - torch.log(sd)
    return torch.where(ok, h, torch.full_like(h, float("nan")))


def _quantiles(cum: torch.Tensor, counts: torch.Tensor, left: torch.Tensor, width: torch.Tensor,
               ranks: torch.Tensor) -> torch.Tensor:
    """Interpolated order statistics: the value below which `ranks` (C, K) samples lie, per channel.

    cum (C, bins + 1) are cumulative counts at the bin edges, left (C,) the first edge, width (C,) the bin
    width; values are assumed uniform inside each bin.
    """
    idx = (torch.searchsorted(cum, ranks, right=True) - 1).clamp(0, counts.shape[1] - 1)
    below = cum.gather(1, idx)
    inside = counts.gather(1, idx).clamp(min=1e-300)
    return left[:, None] + (idx.double() + ((ranks - below) / inside).clamp(0, 1)) * width[:, None]


def vasicek_entropy(sketch: StreamingHistogram, window: int | None = None, points: int = 4096) -> torch.Tensor:
    """m-spacing estimate of h(x / sd), (C,) float64.

    Args:
        sketch: the per-channel histogram.
        window: the spacing m; default round(sqrt(n)).
        points: the mean over the n samples is taken on this many evenly spaced ranks (all n if fewer).
    """
    n, sd, ok = _valid(sketch)
    counts = sketch.total_counts.double()
    cum = torch.nn.functional.pad(counts.cumsum(1), (1, 0))  # (C, bins + 1)
    left = sketch.offset.double() * sketch.bin_width
    out = torch.full_like(sd, float("nan"))
    n_max = int(n.max().item()) if len(n) else 0
    k = max(1, min(points, n_max))
    for start in range(0, len(sd), _CHUNK):
        sl = slice(start, start + _CHUNK)
        nn_ = n[sl].clamp(min=2)[:, None]
        m = (torch.full_like(nn_, float(window)) if window is not None else nn_.sqrt().round()).clamp(min=1)
        i = (torch.arange(k, device=sd.device, dtype=torch.float64) + 0.5) / k * nn_  # sample ranks in (0, n)
        lo = (i - m).clamp(min=0.5)
        hi = (i + m).clamp(max=nn_ - 0.5)
        spacing = (_quantiles(cum[sl], counts[sl], left[sl], sketch.bin_width[sl], hi)
                   - _quantiles(cum[sl], counts[sl], left[sl], sketch.bin_width[sl], lo))
        h = torch.log(nn_ / (2 * m) * spacing.clamp(min=1e-300)).mean(1)
        out[sl] = h - torch.log(sd[sl])
    return torch.where(ok, out, torch.full_like(out, float("nan")))


def kde_entropy(sketch: StreamingHistogram, bandwidth: float | None = None) -> torch.Tensor:
    """Resubstitution Gaussian-KDE estimate of h(x / sd), (C,) float64.

    Args:
        sketch: the per-channel histogram.
        bandwidth: kernel width in standard deviations; default 1.06 * n^(-1/5) (Silverman).
    """
    n, sd, ok = _valid(sketch)
    counts = sketch.total_counts.double()
    bins = sketch.num_bins
    h_std = torch.full_like(sd, bandwidth) if bandwidth is not None else 1.06 * n.clamp(min=2) ** -0.2
    h_bins = (h_std * sd / sketch.bin_width).clamp(min=1e-6)  # bandwidth in fine bins, (C,)
    # Linear (not circular) convolution of counts with each channel's kernel, by FFT on 2x the length.
    size = 2 * bins
    lag = torch.arange(size, device=sd.device, dtype=torch.float64)
    lag = torch.where(lag < bins, lag, lag - size)  # 0, 1, ..., bins-1, -bins, ..., -1
    out = torch.full_like(sd, float("nan"))
    for start in range(0, len(sd), _CHUNK):
        sl = slice(start, start + _CHUNK)
        kernel = torch.exp(-0.5 * (lag[None, :] / h_bins[sl, None]) ** 2)  # (c, size), unnormalised
        conv = torch.fft.irfft(torch.fft.rfft(kernel, dim=1) * torch.fft.rfft(counts[sl], n=size, dim=1), n=size, dim=1)
        dens_sum = conv[:, :bins].clamp(min=1e-300)  # >= 1 in every occupied bin (the sample's own kernel)
        nn_ = n[sl].clamp(min=2)
        # density in standardised units: sum / (n * h * sqrt(2 pi)), h in sd units
        log_f = torch.log(dens_sum) - torch.log(nn_ * h_std[sl] * math.sqrt(2 * math.pi))[:, None]
        out[sl] = -(counts[sl] * log_f).sum(1) / nn_
    return torch.where(ok, out, torch.full_like(out, float("nan")))


def standardized_entropy(sketch: StreamingHistogram, estimator: str = "histogram", **options) -> torch.Tensor:
    """h(x / sd) per channel with the named estimator ("histogram", "vasicek" or "kde")."""
    if estimator == "histogram":
        return histogram_entropy(sketch, **options)
    if estimator == "vasicek":
        return vasicek_entropy(sketch, **options)
    if estimator == "kde":
        return kde_entropy(sketch, **options)
    raise ValueError(f"unknown entropy estimator {estimator!r}; choose one of {ESTIMATORS}")
