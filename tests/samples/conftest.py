"""Fixtures of the detection tests: a tiny ResNet and a few random one-channel images."""

from __future__ import annotations

import pytest
import torch

from bdprune.data import ImageSet
from bdprune.models import create_model


@pytest.fixture(scope="module")
def tiny():
    """(a ResNet-18 of width 4 for 16 x 16 one-channel images in eval mode, 48 random samples of 4 classes)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (48, 1, 16, 16), generator=g, dtype=torch.uint8)
    data = ImageSet(images, torch.arange(48) % 4, tuple(f"c{i}" for i in range(4)), name="tiny")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model("resnet18", base_width=4, num_classes=4, in_channels=1)
    return model.eval(), data
