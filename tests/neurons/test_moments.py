"""Streaming per-channel moments: exact, batching-independent, NaN-aware."""

import math

import torch

from bdprune.neurons.moments import ChannelMoments


# -- moments ---------------------------------------------------------------------------------------------
def test_moments_match_torch_and_do_not_depend_on_batching():
    x = torch.randn(64, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * 3 + 7
    whole, pieces = ChannelMoments(3), ChannelMoments(3)
    whole.update(x)
    for i in range(64):
        pieces.update(x[i : i + 1])
    expected_var, expected_mean = torch.var_mean(x.double(), dim=(0, 2, 3), correction=1)
    for m in (whole, pieces):
        assert torch.allclose(m.mean, expected_mean, atol=1e-9) and torch.allclose(
            m.variance(), expected_var, atol=1e-9
        )
        assert m.count.tolist() == [64 * 25] * 3


def test_moments_leave_out_and_count_non_finite_values():
    x = torch.ones(4, 2, 2, 2)
    x[0, 1, 0, 0] = float("nan")
    x[1, 1, 1, 1] = float("inf")
    x[2, 1] = 3.0
    m = ChannelMoments(2)
    m.update(x)
    assert m.nonfinite.tolist() == [0, 2]
    assert m.count.tolist() == [16, 14]
    assert m.mean[0] == 1.0 and math.isfinite(m.mean[1].item()) and torch.isfinite(m.variance()).all()
