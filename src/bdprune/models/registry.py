"""The model registry: `create_model(name, **kwargs)`, `list_models(pattern)`."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from ..registry import Registry

MODELS: Registry[nn.Module] = Registry("model")


def register_model(name: str | None = None) -> Callable:
    return MODELS.register(name)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model, or "torchvision:NAME" / "timm:NAME" (see `bdprune.models.external`).

    Unknown keyword arguments are an error (they would be silently lost).
    """
    from .external import create_external, is_external

    if is_external(name):
        return create_external(name, **kwargs)
    try:
        return MODELS.create(name, **kwargs)
    except TypeError as exc:
        raise TypeError(f"model {name!r}: {exc}") from None


def list_models(pattern: str = "*") -> list[str]:
    return MODELS.names(pattern)
