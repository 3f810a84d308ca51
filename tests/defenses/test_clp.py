"""CLP: the channel Lipschitz constant, and data-free pruning of its outliers."""

import math

import pytest
import torch
from torch import nn

from bdprune.defenses import CLP, DefenseData
from bdprune.defenses.clp import channel_lipschitz


class Head(nn.Module):
    """conv -> BN -> ReLU -> global average -> linear: the classifier reads one value per channel."""

    def __init__(self, channels: int = 8, classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def test_clp_score_is_the_largest_singular_value_of_the_bn_scaled_filter():
    g = torch.Generator().manual_seed(0)
    conv, bn = nn.Conv2d(5, 6, 3, bias=False), nn.BatchNorm2d(6)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        bn.weight.copy_(torch.randn(6, generator=g))
        bn.running_var.copy_(torch.rand(6, generator=g) + 0.1)
    scores = channel_lipschitz(conv, bn)
    for k in range(6):
        w = (
            conv.weight[k].double().reshape(5, 9)
            * bn.weight[k].double()
            / math.sqrt(bn.running_var[k].double().item() + bn.eps)
        )
        assert scores[k].item() == pytest.approx(torch.linalg.svdvals(w).max().item(), rel=1e-10)


def test_clp_prunes_a_channel_with_an_outlying_lipschitz_constant(images):
    torch.manual_seed(0)
    model = Head(channels=32).eval()
    with torch.no_grad():
        model.conv.weight[11] *= 30.0
    repaired, report = CLP().run(model, DefenseData(clean=images(4, classes=3)))
    assert report.layers[0].pruned == [11]
    assert repaired.bn.weight[11] == 0 and repaired.bn.bias[11] == 0


class Tripwire:
    """Stands for data a defense must not read: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the defense read .{name} of data it was not meant to use")

    def __len__(self):
        raise AssertionError("the defense read data it was not meant to use")


def test_clp_reads_no_sample_at_all(tiny):
    model, _ = tiny
    repaired, report = CLP.from_options(image_shape=(1, 16, 16)).run(
        model, DefenseData(clean=Tripwire(), train=Tripwire())
    )
    assert report.samples == 0 and type(repaired) is type(model)
    _, without_any = CLP().run(model, DefenseData())  # no data, no shape: a 32 x 32 zero image traces the model
    assert [l.scores for l in without_any.layers] == [l.scores for l in report.layers]
    assert report.extra["traced_shape"] == [1, 16, 16] and without_any.extra["traced_shape"] == [1, 32, 32]
    _, given = CLP().run(model, DefenseData(image_shape=(1, 16, 16)))  # the model's input shape, from its sidecar
    assert given.extra["traced_shape"] == [1, 16, 16] and given.config["image_shape"] is None
