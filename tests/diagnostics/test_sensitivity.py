"""Backdoor sensitivity (Definition 2): the drop of the backdoor loss when one neuron is pruned."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bdprune.attacks import create_attack
from bdprune.attacks.poison import poison_test_set
from bdprune.data import ImageSet
from bdprune.diagnostics.sensitivity import backdoor_sensitivity
from bdprune.errors import InvalidInput
from bdprune.metrics import backdoor_loss
from bdprune.neurons.layers import find_neuron_layers
from bdprune.neurons.mask import ChannelMask, pruned_copy


def two_neuron_model() -> nn.Module:
    """Neuron 0 sees the bottom-right pixel (the trigger) and votes for class 0; neuron 1 sees the whole image
    and votes for class 1. Known by construction: neuron 0 is the backdoor neuron."""
    model = nn.Sequential(
        nn.Conv2d(1, 2, 1, bias=False),
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(2, 2, bias=False),
    )
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 0.5]).view(2, 1, 1, 1))
        model[1].running_mean.zero_(), model[1].running_var.fill_(1.0)
        model[1].weight.fill_(1.0), model[1].bias.zero_()
        model[5].weight.copy_(torch.tensor([[4.0, 0.0], [0.0, 1.0]]))
    return model.eval()


def corner_pixel():
    """BadNets with a 1-pixel white patch in the bottom-right corner, target class 0."""
    return create_attack("badnets", image_shape=(1, 4, 4), num_classes=2, size=1, pattern="white")


def data(n=16) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    return ImageSet(torch.rand(n, 1, 4, 4, generator=g) * 0.3, torch.arange(n) % 2, ("a", "b"))


def test_the_backdoor_neuron_is_the_most_sensitive_and_values_match_definition_2():
    attack = corner_pixel()
    model = two_neuron_model()
    layers = find_neuron_layers(model, torch.zeros(1, 1, 4, 4))
    result = backdoor_sensitivity(model, data(), attack, layers)
    alpha = result.alpha[layers[0].name]
    # Definition 2 computed independently: L_bd(F) - L_bd(F without the neuron), on the triggered samples
    triggered = poison_test_set(data(), attack)
    assert len(triggered) == 8 and bool((triggered.labels == 0).all())

    def loss(m):
        return F.cross_entropy(m(triggered.float_images()).double(), triggered.labels).item()

    for k in range(2):
        pruned = pruned_copy(model, {l.name: l for l in layers}, ChannelMask({layers[0].name: [k]}), "bn")
        assert alpha[k].item() == pytest.approx(loss(model) - loss(pruned), abs=1e-9)
    assert result.base_loss == pytest.approx(loss(model), abs=1e-9)
    assert alpha[0] < 0 < result.gain[layers[0].name][0]  # pruning the backdoor neuron raises L_bd
    assert result.gain[layers[0].name].argmax().item() == 0
    assert result.samples == len(triggered)


def test_model_is_restored_and_the_metric_agrees_with_the_library_backdoor_loss(build_attack, make_imageset):
    torch.manual_seed(0)
    from bdprune.models import create_model

    model = create_model("resnet18", num_classes=4, in_channels=1, base_width=2).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attack = build_attack("badnets", shape=(1, 8, 8), classes=4)
    clean = make_imageset(24, (1, 8, 8), 4)
    layers = find_neuron_layers(model, torch.zeros(1, 1, 8, 8))[:2]
    result = backdoor_sensitivity(model, clean, attack, layers)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result.base_loss == pytest.approx(backdoor_loss(model, clean, attack), rel=1e-5)
    assert [len(result.alpha[l.name]) for l in layers] == [l.channels for l in layers]


def test_no_sample_to_trigger_is_a_clear_error(build_attack, make_imageset):
    from bdprune.models import create_model

    model = create_model("resnet18", num_classes=4, in_channels=1, base_width=2).eval()
    attack = build_attack("badnets", shape=(1, 8, 8), classes=4)
    only_target = make_imageset(4, (1, 8, 8), 1)  # every label is 0, the target
    only_target = ImageSet(only_target.images, only_target.labels, ("a", "b", "c", "d"))
    with pytest.raises(InvalidInput, match="outside the target class"):
        backdoor_sensitivity(model, only_target, attack, find_neuron_layers(model, torch.zeros(1, 1, 8, 8)))
