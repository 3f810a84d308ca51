"""Unlearning a suspected poisoned group while fine-tuning on the rest (EP's setting, issue 23).

ABL (Li et al., "Anti-Backdoor Learning", NeurIPS 2021) isolates the training samples a backdoored model
fits fastest and then maximises their cross-entropy: gradient ascent, which is unbounded, so ABL stops after
a few epochs and still loses 10-16 ACC points on BackdoorBench. Here the forgetting term is bounded instead,
-log(1 - p_y(x)) for a suspected sample x carrying label y: it is large while the model still gives the
poisoned label, and falls to 0 once the model has moved away from it, whatever class it then chooses (the
sample's true class is unknown). It is minimised jointly with the cross-entropy of a batch of the remaining
(presumed clean) training samples, so the network keeps its clean behaviour while the trigger loses its
mapping. Both batches go through one forward pass (shared BN statistics), with flips as augmentation. The
group is then a third of every batch, and of the repaired model's BN running statistics: a scan after the
repair reads them (development 1 % BadNets model: 'no evidence' before, 'backdoored' after, 3.6 -> 11.2 at ASR
2.9). `kept_statistics` normalises each pass with the kept samples' statistics alone (`normalised_by_first`),
so the group never enters them (3.7 there); off by default: it cost 0.1 to 0.6 more ACC points on six
development models (docs/results/repair-cpu.md).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batches import Augment, iterate_batches
from ..data.imageset import ImageSet
from ..models.device import model_device
from ..train import cosine
from .anchor import anchor_loss, bn_inputs, running_bns

FLIPS = Augment(pad=0, flip=True)  # the cpu preset's training augmentation; no crop the suspect never saw


def forget_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of -log(1 - p_y): 0 when the model gives the carried label no probability, unbounded near 1."""
    log_p = F.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    return -torch.log1p(-log_p.exp().clamp(max=1 - 1e-6)).mean()


@contextmanager
def normalised_by_first(model: nn.Module, count: list[int]) -> Iterator[None]:
    """Inside the block, each training-mode BN layer (with running statistics) normalises its whole batch with the
    mean and variance of the batch's first `count[0]` samples (read at each pass: the caller sets it), and its
    running statistics follow those samples only (its own momentum; None: the cumulative average). In a batch
    of kept samples followed by a suspected group's, the group is normalised as the trained model will
    normalise it, with statistics of the kept samples, and never enters the statistics the model is evaluated
    and scanned with. Each layer's forward is replaced in the block (hooks still run) and restored on exit."""
    layers = [m for _, m in running_bns(model)]

    def kept_forward(module: nn.modules.batchnorm._BatchNorm) -> Callable[[torch.Tensor], torch.Tensor]:
        own = type(module).forward.__get__(module)

        def forward(x: torch.Tensor) -> torch.Tensor:
            if not module.training:
                return own(x)
            dims = [d for d in range(x.dim()) if d != 1]
            shape = [1, -1] + [1] * (x.dim() - 2)
            first = x[: count[0]]
            mean, var = first.mean(dims), first.var(dims, correction=0)
            with torch.no_grad():
                module.num_batches_tracked += 1
                factor = 1.0 / int(module.num_batches_tracked) if module.momentum is None else module.momentum
                n = first.numel() / first.shape[1]
                module.running_mean.mul_(1 - factor).add_(factor * mean.detach())
                module.running_var.mul_(1 - factor).add_(factor * var.detach() * n / max(n - 1, 1))
            y = (x - mean.view(shape)) / (var.view(shape) + module.eps).sqrt()
            return y * module.weight.view(shape) + module.bias.view(shape) if module.affine else y

        return forward

    for module in layers:
        module.forward = kept_forward(module)
    try:
        yield
    finally:
        for module in layers:
            del module.forward


