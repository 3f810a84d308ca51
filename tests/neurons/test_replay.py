"""Replaying a model from a cached block gives exactly the predictions of a full pass, whatever is silenced."""

import pytest
import torch
from torch import nn

from bdprune.data import ImageSet
from bdprune.metrics import predict_logits
from bdprune.models import create_model
from bdprune.neurons.layers import find_neuron_layers
from bdprune.neurons.mask import ChannelMask, masked
from bdprune.neurons.replay import Replay


def with_statistics(model: nn.Module, data: ImageSet) -> nn.Module:
    model.train()
    with torch.no_grad():
        model(data.float_images())
    return model.eval()


class SkipAround(nn.Module):
    """A Sequential whose second block is bypassed by a connection from the stem: its cached input alone does
    not determine the output, so the replay must not start there."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.body = nn.Sequential(
            nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
            nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
        )
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        s = self.stem(x)
        return self.head((self.body(s) + s).mean((2, 3)))


@pytest.mark.parametrize("build", [
    lambda: create_model("resnet18", num_classes=3, in_channels=1, base_width=2),
    lambda: create_model("preact_resnet18", num_classes=3, in_channels=1, base_width=2),
    SkipAround,
])  # fmt: skip
def test_replayed_predictions_equal_a_full_pass_for_every_layer(build, make_imageset):
    torch.manual_seed(0)
    data = make_imageset(40, shape=(1, 8, 8), classes=3)
    model = with_statistics(build(), data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layers = find_neuron_layers(model, data.float_images()[:1])
    replay = Replay(model, data, layers, batch_size=16)
    replay.prepare([l.name for l in layers])
    for layer in layers:
        mask = ChannelMask({layer.name: [0, layer.channels - 1]})
        with masked(model, layers, mask):
            full = predict_logits(model, data, 16)
        assert torch.allclose(replay.logits(mask), full, atol=1e-5), layer.name
    two = ChannelMask({layers[1].name: [0], layers[-1].name: [1]})  # replayed from the earlier of the two
    with masked(model, layers, two):
        assert torch.allclose(replay.logits(two), predict_logits(model, data, 16), atol=1e-5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()), "the model was changed"
    assert torch.equal(replay.logits(ChannelMask()), predict_logits(model, data, 16))


def test_a_block_bypassed_by_a_skip_connection_is_not_replayed_from(make_imageset):
    torch.manual_seed(0)
    data = make_imageset(24, shape=(1, 8, 8), classes=3)
    model = with_statistics(SkipAround(), data)
    layers = find_neuron_layers(model, data.float_images()[:1])
    replay = Replay(model, data, layers, batch_size=8)
    replay.logits(ChannelMask({"body.1.1": [0]}))
    assert replay.entry["body.1.1"] is None  # body.1 and body fail the check: a full pass instead
    replay.logits(ChannelMask({"stem.1": [0]}))
    assert replay.entry["stem.1"] == "stem.1"  # the stem's BN: its input is all that follows from it


def test_prefix_logits_equal_full_passes_of_each_prefix(make_imageset):
    from bdprune.neurons.replay import prefix_logits

    torch.manual_seed(1)
    data = make_imageset(30, shape=(1, 8, 8), classes=3)
    model = with_statistics(create_model("resnet18", num_classes=3, in_channels=1, base_width=2), data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layers = find_neuron_layers(model, data.float_images()[:1])
    by_name = {l.name: l for l in layers}
    # across stages and back: each step re-runs from the new neuron's block on inputs the earlier steps changed
    # bn1 (the stem) has no block: a full pass, after which blocks used before (layer2.0) are recorded again
    order = [("layer4.1.bn2", 0), ("layer2.0.bn1", 1), ("layer4.0.bn1", 3), ("bn1", 0), ("layer3.1.bn2", 2),
             ("layer2.0.bn2", 0), ("layer4.1.bn2", 1)]  # fmt: skip
    order = [(n, c) for n, c in order if n in by_name]
    steps = list(prefix_logits(model, data, layers, order, batch_size=8))
    assert len(steps) == len(order)
    for k, logits in enumerate(steps, start=1):
        pruned: dict[str, list[int]] = {}
        for name, channel in order[:k]:
            pruned.setdefault(name, []).append(channel)
        with masked(model, layers, ChannelMask(pruned)):
            assert torch.allclose(logits, predict_logits(model, data, 8), atol=1e-5), order[:k]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
