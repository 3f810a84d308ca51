"""BN re-parameterisation against BNP (appendix G.1 of the paper).

BNP compares each BN layer's running statistics (estimated on the poisoned training data) with the
statistics of clean data. A defense-aware attacker can make them agree without changing what the network
computes: at inference a BN channel is the affine map

    y = gamma~ (x - mu~) / sigma~ + beta~,      sigma~ = sqrt(var~ + eps),

so replacing (mu~, var~) by the benign statistics (mu, var) and setting

    gamma = gamma~ * sigma / sigma~,        beta = beta~ + gamma~ * (mu - mu~) / sigma~

leaves y unchanged for every x, while the running statistics now match benign data and BNP's KL scores
collapse to ~0. (The appendix prints beta = beta~ - mu~/sigma~ + mu/sigma, which lacks the gamma~ factor
and divides mu by the new sigma, so it does not keep y in general; the identity above does, and the test
suite checks that the logits are unchanged.)
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ...data.imageset import ImageSet
from ...errors import InvalidInput
from ...neurons.collect import collect_moments
from ...neurons.layers import NeuronLayer
from ...neurons.pairs import BN_TYPES


def bn_layers(model: nn.Module) -> list[NeuronLayer]:
    """Every BatchNorm of `model` that keeps running statistics, as a layer whose input is read."""
    layers = []
    for name, m in model.named_modules():
        if isinstance(m, BN_TYPES) and m.track_running_stats and m.running_mean is not None:
            if not m.affine:
                raise InvalidInput(
                    f"{name} has no affine weight and bias, so its statistics cannot be changed "
                    "without changing the function; BN re-parameterisation needs affine BN layers"
                )
            layers.append(NeuronLayer(name, None, name, m.num_features))
    return layers


def reparameterize_bn(model: nn.Module, benign: ImageSet, *, batch_size: int = 256, correction: int = 1) -> nn.Module:
    """A copy of `model` computing the same function whose BN running statistics are those of `benign`.

    Args:
        model: a trained network (not modified).
        benign: clean samples the attacker holds (e.g. the unpoisoned part of the training set).
        batch_size: samples per forward pass.
        correction: variance correction of the new running variance (1: unbiased, as BN and BNP use).

    Returns:
        The re-parameterised copy, in eval mode, on the model's device.
    """
    layers = bn_layers(model)
    if not layers:
        raise InvalidInput("the model has no BatchNorm layer with running statistics: nothing to re-parameterise")
    # The function is unchanged layer by layer, so statistics of the original model are those of the copy.
    moments = collect_moments(model, benign, layers, batch_size=batch_size)
    out = copy.deepcopy(model).eval()
    modules = dict(out.named_modules())
    with torch.no_grad():
        for layer in layers:
            bn = modules[layer.bn]
            stats = moments[layer.name]
            mean_old = bn.running_mean.double()
            sigma_old = (bn.running_var.double() + bn.eps).sqrt()
            mean_new = stats.mean.double().to(mean_old.device)
            var_new = stats.variance(correction=correction).double().to(mean_old.device)
            sigma_new = (var_new + bn.eps).sqrt()
            gamma, beta = bn.weight.double(), bn.bias.double()
            bn.bias.copy_(beta + gamma * (mean_new - mean_old) / sigma_old)
            bn.weight.copy_(gamma * sigma_new / sigma_old)
            bn.running_mean.copy_(mean_new)
            bn.running_var.copy_(var_new)
    return out
