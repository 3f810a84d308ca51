"""Neural Cleanse (Wang et al., IEEE S&P 2019): reverse a minimal trigger per class, flag the outlier class.

For every label y, Neural Cleanse looks for the smallest mask m (H x W, in [0, 1]) and a pattern p (C x H x W,
in [0, 1]) such that stamping, x' = (1 - m) * x + m * p, sends clean samples to y:

    min_{m, p}  CE(f(x'), y) + lambda * |m|_1                                   (section IV-B, Eq. 3)

with m and p parameterised through tanh (so they stay in [0, 1]), Adam (lr 0.1, betas 0.5 / 0.9) and lambda
adjusted during the optimisation: raised (x 1.5) while the reversed trigger's attack success stays above the
goal (99 %), lowered (/ 1.5^1.5) while it stays below. The smallest |m|_1 that reached the goal is the label's
trigger size. A backdoor's target needs a far smaller trigger than the other labels; with the median and
MAD (consistency constant 1.4826) of the labels' sizes, a label's anomaly index is
(median - size) / (1.4826 MAD), and a model whose smallest label has an index above 2 is flagged
(section IV-C; only labels below the median count).

Sized for a CPU: `steps` optimisation steps per label on the defender's clean samples (the paper runs many
epochs over its clean set on a GPU), so lambda is adjusted every `patience` checks of `check_every` steps
(2 x 5) instead of every few epochs. This is our own implementation from the paper's description.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.imageset import ImageSet
from ..errors import InvalidInput
from ..models.device import model_device

MAD_TO_STD = 1.4826
FLAG_INDEX = 2.0  # the paper's anomaly-index threshold
COST_UP, COST_DOWN = 1.5, 1.5**1.5  # lambda's adjustment factors (the paper's code schedule, described)


@dataclass
class ReversedTrigger:
    """The smallest trigger found for one label: its mask (1, H, W), pattern (C, H, W), the mask's L1 norm
    and the share of the clean samples it sends to the label."""

    target: int
    mask: torch.Tensor
    pattern: torch.Tensor
    norm: float
    success: float

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """Stamp float images in [0, 1] (N, C, H, W)."""
        m = self.mask.to(images.device)
        return (1 - m) * images + m * self.pattern.to(images.device)


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """The model in eval mode with no parameter gradients for the block; both restored afterwards."""
    training = model.training
    saved = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
        model.train(training)


def reverse_trigger(
    model: nn.Module,
    clean: ImageSet,
    target: int,
    *,
    steps: int = 150,
    batch_size: int = 32,
    lr: float = 0.1,
    init_cost: float = 1e-3,
    goal: float = 0.99,
    patience: int = 2,
    check_every: int = 5,
    generator: torch.Generator,
) -> ReversedTrigger:
    """Eq. 3 of the paper for label `target` on `clean` (see the module docstring)."""
    if len(clean) == 0:
        raise InvalidInput("Neural Cleanse needs clean samples to reverse triggers on")
    device = model_device(model)
    images = clean.float_images()
    c, h, w = images.shape[1:]
    mask_param = torch.full((1, 1, h, w), -2.0, device=device, requires_grad=True)  # tanh(-2)/2+.5 = 0.02
    pattern_param = (torch.rand((1, c, h, w), generator=generator) * 2 - 1).to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([mask_param, pattern_param], lr=lr, betas=(0.5, 0.9))
    cost, up, down = init_cost, 0, 0
    best: tuple[float, torch.Tensor, torch.Tensor, float] | None = None
    hits, seen = 0, 0
    labels = torch.full((batch_size,), target, dtype=torch.long, device=device)
    for step in range(1, steps + 1):
        pick = torch.randint(len(images), (batch_size,), generator=generator)
        x = images[pick].to(device)
        mask = torch.tanh(mask_param) / 2 + 0.5
        pattern = torch.tanh(pattern_param) / 2 + 0.5
        logits = model((1 - mask) * x + mask * pattern)
        l1 = mask.sum()
        loss = F.cross_entropy(logits, labels) + cost * l1
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        hits += int((logits.argmax(1) == target).sum())
        seen += batch_size
        if step % check_every:
            continue
        success, hits, seen = hits / seen, 0, 0
        if success >= goal and (best is None or float(l1.detach()) < best[0]):
            best = (float(l1.detach()), mask.detach().clone(), pattern.detach().clone(), success)
        up, down = (up + 1, 0) if success >= goal else (0, down + 1)
        if up >= patience:
            cost, up = cost * COST_UP, 0
        elif down >= patience:
            cost, down = cost / COST_DOWN, 0
    if best is None:  # the goal was never reached: the last trigger, with its (lower) success
        with torch.no_grad():
            mask = torch.tanh(mask_param) / 2 + 0.5
            pattern = torch.tanh(pattern_param) / 2 + 0.5
            success = _success(model, images, mask, pattern, target, batch_size * 8)
        best = (float(mask.sum()), mask.detach(), pattern.detach(), success)
    norm, mask, pattern, success = best
    return ReversedTrigger(target, mask[0].cpu(), pattern[0].cpu(), norm, success)


def _success(
    model: nn.Module, images: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor, target: int, batch: int
) -> float:
    device = model_device(model)
    hits = 0
    for start in range(0, len(images), batch):
        x = images[start : start + batch].to(device)
        hits += int((model((1 - mask) * x + mask * pattern).argmax(1) == target).sum())
    return hits / max(len(images), 1)


def reverse_all(model: nn.Module, clean: ImageSet, *, seed: int = 0, **options) -> list[ReversedTrigger]:
    """A reversed trigger for every label of `clean`'s classes (the model untouched)."""
    generator = torch.Generator().manual_seed(seed)
    with frozen(model):
        return [reverse_trigger(model, clean, y, generator=generator, **options) for y in range(clean.num_classes)]


def anomaly_indices(norms: list[float]) -> list[float]:
    """Per label, (median - norm) / (1.4826 MAD) of the labels' trigger sizes (section IV-C); labels above the
    median get 0 (only unusually small triggers are suspicious). NaN when the MAD is 0."""
    x = torch.tensor(norms, dtype=torch.float64)
    median = x.quantile(0.5)  # the mean of the two middle values for an even count, as numpy's median
    mad = MAD_TO_STD * (x - median).abs().quantile(0.5)
    if not mad > 0:
        return [math.nan] * len(norms)
    return ((median - x).clamp(min=0) / mad).tolist()
