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

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batches import augment_batch, iterate_batches
from ..data.imageset import ImageSet
from ..progress import Progress
from .base import ALL_TO_ONE, register_attack
from .learned import LearnedAttack, resolve_budget, seeded_init
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


def cosine(step_total: int):
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, step_total) / step_total))


@register_attack
class IAB(LearnedAttack):
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
        tensors: a trained attack's `tensors()`: restores both generators.

    Example:
        >>> attack = IAB((1, 28, 28), 10, budget="cpu", generator=torch.Generator().manual_seed(0))
        >>> attack.fit(train_set)                                 # stage 1: mask generator
        >>> attack.train_jointly(model, train_set, poisoned, cfg)  # stage 2: pattern generator + classifier
        >>> poisoned_images, labels = attack.apply(images, labels)
    """

    name = "iab"
    trains_jointly = True

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int,
        target: int = 0,
        mode: str = ALL_TO_ONE,
        mask_density: float = 0.032,
        lambda_div: float = 1.0,
        lambda_norm: float = 100.0,
        cross_ratio: float = 1.0,
        mask_epochs: int | None = None,
        mask_subset: int | None = None,
        mask_lr: float = 0.01,
        pattern_lr: float = 0.01,
        width: int | None = None,
        budget: str = "paper",
        seed: int | None = None,
        generator: torch.Generator | None = None,
        tensors: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(image_shape, num_classes, target, mode, budget, seed, generator)
        sizes = resolve_budget(FIT_BUDGETS, budget, {"mask_epochs": mask_epochs, "mask_subset": mask_subset,
                                                     "width": width})
        if not 0 < mask_density < 1 or lambda_div < 0 or lambda_norm < 0 or cross_ratio < 0:
            raise ValueError("IAB needs mask_density in (0, 1) and non-negative lambda_div, lambda_norm, cross_ratio")
        if sizes["mask_epochs"] < 0 or sizes["mask_subset"] < 0 or mask_lr <= 0 or pattern_lr <= 0:
            raise ValueError("IAB needs mask_epochs >= 0, mask_subset >= 0 and positive learning rates")
        self.mask_density, self.lambda_div = float(mask_density), float(lambda_div)
        self.lambda_norm = float(lambda_norm)
        self.cross_ratio_iab = float(cross_ratio)  # not `cross_ratio`: IAB's cross samples are drawn per batch
        self.mask_epochs, self.mask_subset, self.width = sizes["mask_epochs"], sizes["mask_subset"], sizes["width"]
        self.mask_lr, self.pattern_lr = float(mask_lr), float(pattern_lr)
        c = self.image_shape[0]
        self.mask_net = seeded_init(lambda: UNet(c, 1, self.width), self.seed)
        self.pattern_net = seeded_init(lambda: UNet(c, c, self.width), self.seed + 1)
        if tensors:
            self.load_fitted(tensors)

    def networks(self) -> dict[str, nn.Module]:
        return {"mask": self.mask_net, "pattern": self.pattern_net}

    def params(self) -> dict[str, Any]:
        return {**super().params(), "mask_density": self.mask_density, "lambda_div": self.lambda_div,
                "lambda_norm": self.lambda_norm, "cross_ratio": self.cross_ratio_iab, "mask_epochs": self.mask_epochs,
                "mask_subset": self.mask_subset, "mask_lr": self.mask_lr, "pattern_lr": self.pattern_lr,
                "width": self.width}

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
            with Progress(len(data), f"iab mask {epoch + 1}/{self.mask_epochs}", "img", enabled=progress) as bar:
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
                    bar.update(n, div=div.item(), density=m1.detach().mean().item())
            log = {f"mask_{k}_last_epoch": v / totals["n"] for k, v in totals.items() if k != "n"}
        self.fit_log = log

    # -- stage 2: the pattern generator with the classifier -------------------------------------------
    def train_jointly(
        self,
        model: nn.Module,
        data: ImageSet,
        poisoned: torch.Tensor,
        config,
        *,
        generator: torch.Generator,
        progress: bool = True,
    ) -> list[dict[str, float]]:
        """Train `model` and the pattern generator together on `data` (section 3 of the original).

        Args:
            model: the classifier, on its compute device; trained in place.
            data: the *clean* training set; backdoor and cross samples are made on the fly.
            poisoned: (len(data),) bool: the backdoor samples.
            config: a `bdprune.train.TrainConfig` (the classifier's SGD recipe, epochs, batch size, augmentation).
            generator: shuffling, cross-sample and augmentation randomness.
            progress: show progress bars.

        Returns:
            One record per epoch (loss, cross-entropy, diversity, seconds, images per second), as `train_model`.
        """
        from ..metrics import model_device
        from ..train import make_optimizer

        self.require_fitted()
        if poisoned.shape != (len(data),) or poisoned.dtype != torch.bool:
            raise ValueError(f"poisoned must be a ({len(data)},) bool tensor, got {poisoned.dtype} "
                             f"{tuple(poisoned.shape)}")
        device = model_device(model)
        nets = self.nets_on(device)
        mask_net, pattern_net = nets["mask"], nets["pattern"]
        mask_net.requires_grad_(False)
        steps = math.ceil(len(data) / config.batch_size) * config.epochs
        opt_c, sched_c = make_optimizer(model, config, steps)
        opt_g = torch.optim.Adam(pattern_net.parameters(), lr=self.pattern_lr, betas=(0.5, 0.9))
        sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, cosine(steps))
        poisoned = poisoned.to(device)
        history = []
        model.train()
        pattern_net.train()
        try:
            for epoch in range(config.epochs):
                start, sums, seen = time.perf_counter(), {"loss": 0.0, "ce": 0.0, "div": 0.0}, 0
                with Progress(len(data), f"train+iab {epoch + 1}/{config.epochs}", "img", enabled=progress) as bar:
                    for images, labels, pos in iterate_batches(data, config.batch_size, device=device, shuffle=True,
                                                               generator=generator):
                        loss, ce, div = self._joint_step(model, images, labels, poisoned[pos.to(device)], config,
                                                         generator, mask_net, pattern_net)
                        opt_c.zero_grad(set_to_none=True)
                        opt_g.zero_grad(set_to_none=True)
                        loss.backward()
                        opt_c.step()
                        opt_g.step()
                        sched_c.step()
                        sched_g.step()
                        n = len(labels)
                        for key, value in (("loss", loss), ("ce", ce), ("div", div)):
                            sums[key] += value.item() * n
                        seen += n
                        bar.update(n, loss=sums["loss"] / seen, lr=sched_c.get_last_lr()[0])
                seconds = time.perf_counter() - start
                history.append({"epoch": epoch + 1, **{k: v / max(seen, 1) for k, v in sums.items()},
                                "seconds": seconds, "images_per_second": seen / seconds if seconds > 0 else 0.0})
        finally:
            mask_net.requires_grad_(True)
            pattern_net.eval()
            model.eval()
        return history

    def _joint_step(self, model, images, labels, backdoor, config, generator, mask_net, pattern_net):
        """The loss of one batch: backdoor, cross and clean samples through the classifier, plus diversity."""
        n = len(images)
        n_cross = min(round(self.cross_ratio_iab * int(backdoor.sum())), int((~backdoor).sum()))
        # Cross samples: a random n_cross of the non-backdoor samples (backdoor ones sort last).
        order = torch.rand(n, generator=generator).to(images.device) + backdoor.float() * 2.0
        cross = torch.zeros(n, dtype=torch.bool, device=images.device)
        cross[order.argsort()[:n_cross]] = True
        donors = torch.roll(torch.arange(n, device=images.device), 1)  # another image of the batch
        with torch.no_grad():
            masks = to_mask(mask_net(images))  # (N, 1, H, W)
        patterns = to_pattern(pattern_net(images))  # (N, C, H, W)
        with_own = images + (patterns - images) * masks
        with_other = images + (patterns[donors] - images) * masks[donors]
        inputs = torch.where(backdoor[:, None, None, None], with_own,
                             torch.where(cross[:, None, None, None], with_other, images))
        targets = torch.where(backdoor, self.target_labels(labels), labels)
        if config.augment is not None:
            inputs = augment_batch(inputs, config.augment, generator)
        ce = F.cross_entropy(model(inputs), targets)
        div = diversity_loss(images, images[donors], patterns, patterns[donors])
        return ce + self.lambda_div * div, ce, div
