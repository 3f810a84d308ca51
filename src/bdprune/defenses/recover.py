"""Recover: a short repair on the defender's clean samples alone (BNP's setting), beyond pruning (issue 23).

Pruning removes a backdoor only where it sits in a few neurons; whole-image triggers (Blended, Refool, SSBA)
spread over many. A trigger is a *universal* perturbation: one change that sends every input to the target.
So the recovery searches, on each batch of clean samples, for the one perturbation delta (shared by the whole
batch, within an L2 ball) that raises the batch's loss most, the nearest thing to a trigger the clean data can
reveal, and trains the model to classify x + delta as x, together with x itself: adversarial unlearning in the
spirit of i-BAU (Zeng et al., ICLR 2022) and SAU (Wei et al., NeurIPS 2023), with a batch-universal delta
found by a few normalised gradient steps instead of their implicit hypergradient or shared-adversarial terms.

Neurons a pruning defense silenced (BN gamma = beta = 0) are kept silent: they are re-zeroed after every step.
`recover` works on any model; `Recover` is the defense on its own, `bnp-recover` prunes with BNP first.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batches import Augment, iterate_batches
from ..data.imageset import ImageSet
from ..metrics import predict_logits
from ..models.device import model_device
from ..models.head import classifier_head
from ..samples.features import sample_features
from ..train import cosine

FLIPS = Augment(pad=0, flip=True)  # the cpu preset's training augmentation; no crop the suspect never saw


def universal_perturbation(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, radius: float, steps: int
) -> torch.Tensor:
    """One perturbation (1, C, H, W) with L2 norm <= `radius` that raises the batch's mean cross-entropy,
    by `steps` normalised gradient-ascent steps (step size radius / 2, projected back on the ball).

    The model's mode and parameters are left as they are (only the input gradient is taken)."""
    delta = torch.zeros_like(images[:1], requires_grad=True)
    for _ in range(steps):
        loss = F.cross_entropy(model((images + delta).clamp(0, 1)), labels)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta += (radius / 2) * grad / grad.norm().clamp_min(1e-12)
            delta *= (radius / delta.norm().clamp_min(1e-12)).clamp(max=1.0)
    return delta.detach()


def reestimate_bn(model: nn.Module, clean: ImageSet, batch_size: int = 64) -> None:
    """Replace every BN layer's running statistics, in place, by the average over `clean`'s batches (train-mode
    passes with no gradient, no augmentation); each layer's momentum and the model's mode are restored. After
    a fine-tuning that fed the model perturbed samples, the statistics it kept are a mixture again; the clean
    samples' own put the model back on its clean inputs."""
    if len(clean) < 2:  # train-mode BN needs two samples: the statistics the model has are kept
        return
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in layers]
    mode = model.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the passes
    try:
        model.train()
        with torch.no_grad():
            for images, _, _ in iterate_batches(clean, max(batch_size, 2), device=model_device(model)):
                if len(images) > 1:  # a last batch of one: train-mode BN cannot take it, and the rest suffice
                    model(images)
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        model.train(mode)


