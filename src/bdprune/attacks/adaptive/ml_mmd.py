"""ML-MMD (Xia et al., "Enhancing Backdoor Attacks with Multi-Level MMD Regularization", IEEE TDSC 2022).

One of the two distribution-matching attacks of appendix G.2 (Table 9, "ML-MMD"). Within each training
batch the features of the benign samples and of the poisoned samples are compared at several depths by
the squared maximum mean discrepancy with a sum of Gaussian kernels, and the loss becomes

    L = CE + lambda * sum_levels MMD^2(features(benign), features(poisoned)).

As in the authors' code: five kernels with bandwidths b * 2^(i - 2), i = 0..4, where b is the mean squared
pairwise distance in the batch (not differentiated); features flattened per sample; lambda = 0.1; three
levels at depths 1/2, 3/4 and 1 of the network (their VGG-11 ReLUs 4, 6 and 8 of 8). We read the
pre-activations (BN inputs) at those depths, the quantity EP and BNP inspect, instead of ReLU outputs.
The features come from the ordinary training forward pass (train mode), as in the authors' code.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ...errors import InvalidInput
from ...neurons.layers import reading_preactivations
from ..base import Attack
from .base import AdaptiveLoss, register_adaptive


def mmd2_gaussian(
    source: torch.Tensor, target: torch.Tensor, kernels: int = 5, kernel_mul: float = 2.0
) -> torch.Tensor:
    """Biased MMD^2 estimate between (n, D) and (m, D) samples with a multi-bandwidth Gaussian kernel."""
    total = torch.cat([source, target])  # (n + m, D)
    d2 = torch.cdist(total, total).pow(2)  # (n + m, n + m)
    count = len(total)
    base = d2.detach().sum() / max(count * count - count, 1)
    base = base.clamp(min=1e-12) / kernel_mul ** (kernels // 2)
    k = sum(torch.exp(-d2 / (base * kernel_mul**i)) for i in range(kernels))
    n = len(source)
    return k[:n, :n].mean() + k[n:, n:].mean() - k[:n, n:].mean() - k[n:, :n].mean()


@register_adaptive
class MultiLevelMMD(AdaptiveLoss):
    """CE + lambda * multi-level MMD^2 between benign and poisoned samples of each batch.

    Args:
        attack: the attack being hidden.
        poisoned: which training samples are poisoned (the second group; the first is the benign samples).
        weight: lambda (0.1 in the authors' code).
        levels: relative depths of the regularised layers in (0, 1].
        kernels: number of Gaussian kernels.
        kernel_mul: ratio between consecutive bandwidths.
        cross: which training samples are noise-mode samples (in neither group).
    """

    name = "ml-mmd"

    def __init__(
        self,
        attack: Attack,
        poisoned: torch.Tensor,
        weight: float = 0.1,
        levels: tuple[float, ...] | list[float] = (0.5, 0.75, 1.0),
        kernels: int = 5,
        kernel_mul: float = 2.0,
        cross: torch.Tensor | None = None,
    ) -> None:
        super().__init__(attack, poisoned, weight, cross)
        if not levels or not all(0 < f <= 1 for f in levels):
            raise InvalidInput(f"levels must be relative depths in (0, 1], got {levels}")
        self.levels, self.kernels, self.kernel_mul = [float(f) for f in levels], int(kernels), float(kernel_mul)

    def chosen(self, model: nn.Module, images: torch.Tensor):
        layers = self.layers(model, images)
        picks = sorted({max(0, math.ceil(f * len(layers)) - 1) for f in self.levels})
        return [layers[i] for i in picks]

    def regularizer(self, model, images, benign, poisoned, logits):
        feats: list[torch.Tensor] = []
        with reading_preactivations(model, self.chosen(model, images), lambda _n, x: feats.append(x), keep_mode=True):
            logits.append(model(images))
        if int(poisoned.sum()) < 2 or int(benign.sum()) < 2:
            return images.new_zeros(())
        total = images.new_zeros(())
        for x in feats:
            flat = x.reshape(len(x), -1)  # (B, C * H * W)
            total = total + mmd2_gaussian(flat[benign], flat[poisoned], self.kernels, self.kernel_mul)
        return total

    def params(self) -> dict[str, Any]:
        return {**super().params(), "levels": self.levels, "kernels": self.kernels, "kernel_mul": self.kernel_mul}
