"""Closed-form checks of the entropy estimators and of the Gaussian KL divergence."""

import math

import numpy as np
import pytest
import torch

from bdprune.errors import InvalidInput
from bdprune.neurons.entropy import ESTIMATORS, GAUSSIAN_ENTROPY, exact_entropy, histogram_entropy, standardized_entropy
from bdprune.neurons.gaussian import kl_gaussian
from bdprune.neurons.sketch import StreamingHistogram


def sketch_of(values: torch.Tensor, bins: int = 2048) -> StreamingHistogram:
    s = StreamingHistogram(values.shape[1], bins)
    s.update(values)
    return s


# -- entropy ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_entropy_of_a_standard_normal_is_half_log_two_pi_e(estimator):
    x = torch.randn(40000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x * torch.tensor([1.0, 10.0, 0.01]) + torch.tensor([0.0, -5.0, 100.0])  # scale and shift do not matter
    h = standardized_entropy(sketch_of(x), estimator)
    assert torch.allclose(h, torch.full_like(h, GAUSSIAN_ENTROPY), atol=0.02), h


def mixture_entropy(weight: float, distance: float) -> float:
    """Numerical h(X / sd(X)) of (1 - w) N(0, 1) + w N(d, 1)."""
    xs = torch.linspace(-12, distance + 12, 400001, dtype=torch.float64)
    pdf = ((1 - weight) * torch.exp(-0.5 * xs**2) + weight * torch.exp(-0.5 * (xs - distance) ** 2)) / math.sqrt(
        2 * math.pi
    )
    h = -torch.trapezoid(pdf * torch.log(pdf.clamp(min=1e-300)), xs).item()
    return h - 0.5 * math.log(1 + weight * (1 - weight) * distance**2)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_entropy_of_a_two_gaussian_mixture_is_lower_and_matches_the_integral(estimator):
    g = torch.Generator().manual_seed(2)
    n = 40000
    poisoned = (torch.rand(n, generator=g) < 0.1).double()
    x = torch.randn(n, 2, generator=g, dtype=torch.float64) + poisoned[:, None] * torch.tensor([3.0, 10.0])
    h = standardized_entropy(sketch_of(x), estimator)
    expected = torch.tensor([mixture_entropy(0.1, 3.0), mixture_entropy(0.1, 10.0)], dtype=torch.float64)
    assert (h < GAUSSIAN_ENTROPY - 0.05).all() and h[1] < h[0]
    assert torch.allclose(h, expected, atol=0.05), (h, expected)


def test_degenerate_channels_have_no_entropy():
    x = torch.zeros(100, 2, dtype=torch.float64)
    x[:, 1] = torch.randn(100, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for estimator in ESTIMATORS:
        h = standardized_entropy(sketch_of(x), estimator)
        assert math.isnan(h[0]) and math.isfinite(h[1])


# -- KL --------------------------------------------------------------------------------------------------
def test_kl_of_two_gaussians():
    mp, vp, mq, vq = (
        torch.tensor(v, dtype=torch.float64)
        for v in ([0.0, 1.0, -2.0], [1.0, 1.0, 0.5], [0.0, 0.0, 1.0], [1.0, 4.0, 2.0])
    )
    got = kl_gaussian(mp, vp, mq, vq)
    assert got[0] == 0.0
    assert got[1].item() == pytest.approx(math.log(2.0) + (1.0 + 1.0) / 8.0 - 0.5)  # log(s_q/s_p), not log(v_q/v_p)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mp, vp.sqrt()), torch.distributions.Normal(mq, vq.sqrt())
    )
    assert torch.allclose(got, expected)


# -- bin widths (issue 13, item 8) ----------------------------------------------------------------------------
def two_modes(n: int = 500, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    poisoned = (torch.arange(n) % 10 == 0).double()
    return torch.randn(n, generator=g, dtype=torch.float64) + 6 * poisoned


@pytest.mark.parametrize("bin_width", [0.01, 0.02])
def test_the_score_does_not_follow_where_the_fine_grid_falls(bin_width):
    """60 copies of one neuron at scales 0.1 to 10: scaling moves the fine power-of-two grid against the
    standard deviation. Merging whole fine bins realised 0.8x to 1.2x the requested width here, and the
    score followed it (Pearson 0.96 with the log of the realised ratio at width 0.01); bins of the
    requested width leave the copies' scores alike and uncorrelated with it."""
    x = two_modes()
    scales = torch.exp(torch.linspace(-2.3, 2.3, 60, dtype=torch.float64))
    sketch = sketch_of(x[:, None] * scales)
    h = histogram_entropy(sketch, bin_width=bin_width)
    sd = sketch.moments.std(correction=0)
    merged = (bin_width * sd / sketch.bin_width).round().clamp(min=1) * sketch.bin_width / (bin_width * sd)
    assert float(merged.max() / merged.min()) > 1.15, "the copies do cover misaligned grids"
    assert abs(float(torch.corrcoef(torch.stack([h, merged.log()]))[0, 1])) < 0.4
    assert float(h.max() - h.min()) < 0.07, h


def test_a_width_finer_than_the_histogram_resolves_is_refused_with_the_smallest_possible():
    x = two_modes()
    x[0] = 400.0  # one far outlier: the neuron's range is ~40 standard deviations
    with pytest.raises(InvalidInput, match=r"the smallest width honoured for every neuron is 0\.0\d+.*raise num_bins"):
        histogram_entropy(sketch_of(x[:, None]), bin_width=0.01)
    assert torch.isfinite(histogram_entropy(sketch_of(x[:, None], bins=8192), bin_width=0.01)).all()


def authors_loop(values: np.ndarray, width: float = 0.01) -> np.ndarray:
    """The official estimator written out plainly: standardise each column (sample sd), lay bins of `width` from
    the layer's smallest value, count each open interval in a Python loop, sum -p log p."""
    z = (values - values.mean(0)) / values.std(0, ddof=1)
    lo, hi = z.min(), z.max()
    h = np.zeros(z.shape[1])
    for k in range(int((hi - lo) / width)):
        p = ((z > lo + k * width) & (z < lo + (k + 1) * width)).sum(0) / z.shape[0]
        h += np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return h


def test_the_exact_estimator_is_the_authors_loop_over_bins():
    g = np.random.default_rng(3)
    values = np.stack(
        [
            g.normal(size=500),
            g.normal(size=500) + 5 * (np.arange(500) % 10 == 0),
            np.round(g.normal(size=500) * 4) / 4,  # ties, some on bin edges
            g.exponential(size=500) * 30,
            g.normal(size=500) * 1e-3 + 7,
        ],
        axis=1,
    )
    expected = authors_loop(values)
    got = exact_entropy(torch.from_numpy(values))
    assert np.allclose(got.numpy(), expected, rtol=0, atol=1e-12), (got, expected)
    assert np.allclose(exact_entropy(torch.from_numpy(values), 0.05).numpy(), authors_loop(values, 0.05), atol=1e-12)
    with_dead = torch.from_numpy(np.concatenate([values, np.full((500, 1), 2.0)], axis=1))
    got_dead = exact_entropy(with_dead)
    assert math.isnan(got_dead[-1]) and torch.allclose(got_dead[:-1], got, atol=0, rtol=0), "a dead neuron is left out"
