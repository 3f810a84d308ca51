"""Training: the paper's recipe (section 5.1) as one loop, with the device taken from the model.

SGD with momentum 0.9, weight decay 5e-4, initial learning rate 0.1 and a cosine schedule, batch size 128,
random crop and horizontal flip. The schedule is annealed per step rather than per epoch so that the
short CPU presets (2 to 5 epochs) still end at a learning rate near zero.

What is minimised is pluggable: a loss function of the (augmented) batch (cross-entropy by default; the
adaptive attacks' regularised losses; NAD's distillation), or an `Objective` that builds its own inputs
from the batch and trains parameters of its own beside the model's (IAB's pattern generator).
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .data.batches import Augment, augment_batch, iterate_batches
from .data.imageset import ImageSet
from .errors import InvalidInput
from .models.device import model_device
from .params import check_fields, from_dict

# loss_fn(model, images, labels, positions) -> scalar loss of a training batch; `positions` are the batch's
# positions in the training set (adaptive attacks need to know which samples are poisoned).
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Schedule = tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]


def option(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A config field with its help text (and choices), which the command line shows as an option."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    """Hyperparameters of one training run (defaults: the paper's)."""

    epochs: int = option(150, "training epochs (the paper: 150 on CIFAR-10, 100 on Tiny-ImageNet)")
    batch_size: int = option(128, "samples per step (the paper's text; its code uses 512)")
    lr: float = option(0.1, "initial learning rate")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(5e-4, "SGD weight decay")
    schedule: str = option(
        "cosine", "learning rate: cosine (annealed per step to 0) or constant", choices=("cosine", "constant")
    )
    augment: Augment | None = field(default_factory=Augment)  # None: no augmentation

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = Augment(**self.augment)
        check_fields(self, "training config")  # types, finite numbers, choices
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise InvalidInput("epochs and batch_size must be positive, lr must be > 0")
        if self.schedule not in ("cosine", "constant"):
            raise InvalidInput(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        return from_dict(cls, values, "training options")


def cross_entropy_loss(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor | None = None
) -> torch.Tensor:
    return F.cross_entropy(model(images), labels)


def cosine(total_steps: int) -> Callable[[int], float]:
    """The per-step cosine factor of the learning rate: 1 at step 0, 0 at `total_steps` and after."""
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


def make_optimizer(model: nn.Module, config: TrainConfig, steps: int) -> Schedule:
    """SGD and a per-step cosine (or constant) learning-rate schedule over `steps` steps."""
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    schedule = cosine(steps) if config.schedule == "cosine" else (lambda step: 1.0)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


class Objective(ABC):
    """What `train_model` minimises when a loss of the augmented batch is not enough.

    It receives each batch before augmentation (with the generator, so it can build its own inputs and
    augment them after), returns the loss and any other terms to log, and may train parameters of its own
    (`optimizers`), stepped with the model's.
    """

    @abstractmethod
    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        positions: torch.Tensor,
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        """{"loss": the scalar to minimise, other names: terms averaged into the epoch's record}."""

    def optimizers(self, steps: int) -> list[Schedule]:
        """Optimizers (with schedules over `steps` steps) of parameters trained beside the model's."""
        return []


class LossObjective(Objective):
    """A loss function of the batch after the training augmentation."""

    def __init__(self, loss_fn: LossFn, augment: Augment | None) -> None:
        self.loss_fn, self.augment = loss_fn, augment

    def __call__(self, model, images, labels, positions, generator):
        if self.augment is not None:
            images = augment_batch(images, self.augment, generator)
        return {"loss": self.loss_fn(model, images, labels, positions)}


def train_model(
    model: nn.Module,
    data: ImageSet,
    config: TrainConfig,
    *,
    generator: torch.Generator,
    loss_fn: LossFn | Objective = cross_entropy_loss,
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
        loss_fn: (model, images, labels, positions) -> loss, or an `Objective`.
        progress: show a progress bar on stderr.
        desc: label of the progress bar.
    """
    objective = loss_fn if isinstance(loss_fn, Objective) else LossObjective(loss_fn, config.augment)
    device = model_device(model)
    steps = math.ceil(len(data) / config.batch_size) * config.epochs
    optimizer, scheduler = make_optimizer(model, config, steps)
    schedules = [(optimizer, scheduler), *objective.optimizers(steps)]
    history = []
    model.train()
    for epoch in range(config.epochs):
        start, sums, seen = time.perf_counter(), {}, 0
        with tqdm(
            total=len(data), desc=f"{desc} {epoch + 1}/{config.epochs}", unit="img", disable=not progress, leave=False
        ) as bar:
            for images, labels, positions in iterate_batches(
                data, config.batch_size, device=device, shuffle=True, generator=generator
            ):
                terms = objective(model, images, labels, positions, generator)
                loss = terms["loss"]
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"training loss became {loss.item()} in epoch {epoch + 1}; lower the learning rate"
                    )
                for opt, _ in schedules:
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                for opt, _ in schedules:
                    opt.step()
                for _, sched in schedules:
                    sched.step()
                n = len(labels)
                for key, value in terms.items():
                    sums[key] = sums.get(key, 0.0) + value.item() * n
                seen += n
                bar.set_postfix(loss=sums["loss"] / seen, lr=scheduler.get_last_lr()[0], refresh=False)
                bar.update(n)
        seconds = time.perf_counter() - start
        history.append(
            {
                "epoch": epoch + 1,
                **{k: v / max(seen, 1) for k, v in sums.items()},
                "seconds": seconds,
                "images_per_second": seen / seconds if seconds > 0 else 0.0,
            }
        )
    model.eval()
    return history
