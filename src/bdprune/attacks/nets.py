"""Small networks the learned attacks train: an image-to-image U-Net and a bit decoder.

Kept small on purpose (tens of thousands of parameters at width 16) so that an attack fits in minutes on a
CPU. GroupNorm rather than BatchNorm: the generators behave the same in training and evaluation mode, so
the trigger applied at test time is the one the classifier was trained on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 convolutions with GroupNorm and ReLU; spatial size kept."""
    groups = 4 if cout % 4 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.GroupNorm(groups, cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.GroupNorm(groups, cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """Two-level U-Net: (N, in_channels, H, W) -> (N, out_channels, H, W) raw outputs (no final activation).

    Any H, W >= 4 works: the decoder upsamples to the skip connection's size, so odd sizes (7 = 28 / 4) are
    fine. IAB's generators and SSBA's StegaStamp-style encoder are both built from it.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        width: channels of the first level (the second has 2x, the bottleneck 4x).
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = 16) -> None:
        super().__init__()
        self.down1 = conv_block(in_channels, width)
        self.down2 = conv_block(width, 2 * width)
        self.bottom = conv_block(2 * width, 4 * width)
        self.up2 = conv_block(4 * width + 2 * width, 2 * width)
        self.up1 = conv_block(2 * width + width, width)
        self.head = nn.Conv2d(width, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(x)  # (N, w, H, W)
        d2 = self.down2(F.max_pool2d(d1, 2))  # (N, 2w, H/2, W/2)
        b = self.bottom(F.max_pool2d(d2, 2))  # (N, 4w, H/4, W/4)
        u2 = self.up2(torch.cat([F.interpolate(b, size=d2.shape[-2:], mode="nearest"), d2], 1))  # (N, 2w, H/2, W/2)
        u1 = self.up1(torch.cat([F.interpolate(u2, size=d1.shape[-2:], mode="nearest"), d1], 1))  # (N, w, H, W)
        return self.head(u1)


class BitDecoder(nn.Module):
    """Image (N, C, H, W) -> bit logits (N, bits): StegaStamp's decoder in miniature (strided convs + MLP)."""

    def __init__(self, in_channels: int, bits: int, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(4 * width, 4 * width, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * width, 8 * width), nn.ReLU(inplace=True), nn.Linear(8 * width, bits)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
