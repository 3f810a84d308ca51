"""Shared fixtures: tiny synthetic data and models, and the real Fashion-MNIST files when installed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bdprune.data import ImageSet

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _few_threads():
    # Tests use tiny tensors; more threads only add scheduling overhead on the 2-core CI machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_imageset(n: int = 64, shape=(3, 8, 8), classes: int = 4, seed: int = 0, dtype=torch.uint8) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        images = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    else:
        images = torch.rand((n, *shape), generator=g)
    labels = torch.arange(n) % classes
    return ImageSet(images, labels, tuple(f"c{i}" for i in range(classes)), name="synthetic")


@pytest.fixture
def tiny_set() -> ImageSet:
    return make_imageset()


def fashion_mnist_available() -> bool:
    return (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file()


requires_fashion_mnist = pytest.mark.skipif(
    not fashion_mnist_available(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist); .ci/run installs it",
)