def endless_batches(
    data: ImageSet, batch_size: int, *, generator: torch.Generator, device: torch.device, augment: Augment | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled, augmented batches of `data` forever (a new order every pass)."""
    while True:
        for images, labels, _ in iterate_batches(
            data, batch_size, device=device, shuffle=True, generator=generator, augment=augment
        ):
            yield images, labels


def tail_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the network's last stage: from the top-level block that holds the last conv
    onwards (a ResNet's layer4 and classifier), found by walking down single-child wrappers first."""
    body = model
    while len(list(body.children())) == 1 or (hasattr(body, "model") and isinstance(body.model, nn.Module)):
        body = body.model if hasattr(body, "model") and isinstance(body.model, nn.Module) else next(body.children())
    blocks = list(body.children())
    last_conv = max((i for i, b in enumerate(blocks) if any(isinstance(m, nn.Conv2d) for m in b.modules())), default=0)
    return [p for b in blocks[last_conv:] for p in b.parameters()]


def unlearn_fine_tune(
    model: nn.Module,
    keep: ImageSet,
    forget: ImageSet | None,
    *,
    steps: int,
    lr: float,
    keep_batch: int = 128,
    forget_batch: int = 64,
    weight: float = 1.0,
    weight_decay: float = 5e-4,
    augment: Augment | None = FLIPS,
    seed: int = 0,
    after_step: Callable[[nn.Module], None] | None = None,
    tail_only: bool = False,
    freeze_bn: bool = False,
    anchor: float = 0.0,
    kept_statistics: bool = False,
) -> list[dict[str, float]]:
    """Train `model` in place for `steps` SGD steps on CE(keep) + weight * forget_loss(forget).

    Args:
        model: the defense's own copy (its weights and BN statistics change).
        keep: samples to keep classifying as labelled.
        forget: samples whose carried label is to be unlearned (None or empty: plain fine-tuning).
        steps: SGD steps (momentum 0.9, cosine-annealed learning rate from `lr`).
        augment: the augmentation of both batches (default: flips only; a crop the suspect was not trained with
            shifts its input distribution and costs clean accuracy).
        after_step: called after each step (e.g. to keep pruned neurons silent).
        tail_only: train only the last stage (`tail_parameters`); the rest keeps its weights.
        freeze_bn: keep BN layers in eval mode (running statistics unchanged, as in the suspect).
        anchor: weight of the kept samples' BN inputs held to those of `model` as it was before the first step
            (`bdprune.defenses.anchor`; 0: none).
        kept_statistics: every BN layer normalises each pass with the kept samples' statistics, and only they
            enter its running statistics (`normalised_by_first`); False: the whole batch's, group included.

    Returns:
        One record per tenth of the run: step, mean keep loss, mean forget loss.
    """
    device = model_device(model)
    generator = torch.Generator().manual_seed(seed)
    aug = augment
    keep_it = endless_batches(keep, keep_batch, generator=generator, device=device, augment=aug)
    forgetting = forget is not None and len(forget) > 0
    forget_it = (
        endless_batches(forget, forget_batch, generator=generator, device=device, augment=aug) if forgetting else None
    )
    params = tail_parameters(model) if tail_only else list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine(max(steps, 1)))
    every = max(1, math.ceil(steps / 10))
    history, sums = [], [0.0, 0.0]
    teacher = copy.deepcopy(model).eval() if anchor > 0 else model
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    kept = [0]  # the samples of each batch its BN statistics come from: the kept ones, never the group's
    with (
        bn_inputs(teacher, anchor > 0) as taught,
        bn_inputs(model, anchor > 0) as learnt,
        normalised_by_first(model, kept) if kept_statistics else nullcontext(),
    ):
        for step in range(steps):
            images, labels = next(keep_it)
            n = kept[0] = len(labels)
            if anchor > 0:
                with torch.no_grad():
                    teacher(images)
            if forget_it is not None:
                f_images, f_labels = next(forget_it)
                logits = model(torch.cat([images, f_images]))
                keep_loss = F.cross_entropy(logits[:n], labels)
                away = forget_loss(logits[n:], f_labels)
            else:
                keep_loss, away = F.cross_entropy(model(images), labels), torch.zeros((), device=device)
            loss = keep_loss + weight * away
            if anchor > 0:
                loss = loss + anchor * anchor_loss(learnt, taught, n)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the unlearning loss became {loss.item()} at step {step + 1}; lower lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if after_step is not None:
                after_step(model)
            sums[0] += keep_loss.item()
            sums[1] += away.item()
            if (step + 1) % every == 0 or step + 1 == steps:
                count = (step % every) + 1
                history.append({"step": step + 1, "keep_loss": sums[0] / count, "forget_loss": sums[1] / count})
                sums = [0.0, 0.0]
    model.eval()
    return history
