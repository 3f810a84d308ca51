"""How well each neuron separates poisoned from benign samples: the yardstick behind "backdoor neurons".

Given per-sample pre-activation maxima counted in two groups (0 = benign, 1 = poisoned) by a
`StreamingHistogram`, two per-neuron measures are computed without keeping any sample:

* AUC: P(poisoned maximum > benign maximum) + 0.5 P(tie), the Mann-Whitney statistic, from the two
  groups' counts on the neuron's shared grid (ties inside one fine bin count one half). 1 means every
  poisoned sample drives the neuron higher than every benign one; 0.5 means no difference. Rank-based, so
  a point mass (the maxima of a plain black background, tied across thousands of images) does not fool it.
* shift: (mean poisoned - mean benign) / sd benign, the poisoned mode's distance from the benign bulk in
  benign standard deviations (from bin centres; exact to within a fine bin).

These need to know which samples are poisoned, so no defense may use them: they measure how concentrated
a backdoor is (see `bdprune.diagnostics.concentration`), and how well a defense's scores rank the truth.
"""

from __future__ import annotations

import torch

from .sketch import StreamingHistogram


def _two_groups(sketch: StreamingHistogram) -> tuple[torch.Tensor, torch.Tensor]:
    if sketch.groups != 2:
        raise ValueError(f"separation needs benign/poisoned groups (2), the histogram has {sketch.groups}")
    return sketch.counts[0].double(), sketch.counts[1].double()  # (C, bins) each


def auc(sketch: StreamingHistogram) -> torch.Tensor:
    """(C,) float64 P(poisoned > benign) + 0.5 P(tie) per neuron; NaN where a group is empty."""
    benign, poisoned = _two_groups(sketch)
    n_b, n_p = benign.sum(1), poisoned.sum(1)
    below = benign.cumsum(1) - benign  # benign counts strictly below each bin
    wins = (poisoned * (below + 0.5 * benign)).sum(1)
    out = wins / (n_b * n_p).clamp(min=1)
    return torch.where((n_b > 0) & (n_p > 0), out, torch.full_like(out, float("nan")))


def shift(sketch: StreamingHistogram) -> torch.Tensor:
    """(C,) float64 (mean poisoned - mean benign) / sd benign, from bin centres; NaN if undefined."""
    benign, poisoned = _two_groups(sketch)
    edges = sketch.edges()
    centres = 0.5 * (edges[:, 1:] + edges[:, :-1])  # (C, bins)
    n_b, n_p = benign.sum(1).clamp(min=1), poisoned.sum(1).clamp(min=1)
    mean_b = (benign * centres).sum(1) / n_b
    mean_p = (poisoned * centres).sum(1) / n_p
    var_b = (benign * (centres - mean_b[:, None]) ** 2).sum(1) / n_b
    sd_b = var_b.sqrt().clamp(min=sketch.bin_width)  # a constant benign group still has a bin's width
    out = (mean_p - mean_b) / sd_b
    ok = (benign.sum(1) > 0) & (poisoned.sum(1) > 0)
    return torch.where(ok, out, torch.full_like(out, float("nan")))
