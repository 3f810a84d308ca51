"""Backdoor sensitivity of a neuron (Definition 2 of the paper, section 3.3).

    alpha(F, l, k) = L_bd(F) - L_bd(F_{-(l, k)})

the drop of the backdoor loss L_bd (Definition 1: cross-entropy between the target label and the model's
output on triggered inputs) when the single neuron (l, k) is pruned. A neuron whose removal raises the
backdoor loss a lot is a backdoor neuron (Definition 3 thresholds alpha); a benign neuron has alpha near 0.
Note the sign: pruning a backdoor neuron *raises* L_bd, so alpha is negative for it; we return
`L_bd(F_{-(l, k)}) - L_bd(F)` as well (`gain`), the quantity the paper's Figure 7 plots as "sensitivity".

It needs the attack (to trigger the inputs), so it is a yardstick for the defenses, never an input to one.
Cost: one forward pass over the triggered samples per neuron; the model is silenced in place one neuron at a
time (`bdprune.neurons.mask.masked`) and restored exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..attacks.base import Attack
from ..attacks.poison import poison_test_set
from ..data.imageset import ImageSet
from ..errors import InvalidInput
from ..metrics import predict_logits
from ..neurons.layers import NeuronLayer
from ..neurons.mask import ChannelMask, masked


@dataclass
class Sensitivity:
    """Per layer, every neuron's backdoor sensitivity.

    Attributes:
        base_loss: L_bd of the unpruned model (nats).
        alpha: layer name -> (C,) float64 alpha(F, l, k) = L_bd(F) - L_bd(F without neuron k) (Definition 2).
        samples: triggered samples L_bd was measured on.
    """

    base_loss: float
    alpha: dict[str, torch.Tensor]
    samples: int

    @property
    def gain(self) -> dict[str, torch.Tensor]:
        """-alpha: how much pruning each neuron raises the backdoor loss (large for backdoor neurons)."""
        return {name: -a for name, a in self.alpha.items()}


def _loss(model: nn.Module, triggered: ImageSet, batch_size: int) -> float:
    logits = predict_logits(model, triggered, batch_size)
    return F.cross_entropy(logits.double(), triggered.labels.cpu()).item()


def backdoor_sensitivity(
    model: nn.Module,
    data: ImageSet,
    attack: Attack,
    layers: list[NeuronLayer],
    *,
    silence: str = "bn",
    batch_size: int = 512,
    progress: bool = False,
) -> Sensitivity:
    """alpha(F, l, k) of every neuron of `layers` (Definition 2).

    Args:
        model: the model (silenced in place one neuron at a time, then restored exactly).
        data: clean samples; the trigger is applied here to those outside the target class (as for the ASR).
        attack: the backdoor's attack.
        layers: the neuron layers to measure (e.g. from `bdprune.defenses.pruning.neuron_layers`).
        silence: how a neuron is pruned ("bn", "bn-weight" or "conv", see `bdprune.neurons.mask`).
        batch_size: samples per forward pass.
        progress: show a progress bar.

    Example:
        >>> s = backdoor_sensitivity(model, reserve.subset(range(500)), attack, layers)
        >>> s.gain["layer4.1.bn2"].topk(3)
    """
    triggered = poison_test_set(data, attack)
    if len(triggered) == 0:
        raise InvalidInput("backdoor sensitivity needs samples outside the target class to trigger")
    base = _loss(model, triggered, batch_size)
    alpha: dict[str, torch.Tensor] = {}
    with tqdm(
        total=sum(l.channels for l in layers), desc="sensitivity", unit="neuron", disable=not progress, leave=False
    ) as bar:
        for layer in layers:
            values = torch.empty(layer.channels, dtype=torch.float64)
            for k in range(layer.channels):
                with masked(model, layers, ChannelMask({layer.name: [k]}), silence):
                    values[k] = base - _loss(model, triggered, batch_size)
                bar.update(1)
            alpha[layer.name] = values
    return Sensitivity(base_loss=base, alpha=alpha, samples=len(triggered))
