"""Per-layer outlier rules that turn neuron scores into the set of neurons to prune (section 4.4).

* "zscore" (the paper's rule): a layer's threshold is mean - u * std (EP, low scores are suspicious) or
  mean + u * std (BNP, high scores), with the population std over the layer's neurons.
* "mad": the same with the median and 1.4826 * the median absolute deviation, which the suspicious
  neurons themselves cannot inflate.
* "iterative": the paper's z-score rule applied again to the neurons not yet selected, until none falls
  beyond u (a sequential outlier test, like repeated Grubbs tests): the first outliers no longer inflate
  the standard deviation that hides the next ones.
* "count": the `count` neurons with the most extreme z-scores across all layers.

Why a robust rule matters: for n scores, no z-score can exceed sqrt(n - 1) (Samuelson's inequality), and
with k equal outliers among n the outliers' z-score is sqrt((n - k) / k). A 16-channel layer holding two
backdoor neurons therefore tops out at z = 2.65: at u = 3 the paper's rule cannot prune them, however far
out they are. Such layers are reported, never silently passed over. Scores that are NaN (degenerate or
non-finite channels) are left out of every statistic and are never selected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

RULES = ("zscore", "mad", "iterative", "count")
MAD_TO_STD = 1.4826  # MAD of a normal distribution times this is its standard deviation


@dataclass
class LayerDecision:
    """The outcome of a rule on one layer's scores.

    Attributes:
        center, scale: the statistics of the rule (mean/std or median/scaled MAD); None if undefined.
        threshold: the score beyond which neurons are pruned; None if no threshold could be set.
        selected: indices of the pruned neurons.
        z: (C,) standardised scores (NaN where the score is NaN).
        note: why nothing could be selected, or other caveats; None if none.
    """

    center: float | None
    scale: float | None
    threshold: float | None
    selected: list[int]
    z: torch.Tensor
    note: str | None = None


def _stats(scores: torch.Tensor, rule: str) -> tuple[float, float]:
    if rule == "mad":
        median = scores.median()
        return median.item(), MAD_TO_STD * (scores - median).abs().median().item()
    return scores.mean().item(), scores.std(correction=0).item()


def layer_outliers(scores: torch.Tensor, u: float, side: str, rule: str = "zscore") -> LayerDecision:
    """Apply "zscore", "mad" or "iterative" to one layer.

    Args:
        scores: (C,) neuron scores (NaN for neurons without a score).
        u: how many (robust) standard deviations from the center the threshold lies.
        side: "low" (prune scores below center - u * scale) or "high" (above center + u * scale).
        rule: "zscore", "mad" or "iterative".
    """
    if side not in ("low", "high"):
        raise ValueError(f"side must be 'low' or 'high', got {side!r}")
    if rule not in ("zscore", "mad", "iterative"):
        raise ValueError(f"per-layer rule must be 'zscore', 'mad' or 'iterative', got {rule!r}")
    if rule == "iterative":
        return _iterative(scores, u, side)
    scores = scores.double()
    finite = torch.isfinite(scores)
    valid = scores[finite]
    z = torch.full_like(scores, float("nan"))
    if len(valid) < 2:
        return LayerDecision(None, None, None, [], z, f"{len(valid)} neuron(s) with a score: no threshold")
    center, scale = _stats(valid, rule)
    sign = -1.0 if side == "low" else 1.0
    threshold = center + sign * u * scale
    if not scale > 0:
        note = (
            "all scores equal: nothing stands out"
            if rule == "zscore"
            else ("more than half of the scores are equal (MAD = 0): no threshold")
        )
        return LayerDecision(center, scale, None, [], z, note)
    z[finite] = (valid - center) / scale
    beyond = (z < -u) if side == "low" else (z > u)
    selected = beyond.nonzero().flatten().tolist()
    note = None
    if rule == "zscore" and math.sqrt(len(valid) - 1) < u:
        note = (
            f"only {len(valid)} scored neurons: no z-score can exceed sqrt(n - 1) = {math.sqrt(len(valid) - 1):.2f}"
            f" < u = {u:g}, so the z-score rule cannot prune here; use rule 'mad' or a smaller u"
        )
    return LayerDecision(center, scale, threshold, selected, z, note)


def _iterative(scores: torch.Tensor, u: float, side: str) -> LayerDecision:
    """Repeat the z-score rule on the remaining neurons until nothing new is selected."""
    scores = scores.double()
    finite = torch.isfinite(scores)
    chosen = torch.zeros_like(finite)
    decision = layer_outliers(scores, u, side, "zscore")
    while decision.selected:
        chosen[decision.selected] = True
        rest = torch.where(chosen, float("nan"), scores)
        if int((finite & ~chosen).sum()) < 2:
            break
        decision = layer_outliers(rest, u, side, "zscore")
    final = decision if decision.center is not None else layer_outliers(scores, u, side, "zscore")
    z = torch.full_like(scores, float("nan"))
    if final.scale:  # z-scores against the statistics of the neurons left unselected
        z[finite] = (scores[finite] - final.center) / final.scale
    note = final.note if not bool(chosen.any()) else None
    return LayerDecision(final.center, final.scale, final.threshold, chosen.nonzero().flatten().tolist(), z, note)


def select_neurons(
    scores: dict[str, torch.Tensor], *, u: float, side: str, rule: str = "zscore", count: int | None = None
) -> dict[str, LayerDecision]:
    """Apply a rule to every layer.

    Args:
        scores: layer name -> (C,) scores.
        u: threshold in (robust) standard deviations, for "zscore" and "mad".
        side: "low" or "high" (which tail is suspicious).
        rule: "zscore", "mad", "iterative" or "count".
        count: for "count": how many neurons to prune across all layers, ranked by their per-layer
            z-scores (so layers of different scales compare).
    """
    if rule not in RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; choose one of {RULES}")
    if rule != "count":
        return {name: layer_outliers(s, u, side, rule) for name, s in scores.items()}
    if count is None or count < 0:
        raise ValueError("rule 'count' needs count >= 0")
    decisions = {name: layer_outliers(s, math.inf, side, "zscore") for name, s in scores.items()}
    sign = -1.0 if side == "low" else 1.0
    ranked = sorted(
        (
            (sign * d.z[i].item(), name, i)
            for name, d in decisions.items()
            for i in range(len(d.z))
            if torch.isfinite(d.z[i])
        ),
        reverse=True,
    )[:count]
    for name, d in decisions.items():
        d.selected = sorted(i for _, n, i in ranked if n == name)
        d.threshold, d.note = None, None
    return decisions
