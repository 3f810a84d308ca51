"""WB, the Wasserstein backdoor (Doan, Lao & Li, "Backdoor Attack with Imperceptible Input and Latent
Modification", NeurIPS 2021); the paper under reproduction tests it in Table 9 (appendix G.2).

A trigger function T adds a learned, input-dependent perturbation bounded in L-infinity by `eps`,
T(x) = clip(x + eps * tanh(G(x)), 0, 1), G a small U-Net. T is trained in alternation with the classifier f
(the original's "stochastic alternating optimization"):

- T's step, f frozen: CE(f(T(x)), target) + lambda_w * SW(phi(x), phi(T(x))), where phi is f's latent
  representation (the input of its last linear layer) and SW the sliced Wasserstein distance between the two
  empirical distributions of a batch: both are projected on the unit rows of f's last linear layer (one
  direction per class), each projection sorted, and the squared differences of the sorted values averaged
  (`sliced_wasserstein`). This pulls the latent features of triggered inputs towards those of clean ones,
  which is what makes defenses that separate them in latent space fail.
- f's step: cross-entropy on clean and triggered samples (T fixed).

Sources of the facts. The paper's abstract (bounded imperceptible input noise; Wasserstein regularisation of
the latent distributions of clean and manipulated inputs; alternating optimisation). The paper's full text was
not reachable from this machine; the details come from two public re-implementations of it (github.com/RJ-T/
Wasserstein-Backdoor, a trojanzoo port named `wasserstein_backdoor`) and the authors' earlier LIRA (same
two-stage structure, BackdoorBench's config): the tanh-bounded U-Net generator, the projection directions
taken from the last linear layer's weights (detached), T's loss CE + sliced distance with weight 1, Adam for
T (lr 5e-4 in both re-implementations), and in the stage without the victim an alpha = 0.5 mix of clean and
poisoned cross-entropy for the classifier. The re-implementations use eps 0.1 for the first stage (LIRA's
BackdoorBench config 0.01 on normalised inputs); our default is 0.05 in [0, 1] units.

How it maps onto bdprune's runs (a `JointAttack`, like IAB):
1. `fit` (the attacker's own stage): T and a surrogate classifier (ResNet-18 of width `width`) trained in
   alternation for `fit_steps` steps, so that T starts the run as a working trigger.
2. `train_jointly`: the victim is trained on the run's data, its poisoned positions (drawn from the run's
   seed, the poisoning rate as for every attack) carrying T's current trigger and the target label; after
   each batch's classifier loss, T takes a step of its own objective against the victim (on `joint_samples`
   images of the batch, through the victim in train mode with its parameters and BN statistics frozen). The
   penalty acts on T only, as in both re-implementations; the classifier's loss is plain cross-entropy.
Budgets: "cpu" 300 fit steps with width 8; "paper" 20000 steps (about the re-implementations' 50 epochs of
CIFAR-10) with width 32. Measured on the CPU preset, seed 0, defaults: ACC 90.03, ASR 99.50 (a clean model of
the same seed: 90.83); the sliced distance grows during the victim's training (1.2 to 1.5) as the backdoor forms
(docs/results/wb-cpu.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data.batches import augment_batch
from ..data.imageset import ImageSet, to_float
from ..errors import InvalidInput
from ..models import create_model
from ..models.device import model_device
from ..models.head import classifier_head
from ..params import param
from ..train import Objective, Schedule, TrainConfig, cosine, train_model
from .adaptive.preact_l2 import frozen_bn_statistics
from .base import Tensors, register_attack
from .learned import JointAttack, seeded_init
from .nets import UNet

FIT_BUDGETS = {
    "cpu": {"fit_steps": 300, "width": 8},
    "paper": {"fit_steps": 20000, "width": 32},
}
SURROGATE_LR = 0.01  # SGD with momentum 0.9: the re-implementations' classifier optimiser in the first stage


def sliced_wasserstein(source: torch.Tensor, target: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Squared sliced Wasserstein-2 distance between two equal-size samples along given directions.

    Args:
        source, target: (n, D) samples of the two distributions.
        directions: (K, D) unit projection directions.

    Returns:
        mean over directions of the mean squared difference of the sorted 1-D projections (the exact W2^2
        between the projected empirical distributions).
    """
    if source.shape != target.shape:
        raise InvalidInput(f"the two samples must have one shape, got {tuple(source.shape)} and {tuple(target.shape)}")
    a = torch.sort(source @ directions.T, dim=0).values  # (n, K)
    b = torch.sort(target @ directions.T, dim=0).values  # (n, K)
    return (a - b).pow(2).mean()


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Forward passes that give no gradient to the model's parameters nor change its BN running statistics."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with frozen_bn_statistics(model):
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@register_attack
@dataclass(kw_only=True, eq=False, repr=False)
class WB(JointAttack):
    """Wasserstein backdoor: an L-infinity-bounded learned trigger whose latent features match clean ones.

    Args:
        image_shape, num_classes, target, mode: as for every attack.
        eps: L-infinity bound of the perturbation, in [0, 1] units (0.05).
        lambda_w: weight of the sliced Wasserstein penalty in T's loss (1, as in the re-implementations).
        alpha: weight of the clean cross-entropy (1 - alpha: the poisoned one) of the surrogate in `fit` (0.5).
        lr: Adam learning rate of the generator in both stages (5e-4), cosine-annealed with the victim's.
        fit_steps: alternating steps of `fit` (budget "cpu": 300, "paper": 20000).
        batch_size: batch size of `fit`.
        joint_samples: images of each training batch that T's step uses during `train_jointly` (below 2: T
            frozen).
        width: U-Net width of the generator and base width of the surrogate ResNet-18 (budget "cpu": 8,
            "paper": 32).
        budget, seed, generator: see `LearnedAttack`.
        tensors: a fitted attack's `state_dict()`: restores the generator.

    Example:
        >>> attack = WB((1, 28, 28), 10, budget="cpu", generator=torch.Generator().manual_seed(0))
        >>> attack.fit(train_set)                                # T with a surrogate classifier
        >>> attack.train_jointly(model, train_set, poisoned, cfg, generator=g)  # T with the victim
        >>> poisoned_images, labels = attack.apply(images, labels)
    """

    name = "wb"
    fit_budgets = FIT_BUDGETS

    eps: float = param(0.05, gt=0.0, le=1.0)
    lambda_w: float = param(1.0, ge=0.0)
    alpha: float = param(0.5, ge=0.0, le=1.0)
    lr: float = param(5e-4, gt=0.0)
    fit_steps: int | None = param(None, ge=0)
    batch_size: int = param(128, ge=2)
    joint_samples: int = param(32, ge=0)
    width: int | None = param(None, ge=1)

    def build(self, generator: torch.Generator | None, tensors: Tensors) -> None:
        self.generator_net = seeded_init(lambda: UNet(self.image_shape[0], self.image_shape[0], self.width), self.seed)
        if tensors:
            self.load_fitted(tensors)

    def networks(self) -> dict[str, nn.Module]:
        return {"generator": self.generator_net}

    # -- the trigger ---------------------------------------------------------------------------------
    def add_trigger(self, images: torch.Tensor) -> torch.Tensor:
        """T(x) = clip(x + eps * tanh(G(x)), 0, 1) of float images in [0, 1], differentiable in G."""
        return (images + self.eps * torch.tanh(self.generator_net(2 * images - 1))).clamp(0.0, 1.0)

    def poison_images(self, images: torch.Tensor) -> torch.Tensor:
        self.require_fitted()
        self.nets_on(images.device)
        with torch.no_grad():
            return self.add_trigger(images)

    def trigger_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """T's objective on clean `images` against the classifier `model`, whose parameters and BN statistics it
        leaves alone: CE of the triggered images for the target labels + lambda_w * the sliced Wasserstein
        distance between the latent features of the clean and the triggered images."""
        head = classifier_head(model, "wb")
        n, feats = len(images), []
        handle = head.register_forward_pre_hook(lambda _m, inputs: feats.append(inputs[0].flatten(1)))
        try:
            with frozen(model):
                # one pass, so that in train mode both halves are normalised with the same batch statistics
                logits = model(torch.cat([images, self.add_trigger(images)]))  # (2n, classes)
        finally:
            handle.remove()
        clean, triggered = feats[-1][:n].detach(), feats[-1][n:]  # (n, D) each
        directions = F.normalize(head.weight.detach(), dim=1)  # (classes, D)
        ce = F.cross_entropy(logits[n:], self.target_labels(labels))
        sw = sliced_wasserstein(clean, triggered, directions)
        return {"trigger_loss": ce + self.lambda_w * sw, "trigger_ce": ce, "sliced_w": sw}

    def generator_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.generator_net.parameters(), lr=self.lr)

    # -- stage 1: the trigger with a surrogate classifier -----------------------------------------------
    def _fit(self, data: ImageSet, device: torch.device, progress: bool) -> None:
        g = torch.Generator().manual_seed(self.seed + 2)
        c = self.image_shape[0]
        surrogate = seeded_init(
            lambda: create_model("resnet18", num_classes=self.num_classes, in_channels=c, base_width=self.width),
            self.seed + 1,
        ).to(device)
        opt_f = torch.optim.SGD(surrogate.parameters(), lr=SURROGATE_LR, momentum=0.9)
        opt_t = self.generator_optimizer()
        surrogate.train()
        self.generator_net.train()
        recent: dict[str, list[float]] = {}
        with tqdm(total=self.fit_steps, desc="wb trigger", unit="step", disable=not progress, leave=False) as bar:
            for _ in range(self.fit_steps):
                pick = torch.randint(len(data), (self.batch_size,), generator=g)
                x, y = to_float(data.images[pick]).to(device), data.labels[pick].to(device)
                terms = self.trigger_loss(surrogate, x, y)  # T's step, f frozen
                opt_t.zero_grad(set_to_none=True)
                terms["trigger_loss"].backward()
                opt_t.step()
                with torch.no_grad():
                    triggered = self.add_trigger(x)
                logits = surrogate(torch.cat([x, triggered]))  # f's step, T fixed
                targets = self.target_labels(y)
                ce_clean = F.cross_entropy(logits[: len(x)], y)
                ce_poison = F.cross_entropy(logits[len(x) :], targets)
                loss = self.alpha * ce_clean + (1 - self.alpha) * ce_poison
                opt_f.zero_grad(set_to_none=True)
                loss.backward()
                opt_f.step()
                asr = (logits[len(x) :].argmax(1) == targets).float().mean()
                for key, value in (*terms.items(), ("surrogate_ce", ce_clean), ("surrogate_asr", asr)):
                    recent[key] = [*recent.get(key, [])[-49:], float(value.detach())]
                bar.set_postfix(ce=terms["trigger_ce"].item(), sw=terms["sliced_w"].item(), refresh=False)
                bar.update(1)
        self.fit_log = {f"{k}_last_50_steps": sum(v) / len(v) for k, v in recent.items()}

    # -- stage 2: the trigger with the victim ----------------------------------------------------------
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
        """Train `model` on the clean `data` with the `poisoned` samples triggered on the fly, T learning beside it.

        Args:
            model: the classifier, on its compute device; trained in place. It must end with an nn.Linear.
            data: the *clean* training set.
            poisoned: (len(data),) bool: the backdoor samples (target label, current trigger).
            config: the classifier's SGD recipe, epochs, batch size and augmentation.
            generator: shuffling and augmentation randomness.
            progress: show progress bars.

        Returns:
            One record per epoch (loss, ce, trigger_ce, sliced_w, seconds, images per second), from
            `bdprune.train.train_model`, which runs the loop with `JointWB`.
        """
        self.require_fitted()
        if poisoned.shape != (len(data),) or poisoned.dtype != torch.bool:
            raise InvalidInput(
                f"poisoned must be a ({len(data)},) bool tensor, got {poisoned.dtype} {tuple(poisoned.shape)}"
            )
        classifier_head(model, "wb")  # fail before training if the latent features cannot be read
        nets = self.nets_on(model_device(model))
        nets["generator"].train()
        try:
            return train_model(
                model,
                data,
                config,
                generator=generator,
                progress=progress,
                desc="train+wb",
                loss_fn=JointWB(self, poisoned.to(model_device(model)), config),
            )
        finally:
            nets["generator"].eval()
            model.eval()


