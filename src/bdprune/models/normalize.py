"""Input normalisation as the model's first layer.

Putting it inside the model means every other part of bdprune (attacks, metrics, defenses) feeds images in
[0, 1] and can never forget or double the normalisation; the statistics travel with the weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import InvalidInput


class Normalize(nn.Module):
    """(x - mean) / std per channel; identity when mean and std are None.

    Args:
        mean: per-channel means of [0, 1] images.
        std: per-channel standard deviations (all positive).
    """

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        if (mean is None) != (std is None):
            raise InvalidInput("give both mean and std, or neither")
        if std is not None and min(std) <= 0:
            raise InvalidInput(f"std must be positive, got {list(std)}")
        if mean is not None and len(mean) != len(std):  # type: ignore[arg-type]
            raise InvalidInput("mean and std must have one entry per channel")
        self.enabled = mean is not None
        self.register_buffer("mean", torch.tensor(mean if mean is not None else [0.0]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std if std is not None else [1.0]).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        return (x - self.mean) / self.std


class Normalized(nn.Module):
    """Wrap a model that expects normalised input (e.g. a torchvision ResNet) so it takes [0, 1] images.

    Args:
        model: the network; its state dict is the wrapped one's (`bdprune.models.weights_of`).
        mean, std: the statistics it was trained with (None: it takes [0, 1] images as they are); one value,
            or one per channel of the network.
        repeat: grey images are repeated this many times along the channels first (3: a network trained on
            grey images copied to RGB, as torchvision's `Grayscale(num_output_channels=3)` makes them).
    """

    def __init__(
        self, model: nn.Module, mean: Sequence[float] | None, std: Sequence[float] | None, repeat: int = 1
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.model = model
        self.repeat = repeat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.repeat > 1:
            x = x.expand(-1, self.repeat, -1, -1)  # (N, 1, H, W) -> (N, repeat, H, W), a view
        return self.model(self.normalize(x))
