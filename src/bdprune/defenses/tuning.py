"""What the baseline defenses share: fine-tuning a copy on the defender's clean samples, and the report of
a neuron layer pruned by a fixed threshold (ANP, FP) rather than by a z-score rule (EP, BNP, CLP, l-inf).

Fine-tuning uses `bdprune.train.train_model` (SGD, momentum 0.9, cosine schedule annealed per step, crop +
flip) on the clean samples only; its randomness comes from an explicit generator seeded by the defense's
`seed`, so a run repeats exactly on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data.batches import Augment
from ..data.imageset import ImageSet
from ..errors import InvalidInput
from ..params import check_fields, param
from ..train import LossFn, TrainConfig, cross_entropy_loss, train_model
from .base import Defense, LayerReport


@dataclass(frozen=True)
class FineTuneConfig:
    """The fine-tuning recipe of FT, FP and NAD (defaults: BackdoorBench's FT, but 20 epochs, not 100).

    Attributes:
        epochs: passes over the clean samples (0: no fine-tuning).
        lr: initial learning rate of SGD (cosine-annealed to 0 over all steps).
        batch_size: samples per step (the paper trains with 128).
        momentum, weight_decay: of SGD.
        augment: random crop (pad 4) and horizontal flip, as in training.
    """

    epochs: int = 20
    lr: float = 0.01
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = True

    def __post_init__(self) -> None:
        check_fields(self, "fine-tuning")  # types, finite numbers
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise InvalidInput("epochs must be >= 0, batch_size >= 1 and lr > 0")


@dataclass(eq=False, kw_only=True)
class FineTuned(Defense):
    """A defense that fine-tunes on the clean samples (FT, FP, NAD): the recipe's hyperparameters, declared once.

    Args:
        epochs: passes over the clean samples (0: no fine-tuning).
        lr: initial learning rate (cosine-annealed to 0).
        train_batch_size: samples per SGD step.
        weight_decay: of SGD.
        augment: random crop and flip while fine-tuning.
        seed: seed of the shuffling and augmentation.
    """

    epochs: int = param(20, ge=0)
    lr: float = param(0.01, gt=0.0)
    train_batch_size: int = param(128, ge=1)
    weight_decay: float = param(5e-4, ge=0.0)
    augment: bool = True
    seed: int = 0

    def tuning(self, epochs: int | None = None) -> FineTuneConfig:
        """The recipe, for `epochs` passes (default: `self.epochs`)."""
        return FineTuneConfig(
            epochs=self.epochs if epochs is None else epochs,
            lr=self.lr,
            batch_size=self.train_batch_size,
            weight_decay=self.weight_decay,
            augment=self.augment,
        )


def fine_tune(
    model: nn.Module,
    clean: ImageSet,
    config: FineTuneConfig,
    *,
    seed: int,
    loss_fn: LossFn = cross_entropy_loss,
    progress: bool = False,
    desc: str = "fine-tune",
) -> list[dict[str, float]]:
    """Train `model` in place on the clean samples; returns one record (loss, seconds) per epoch.

    The model must already be the defense's own copy: training changes its weights and BN statistics.
    """
    if config.epochs == 0:
        return []
    train = TrainConfig(
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        schedule="cosine",
        augment=Augment() if config.augment else None,
    )
    return train_model(
        model,
        clean,
        train,
        generator=torch.Generator().manual_seed(seed),
        loss_fn=loss_fn,
        progress=progress,
        desc=desc,
    )


def threshold_report(
    name: str,
    conv: str | None,
    scores: torch.Tensor,
    threshold: float | None,
    pruned: list[int],
    note: str | None = None,
    extra: dict | None = None,
) -> LayerReport:
    """A layer pruned by a fixed threshold on its scores; `z` holds the raw scores (there is no
    standardisation), so plots show the scores against the threshold."""
    values = scores.double().cpu().tolist()
    return LayerReport(
        name=name,
        conv=conv,
        channels=len(values),
        scores=values,
        z=values,
        center=None,
        scale=None,
        threshold=threshold,
        pruned=sorted(pruned),
        note=note,
        extra=extra or {},
    )
