"""Closed-form KL divergence between Gaussians, BNP's score (section 4.3, equation 4)."""

from __future__ import annotations

import torch


def kl_gaussian(mean_p: torch.Tensor, var_p: torch.Tensor, mean_q: torch.Tensor, var_q: torch.Tensor) -> torch.Tensor:
    """KL(N(mean_p, var_p) || N(mean_q, var_q)), elementwise.

    = log(s_q / s_p) + (var_p + (mean_p - mean_q)^2) / (2 var_q) - 1/2, with s the standard deviations.
    The first term is the log of the standard-deviation ratio, i.e. 0.5 * log(var_q / var_p); using the
    variance ratio instead (as BackdoorBench's BNP does) doubles it and changes the ranking.
    """
    return 0.5 * torch.log(var_q / var_p) + (var_p + (mean_p - mean_q) ** 2) / (2 * var_q) - 0.5
