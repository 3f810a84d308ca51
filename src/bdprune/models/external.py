"""Models from torchvision or timm, by name, wrapped to take [0, 1] images.

`create_model("torchvision:resnet18", num_classes=10, in_channels=3, mean=..., std=...)` builds
`torchvision.models.resnet18(num_classes=10)` (no downloaded weights) inside a `Normalized` wrapper; the
foreign state dict is loaded into `wrapper.model`. Neither library is a dependency of bdprune: it is
imported only when such a name is used. The defenses work on these models unchanged, because they find
(conv, BN) pairs by watching a forward pass, not by module names.
"""

from __future__ import annotations

import importlib
from typing import Sequence

import torch
from torch import nn

from ..errors import InvalidInput, UnknownName
from .normalize import Normalized

LIBRARIES = ("torchvision", "timm")


def is_external(name: str) -> bool:
    return name.split(":", 1)[0] in LIBRARIES and ":" in name


def create_external(
    name: str,
    num_classes: int = 1000,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Module:
    """Build `library:model` with random weights, wrapped with input normalisation.

    Only these arguments reach the library's factory: a file never passes anything else through (timm's
    `checkpoint_path`, for one, would make timm unpickle a file of the attacker's choosing).
    """
    library, model_name = name.split(":", 1)
    if not model_name:
        raise InvalidInput(f"{name!r} names no model; write {library}:NAME, e.g. {library}:resnet18")
    try:
        lib = importlib.import_module(library)
    except ImportError:
        raise InvalidInput(f"{name!r} needs the {library} package, which bdprune does not install: "
                           f"pip install {library}") from None
    if library == "torchvision":
        factory = getattr(lib.models, model_name, None)
        if factory is None:
            raise UnknownName(f"torchvision.models has no {model_name!r}")
        if in_channels != 3:
            raise InvalidInput("torchvision models take 3-channel images")
        model = factory(weights=None, num_classes=num_classes)
    else:
        if not lib.is_model(model_name):
            raise UnknownName(f"timm has no model {model_name!r} (see timm.list_models())")
        model = lib.create_model(model_name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    mean = mean if mean is not None else [0.0] * in_channels
    std = std if std is not None else [1.0] * in_channels
    return Normalized(model, mean, std)


def weights_of(model: nn.Module) -> nn.Module:
    """The module a state dict from its authors fits: a torchvision or timm network's file lacks our input
    normalisation, so it is the wrapped network; any other model is itself."""
    return model.model if isinstance(model, Normalized) else model


def load_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a state dict as its authors saved it (see `weights_of`), strictly."""
    weights_of(model).load_state_dict(state, strict=True)
