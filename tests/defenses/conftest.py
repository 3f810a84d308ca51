"""Fixtures of the defense tests: small one-channel images and a tiny ResNet with BN statistics of its own."""

from __future__ import annotations

import pytest
import torch

from bdprune.data import ImageSet
from bdprune.models import create_model


def _images(n: int = 48, size: int = 16, seed: int = 0, classes: int = 4) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)
    return ImageSet(data, torch.arange(n) % classes, tuple(f"c{i}" for i in range(classes)), name="tiny")


@pytest.fixture(scope="session")
def images():
    """images(n, size, seed, classes): random one-channel uint8 images, labels cycling over the classes."""
    return _images


@pytest.fixture(scope="module")
def tiny(with_bn_statistics):
    """(a ResNet-18 of width 4 for 16 x 16 one-channel images, 48 clean samples)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model("resnet18", base_width=4, num_classes=4, in_channels=1)
    return with_bn_statistics(model, _images(96, seed=1)), _images()
