"""IAB (Nguyen & Tran, "Input-Aware Dynamic Backdoor Attack", NeurIPS 2020).

The trigger is a function of the image: a mask generator M and a pattern generator G, both small
image-to-image networks, give x' = x + (G(x) - x) * M(x). Training has two stages, as in the original:

1. `fit`: M alone, for `mask_epochs` epochs, with a diversity loss (two images should get different masks:
   ||x1 - x2|| / ||M(x1) - M(x2)||) and a norm loss that keeps the mask density near `mask_density`
   (relu(M(x) - density), mean), weighted by `lambda_div` and `lambda_norm`.
2. `train_jointly`: G and the classifier together (M frozen). Each batch mixes backdoor samples (their own
   trigger, target label), cross samples (the trigger of *another* image, true label; they teach the
   classifier that a trigger works only on the image it was made for) and clean samples; G also gets the
   diversity loss on its patterns.

Departure from the original, kept explicit: which samples are backdoor samples is fixed data drawn once
from the run's generator (bdprune's rule, STYLE.md point 2) rather than the first samples of every shuffled
batch; their trigger is recomputed from the current G each time they are drawn, as in the original.
Cross samples are drawn per batch among the others, `cross_ratio` per backdoor sample (the original's
p_cross = p_attack: one). Defaults are the original's (mask density 0.032, lambda_div 1, lambda_norm 100,
Adam lr 0.01 with betas (0.5, 0.9) for both generators, 25 mask epochs); the "cpu" budget trains M for
2 epochs on 10000 images, and both generators have width 8 instead of 32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data.batches import Augment, augment_batch, iterate_batches
from ..data.imageset import ImageSet
from ..errors import InvalidInput
from ..models.device import model_device
from ..params import param
from ..train import Objective, Schedule, TrainConfig, cosine, train_model
from .base import Tensors, register_attack
from .learned import JointAttack, seeded_init
from .nets import UNet

EPS = 1e-7
FIT_BUDGETS = {
    "cpu": {"mask_epochs": 2, "mask_subset": 10000, "width": 8},
    "paper": {"mask_epochs": 25, "mask_subset": 0, "width": 32},  # 0: every training image
}


def to_mask(raw: torch.Tensor) -> torch.Tensor:
    """M's raw output -> a near-binary mask in [0, 1] (the original's steep tanh threshold around 0.5)."""
    return torch.tanh(20.0 * torch.sigmoid(raw) - 10.0) / (2.0 + EPS) + 0.5


def to_pattern(raw: torch.Tensor) -> torch.Tensor:
    """G's raw output -> a pattern image in [0, 1]."""
    return torch.tanh(raw) / (2.0 + EPS) + 0.5


def diversity_loss(x1: torch.Tensor, x2: torch.Tensor, out1: torch.Tensor, out2: torch.Tensor) -> torch.Tensor:
    """mean over pairs of ||x1 - x2|| / ||out1 - out2|| (per-sample mean absolute differences): small when
    different images get different masks or patterns."""
    images = (x1 - x2).abs().flatten(1).mean(1)
    outputs = (out1 - out2).abs().flatten(1).mean(1)
    return (images / (outputs + EPS)).mean()


