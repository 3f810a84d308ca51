"""From BNP's per-neuron statistics to one number per model: how far its most deviant neurons stand out.

BNP (section 4.3 of the paper) compares, per neuron, the Gaussian of its pre-activation on clean samples,
N(mu, sigma^2), with the one its BN layer estimated on the (possibly poisoned) training data,
N(mu_bn, sigma_bn^2), by KL(N(mu, sigma^2) || N(mu_bn, sigma_bn^2)). A backdoor neuron responds to poisoned
samples, so its running statistics were pulled away from the clean ones (Corollary 2): a mixture has a larger
variance and a shifted mean. In a model trained without an attack the running statistics describe clean data,
and the divergences only reflect the sampling noise of the defender's clean samples and the drift of the
statistics while the weights moved during training (a whole layer at once: short, fast training drifts more).

Per-neuron quantities ("q"): "kl" (BNP's score), "logkl" (its log), "lvr" (log sigma_bn^2 / sigma^2, the
variance a mixture inflates). Each layer is centred at its median, which removes a layer-wide drift; the
centred values are scaled ("norm") by their layer's MAD ("layer", 1.4826 MAD: a robust z-score) or by the MAD
of all the model's centred values at once ("model": layers of 8 or 16 neurons give a MAD too noisy to divide
by). A model's score aggregates ("agg") the largest scaled values: "max", "top3" (mean of the 3 largest),
"top10". A statistic is named "q_norm_agg", e.g. "kl_model_max". The calibration half of the detection
population chose the default (`bdprune.detection.scanner.DEFAULT_STATISTIC`).

Neurons whose output is constant (a BN weight of 0, as BNP's and EP's pruning leave them, or a channel whose
clean input never varies) are left out: they carry nothing, so they cannot carry a trigger, and after a repair
the pruned neurons must not count against it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MAD_TO_STD = 1.4826
LOG_FLOOR = 1e-12  # KL below this (numerically identical Gaussians) is clamped before the log
QUANTITIES = ("kl", "logkl", "lvr")
NORMS = ("layer", "model")
AGGREGATES = {"max": 1, "top3": 3, "top10": 10}
STATISTICS = tuple(f"{q}_{n}_{a}" for q in QUANTITIES for n in NORMS for a in AGGREGATES)
MIN_NEURONS = 8  # a layer with fewer scored neurons has no meaningful median


@dataclass
class LayerValues:
    """One layer's per-neuron quantities (NaN where a neuron is not live)."""

    kl: torch.Tensor
    logkl: torch.Tensor
    lvr: torch.Tensor
    live: torch.Tensor


def layer_values(
    kl: torch.Tensor, clean_var: torch.Tensor, running_var: torch.Tensor, live: torch.Tensor
) -> LayerValues:
    """The quantities of one layer from BNP's KL and the two variances (both including the BN's eps)."""
    nan = torch.tensor(math.nan, dtype=torch.float64)
    kl = kl.double().where(live, nan)
    return LayerValues(
        kl=kl,
        logkl=kl.clamp(min=LOG_FLOOR).log().where(torch.isfinite(kl), nan),
        lvr=(running_var.double() / clean_var.double()).log().where(live, nan),
        live=live,
    )


def _mad(x: torch.Tensor) -> float:
    x = x[torch.isfinite(x)]
    return float(MAD_TO_STD * (x - x.median()).abs().median()) if len(x) >= 2 else math.nan


def robust_z(values: torch.Tensor) -> torch.Tensor:
    """(x - median) / (1.4826 MAD) over the finite entries; NaN where x is NaN, the layer has fewer than
    `MIN_NEURONS` finite values, or the MAD is 0."""
    x = values.double()
    ok = torch.isfinite(x)
    out = torch.full_like(x, math.nan)
    if int(ok.sum()) < MIN_NEURONS:
        return out
    scale = _mad(x)
    if not scale > 0:
        return out
    out[ok] = (x[ok] - x[ok].median()) / scale
    return out


def scaled(layers: dict[str, LayerValues], q: str, norm: str) -> dict[str, torch.Tensor]:
    """Per layer, quantity `q` centred at the layer's median and divided by the layer's or the model's MAD."""
    centred = {}
    for name, values in layers.items():
        x = getattr(values, q)
        ok = torch.isfinite(x)
        if int(ok.sum()) >= MIN_NEURONS:
            centred[name] = x - x[ok].median()
    if norm == "layer":
        return {name: robust_z(c) for name, c in centred.items()}
    scale = _mad(torch.cat(list(centred.values()))) if centred else math.nan
    return {name: c / scale if scale > 0 else c * math.nan for name, c in centred.items()}


def summarize(layers: dict[str, LayerValues]) -> dict[str, float]:
    """Every candidate statistic (`STATISTICS`) of the model."""
    out = {}
    for q in QUANTITIES:
        for norm in NORMS:
            z = scaled(layers, q, norm)
            values = torch.cat(list(z.values())) if z else torch.empty(0)
            values = values[torch.isfinite(values)].sort(descending=True).values
            for agg, k in AGGREGATES.items():
                out[f"{q}_{norm}_{agg}"] = float(values[:k].mean()) if len(values) else math.nan
    return out


def top_neurons(z_by_layer: dict[str, torch.Tensor], k: int) -> list[tuple[str, int, float]]:
    """The `k` neurons with the largest scaled values: (layer, channel, value), largest first."""
    ranked = [
        (float(z[c]), name, c) for name, z in z_by_layer.items() for c in torch.isfinite(z).nonzero().flatten().tolist()
    ]
    ranked.sort(reverse=True)
    return [(name, c, value) for value, name, c in ranked[:k]]
