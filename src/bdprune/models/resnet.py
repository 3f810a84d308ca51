"""CIFAR-style ResNet-18 (He et al. 2016): 3x3 stem, no max-pool, four stages of two basic blocks.

Every convolution feeds a BatchNorm directly, so each BN input is a conv output: the pre-activation the
paper analyses (section 3.4). Base width 64 is the paper's network; CPU presets use a narrower one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .normalize import Normalize
from .registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet with basic blocks for small images.

    Args:
        blocks: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
        num_classes: output classes.
        in_channels: image channels (1 for Fashion-MNIST, 3 for CIFAR-10).
        base_width: channels of the first stage; later stages have 2x, 4x, 8x.
        mean, std: input normalisation statistics (None: the model takes inputs as they are).
    """

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
        self.bn1 = nn.BatchNorm2d(base_width)
        stages, in_planes = [], base_width
        for i, count in enumerate(blocks):
            planes, stride = base_width * 2**i, 1 if i == 0 else 2
            layer = []
            for j in range(count):
                layer.append(BasicBlock(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(in_planes, num_classes)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of the stem and of each stage, (N, C_i, H_i, W_i) each (used by NAD's attention)."""
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        feats = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            out = stage(out)
            feats.append(out)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(x)[-1]
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))  # (N, C, 1, 1) -> (N, C)


@register_model()
def resnet18(
    num_classes: int = 10,
    in_channels: int = 3,
    base_width: int = 64,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ResNet:
    """ResNet-18 as in the paper (base width 64: 11.2M parameters)."""
    return ResNet((2, 2, 2, 2), num_classes, in_channels, base_width, mean, std)