class JointWB(Objective):
    """WB's joint stage as a `train_model` objective: the classifier's cross-entropy on the mixed batch (its
    backdoor samples triggered by the current T, without gradient to T) plus T's own objective on
    `joint_samples` images of the batch against the classifier (without gradient to the classifier), one
    backward for both; T's Adam follows a cosine schedule beside the classifier's SGD."""

    def __init__(self, attack: WB, poisoned: torch.Tensor, config: TrainConfig) -> None:
        self.attack, self.poisoned, self.augment = attack, poisoned, config.augment

    def __call__(self, model, images, labels, positions, generator):
        attack = self.attack
        backdoor = self.poisoned[positions.to(self.poisoned.device)]
        inputs = images.clone()
        if backdoor.any():
            with torch.no_grad():
                inputs[backdoor] = attack.add_trigger(images[backdoor])
        targets = torch.where(backdoor, attack.target_labels(labels), labels)
        if self.augment is not None:
            inputs = augment_batch(inputs, self.augment, generator)
        ce = F.cross_entropy(model(inputs), targets)
        k = min(attack.joint_samples, len(images))
        if k < 2:  # the sliced distance compares two samples of at least two points
            return {"loss": ce, "ce": ce}
        terms = attack.trigger_loss(model, images[:k], labels[:k])  # the batch is shuffled: any k will do
        return {"loss": ce + terms["trigger_loss"], "ce": ce, **terms}

    def optimizers(self, steps: int) -> list[Schedule]:
        if self.attack.joint_samples < 2:
            return []
        opt = self.attack.generator_optimizer()
        return [(opt, torch.optim.lr_scheduler.LambdaLR(opt, cosine(steps)))]
