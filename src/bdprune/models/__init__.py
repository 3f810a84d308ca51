"""Models: a registry of the networks the paper uses, each taking [0, 1] images."""

from . import preact_resnet, resnet, wide_resnet  # noqa: F401  (register the models)
from .device import choose_device, model_device
from .external import load_weights, weights_of
from .normalize import Normalize, Normalized
from .registry import MODELS, check_model_args, create_model, list_models, model_parameters, register_model

__all__ = [
    "MODELS",
    "Normalize",
    "Normalized",
    "check_model_args",
    "choose_device",
    "create_model",
    "list_models",
    "load_weights",
    "model_device",
    "model_parameters",
    "register_model",
    "weights_of",
]
