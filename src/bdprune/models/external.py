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

from torch import nn

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
    **kwargs,
) -> nn.Module:
    """Build `library:model` with random weights, wrapped with input normalisation."""
    library, model_name = name.split(":", 1)
    try:
        lib = importlib.import_module(library)
    except ImportError:
        raise ImportError(f"{name!r} needs the {library} package, which bdprune does not install: "
                          f"pip install {library}") from None
    if library == "torchvision":
        factory = getattr(lib.models, model_name, None)
        if factory is None:
            raise KeyError(f"torchvision.models has no {model_name!r}")
        if in_channels != 3:
            raise ValueError("torchvision models take 3-channel images")
        model = factory(weights=None, num_classes=num_classes, **kwargs)
    else:
        model = lib.create_model(model_name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
    mean = mean if mean is not None else [0.0] * in_channels
    std = std if std is not None else [1.0] * in_channels
    return Normalized(model, mean, std)
