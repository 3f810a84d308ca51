"""FT-SAM: fine-tuning with sharpness-aware minimisation on the defender's clean samples (Zhu et al.,
"Enhancing Fine-Tuning Based Backdoor Defense with Sharpness-Aware Minimization", ICCV 2023), a baseline for
the repairs beyond pruning (issue 23).

Recipe, from the paper and BackdoorBench's `config/defense/ft-sam/config.yaml`: ASAM with rho 2, SGD lr 0.01,
momentum 0.9, weight decay 5e-4, cosine schedule, label smoothing 0.1, 100 epochs over 5 % of CIFAR-10
(2,500 samples, batch 256: about 1,000 steps). Scaled to our 500 clean samples: the same 100 epochs with
batch 128 (400 steps), every other value unchanged. No choice looks at test data.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batches import Augment, iterate_batches
from ..data.imageset import ImageSet
from ..models.device import model_device
from ..params import param
from ..train import cosine
from .base import Defense, DefenseData, DefenseReport, register_defense
from .sam import sam_step


def sam_fine_tune(
    model: nn.Module,
    data: ImageSet,
    *,
    epochs: int,
    lr: float,
    rho: float,
    batch_size: int = 128,
    weight_decay: float = 5e-4,
    label_smoothing: float = 0.1,
    adaptive: bool = True,
    augment: bool = True,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Fine-tune `model` in place with (A)SAM on `data`; one record (mean loss) per epoch."""
    generator = torch.Generator().manual_seed(seed)
    device = model_device(model)
    steps = max(1, math.ceil(len(data) / batch_size) * epochs)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine(steps))
    history = []
    model.train()
    for epoch in range(epochs):
        total, seen = 0.0, 0
        for images, labels, _ in iterate_batches(
            data, batch_size, device=device, shuffle=True, generator=generator, augment=Augment() if augment else None
        ):

            def loss_fn(images=images, labels=labels) -> torch.Tensor:
                return F.cross_entropy(model(images), labels, label_smoothing=label_smoothing)

            loss = sam_step(model, loss_fn, optimizer, rho=rho, adaptive=adaptive)
            scheduler.step()
            total, seen = total + loss.item() * len(labels), seen + len(labels)
        history.append({"epoch": epoch + 1, "loss": total / max(seen, 1)})
    model.eval()
    return history


@register_defense
@dataclass(eq=False, kw_only=True)
class FTSAM(Defense):
    """Fine-tuning with (adaptive) sharpness-aware minimisation on the clean samples.

    Args:
        epochs: passes over the clean samples.
        lr: initial learning rate of SGD (cosine-annealed to 0).
        rho: radius of the (A)SAM perturbation (FT-SAM: 2 with the adaptive form).
        adaptive: ASAM (perturbation scaled by |w|) rather than plain SAM.
        label_smoothing: of the cross-entropy.
        train_batch_size: samples per step.
        weight_decay: of SGD.
        augment: random crop and flip while fine-tuning.
        seed: seed of the shuffling and augmentation.
        batch_size: samples per forward pass outside training (unused; a uniform interface).
        progress: show progress (unused: the loop is short; a uniform interface).

    Example:
        >>> repaired, report = FTSAM().run(model, DefenseData(clean=clean_500))
    """

    name = "ft-sam"

    epochs: int = param(100, ge=0)
    lr: float = param(0.01, gt=0.0)
    rho: float = param(2.0, ge=0.0)
    adaptive: bool = True
    label_smoothing: float = param(0.1, ge=0.0, lt=1.0)
    train_batch_size: int = param(128, ge=1)
    weight_decay: float = param(5e-4, ge=0.0)
    augment: bool = True
    seed: int = 0

    def run(self, model: nn.Module, data: DefenseData) -> tuple[nn.Module, DefenseReport]:
        start = time.perf_counter()
        clean = data.require("clean", "FT-SAM")
        repaired = copy.deepcopy(model)
        history = sam_fine_tune(
            repaired,
            clean,
            epochs=self.epochs,
            lr=self.lr,
            rho=self.rho,
            batch_size=self.train_batch_size,
            weight_decay=self.weight_decay,
            label_smoothing=self.label_smoothing,
            adaptive=self.adaptive,
            augment=self.augment,
            seed=self.seed,
        )
        report = DefenseReport(
            method=self.name,
            config=self.params(),
            layers=[],
            samples=len(clean),
            seconds=time.perf_counter() - start,
            extra={"history": history},
        )
        return repaired, report
