import pytest
import torch
from torch import nn

from bdprune.models import Normalize, create_model, list_models
from bdprune.neurons import find_conv_bn_pairs

SMALL = {"resnet18": {"base_width": 4}, "preact_resnet18": {"base_width": 4}, "wrn28_1": {"depth": 10}}


def build(name, in_channels=3, num_classes=5):
    return create_model(name, num_classes=num_classes, in_channels=in_channels, **SMALL.get(name, {}))


@pytest.mark.parametrize("name", list_models())
def test_every_model_keeps_the_batch_and_gives_finite_logits(name):
    model = build(name, in_channels=1)
    out = model(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, 5) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_models())
def test_every_parameter_gets_a_gradient(name):
    model = build(name)
    model(torch.rand(2, 3, 16, 16)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing


@pytest.mark.parametrize("name", list_models())
def test_conv_bn_pairs_are_found_by_name(name):
    model = build(name)
    pairs = find_conv_bn_pairs(model, torch.zeros(1, 3, 16, 16))
    modules = dict(model.named_modules())
    assert pairs, "every registered model has at least one conv feeding a BN"
    for p in pairs:
        assert isinstance(modules[p.conv], nn.Conv2d) and isinstance(modules[p.bn], nn.BatchNorm2d)
        assert modules[p.conv].out_channels == modules[p.bn].num_features == p.channels


def test_pairs_of_resnet18_and_preact():
    resnet = {p.bn: p.conv for p in find_conv_bn_pairs(build("resnet18"), torch.zeros(1, 3, 8, 8))}
    assert resnet["bn1"] == "conv1" and resnet["layer2.0.shortcut.1"] == "layer2.0.shortcut.0"
    assert len(resnet) == 20  # 17 convs in the main path + 3 shortcut convs, each followed by a BN
    preact = find_conv_bn_pairs(build("preact_resnet18"), torch.zeros(1, 3, 8, 8), paired_only=False)
    unpaired = [p.bn for p in preact if p.conv is None]
    assert "layer1.0.bn2" not in unpaired and "layer1.1.bn1" in unpaired and "bn" in unpaired


def test_pair_finding_leaves_mode_and_running_stats_alone():
    model = build("resnet18").train()
    before = model.bn1.running_mean.clone()
    find_conv_bn_pairs(model, torch.rand(4, 3, 8, 8))
    assert model.training and torch.equal(model.bn1.running_mean, before)


def test_normalize_layer_and_unknown_arguments():
    norm = Normalize([0.5], [0.25])
    assert torch.allclose(norm(torch.full((1, 1, 2, 2), 1.0)), torch.full((1, 1, 2, 2), 2.0))
    with pytest.raises(ValueError, match="both mean and std"):
        Normalize([0.5], None)
    with pytest.raises(KeyError, match="model 'resnet18' has no parameter widht; its parameters: .*base_width"):
        create_model("resnet18", widht=3)
    with pytest.raises(ValueError, match="base_width must be an integer"):
        create_model("resnet18", base_width="wide")
    with pytest.raises(ValueError, match="6n \\+ 4"):
        create_model("wrn28_1", depth=27)
