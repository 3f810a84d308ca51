"""Wide ResNet (Zagoruyko and Komodakis, 2016), WRN-depth-k; the paper's appendix C uses WRN-28-1.

Blocks are pre-activation (BN -> ReLU -> conv). The second BN of each block reads the first conv's output
directly; the first BN of each block reads the block input (a residual sum, or the stem conv's output for
the very first block).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInput
from .normalize import Normalize
from .registry import register_model


class WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = F.relu(self.bn2(self.conv1(out)))
        if self.dropout > 0:
            out = F.dropout(out, self.dropout, self.training)
        return self.conv2(out) + shortcut


class WideResNet(nn.Module):
    """WRN-depth-widen.

    Args:
        depth: 6n + 4 (28 gives n = 4 blocks per stage).
        widen: width multiplier k (stages have 16k, 32k, 64k channels).
        num_classes, in_channels, mean, std: as for `bdprune.models.resnet.ResNet`.
        dropout: dropout rate between the two convs of a block.
    """

    def __init__(
        self,
        depth: int = 28,
        widen: int = 1,
        num_classes: int = 10,
        in_channels: int = 3,
        dropout: float = 0.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise InvalidInput(f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        stages, in_planes = [], widths[0]
        for i, planes in enumerate(widths[1:]):
            layer = []
            for j in range(n):
                layer.append(WideBlock(in_planes, planes, (1 if i == 0 else 2) if j == 0 else 1, dropout))
                in_planes = planes
            stages.append(nn.Sequential(*layer))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.conv1(self.normalize(x))
        feats = []
        for stage in (self.block1, self.block2, self.block3):
            out = stage(out)
            feats.append(out)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.features(x)[-1]))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


@register_model()
def wrn28_1(
    num_classes: int = 10,
    in_channels: int = 3,
    depth: int = 28,
    widen: int = 1,
    dropout: float = 0.0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> WideResNet:
    """WRN-28-1 (appendix C of the paper); depth and widen can be overridden."""
    return WideResNet(depth, widen, num_classes, in_channels, dropout, mean, std)
