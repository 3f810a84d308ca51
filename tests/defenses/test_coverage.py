"""Every BatchNorm layer is read (issue 13, item 7): in a pre-activation network most BNs read a residual
sum, not a conv output, and they are scored like the others; a layer left out is named with its reason."""

import copy

import pytest
import torch
from torch import nn

from bdprune.defenses import BNP, CLP, EP, DefenseData
from bdprune.models import create_model
from bdprune.neurons.layers import find_neuron_layers
from bdprune.neurons.mask import ChannelMask, pruned_copy

SMALL = {"resnet18": {"base_width": 4}, "preact_resnet18": {"base_width": 4}, "wrn28_1": {}}
BN_COUNT = {"resnet18": 20, "preact_resnet18": 17, "wrn28_1": 25}  # WRN-28-1: 12 blocks x 2 + the final BN


def every_bn(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.fixture(scope="module", params=list(SMALL))
def network(request, with_bn_statistics, images):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model(request.param, num_classes=4, in_channels=1, **SMALL[request.param])
    return request.param, with_bn_statistics(model, images(64, seed=3))


@pytest.mark.parametrize("defense", [BNP(), EP(then="none")], ids=["bnp", "ep"])
def test_every_bn_appears_in_the_reports_of_bnp_and_ep(network, defense, images):
    name, model = network
    data = images(48, seed=4)
    _, report = defense.run(model, DefenseData(clean=data, train=data))
    scored = [layer.name for layer in report.layers]
    assert sorted(scored) == sorted(every_bn(model)) and len(scored) == BN_COUNT[name]
    assert report.unscored == {}
    assert all(len(layer.scores) == layer.channels for layer in report.layers)
    residual = [layer.name for layer in report.layers if layer.conv is None]
    assert len(residual) == {"resnet18": 0, "preact_resnet18": 8, "wrn28_1": 12}[name]


def test_a_bn_without_a_conv_is_silenced_at_the_bn_in_every_mode(network):
    _name, model = network
    layers = {layer.name: layer for layer in find_neuron_layers(model, torch.zeros(1, 1, 16, 16))}
    residual = [layer for layer in layers.values() if layer.conv is None]
    if not residual:
        pytest.skip("resnet18: every BN is fed by a conv")
    target = residual[-1].name
    model = copy.deepcopy(model)
    with torch.no_grad():
        dict(model.named_modules())[target].bias.fill_(0.5)
    for mode in ("bn", "bn-weight", "conv"):
        repaired = pruned_copy(model, layers, ChannelMask({target: [0, 2]}), mode)
        bn = dict(repaired.named_modules())[target]
        assert bn.weight[0] == 0 and bn.weight[2] == 0 and bn.weight[1] != 0
        assert (bn.bias[0] == 0) == (mode != "bn-weight")


def test_layers_that_cannot_be_read_or_silenced_are_named_with_the_reason(images):
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.plain = nn.BatchNorm2d(4, affine=False)  # reads a residual sum, has no gamma: cannot be silenced
            self.stateless = nn.BatchNorm2d(4, track_running_stats=False)
            self.unused = nn.BatchNorm2d(4)
            self.head_bn = nn.BatchNorm1d(4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            h = torch.relu(self.bn(self.conv(x)))
            h = torch.relu(self.plain(h + 1))
            h = self.stateless(h * 2)
            return self.fc(self.head_bn(h.mean((2, 3))))

    model = Odd().eval()
    data = images(24, size=8, seed=1)
    _, ep = EP(then="none").run(model, DefenseData(train=data))
    assert [layer.name for layer in ep.layers] == ["bn", "stateless"]
    assert set(ep.unscored) == {"plain", "unused", "head_bn"}
    assert "cannot be silenced" in ep.unscored["plain"] and "not reached" in ep.unscored["unused"]
    assert "BatchNorm1d" in ep.unscored["head_bn"]
    assert any(w.startswith("unused: not scored: not reached") for w in ep.warnings)
    _, bnp = BNP().run(model, DefenseData(clean=data))
    assert [layer.name for layer in bnp.layers] == ["bn"] and "no running statistics" in bnp.unscored["stateless"]
    _, clp = CLP().run(model, DefenseData(image_shape=(1, 8, 8)))
    assert [layer.name for layer in clp.layers] == ["bn"] and "conv" in clp.unscored["stateless"]