@register_attack
@dataclass(kw_only=True, eq=False, repr=False)
class IAB(JointAttack):
    """Input-aware dynamic trigger from a mask and a pattern generator.

    Args:
        image_shape, num_classes, target, mode: as for every attack.
        mask_density: target fraction of masked pixels (0.032).
        lambda_div: weight of the diversity losses (1).
        lambda_norm: weight of the mask-density loss (100).
        cross_ratio: cross samples per backdoor sample in each batch (1, the original's p_cross = p_attack).
        mask_epochs: epochs of the mask generator's stage (budget "cpu": 2, "paper": 25).
        mask_subset: train M on this many training images (0: all; budget "cpu": 10000).
        mask_lr, pattern_lr: Adam learning rates of M and G (0.01 each, betas (0.5, 0.9)).
        width: U-Net width of both generators (budget "cpu": 8, "paper": 32).
        budget, seed, generator: see `LearnedAttack`.
        tensors: a trained attack's `state_dict()`: restores both generators.

    Example:
        >>> attack = IAB((1, 28, 28), 10, budget="cpu", generator=torch.Generator().manual_seed(0))
        >>> attack.fit(train_set)                                 # stage 1: mask generator
        >>> attack.train_jointly(model, train_set, poisoned, cfg, generator=g)  # stage 2: G + classifier
        >>> poisoned_images, labels = attack.apply(images, labels)
    """

    name = "iab"
    fit_budgets = FIT_BUDGETS

    mask_density: float = param(0.032, gt=0.0, lt=1.0)
    lambda_div: float = param(1.0, ge=0.0)
    lambda_norm: float = param(100.0, ge=0.0)
    cross_ratio: float = param(1.0, ge=0.0)  # drawn per batch in `train_jointly`, not fixed in the training set
    mask_epochs: int | None = param(None, ge=0)
    mask_subset: int | None = param(None, ge=0)
    mask_lr: float = param(0.01, gt=0.0)
    pattern_lr: float = param(0.01, gt=0.0)
    width: int | None = param(None, ge=1)

    def build(self, generator: torch.Generator | None, tensors: Tensors) -> None:
        c = self.image_shape[0]
        self.mask_net = seeded_init(lambda: UNet(c, 1, self.width), self.seed)
        self.pattern_net = seeded_init(lambda: UNet(c, c, self.width), self.seed + 1)
        if tensors:
            self.load_fitted(tensors)

    def networks(self) -> dict[str, nn.Module]:
        return {"mask": self.mask_net, "pattern": self.pattern_net}

    # -- the trigger ---------------------------------------------------------------------------------
    def masks_and_patterns(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(masks (N, 1, H, W), patterns (N, C, H, W)) of float images in [0, 1], without gradients."""
        self.require_fitted()
        nets = self.nets_on(images.device)
        with torch.no_grad():
            return to_mask(nets["mask"](images)), to_pattern(nets["pattern"](images))

    def poison_images(self, images: torch.Tensor) -> torch.Tensor:
        masks, patterns = self.masks_and_patterns(images)
        return images + (patterns - images) * masks

    def cross_trigger_images(self, images: torch.Tensor, donors: torch.Tensor) -> torch.Tensor:
        """Cross samples: `images` carrying the triggers generated for `donors` (same shape)."""
        masks, patterns = self.masks_and_patterns(donors)
        return images + (patterns - images) * masks

    # -- stage 1: the mask generator ------------------------------------------------------------------
    def _fit(self, data: ImageSet, device: torch.device, progress: bool) -> None:
        g = torch.Generator().manual_seed(self.seed + 2)
        if self.mask_subset and self.mask_subset < len(data):
            data = data.sample(self.mask_subset, g)
        optimizer = torch.optim.Adam(self.mask_net.parameters(), lr=self.mask_lr, betas=(0.5, 0.9))
        self.mask_net.train()
        log = {}
        for epoch in range(self.mask_epochs):
            second = iter(iterate_batches(data, 128, device=device, shuffle=True, generator=g))
            totals = {"div": 0.0, "norm": 0.0, "density": 0.0, "n": 0}
            with tqdm(
                total=len(data),
                desc=f"iab mask {epoch + 1}/{self.mask_epochs}",
                unit="img",
                disable=not progress,
                leave=False,
            ) as bar:
                for x1, _, _ in iterate_batches(data, 128, device=device, shuffle=True, generator=g):
                    x2 = next(second)[0]
                    m1, m2 = to_mask(self.mask_net(x1)), to_mask(self.mask_net(x2))
                    div = diversity_loss(x1, x2, m1, m2)
                    norm = F.relu(m1 - self.mask_density).mean()
                    loss = self.lambda_norm * norm + self.lambda_div * div
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    n = len(x1)
                    for key, value in (("div", div), ("norm", norm), ("density", m1.detach().mean())):
                        totals[key] += value.item() * n
                    totals["n"] += n
                    bar.set_postfix(div=div.item(), density=m1.detach().mean().item(), refresh=False)
                    bar.update(n)
            log = {f"mask_{k}_last_epoch": v / totals["n"] for k, v in totals.items() if k != "n"}
        self.fit_log = log

    # -- stage 2: the pattern generator with the classifier -------------------------------------------
    def train_jointly(
        self,
        model: nn.Module,
        data: ImageSet,
        poisoned: torch.Tensor,
        config: TrainConfig,
        *,
        generator: torch.Generator,
        progress: bool = True,
    ) -> list[dict[str, float]]:
        """Train `model` and the pattern generator together on `data` (section 3 of the original).

        Args:
            model: the classifier, on its compute device; trained in place.
            data: the *clean* training set; backdoor and cross samples are made on the fly.
            poisoned: (len(data),) bool: the backdoor samples.
            config: the classifier's SGD recipe, epochs, batch size and augmentation.
            generator: shuffling, cross-sample and augmentation randomness.
            progress: show progress bars.

        Returns:
            One record per epoch (loss, cross-entropy, diversity, seconds, images per second), from
            `bdprune.train.train_model`, which runs the loop with this attack's `JointObjective`.
        """
        self.require_fitted()
        if poisoned.shape != (len(data),) or poisoned.dtype != torch.bool:
            raise InvalidInput(
                f"poisoned must be a ({len(data)},) bool tensor, got {poisoned.dtype} {tuple(poisoned.shape)}"
            )
        device = model_device(model)
        nets = self.nets_on(device)
        nets["mask"].requires_grad_(False)
        nets["pattern"].train()
        try:
            return train_model(
                model,
                data,
                config,
                generator=generator,
                progress=progress,
                desc="train+iab",
                loss_fn=JointObjective(self, poisoned.to(device), config),
            )
        finally:
            nets["mask"].requires_grad_(True)
            nets["pattern"].eval()
            model.eval()

    def joint_loss(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        backdoor: torch.Tensor,
        augment: Augment | None,
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        """The loss of one batch: backdoor, cross and clean samples through the classifier, plus diversity."""
        n = len(images)
        n_cross = min(round(self.cross_ratio * int(backdoor.sum())), int((~backdoor).sum()))
        # Cross samples: a random n_cross of the non-backdoor samples (backdoor ones sort last).
        order = torch.rand(n, generator=generator).to(images.device) + backdoor.float() * 2.0
        cross = torch.zeros(n, dtype=torch.bool, device=images.device)
        cross[order.argsort()[:n_cross]] = True
        donors = torch.roll(torch.arange(n, device=images.device), 1)  # another image of the batch
        with torch.no_grad():
            masks = to_mask(self.mask_net(images))  # (N, 1, H, W)
        patterns = to_pattern(self.pattern_net(images))  # (N, C, H, W)
        with_own = images + (patterns - images) * masks
        with_other = images + (patterns[donors] - images) * masks[donors]
        inputs = torch.where(
            backdoor[:, None, None, None], with_own, torch.where(cross[:, None, None, None], with_other, images)
        )
        targets = torch.where(backdoor, self.target_labels(labels), labels)
        if augment is not None:
            inputs = augment_batch(inputs, augment, generator)
        ce = F.cross_entropy(model(inputs), targets)
        div = diversity_loss(images, images[donors], patterns, patterns[donors])
        return {"loss": ce + self.lambda_div * div, "ce": ce, "div": div}


class JointObjective(Objective):
    """IAB's stage 2 as a `train_model` objective: the attack's joint loss, and its pattern generator trained
    with Adam (betas (0.5, 0.9)) on a cosine schedule beside the classifier."""

    def __init__(self, attack: IAB, poisoned: torch.Tensor, config: TrainConfig) -> None:
        self.attack, self.poisoned, self.augment = attack, poisoned, config.augment

    def __call__(self, model, images, labels, positions, generator):
        backdoor = self.poisoned[positions.to(self.poisoned.device)]
        return self.attack.joint_loss(model, images, labels, backdoor, self.augment, generator)

    def optimizers(self, steps: int) -> list[Schedule]:
        opt = torch.optim.Adam(self.attack.pattern_net.parameters(), lr=self.attack.pattern_lr, betas=(0.5, 0.9))
        return [(opt, torch.optim.lr_scheduler.LambdaLR(opt, cosine(steps)))]
