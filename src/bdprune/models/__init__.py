"""Models: a registry of the networks the paper uses, each taking [0, 1] images."""

from . import preact_resnet, resnet, wide_resnet  # noqa: F401  (register the models)
from .normalize import Normalize, Normalized
from .registry import MODELS, create_model, list_models, register_model

__all__ = ["MODELS", "Normalize", "Normalized", "create_model", "list_models", "register_model"]
