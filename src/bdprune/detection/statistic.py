"""From BNP's per-neuron KL divergences to one number per model: how far its most deviant neurons stand out.

BNP (section 4.3 of the paper) scores each neuron by KL(N(mu, sigma^2) || N(mu_bn, sigma_bn^2)) between the
Gaussian of its pre-activation on clean samples and the one its BN layer estimated on the (possibly poisoned)
training data. A backdoor neuron responds to poisoned samples, so its running statistics were pulled away
from the clean ones (Corollary 2), and its KL is far above its layer's. In a model trained without an attack
every neuron's running statistics describe clean data, and the KLs only reflect the sampling noise of the
defender's few clean samples and the drift of the statistics during training.

Per layer, a neuron's robust z is (x - median) / (1.4826 MAD) over the layer's neurons (the median and MAD
cannot be inflated by the outliers themselves). The scan takes x = log KL: KL divergences are positive and
heavy-tailed, and on the log scale a benign layer's spread is close to symmetric. Candidate model-level
statistics (all computed here, so the calibration half can choose among them):

* "max": the largest robust z of any neuron of any layer;
* "top3": the mean of the 3 largest robust z's (one noisy neuron alone does not decide);
* "count": the number of neurons whose robust z exceeds 6 (BNP's own MAD threshold, `DEFAULT_U`).

Neurons whose output is constant (a BN weight of 0, as BNP's and EP's pruning leave them, or a channel whose
clean input never varies) are left out: they carry nothing, so they cannot carry a trigger, and after a
repair the pruned neurons' KL must not count against it.
"""

from __future__ import annotations

import math

import torch

MAD_TO_STD = 1.4826
LOG_FLOOR = 1e-12  # KL below this (numerically identical Gaussians) is clamped before the log
STATISTICS = ("max", "top3", "count")
COUNT_Z = 6.0
MIN_NEURONS = 8  # a layer with fewer scored neurons has no meaningful median / MAD


def robust_z(values: torch.Tensor) -> torch.Tensor:
    """(x - median) / (1.4826 MAD) over the finite entries; NaN where x is NaN or the MAD is 0."""
    x = values.double()
    ok = torch.isfinite(x)
    out = torch.full_like(x, float("nan"))
    if int(ok.sum()) < MIN_NEURONS:
        return out
    median = x[ok].median()
    mad = MAD_TO_STD * (x[ok] - median).abs().median()
    if not mad > 0:
        return out
    out[ok] = (x[ok] - median) / mad
    return out


def layer_z(kl: torch.Tensor, live: torch.Tensor | None = None, log: bool = True) -> torch.Tensor:
    """Robust z of one layer's KL divergences (log scale by default); neurons not `live` are NaN."""
    x = kl.double().clone()
    if live is not None:
        x[~live] = float("nan")
    if log:
        x = x.clamp(min=LOG_FLOOR).log().where(torch.isfinite(x), x)
    return robust_z(x)


def summarize(z_by_layer: dict[str, torch.Tensor]) -> dict[str, float]:
    """Every candidate statistic of the model, from its layers' robust z's."""
    zs = torch.cat([z[torch.isfinite(z)] for z in z_by_layer.values()]) if z_by_layer else torch.empty(0)
    if len(zs) == 0:
        return {s: math.nan for s in STATISTICS}
    top = zs.sort(descending=True).values
    return {
        "max": float(top[0]),
        "top3": float(top[:3].mean()),
        "count": float((zs > COUNT_Z).sum()),
    }


def top_neurons(z_by_layer: dict[str, torch.Tensor], k: int) -> list[tuple[str, int, float]]:
    """The `k` neurons with the largest robust z: (layer, channel, z), largest first."""
    ranked = [
        (float(z[c]), name, c) for name, z in z_by_layer.items() for c in torch.isfinite(z).nonzero().flatten().tolist()
    ]
    ranked.sort(reverse=True)
    return [(name, c, value) for value, name, c in ranked[:k]]
