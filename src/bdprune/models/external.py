"""Models from torchvision or timm, by name, wrapped to take [0, 1] images.

`create_model("torchvision:resnet18", num_classes=10, in_channels=1, mean=..., std=...)` builds
`torchvision.models.resnet18(num_classes=10)` (no downloaded weights) with a 1-channel stem, inside a
`Normalized` wrapper; the foreign state dict is loaded into `wrapper.model`. Neither library is a
dependency of bdprune: it is imported only when such a name is used. The defenses work on these models
unchanged, because they find BN layers by watching a forward pass, not by module names.

Two channel layouts of a grey-image model are supported, for every registry prefix: a stem of its own
(`in_channels=1`: timm's `in_chans`; for torchvision the stem conv is rebuilt with one input channel and
its other settings), or grey images repeated to the stem's channels (`in_channels=3, image_channels=1`).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import InvalidInput, UnknownName
from .normalize import Normalized

LIBRARIES = ("torchvision", "timm")


def is_external(name: str) -> bool:
    return name.split(":", 1)[0] in LIBRARIES and ":" in name


def import_library(library: str, name: str):
    """torchvision or timm, or one clear line: not installed, or installed but broken (e.g. built for
    another torch, which raises at import)."""
    try:
        return importlib.import_module(library)
    except ImportError:
        raise InvalidInput(
            f"{name!r} needs the {library} package, which bdprune does not install: pip install {library}"
        ) from None
    except Exception as exc:
        raise InvalidInput(
            f"{name!r} needs {library}, which is installed but fails to import "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); install the "
            f"{library} build that matches torch {torch.__version__}"
        ) from None


def create_external(
    name: str,
    num_classes: int = 1000,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    image_channels: int | None = None,
) -> nn.Module:
    """Build `library:model` with random weights, wrapped with input normalisation.

    Args:
        name: "torchvision:NAME" or "timm:NAME".
        num_classes: outputs of the classifier.
        in_channels: channels of the network's stem.
        mean, std: the input normalisation the network was trained with (None: [0, 1] images as they are).
        image_channels: channels of the images it is given (default `in_channels`); 1 with a 3-channel
            stem repeats a grey image to the stem's channels.

    Only these arguments reach the library's factory: a file never passes anything else through (timm's
    `checkpoint_path`, for one, would make timm unpickle a file of the attacker's choosing).
    """
    library, model_name = name.split(":", 1)
    if not model_name:
        raise InvalidInput(f"{name!r} names no model; write {library}:NAME, e.g. {library}:resnet18")
    repeat = input_repeat(name, in_channels, image_channels)
    if mean is not None and len(mean) not in (1, in_channels):
        each = f" or {in_channels} (one per channel)" if in_channels > 1 else ""
        raise InvalidInput(
            f"model {name!r}: mean and std need one value{each} for its {in_channels}-channel stem, got {len(mean)}"
        )
    lib = import_library(library, name)
    if library == "torchvision":
        if model_name not in lib.models.list_models(module=lib.models):  # classification models only
            raise UnknownName(
                f"torchvision.models has no classification model {model_name!r} (see torchvision.models.list_models())"
            )
        model = lib.models.get_model(model_name, weights=None, num_classes=num_classes)
        if in_channels != 3:
            set_stem_channels(model, in_channels, name)
    else:
        if not lib.is_model(model_name):
            raise UnknownName(f"timm has no model {model_name!r} (see timm.list_models())")
        model = lib.create_model(model_name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    return Normalized(model, mean, std, repeat)


def input_repeat(name: str, in_channels: int, image_channels: int | None) -> int:
    """How often a grey image is repeated to fill the stem (1: images go in as they are)."""
    if image_channels is None or image_channels == in_channels:
        return 1
    if image_channels != 1:
        raise InvalidInput(
            f"model {name!r}: images of {image_channels} channels cannot feed a stem of {in_channels}; "
            "only grey images (1 channel) are repeated to the stem's channels"
        )
    return in_channels


def set_stem_channels(model: nn.Module, channels: int, name: str) -> None:
    """Rebuild the network's first conv (its stem) to take `channels` input channels, keeping its other
    settings: what a user does to train a torchvision network on grey images."""
    stem = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if stem is None or stem[1].in_channels != 3 or stem[1].groups != 1:
        raise InvalidInput(
            f"model {name!r}: its first layer is not a plain 3-channel conv, so bdprune cannot give it "
            f"{channels} input channel(s); use image_channels=1 with in_channels=3 to repeat grey images"
        )
    path, conv = stem
    parent = model.get_submodule(path.rpartition(".")[0]) if "." in path else model
    setattr(
        parent,
        path.rpartition(".")[2],
        nn.Conv2d(
            channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
        ),
    )


def weights_of(model: nn.Module) -> nn.Module:
    """The module a state dict from its authors fits: the wrapped network of a `Normalized` (its input
    normalisation and channel repeat come from its arguments, not from its file); any other model is itself."""
    return model.model if isinstance(model, Normalized) else model


def load_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a state dict as its authors saved it (see `weights_of`), strictly."""
    weights_of(model).load_state_dict(state, strict=True)
