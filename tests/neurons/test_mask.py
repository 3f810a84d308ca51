"""Silencing pruned neurons: the documented constants, exact restoration, untouched input."""

import pytest
import torch
from torch import nn

from bdprune.neurons.layers import find_neuron_layers
from bdprune.neurons.mask import ChannelMask, masked, pruned_copy


# -- masks -----------------------------------------------------------------------------------------------
def conv_bn(channels=4):
    model = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU())
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.uniform_(0.5, 2)
        model[1].bias.uniform_(0.5, 1)
    return model.eval()


@pytest.mark.parametrize("mode", ["bn", "bn-weight", "conv"])
def test_silencing_modes_give_the_documented_constant(mode):
    model = conv_bn()
    layers = {l.name: l for l in find_neuron_layers(model, torch.zeros(1, 1, 5, 5))}
    x = torch.rand(2, 1, 5, 5)
    bn = model[1]
    with masked(model, layers, ChannelMask({"1": [2]}), mode):
        out = model[1](model[0](x))[:, 2]
    expected = {
        "bn": 0.0,
        "bn-weight": bn.bias[2].item(),
        "conv": (bn.bias[2] - bn.weight[2] * bn.running_mean[2] / (bn.running_var[2] + bn.eps).sqrt()).item(),
    }[mode]
    assert torch.allclose(out, torch.full_like(out, expected), atol=1e-6)


def test_masked_restores_exactly_and_pruned_copy_leaves_the_input():
    model = conv_bn()
    layers = {l.name: l for l in find_neuron_layers(model, torch.zeros(1, 1, 5, 5))}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with masked(model, layers, ChannelMask({"1": [0, 3]}), "bn"):
        assert model[1].weight[0] == 0 and model[1].bias[3] == 0
    copy = pruned_copy(model, layers, ChannelMask({"1": [1]}), "conv")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert copy[0].weight[1].abs().sum() == 0 and model[0].weight[1].abs().sum() > 0
    with pytest.raises(IndexError, match="4 channels"):
        pruned_copy(model, layers, ChannelMask({"1": [7]}))
