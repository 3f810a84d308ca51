"""Training: the paper's recipe (section 5.1) as plain functions with the device taken from the model.

SGD with momentum 0.9, weight decay 5e-4, initial learning rate 0.1 and a cosine schedule, batch size 128,
random crop and horizontal flip. The schedule is annealed per step rather than per epoch so that the
short CPU presets (2 to 5 epochs) still end at a learning rate near zero.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .data.batches import Augment, iterate_batches
from .data.imageset import ImageSet
from .metrics import model_device
from .progress import Progress

# loss_fn(model, images, labels) -> scalar loss; the default is cross-entropy on the model's logits. A loss_fn
# whose `uses_positions` attribute is True is called as loss_fn(model, images, labels, positions), the batch's
# positions in the training set (adaptive attacks need to know which samples are poisoned).
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class TrainConfig:
    """Hyperparameters of one training run (defaults: the paper's)."""

    epochs: int = 150  # the paper: 150 on CIFAR-10, 100 on Tiny-ImageNet
    batch_size: int = 128  # the paper's text (its code uses 512)
    lr: float = 0.1  # initial learning rate
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # "cosine" (annealed per step to 0) or "constant"
    augment: Augment | None = field(default_factory=Augment)  # None: no augmentation

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs and batch_size must be positive, lr must be > 0")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if isinstance(self.augment, dict):
            self.augment = Augment(**self.augment)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)


def cross_entropy_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(images), labels)


def make_optimizer(model: nn.Module, config: TrainConfig, steps: int):
    """SGD and a per-step cosine (or constant) learning-rate schedule over `steps` steps."""
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    if config.schedule == "cosine":
        schedule = lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))  # noqa: E731
    else:
        schedule = lambda step: 1.0  # noqa: E731
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def train_model(
    model: nn.Module,
    data: ImageSet,
    config: TrainConfig,
    *,
    generator: torch.Generator,
    loss_fn: LossFn = cross_entropy_loss,
    progress: bool = True,
    desc: str = "train",
) -> list[dict[str, float]]:
    """Train `model` in place on `data` and return one record per epoch (loss, time, throughput).

    Args:
        model: the network, already on its compute device; batches are moved there.
        data: the (possibly poisoned) training set.
        config: hyperparameters.
        generator: randomness for shuffling and augmentation; with the same model initialisation it makes
            a CPU run repeat exactly.
        loss_fn: (model, images, labels) -> loss, for attacks that train with an extra objective.
        progress: show a progress bar on stderr.
        desc: label of the progress bar.
    """
    device = model_device(model)
    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    optimizer, scheduler = make_optimizer(model, config, steps_per_epoch * config.epochs)
    history = []
    model.train()
    for epoch in range(config.epochs):
        start = time.perf_counter()
        total_loss = seen = 0.0
        with Progress(len(data), f"{desc} {epoch + 1}/{config.epochs}", "img", enabled=progress) as bar:
            for images, labels, positions in iterate_batches(
                data, config.batch_size, device=device, shuffle=True, generator=generator, augment=config.augment
            ):
                if getattr(loss_fn, "uses_positions", False):
                    loss = loss_fn(model, images, labels, positions)  # type: ignore[call-arg]
                else:
                    loss = loss_fn(model, images, labels)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"training loss became {loss.item()} in epoch {epoch + 1}; lower the learning rate"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                n = len(labels)
                total_loss += loss.item() * n
                seen += n
                bar.update(n, loss=total_loss / seen, lr=scheduler.get_last_lr()[0])
        seconds = time.perf_counter() - start
        history.append({"epoch": epoch + 1, "loss": total_loss / max(seen, 1), "seconds": seconds,
                        "images_per_second": seen / seconds if seconds > 0 else 0.0})
    model.eval()
    return history
