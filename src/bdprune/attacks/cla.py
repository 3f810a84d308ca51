"""CLA, the clean-label attack (Turner, Tsipras & Madry, "Label-Consistent Backdoor Attacks", 2019).

Only target-class training images are poisoned and their labels stay correct, so a human inspecting the
labels sees nothing wrong. To make the model rely on the trigger, the poisoned images are first made hard
to classify: a PGD adversarial perturbation (L-infinity eps 8/255, step 1.5/255, 100 steps) computed
against an *adversarially trained* model, whose perturbations change the image's semantics rather than
exploiting brittle features. Then a 3x3 trigger is stamped in all four corners (robust to flips). At test
time only the trigger is applied. The poisoning rate is a fraction of the target class (section 5.1 of the
paper under reproduction; it reports that CLA fails at a 1% rate).

`fit` trains the surrogate with PGD adversarial training (Madry et al., 2018: eps 8/255, step 2/255, random
start) on the attacker's training data. The "paper" budget is a ResNet-18 of width 64 trained 100 epochs with
7 PGD steps; the "cpu" budget a ResNet-18 of width 8 trained one epoch with 5 steps on 20000 images (the
perturbations it gives are weaker than a fully trained robust model's). The perturbation itself uses no
random start, so the same fitted surrogate always gives the same poisoned images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data.batches import iterate_batches
from ..data.imageset import ImageSet, like_input, to_float
from ..errors import InvalidInput
from ..models import create_model
from ..params import param
from ..train import TrainConfig, make_optimizer
from .badnets import make_patch, stamp
from .base import Tensors, check_trigger, choose_trigger, register_attack
from .learned import LearnedAttack, seeded_init

FIT_BUDGETS = {
    "cpu": {"adv_epochs": 1, "adv_subset": 20000, "adv_width": 8, "adv_steps": 5},
    "paper": {"adv_epochs": 100, "adv_subset": 0, "adv_width": 64, "adv_steps": 7},  # 0: every training image
}
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


def pgd(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    step: float,
    steps: int,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """L-infinity PGD that maximises the cross-entropy of `labels` (Madry et al.), within [0, 1].

    Args:
        model: the network attacked; its mode and parameters are left as they are (no parameter gradients).
        images: (N, C, H, W) float in [0, 1].
        labels: (N,) the labels whose loss is maximised.
        eps, step, steps: the ball's radius, the step size and the number of signed-gradient steps.
        start: an initial perturbation (the random start of adversarial training); None starts at `images`.

    Returns:
        Perturbed images, a new tensor with |x' - x| <= eps.
    """
    x = images.detach()
    adv = x.clone() if start is None else (x + start).clamp(0.0, 1.0)
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), labels)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + step * grad.sign()
        adv = torch.minimum(torch.maximum(adv, x - eps), x + eps).clamp(0.0, 1.0)
    return adv.detach()


@register_attack
@dataclass(kw_only=True, eq=False, repr=False)
class CLA(LearnedAttack):
    """Label-consistent attack: adversarially perturbed target-class images with a four-corner trigger.

    Args:
        image_shape, num_classes, target, mode: as for every attack (all-to-one is the original's setting).
        eps, step, steps: the poisoning PGD (8/255, 1.5/255, 100: Turner et al.).
        size: side of each corner trigger (3).
        pattern: "checkerboard" (Turner et al.'s black-and-white pattern), "random" (the paper under
            reproduction's sigmoid(randn) pattern), "white", or a (C, size, size) tensor.
        adv_eps, adv_step: PGD of adversarial training (8/255, 2/255).
        adv_steps, adv_epochs, adv_subset, adv_width: surrogate training sizes (see the module docstring).
        adv_lr: SGD learning rate of the surrogate (cosine schedule, momentum 0.9, weight decay 5e-4).
        budget, seed, generator: see `LearnedAttack`.
        tensors: a fitted attack's `state_dict()`: restores the surrogate and the trigger.

    Example:
        >>> attack = CLA((1, 28, 28), 10, budget="cpu", generator=torch.Generator().manual_seed(0))
        >>> attack.fit(train_set)  # adversarially trains the surrogate
        >>> images, labels = attack.apply(target_class_images, target_labels)  # labels unchanged
    """

    name = "cla"
    clean_label = True
    fit_budgets = FIT_BUDGETS

    eps: float = param(8 / 255, ge=0.0, le=1.0)
    step: float = param(1.5 / 255, gt=0.0)
    steps: int = param(100, ge=0)
    size: int = param(3, ge=1)
    pattern: str | torch.Tensor = "checkerboard"
    adv_eps: float = param(8 / 255, ge=0.0, le=1.0)
    adv_step: float = param(2 / 255, gt=0.0)
    adv_steps: int | None = param(None, ge=0)
    adv_epochs: int | None = param(None, ge=1)
    adv_subset: int | None = param(None, ge=0)
    adv_width: int | None = param(None, ge=1)
    adv_lr: float = param(0.1, gt=0.0)

    def build(self, generator: torch.Generator | None, tensors: Tensors) -> None:
        c, h, w = self.image_shape
        if self.size > min(h, w) // 2:
            raise InvalidInput(f"cla: four {self.size}x{self.size} corner triggers do not fit a {h}x{w} image")
        self.patch, self.pattern = choose_trigger(
            tensors,
            "patch",
            self.pattern,
            lambda kind: make_patch(kind, c, self.size, torch.Generator().manual_seed(self.seed + 2)),
        )
        check_trigger(self.name, self.patch, (c, self.size, self.size))
        self.surrogate = seeded_init(
            lambda: create_model("resnet18", num_classes=self.num_classes, in_channels=c, base_width=self.adv_width),
            self.seed,
        )
        self.surrogate.eval()
        if tensors:
            self.load_fitted(tensors)

    def networks(self) -> dict[str, nn.Module]:
        return {"surrogate": self.surrogate}

    def extra_tensors(self) -> Tensors:
        return {"patch": self.patch}

    # -- poisoning -----------------------------------------------------------------------------------
    def poison_images(self, images: torch.Tensor) -> torch.Tensor:
        """The four-corner trigger (the test-time trigger; training images are perturbed first)."""
        for corner in CORNERS:
            images = stamp(images, self.patch, corner, 0)
        return images

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """PGD perturbations of float images against the adversarially trained surrogate, for their labels."""
        self.require_fitted()
        model = self.nets_on(images.device)["surrogate"]
        return pgd(model, images, labels.to(images.device), self.eps, self.step, self.steps)

    def apply(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Perturb (PGD against the surrogate, for the true labels), stamp the trigger, keep the labels."""
        self._check(images)
        poisoned = self.poison_images(self.perturb(to_float(images), labels))
        return like_input(poisoned, images), labels.clone()

    # -- the adversarially trained surrogate ----------------------------------------------------------
    def _fit(self, data: ImageSet, device: torch.device, progress: bool) -> None:
        g = torch.Generator().manual_seed(self.seed + 3)
        if self.adv_subset and self.adv_subset < len(data):
            data = data.sample(self.adv_subset, g)
        config = TrainConfig(epochs=self.adv_epochs, batch_size=128, lr=self.adv_lr, augment=None)
        model = self.surrogate
        optimizer, scheduler = make_optimizer(model, config, math.ceil(len(data) / 128) * self.adv_epochs)
        for epoch in range(self.adv_epochs):
            loss_sum = correct = seen = 0.0
            with tqdm(
                total=len(data),
                desc=f"cla adversarial training {epoch + 1}/{self.adv_epochs}",
                unit="img",
                disable=not progress,
                leave=False,
            ) as bar:
                for x, y, _ in iterate_batches(data, 128, device=device, shuffle=True, generator=g):
                    start = (torch.rand(x.shape, generator=g).to(device) * 2 - 1) * self.adv_eps
                    model.eval()  # attack the current weights without touching the BN running statistics
                    adv = pgd(model, x, y, self.adv_eps, self.adv_step, self.adv_steps, start=start)
                    model.train()
                    logits = model(adv)
                    loss = F.cross_entropy(logits, y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    loss_sum += loss.item() * len(y)
                    correct += (logits.argmax(1) == y).sum().item()
                    seen += len(y)
                    bar.set_postfix(loss=loss_sum / seen, robust_acc=correct / seen, refresh=False)
                    bar.update(len(y))
            self.fit_log = {
                "adv_train_loss_last_epoch": loss_sum / seen,
                "adv_train_robust_accuracy_last_epoch": correct / seen,
            }
        model.eval()
