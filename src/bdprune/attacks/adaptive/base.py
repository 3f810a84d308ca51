"""Adaptive (defense-aware) training objectives of appendix G, and their registry.

An adaptive objective replaces the plain cross-entropy of training: it is called on each training batch
with the batch's positions in the (mixed) training set, so it knows which samples carry the trigger, and
returns CE + lambda * (a distance between benign and poisoned representations). `bdprune train
--adaptive NAME` selects one; it is the `loss_fn` of `bdprune.train.train_model`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import InvalidInput
from ...neurons.layers import NeuronLayer, find_neuron_layers
from ...params import Parameter, check_known, check_value, parameters
from ...registry import Registry
from ..base import Attack


class AdaptiveLoss(ABC):
    """CE on the batch plus `weight` times a regulariser on benign vs poisoned representations.

    Args:
        attack: the attack whose trigger is being hidden.
        poisoned: (len(training set),) bool, True for the poisoned samples; indexed with batch positions.
        weight: lambda, the regulariser's weight.
        cross: (len(training set),) bool, True for noise-mode samples (WaNet): neither benign nor poisoned.
    """

    name: ClassVar[str] = ""
    context: ClassVar[tuple[str, ...]] = ("attack", "poisoned", "cross")  # given by the run, not hyperparameters

    def __init__(
        self, attack: Attack, poisoned: torch.Tensor, weight: float, cross: torch.Tensor | None = None
    ) -> None:
        check_value(f"{self.name}: weight", weight, float, {"ge": 0.0})
        self.attack, self.weight = attack, float(weight)
        self.poisoned = poisoned.bool().cpu()
        self.benign = ~(self.poisoned | (cross.bool().cpu() if cross is not None else False))
        self._layers: list[NeuronLayer] | None = None
        self.last_regularizer = 0.0  # the regulariser's value on the last batch (for logs and tests)

    def layers(self, model: nn.Module, images: torch.Tensor) -> list[NeuronLayer]:
        if self._layers is None:
            self._layers = find_neuron_layers(model, images[:1])
            if not self._layers:
                raise InvalidInput(f"{self.name}: the model has no conv or conv-BN layers to regularise")
        return self._layers

    @abstractmethod
    def regularizer(
        self,
        model: nn.Module,
        images: torch.Tensor,
        benign: torch.Tensor,
        poisoned: torch.Tensor,
        logits: list[torch.Tensor],
    ) -> torch.Tensor:
        """The distance term on one batch (`benign`, `poisoned`: (B,) bool masks); may run the training
        forward pass itself and append its logits to `logits`."""

    def __call__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        pos = positions.cpu()
        benign, poisoned = self.benign[pos].to(images.device), self.poisoned[pos].to(images.device)
        logits: list[torch.Tensor] = []
        reg = self.regularizer(model, images, benign, poisoned, logits)
        out = logits[0] if logits else model(images)
        self.last_regularizer = float(reg.detach())
        return F.cross_entropy(out, labels) + self.weight * reg

    def params(self) -> dict[str, Any]:
        return {"weight": self.weight}

    @classmethod
    def parameters(cls) -> dict[str, Parameter]:
        """The declared hyperparameters and their defaults."""
        return parameters(cls, skip=cls.context)


ADAPTIVE: Registry[AdaptiveLoss] = Registry("adaptive attack")


def register_adaptive(cls: type[AdaptiveLoss]) -> type[AdaptiveLoss]:
    ADAPTIVE.register(cls.name)(cls)
    return cls


def create_adaptive_loss(
    name: str, *, attack: Attack, poisoned: torch.Tensor, cross: torch.Tensor | None = None, **params: Any
) -> AdaptiveLoss:
    """Build a registered adaptive objective ("preact-l2" = Eq. (4), "ml-mmd"); unknown params are an error."""
    cls: type[AdaptiveLoss] = ADAPTIVE.get(name)  # type: ignore[assignment]
    check_known(f"adaptive attack {name!r}", list(params), list(cls.parameters()))
    return cls(attack=attack, poisoned=poisoned, cross=cross, **params)


def list_adaptive(pattern: str = "*") -> list[str]:
    return ADAPTIVE.names(pattern)
