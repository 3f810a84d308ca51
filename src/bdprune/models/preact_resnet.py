"""Pre-activation ResNet-18 (He et al., "Identity Mappings in Deep Residual Networks", 2016).

BackdoorBench's default network. Here the first BN of each block and the final BN read a residual sum, not
a conv output; only the second BN of each block sits directly after a convolution. The defenses read every
BN's input all the same (a residual sum is still the pre-activation of the ReLU after the BN) and silence
the neurons of the residual BNs at the BN (`bdprune.neurons.layers`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .normalize import Normalize
from .registry import register_model


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """Pre-activation ResNet for small images; arguments as `bdprune.models.resnet.ResNet`."""

    def __init__(
        self,
        blocks: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 3,
        base_width: int = 64,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, base_width, 3, 1, 1, bias=False)
        stages, in_planes = [], base_width
        for i, count in enumerate(blocks):
            planes, stride = base_width * 2**i, 1 if i == 0 else 2
            layer = []
            for j in range(count):
                layer.append(PreActBlock(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.conv1(self.normalize(x))
        feats = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            out = stage(out)
            feats.append(out)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.features(x)[-1]))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


@register_model()
def preact_resnet18(
    num_classes: int = 10,
    in_channels: int = 3,
    base_width: int = 64,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> PreActResNet:
    """PreAct-ResNet-18 (BackdoorBench's default)."""
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels, base_width, mean, std)
