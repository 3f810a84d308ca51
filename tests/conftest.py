"""Shared fixtures: tiny synthetic data, and the real Fashion-MNIST files when installed.

Tests marked `fashion_mnist` read the real files and are skipped (with the command that installs them)
where they are missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from bdprune.attacks import ATTACKS, BadNets, LearnedAttack, create_attack
from bdprune.data import ImageSet

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def pytest_collection_modifyitems(config, items):
    if (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        return
    skip = pytest.mark.skip(
        reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist); .ci/run installs it"
    )
    for item in items:
        if "fashion_mnist" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _few_threads():
    # Tests use tiny tensors; more threads only add scheduling overhead on the 2-core CI machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _make_imageset(n: int = 64, shape=(3, 8, 8), classes: int = 4, seed: int = 0, dtype=torch.uint8) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        images = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    else:
        images = torch.rand((n, *shape), generator=g)
    labels = torch.arange(n) % classes
    return ImageSet(images, labels, tuple(f"c{i}" for i in range(classes)), name="synthetic")


@pytest.fixture(scope="session")
def make_imageset():
    """make_imageset(n, shape, classes, seed, dtype) -> a seeded random ImageSet (labels cycle over classes)."""
    return _make_imageset


@pytest.fixture
def tiny_set() -> ImageSet:
    return _make_imageset()


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    return FASHION_MNIST


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A BadNets run on 800 Fashion-MNIST samples, ResNet-18 of width 4, one epoch (seconds), made once."""
    from bdprune.config import configure
    from bdprune.runs import train_run

    out = tmp_path_factory.mktemp("runs") / "badnets"
    config = configure(
        "cpu", attack="badnets", train_subset=800, seed=5, model_args={"base_width": 4}, train={"epochs": 1}
    )
    train_run(config, out, progress=False)
    return out


# Small sizes by parameter name: any learned attack that declares one of them fits in a moment, so a new
# attack is tested by the contract tests with no edit here (at worst more slowly).
SMALL = {
    "width": 4,
    "bits": 8,
    "fit_steps": 3,
    "batch_size": 8,
    "mask_epochs": 1,
    "mask_subset": 0,
    "adv_width": 2,
    "adv_epochs": 1,
    "adv_steps": 1,
    "adv_subset": 0,
    "steps": 3,
}


@pytest.fixture(scope="session")
def build_attack():
    """build_attack(name, seed=0, shape=(1, 8, 8), classes=4, **params): a registered attack from a seeded
    generator; a learned one small (`SMALL`) and fitted on a tiny synthetic set (fits are cached)."""
    fitted: dict = {}

    def build(name: str, seed: int = 0, shape=(1, 8, 8), classes: int = 4, fit: bool = True, **params):
        cls = ATTACKS.get(name)
        small = {k: v for k, v in SMALL.items() if k in cls.parameters()} if issubclass(cls, LearnedAttack) else {}
        make = lambda: create_attack(
            name,
            image_shape=shape,
            num_classes=classes,
            generator=torch.Generator().manual_seed(seed),
            **{**small, **params},
        )
        if not issubclass(cls, LearnedAttack) or not fit:
            return make()
        key = (name, seed, shape, classes, tuple(sorted(params.items(), key=str)))
        if key not in fitted:
            fitted[key] = make().fit(_make_imageset(32, shape, classes, seed=9))
        return fitted[key]

    return build


@pytest.fixture(scope="session")
def labels_for():
    """labels_for(attack, n): labels of samples the attack may poison (the target class for a clean-label one)."""
    return lambda attack, n: (
        torch.full((n,), attack.target) if attack.clean_label else torch.arange(n) % attack.num_classes
    )


class _ToyBackdoored(nn.Module):
    """Two channels: channel 0 reads the bottom-right corner (the trigger), channel 1 the rest of the image;
    the class is 0 when channel 0 fires, else decided by channel 1."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 1.0  # sums a 3x3 window
            # the others respond to dark pixels: a white patch does not move their maxima
            self.conv.weight[1, 0, 1, 1] = -1.0
            self.conv.weight[2, 0, 1, 1] = -0.5
            self.conv.weight[3, 0, 0, 0] = -0.3
        self.bn.eval()

    def forward(self, x):
        h = self.bn(self.conv(x))
        corner = h[:, 0, -2, -2]  # the 3x3 window over the trigger
        rest = -h[:, 1].mean((1, 2))
        logits = torch.stack([8 * (corner - 4) + 0 * rest, rest, -rest], 1)
        return logits


@pytest.fixture
def toy_backdoor():
    """(model, mixed training set, poisoned flags, clean test set, attack): a hand-set 4-neuron conv model on
    8x8 images whose neuron 0 reads the bottom-right 3x3 window and alone makes the backdoor (a white patch
    -> class 0); neurons 1-3 respond to dark pixels, which a white patch does not move."""
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(300, 1, 8, 8, generator=g) * 0.3).float()
    labels = torch.where(images[:, 0].mean((1, 2)) > 0.15, 1, 2)
    labels[::3] = 0  # the target class has samples of its own (the model, a toy, misses them)
    clean = ImageSet(images, labels, ("t", "a", "b"))
    attack = BadNets((1, 8, 8), 3, target=0, size=3, pattern="white")
    poisoned = torch.zeros(300, dtype=torch.bool)
    poisoned[:60] = True
    triggered, targets = attack.apply(images, labels)
    mixed = clean.with_samples(
        torch.where(poisoned[:, None, None, None], triggered, images), torch.where(poisoned, targets, labels)
    )
    return _ToyBackdoored(), mixed, poisoned, clean, attack


def _with_bn_statistics(model: nn.Module, data: ImageSet) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # a cumulative average: exactly the statistics of `data`
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(data.float_images())
    return model.eval()


@pytest.fixture(scope="session")
def with_bn_statistics():
    """with_bn_statistics(model, data): the model in eval mode, its BN running statistics exactly those of data
    (as training on data would track them)."""
    return _with_bn_statistics
