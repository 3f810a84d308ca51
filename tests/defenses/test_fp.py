"""FP: dormant channels first, stopping by the clean-sample accuracy."""

import torch
from torch import nn

from bdprune.defenses import FP, DefenseData


class Head(nn.Module):
    """conv -> BN -> ReLU -> global average -> linear: the classifier reads one value per channel."""

    def __init__(self, channels: int = 8, classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def test_fp_prunes_the_dormant_channels_first_and_keeps_them_pruned(images):
    torch.manual_seed(0)
    model, clean = Head().eval(), images(60, seed=3, classes=3)
    with torch.no_grad():
        model.bn.bias.fill_(1.0)
        model.bn.bias[[2, 5]] = -50.0  # channels 2 and 5 never fire on any input: dormant
    repaired, report = FP(tolerance=0.0, epochs=2).run(model, DefenseData(clean=clean))
    layer = report.layers[0]
    assert layer.name == "fc"
    order = layer.extra["order"]
    assert set(order[:2]) == {2, 5} and layer.scores[2] == layer.scores[5] == 0.0
    assert {2, 5} <= set(layer.pruned) and sorted(order[: len(layer.pruned)]) == layer.pruned
    curve = layer.extra["clean_accuracy_curve"]
    assert curve[1] == curve[2] == curve[0], "pruning a dormant channel cannot change any prediction"
    assert repaired.fc.weight[:, layer.pruned].abs().sum() == 0, "pruned columns stay zero through fine-tuning"
    assert report.extra["history"], "the pruned model was fine-tuned"


def test_fp_stops_when_clean_accuracy_drops_beyond_tolerance(images):
    torch.manual_seed(1)
    model, clean = Head().eval(), images(60, seed=4, classes=3)
    _, strict = FP(tolerance=0.0, epochs=0).run(model, DefenseData(clean=clean))
    _, loose = FP(tolerance=0.5, max_ratio=1.0, epochs=0).run(model, DefenseData(clean=clean))
    for report, tol in ((strict, 0.0), (loose, 0.5)):
        curve = report.layers[0].extra["clean_accuracy_curve"]
        k = len(report.layers[0].pruned)
        assert all(curve[0] - a <= tol * curve[0] + 1e-12 for a in curve[: k + 1])
        if k < len(curve) - 1 and k < int(report.config["max_ratio"] * 8):
            assert curve[0] - curve[k + 1] > tol * curve[0], "stopped before the first step that broke the rule"
    assert len(loose.layers[0].pruned) >= len(strict.layers[0].pruned)
