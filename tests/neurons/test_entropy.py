"""Closed-form checks of the entropy estimators and of the Gaussian KL divergence."""

import math

import pytest
import torch

from bdprune.neurons.entropy import ESTIMATORS, GAUSSIAN_ENTROPY, standardized_entropy
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
    pdf = ((1 - weight) * torch.exp(-0.5 * xs**2) + weight * torch.exp(-0.5 * (xs - distance) ** 2)) / math.sqrt(2 * math.pi)
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
    mp, vp, mq, vq = (torch.tensor(v, dtype=torch.float64) for v in ([0.0, 1.0, -2.0], [1.0, 1.0, 0.5], [0.0, 0.0, 1.0], [1.0, 4.0, 2.0]))
    got = kl_gaussian(mp, vp, mq, vq)
    assert got[0] == 0.0
    assert got[1].item() == pytest.approx(math.log(2.0) + (1.0 + 1.0) / 8.0 - 0.5)  # log(s_q/s_p), not log(v_q/v_p)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mp, vp.sqrt()), torch.distributions.Normal(mq, vq.sqrt()))
    assert torch.allclose(got, expected)
