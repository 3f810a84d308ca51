"""The regularisation-based adaptive attack of appendix G.2, Eq. (4) of the paper.

    L = E[CE(y, f(delta(x)))] + lambda * sum_k sum_l E_x[(phi_k^(l)(x) - phi_k^(l)(delta(x)))^2]

phi_k^(l) is the pre-activation (BN input) of neuron k in layer l, the quantity EP and BNP read. The
first term is the usual loss on the mixed training batch. For the second, up to `pairs` benign samples of
the batch and their triggered copies are run together through the network in eval mode, as EP and BNP run
it (so this extra pass neither updates the running statistics with a half-poisoned batch nor depends on
batch statistics), and the squared differences are averaged over samples and spatial positions, then
summed over neurons and layers. The paper finds lambda >= 0.1 untrainable and uses 0.01 and 0.001.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...neurons.layers import reading_preactivations
from ..base import Attack
from .base import AdaptiveLoss, register_adaptive


def paired_preactivation_distance(model: nn.Module, layers, clean: torch.Tensor, poisoned: torch.Tensor) -> torch.Tensor:
    """sum_l sum_k mean_{n, h, w} (phi(clean) - phi(poisoned))^2, with gradients, the model in eval mode."""
    n = len(clean)
    total = clean.new_zeros(())
    parts: list[torch.Tensor] = []

    def grab(_name: str, x: torch.Tensor) -> None:
        a, b = x[:n], x[n:]  # (n, C, H, W) each: benign and triggered copies of the same images
        diff = (a - b).pow(2)
        parts.append(diff.mean(dim=(0, 2, 3)).sum() if diff.ndim == 4 else diff.mean(0).sum())

    with reading_preactivations(model, layers, grab):
        model(torch.cat([clean, poisoned]))
    for p in parts:
        total = total + p
    return total


@register_adaptive
class PreactivationMatching(AdaptiveLoss):
    """Eq. (4): CE + lambda * squared distance of benign and poisoned pre-activations.

    Args:
        attack: the attack (its trigger makes the poisoned copies).
        poisoned: which training samples are poisoned (they are not used as benign x).
        weight: lambda (0.01 default, the largest value the paper could train).
        pairs: benign samples of each batch used for the distance.
        cross: which training samples are noise-mode samples (not used as benign x either).
    """

    name = "preact-l2"

    def __init__(self, attack: Attack, poisoned: torch.Tensor, weight: float = 0.01, pairs: int = 32,
                 cross: torch.Tensor | None = None) -> None:
        super().__init__(attack, poisoned, weight, cross)
        if pairs < 1:
            raise ValueError(f"pairs must be >= 1, got {pairs}")
        self.pairs = int(pairs)

    def regularizer(self, model, images, benign, poisoned, logits):
        clean = images[benign][: self.pairs]
        if len(clean) == 0:
            return images.new_zeros(())
        triggered = self.attack.poison_images(clean).detach()
        return paired_preactivation_distance(model, self.layers(model, images), clean, triggered)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "pairs": self.pairs}
