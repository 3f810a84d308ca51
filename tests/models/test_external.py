"""torchvision and timm models by name (issue 13, item 1): both channel layouts of a grey-image network, and a
state dict that fits the user's own architecture. The real libraries where they import (a CUDA build on the CPU
is fine); skipped with the reason where they do not, e.g. a torchvision built for another torch."""

import importlib

import pytest
import torch
from torch import nn

import bdprune.models.external as external
from bdprune.errors import InvalidInput
from bdprune.models import create_model, weights_of


def library(name: str):
    try:
        return importlib.import_module(name)
    except Exception as exc:
        pytest.skip(
            f"{name} does not import here: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        )


def same_function(ours: nn.Module, theirs: nn.Module, x: torch.Tensor, feed) -> bool:
    weights_of(ours).load_state_dict(theirs.state_dict())  # strict: every key and shape of the user's network
    return torch.allclose(ours.eval()(x), theirs.eval()(feed(x)), atol=1e-5)


def grey(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def test_torchvision_with_a_one_channel_stem():
    tv = library("torchvision")
    theirs = tv.models.resnet18(num_classes=10)
    theirs.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)  # what a user writes
    ours = create_model("torchvision:resnet18", num_classes=10, in_channels=1, mean=[0.286], std=[0.353])
    assert same_function(ours, theirs, grey(), lambda x: (x - 0.286) / 0.353)


def test_torchvision_on_grey_images_repeated_to_three_channels():
    tv = library("torchvision")
    theirs = tv.models.resnet18(num_classes=10)
    ours = create_model("torchvision:resnet18", num_classes=10, in_channels=3, image_channels=1)
    assert same_function(ours, theirs, grey(), lambda x: x.repeat(1, 3, 1, 1))


@pytest.mark.parametrize("layout", ["stem", "repeat"])
def test_timm_in_both_layouts(layout):
    timm = library("timm")
    stem = 1 if layout == "stem" else 3
    theirs = timm.create_model("resnet18", num_classes=10, in_chans=stem)
    ours = create_model("timm:resnet18", num_classes=10, in_channels=stem, image_channels=1, mean=[0.5], std=[0.5])
    assert same_function(ours, theirs, grey(), lambda x: (x.expand(-1, stem, -1, -1) - 0.5) / 0.5)


def test_our_own_models_take_grey_images_repeated_too():
    model = create_model("resnet18", num_classes=4, in_channels=3, image_channels=1, base_width=4)
    assert weights_of(model).conv1.in_channels == 3 and model(grey()).shape == (2, 4)


def test_layouts_that_cannot_be_are_one_clear_error():
    with pytest.raises(InvalidInput, match="images of 2 channels cannot feed a stem of 3"):
        create_model("resnet18", in_channels=3, image_channels=2)
    with pytest.raises(InvalidInput, match="mean and std need one value for its 1-channel stem, got 3"):
        create_model("timm:resnet18", in_channels=1, mean=[0.5, 0.5, 0.5], std=[1, 1, 1])


def test_unknown_names_are_named():
    library("torchvision")
    with pytest.raises(KeyError, match="no classification model 'get_model'"):
        create_model("torchvision:get_model")


def test_a_library_that_fails_to_import_is_one_line(monkeypatch):
    def broken(name):
        raise RuntimeError("operator torchvision::nms does not exist\nmore lines")

    monkeypatch.setattr(external.importlib, "import_module", broken)
    with pytest.raises(
        InvalidInput,
        match=r"installed but fails to import \(RuntimeError: operator torchvision::nms "
        r"does not exist\); install the torchvision build that matches torch",
    ):
        create_model("torchvision:resnet18")