def refit_head(
    model: nn.Module, teacher: nn.Module, clean: ImageSet, *, epochs: int = 30, lr: float = 0.01, batch_size: int = 64,
    seed: int = 0,
) -> None:  # fmt: skip
    """Re-fit `model`'s classifier (its last `nn.Linear`), in place, to `teacher`'s predictions on the clean
    samples: the cross-entropy to the teacher's softmax, SGD with momentum 0.9, the rest of the model frozen and
    in eval mode (its penultimate features are read once, without augmentation). After an unlearning the
    features may still separate the classes where the head no longer does: unlearning BNP's synthesised
    trigger cost the trigger's own class most (Blended seed 0: 13.9 of its points, against 0 to 3 elsewhere; the
    trigger carries some of the class's natural look), and the head re-fit on the clean samples gives it back
    without the trigger (the features no longer carry it). Raises `InvalidInput` for a model without a linear
    head."""
    head = classifier_head(model, "the head re-fit")
    device = head.weight.device
    features = sample_features(model, clean).features.clone().to(device)  # out of inference mode: trainable input
    soft = F.softmax(predict_logits(teacher, clean).float(), 1).to(device)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(features), generator=generator).split(batch_size):
            batch = batch.to(device)
            loss = -(soft[batch] * F.log_softmax(head(features[batch]), 1)).sum(1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def pruned_channels(model: nn.Module) -> dict[str, torch.Tensor]:
    """BN channels silenced by pruning (gamma = beta = 0 exactly): BN name -> channel indices."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and m.bias is not None:
            dead = ((m.weight == 0) & (m.bias == 0)).nonzero().flatten()
            if len(dead):
                out[name] = dead
    return out


def keep_silent(channels: dict[str, torch.Tensor]) -> Callable[[nn.Module], None]:
    """A callback re-zeroing the given BN channels (after an optimiser step moved them)."""

    def zero(model: nn.Module) -> None:
        modules = dict(model.named_modules())
        with torch.no_grad():
            for name, index in channels.items():
                modules[name].weight[index.to(modules[name].weight.device)] = 0
                modules[name].bias[index.to(modules[name].bias.device)] = 0

    return zero


def recover(
    model: nn.Module,
    clean: ImageSet,
    *,
    epochs: int = 40,
    lr: float = 0.01,
    radius: float = 0.1,
    adv_steps: int = 5,
    adv_weight: float = 1.0,
    batch_size: int = 64,
    weight_decay: float = 5e-4,
    augment: Augment | None = FLIPS,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Adversarially unlearn batch-universal perturbations on the clean samples; trains `model` in place.

    Args:
        model: the defense's own copy (pruned or not; pruned neurons stay silent).
        clean: the clean samples to train on.
        epochs: passes over them (SGD, momentum 0.9, cosine-annealed learning rate from `lr`).
        radius: the perturbation's L2 radius as a root-mean-square per pixel value (0.1 on 28 x 28: 2.8),
            so it scales with the image size.
        adv_steps: gradient steps of each perturbation search (0: plain fine-tuning).
        adv_weight: weight of the loss on the perturbed batch.
        augment: augmentation of the clean batches (default: flips only, not a crop the suspect may not know).

    Returns:
        One record per epoch: mean clean loss, mean loss on the perturbed batches.
    """
    device = model_device(model)
    generator = torch.Generator().manual_seed(seed)
    silent = keep_silent(pruned_channels(model))
    ball = radius * math.sqrt(math.prod(clean.image_shape))
    steps = max(1, math.ceil(len(clean) / batch_size) * epochs)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine(steps))
    history = []
    for epoch in range(epochs):
        sums, seen = [0.0, 0.0], 0
        for images, labels, _ in iterate_batches(
            clean, batch_size, device=device, shuffle=True, generator=generator, augment=augment
        ):
            n = len(labels)
            if adv_steps > 0:
                model.eval()  # the search must not move BN statistics
                delta = universal_perturbation(model, images, labels, radius=ball, steps=adv_steps)
                model.train()
                logits = model(torch.cat([images, (images + delta).clamp(0, 1)]))
                clean_loss = F.cross_entropy(logits[:n], labels)
                adv_loss = F.cross_entropy(logits[n:], labels)
            else:
                model.train()
                clean_loss, adv_loss = F.cross_entropy(model(images), labels), torch.zeros((), device=device)
            optimizer.zero_grad(set_to_none=True)
            (clean_loss + adv_weight * adv_loss).backward()
            optimizer.step()
            scheduler.step()
            silent(model)
            sums[0] += clean_loss.item() * n
            sums[1] += adv_loss.item() * n
            seen += n
        history.append({"epoch": epoch + 1, "clean_loss": sums[0] / max(seen, 1), "adv_loss": sums[1] / max(seen, 1)})
    model.eval()
    return history
