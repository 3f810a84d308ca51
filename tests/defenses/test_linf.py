"""l-infinity pruning: the neuron with outlying activation peaks."""

import torch
from torch import nn

from bdprune.defenses import DefenseData, LInf


class Head(nn.Module):
    """conv -> BN -> ReLU -> global average -> linear: the classifier reads one value per channel."""

    def __init__(self, channels: int = 8, classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def test_linf_prunes_the_neuron_with_outlying_activation_peaks(images):
    torch.manual_seed(0)
    model, clean = Head(channels=32).eval(), images(40, seed=5, classes=3)
    with torch.no_grad():
        model.bn.weight[7] = 25.0  # channel 7's activation map peaks far above the others'
    repaired, report = LInf().run(model, DefenseData(clean=clean))
    assert report.layers[0].pruned == [7]
    assert int(torch.tensor(report.layers[0].scores).argmax()) == 7
    assert repaired.bn.weight[7] == 0 and repaired.bn.bias[7] == 0 and model.bn.weight[7] == 25.0
