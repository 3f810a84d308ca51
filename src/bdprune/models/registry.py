"""The model registry: `create_model(name, **kwargs)`, `list_models(pattern)`."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from ..params import Parameter, check_known, check_value, parameters
from ..registry import Registry
from .external import create_external, is_external

MODELS: Registry[nn.Module] = Registry("model")


def register_model(name: str | None = None) -> Callable:
    return MODELS.register(name)


def model_parameters(name: str) -> dict[str, Parameter]:
    """The arguments a model accepts (an explicit list: nothing else reaches its factory)."""
    if is_external(name):
        return parameters(create_external, skip=("name",))
    return parameters(MODELS.get(name))


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model, or "torchvision:NAME" / "timm:NAME" (see `bdprune.models.external`).

    Unknown keyword arguments are an error (they would be silently lost), and so are values of the wrong type.
    """
    declared = model_parameters(name)
    check_known(f"model {name!r}", list(kwargs), list(declared))
    kwargs = {k: check_value(f"model {name!r}: {k}", v, declared[k].annotation) for k, v in kwargs.items()}
    if is_external(name):
        return create_external(name, **kwargs)
    return MODELS.create(name, **kwargs)


def list_models(pattern: str = "*") -> list[str]:
    return MODELS.names(pattern)
