"""The regularisation-based adaptive attack of appendix G.2, Eq. (4) of the paper.

    L = E[CE(y, f(delta(x)))] + lambda * sum_k sum_l E_x[(phi_k^(l)(x) - phi_k^(l)(delta(x)))^2]

phi_k^(l) is the pre-activation (BN input) of neuron k in layer l, the quantity EP and BNP read. The
first term is the usual loss on the mixed training batch. For the second, up to `pairs` benign samples of
the batch and their triggered copies are run together through the network, and the squared differences
are averaged over samples and spatial positions, then summed over neurons and layers. The paper finds
lambda >= 0.1 untrainable and uses 0.01 and 0.001. The raw distance's scale depends on the network (it is
a sum over all its neurons), so lambda does not transfer between architectures: on the CPU preset
(ResNet-18 width 16, BadNets, 2 epochs) lambda = 0.01 keeps the backdoor from forming at all (ASR 2%,
ACC 90.2) and 0.001 gives a working one (ASR 99.97, ACC 90.6); 0.001 is the default.

How BN normalises this extra pass (`bn`):
- "batch" (default): with the pair batch's own statistics, as the training pass does, while the running
  statistics are frozen, so that a half-poisoned batch does not leak into what BNP later reads.
- "running": with the running statistics (eval mode). The paper does not say which it used. Measured on
  the CPU preset (BadNets, lambda 0.01) this one fails: the running statistics are constants to the
  gradient, so shrinking the early convolutions shrinks every later pre-activation too; the weights drift
  faster than the running averages follow, and at the end of training eval-mode accuracy is 72% while
  re-estimating the statistics of the very same weights gives 89%.

`standardize=True` divides each neuron's squared difference by the variance of its benign
pre-activations in the pair batch (a scale-free distance, in the units EP reads); the default is the
paper's raw distance.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from ...errors import InvalidInput
from ...neurons.layers import reading_preactivations
from ..base import Attack
from .base import AdaptiveLoss, register_adaptive

BN_MODES = ("batch", "running")


def _check_bn(bn: str) -> None:
    if bn not in BN_MODES:
        raise InvalidInput(f"bn must be one of {BN_MODES}, got {bn!r}")


@contextmanager
def frozen_bn_statistics(model: nn.Module) -> Iterator[None]:
    """Forward passes in train mode normalise with batch statistics but leave the running ones unchanged."""
    saved = [
        (m, m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    try:
        for m, _, _ in saved:
            m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def paired_preactivation_distance(
    model: nn.Module,
    layers,
    clean: torch.Tensor,
    poisoned: torch.Tensor,
    *,
    bn: str = "running",
    standardize: bool = False,
) -> torch.Tensor:
    """sum_l sum_k mean_{n, h, w} (phi(clean) - phi(poisoned))^2, with gradients.

    Args:
        model: the network.
        layers: the neuron layers whose pre-activations are compared.
        clean: (n, C, H, W) benign images; poisoned: their triggered copies, in the same order.
        bn: "running" (eval mode, the defenses' view) or "batch" (train-mode statistics of this pass,
            running statistics frozen); the model's mode is restored either way.
        standardize: divide each neuron's term by the variance of its benign pre-activations.
    """
    _check_bn(bn)
    n = len(clean)
    parts: list[torch.Tensor] = []

    def grab(_name: str, x: torch.Tensor) -> None:
        a, b = x[:n], x[n:]  # (n, C, H, W) each: benign and triggered copies of the same images
        dims = (0, 2, 3) if a.ndim == 4 else (0,)
        term = (a - b).pow(2).mean(dim=dims)  # (C,)
        if standardize:
            term = term / (a.var(dim=dims, unbiased=False) + 1e-5)
        parts.append(term.sum())

    train_pass = bn == "batch"
    was_training = model.training
    with frozen_bn_statistics(model) if train_pass else nullcontext():
        if train_pass:
            model.train()
        try:
            with reading_preactivations(model, layers, grab, keep_mode=train_pass):
                model(torch.cat([clean, poisoned]))
        finally:
            model.train(was_training)
    total = clean.new_zeros(())
    for p in parts:
        total = total + p
    return total


@register_adaptive
class PreactivationMatching(AdaptiveLoss):
    """Eq. (4): CE + lambda * squared distance of benign and poisoned pre-activations.

    Args:
        attack: the attack (its trigger makes the poisoned copies).
        poisoned: which training samples are poisoned (they are not used as benign x).
        weight: lambda (0.001, the paper's smaller value; see the module's notes).
        pairs: benign samples of each batch used for the distance.
        bn: how BN normalises the pair pass: "batch" (default) or "running" (see the module's notes).
        standardize: scale-free distance (each neuron's term over its benign variance).
        cross: which training samples are noise-mode samples (not used as benign x either).
    """

    name = "preact-l2"

    def __init__(
        self,
        attack: Attack,
        poisoned: torch.Tensor,
        weight: float = 0.001,
        pairs: int = 32,
        bn: str = "batch",
        standardize: bool = False,
        cross: torch.Tensor | None = None,
    ) -> None:
        super().__init__(attack, poisoned, weight, cross)
        if pairs < 1:
            raise InvalidInput(f"pairs must be >= 1, got {pairs}")
        _check_bn(bn)
        self.pairs, self.bn, self.standardize = int(pairs), bn, bool(standardize)

    def regularizer(self, model, images, benign, poisoned, logits):
        clean = images[benign][: self.pairs]
        if len(clean) < 2:  # batch statistics need two samples
            return images.new_zeros(())
        triggered = self.attack.poison_images(clean).detach()
        return paired_preactivation_distance(
            model, self.layers(model, images), clean, triggered, bn=self.bn, standardize=self.standardize
        )

    def params(self) -> dict[str, Any]:
        return {**super().params(), "pairs": self.pairs, "bn": self.bn, "standardize": self.standardize}
