"""l-infinity pruning (Cheng, Xu, Liu, Chen, Zhao and Lin, "Defending against Backdoor Attack on Deep
Neural Networks", arXiv 2002.12162), a baseline of section 5.1.

Cheng et al. observe that a backdoor shows up as a bias in the l-infinity norm (the peak value) of some
neurons' activation maps, much more than in their l1 or l2 norms, and prune the neurons of the last
convolutional layer with the largest l-infinity activation norms. Here a neuron's score is the mean, over
the defender's clean samples, of the l-infinity norm of its activation map relu(BN(conv(x))) (computed from
the BN input with the BN's own eval-mode affine map, so the model is never rewritten); per layer, scores
above mean + u * std are pruned (the same outlier rule as EP and BNP, u = 3; the original paper prunes a
hand-picked number of neurons, which a defender without poisoned data cannot calibrate).

`scope="last"` (default, as in the paper) scores only the last neuron layer; `scope="all"` every one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data.batches import iterate_batches
from ..errors import InvalidInput
from ..models import model_device
from ..neurons.layers import NeuronLayer, reading_preactivations
from ..params import param
from .base import DefenseData, register_defense
from .pruning import PruningDefense
from .scores import Scores, neuron_layers

SCOPES = ("last", "all")


def activation_peaks(model: nn.Module, data, layers: list[NeuronLayer], batch_size: int) -> dict[str, torch.Tensor]:
    """Mean over samples of each neuron's l-infinity activation norm: layer -> (C,) float64."""
    modules = dict(model.named_modules())
    sums = {l.name: torch.zeros(l.channels, dtype=torch.float64, device=model_device(model)) for l in layers}
    by_name = {l.name: l for l in layers}

    def on_preactivation(name: str, x: torch.Tensor) -> None:
        layer = by_name[name]
        if layer.bn is not None:
            bn = modules[layer.bn]
            shape = (1, -1, 1, 1)
            x = (x - bn.running_mean.view(shape)) / (bn.running_var.view(shape) + bn.eps).sqrt()
            if bn.weight is not None:
                x = x * bn.weight.view(shape) + bn.bias.view(shape)
        peaks = torch.relu(x).amax(dim=(2, 3))  # (B, C): l-inf norm of each (nonnegative) activation map
        sums[name] += peaks.double().sum(0)

    with reading_preactivations(model, layers, on_preactivation), torch.inference_mode():
        for images, _, _ in iterate_batches(data, batch_size, device=model_device(model)):
            model(images)
    return {name: (s / len(data)).cpu() for name, s in sums.items()}


@register_defense
@dataclass(eq=False, kw_only=True)
class LInf(PruningDefense):
    """l-infinity activation pruning.

    Args:
        rule: "zscore" (default; u = 3), "mad", "iterative" or "count", with its parameters beside it.
        scope: "last" (the last neuron layer, as in the paper) or "all".
        silence: how a pruned neuron is silenced (see `bdprune.neurons.mask`).
        batch_size: samples per forward pass.
        progress: unused (one quick pass); kept for a uniform interface.

    Example:
        >>> repaired, report = LInf().run(model, DefenseData(clean=clean_500))
    """

    name = "linf"
    needs = frozenset({"clean"})
    side = "high"

    scope: str = param("last", choices=SCOPES)

    def score(self, model: nn.Module, data: DefenseData) -> Scores:
        clean = data.require("clean", "l-inf pruning")
        layers = neuron_layers(model, clean, require_bn=False)
        if not layers:
            raise InvalidInput("the model has no convolution whose activations l-inf pruning could read")
        if self.scope == "last":
            layers = layers[-1:]
        return Scores(layers, activation_peaks(model, clean, layers, self.batch_size), samples=len(clean))
