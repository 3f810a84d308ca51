"""The model registry: `create_model(name, **kwargs)`, `list_models(pattern)`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import InvalidInput
from ..params import Parameter, check_known, check_value, parameters
from ..registry import Registry
from .external import create_external, input_repeat, is_external
from .normalize import Normalized

MODELS: Registry[nn.Module] = Registry("model")
MAX_ELEMENTS = 2**31  # parameters and buffers of one model: 8 GiB in float32


def register_model(name: str | None = None) -> Callable:
    return MODELS.register(name)


# Every model takes this one besides its own: 1 with a 3-channel stem repeats grey images (see `create_model`).
IMAGE_CHANNELS = Parameter("image_channels", None, int | None)


def model_parameters(name: str) -> dict[str, Parameter]:
    """The arguments a model accepts (an explicit list: nothing else reaches its factory)."""
    if is_external(name):
        library, model = name.split(":", 1)
        if not model:
            raise InvalidInput(f"{name!r} names no model; write {library}:NAME, e.g. {library}:resnet18")
        return parameters(create_external, skip=("name",))
    return {**parameters(MODELS.get(name)), "image_channels": IMAGE_CHANNELS}


def check_model_args(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` checked against what model `name` declares: known names, the declared types, sizes >= 1.

    `bdprune.config.configure` calls it before any data is loaded, so `--width 0` fails at once.
    """
    declared = model_parameters(name)
    check_known(f"model {name!r}", list(kwargs), list(declared))
    kwargs = {k: check_value(f"model {name!r}: {k}", v, declared[k].annotation) for k, v in kwargs.items()}
    for key in ("num_classes", "in_channels", "base_width", "depth", "widen", "image_channels"):
        if kwargs.get(key) is not None and kwargs[key] < 1:
            raise InvalidInput(f"model {name!r}: {key} must be >= 1, got {kwargs[key]}")
    return kwargs


def create_model(name: str, *, meta: bool = False, **kwargs: Any) -> nn.Module:
    """Build a registered model, or "torchvision:NAME" / "timm:NAME" (see `bdprune.models.external`).

    `image_channels=1` with `in_channels=3` makes a model that takes grey images and repeats them to its
    3-channel stem (a network trained on grey images copied to RGB); any model accepts it.

    Unknown keyword arguments are an error (they would be silently lost), and so are values of the wrong
    type. The model is first built on the meta device (shapes, no memory): one whose sizes would exceed
    MAX_ELEMENTS numbers is refused before anything is allocated. `meta=True` returns that shape-only model.
    """
    declared = model_parameters(name)
    kwargs = check_model_args(name, kwargs)

    def factory() -> nn.Module:
        if is_external(name):
            return create_external(name, **kwargs)
        own = {k: v for k, v in kwargs.items() if k != "image_channels"}
        stem = own.get("in_channels", declared["in_channels"].default if "in_channels" in declared else 3)
        repeat = input_repeat(name, stem, kwargs.get("image_channels"))
        return Normalized(MODELS.create(name, **own), None, None, repeat) if repeat > 1 else MODELS.create(name, **own)

    with torch.device("meta"):
        shell = factory()
    size = sum(t.numel() for t in (*shell.parameters(), *shell.buffers()))
    if size > MAX_ELEMENTS:
        raise InvalidInput(
            f"model {name!r} with {kwargs} would hold {size:,} numbers (more than {MAX_ELEMENTS:,}); "
            "check its width, classes and channels"
        )
    return shell if meta else factory()


def list_models(pattern: str = "*") -> list[str]:
    return MODELS.names(pattern)
